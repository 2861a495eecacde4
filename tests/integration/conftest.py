"""Fixtures of the end-to-end tests: `stack` is the whole system through the gateway (see
stack.py); a module overrides `stack_settings` to change a service's settings."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from msp_shared.clock import ManualClock

from stack import Stack, build_stack


@pytest.fixture
def stack_settings() -> dict[str, dict]:
    """Extra settings per service: {"auth": {...}, "verify": {...}, "mail": {...}, "billing": {...}, "gateway": {...}}."""
    return {}


@pytest.fixture
async def stack(base_env: dict, clock: ManualClock, dev_outbox: Path, tmp_path: Path,
                stack_settings: dict[str, dict]) -> AsyncIterator[Stack]:
    async with build_stack(base_env, clock, dev_outbox, tmp_path, stack_settings) as built:
        yield built

"""Browser tests: the web app in Debian's Chromium (driven by Playwright, no browser download)
against the whole stack built in-process on real sockets (tests/integration/stack.py), with a
fresh database, exchange and dev outbox per test and a ManualClock the test can move."""
from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from msp_shared.clock import ManualClock

# The stack builder lives with the integration tests (a plain folder, not a package).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
from stack import Stack, build_stack  # noqa: E402

from e2e_kit import CHROMIUM, MakeMember, Member, make_member  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def stack(base_env: dict, clock: ManualClock, dev_outbox: Path, tmp_path: Path) -> AsyncIterator[Stack]:
    async with build_stack(base_env, clock, dev_outbox, tmp_path) as built:
        yield built


@pytest.fixture
async def page(chromium, stack: Stack) -> AsyncIterator[object]:
    """A fresh browser profile (no cookies) on a phone-sized or desk-sized window; fails the
    test on any uncaught script error."""
    context = await chromium.new_context(base_url=stack.gateway, viewport={"width": 1024, "height": 768})
    context.set_default_timeout(10_000)
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
    finally:
        await context.close()
    assert not errors, f"script errors in the page: {errors}"


@pytest.fixture
def member(stack: Stack) -> MakeMember:
    """`await member(email, practice_name, paid=False, manager=False)`: a registered, verified
    user of that practice (a User Manager with `manager=True`), signed in nowhere yet (see
    e2e_kit.make_member)."""
    practices: dict[str, uuid.UUID] = {}

    async def make(email: str, practice_name: str = "Bright Smiles", *, paid: bool = False,
                   manager: bool = False) -> Member:
        return await make_member(stack, practices, email, practice_name, paid=paid, manager=manager)

    return make

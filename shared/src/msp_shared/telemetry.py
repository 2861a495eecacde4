"""OpenTelemetry wiring: placeholder replaced by the telemetry work (see tests/shared)."""
from __future__ import annotations


def setup_tracing(settings) -> None:  # noqa: ANN001
    return None

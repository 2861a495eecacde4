"""mail-service app factory: health endpoints, the `mail` schema, outbound email (consumer
group "mail-outbound" + the sender task) and the outbox relay for the events it emits."""
from __future__ import annotations

from pathlib import Path

from aiohttp import web
from msp_shared import outbox
from msp_shared.bus import bus_ctx
from msp_shared.clock import Clock
from msp_shared.web import service_app

from . import collaborator, messaging, outbound
from .config import MailSettings

SCHEMA = "mail"
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


async def _subscribe(app: web.Application, bus) -> None:  # noqa: ANN001 - msp_shared.bus.Bus
    outbound.subscribe(app, bus)
    messaging.subscribe(app, bus)


def create_app(settings: MailSettings, *, clock: Clock | None = None) -> web.Application:
    app = service_app(settings, schema=SCHEMA, migrations=MIGRATIONS, clock=clock)
    # Order matters: cleanup runs in reverse, so the bus stops delivering before the sender
    # stops, and both finish before the pool closes.
    app.cleanup_ctx.append(outbound.outbound_ctx)
    app.cleanup_ctx.append(bus_ctx(subscribe=_subscribe))
    app.cleanup_ctx.append(outbox.outbox_relay_ctx)
    messaging.setup(app)  # secure messages: routes, attachment storage, sweeper
    collaborator.setup(app)  # referral cases
    return app

"""The command line every service shares: `python -m msp_<svc>` serves, `python -m msp_<svc>
migrate` applies the service's migrations and exits; a service may add commands of its own."""
from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from . import db
from .config import ServiceSettings
from .logs import setup_logging
from .web import run


def service_main(
    settings_factory: Callable[[], ServiceSettings],
    app_factory: Callable[[ServiceSettings], web.Application],
    *,
    schema: str,
    migrations: Path,
    extra: dict[str, Callable[[ServiceSettings], int | None]] | None = None,
    argv: Sequence[str] | None = None,
) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else "serve"
    commands = {"serve", "migrate", *(extra or {})}
    if command not in commands or len(args) > 1:
        package = app_factory.__module__.split(".")[0]
        print(f"usage: python -m {package} [{'|'.join(sorted(commands))}]", file=sys.stderr)
        return 2
    settings = settings_factory()
    if command == "serve":
        run(lambda: app_factory(settings), settings)
        return 0
    setup_logging(settings.service_name, settings.log_level, settings.log_format)
    if command == "migrate":
        applied = asyncio.run(db.migrate(settings.database_url, schema, migrations))
        print(f"{settings.service_name}: {len(applied)} migration(s) applied")
        return 0
    return (extra or {})[command](settings) or 0

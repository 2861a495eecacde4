"""`python -m msp_gateway` serves the gateway; `python -m msp_gateway migrate` only migrates."""
from __future__ import annotations

import asyncio
import sys

from msp_shared import db
from msp_shared.web import run

from .app import MIGRATIONS, SCHEMA, create_app
from .config import GatewaySettings


def main(argv: list[str]) -> None:
    settings = GatewaySettings()
    if argv[:1] == ["migrate"]:
        asyncio.run(db.migrate(settings.database_url, SCHEMA, MIGRATIONS))
        return
    run(lambda: create_app(settings), settings)


if __name__ == "__main__":
    main(sys.argv[1:])

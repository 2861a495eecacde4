"""`python -m msp_mail` serves mail-service; `python -m msp_mail migrate` applies its
migrations and exits."""
from __future__ import annotations

import asyncio
import sys

from msp_shared import db
from msp_shared.logs import setup_logging
from msp_shared.web import run

from .app import MIGRATIONS, SCHEMA, create_app
from .config import MailSettings


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    settings = MailSettings()
    if args == ["migrate"]:
        setup_logging(settings.service_name, settings.log_level, settings.log_format)
        applied = asyncio.run(db.migrate(settings.database_url, SCHEMA, MIGRATIONS))
        print(f"mail: {len(applied)} migration(s) applied")
        return 0
    if args:
        print("usage: python -m msp_mail [migrate]", file=sys.stderr)
        return 2
    run(lambda: create_app(settings), settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())

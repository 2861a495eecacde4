"""`python -m msp_billing` serves billing-service; `python -m msp_billing migrate` applies its
migrations and exits."""
from __future__ import annotations

import asyncio
import sys

from msp_shared import db
from msp_shared.web import run

from .app import MIGRATIONS, create_app
from .config import BillingSettings


def main(argv: list[str]) -> int:
    settings = BillingSettings()
    command = argv[0] if argv else "serve"
    if command == "migrate":
        applied = asyncio.run(db.migrate(settings.database_url, "billing", MIGRATIONS))
        print(f"billing: {len(applied)} migration(s) applied")
        return 0
    if command == "serve":
        run(lambda: create_app(settings), settings)
        return 0
    print("usage: python -m msp_billing [serve|migrate]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

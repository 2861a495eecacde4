"""`python -m msp_verify` serves verify-service; `python -m msp_verify migrate` applies its migrations and exits."""
import sys

from msp_shared.cli import service_main

from .app import MIGRATIONS, SCHEMA, create_app
from .config import VerifySettings

if __name__ == "__main__":
    sys.exit(service_main(VerifySettings, create_app, schema=SCHEMA, migrations=MIGRATIONS))

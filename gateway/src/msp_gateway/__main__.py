"""`python -m msp_gateway` serves the gateway; `python -m msp_gateway migrate` applies its migrations and exits."""
import sys

from msp_shared.cli import service_main

from .app import MIGRATIONS, SCHEMA, serving_app
from .config import GatewaySettings

if __name__ == "__main__":
    sys.exit(service_main(GatewaySettings, serving_app, schema=SCHEMA, migrations=MIGRATIONS))

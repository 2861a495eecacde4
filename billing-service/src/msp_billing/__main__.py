"""`python -m msp_billing` serves billing-service; `python -m msp_billing migrate` applies its migrations and exits."""
import sys

from msp_shared.cli import service_main

from .app import MIGRATIONS, SCHEMA, create_app
from .config import BillingSettings

if __name__ == "__main__":
    sys.exit(service_main(BillingSettings, create_app, schema=SCHEMA, migrations=MIGRATIONS))

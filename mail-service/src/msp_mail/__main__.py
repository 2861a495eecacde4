"""`python -m msp_mail` serves mail-service; `python -m msp_mail migrate` applies its migrations and exits."""
import sys

from msp_shared.cli import service_main

from .app import MIGRATIONS, SCHEMA, create_app
from .config import MailSettings

if __name__ == "__main__":
    sys.exit(service_main(MailSettings, create_app, schema=SCHEMA, migrations=MIGRATIONS))

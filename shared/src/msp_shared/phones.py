"""Phone numbers: validated and kept in E.164 (+15551234567), the form verify-service and
Twilio take. Pure (phonenumbers is a library with its data built in). auth-service stores
numbers; mail-service checks the ones a sender gives for new recipients before any upload."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import phonenumbers


class InvalidPhone(ValueError):
    pass


def normalize(raw: str, *, region: str = "US") -> str:
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone("not a phone number") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def hint(e164: str | None) -> str | None:
    """What a screen may show of a number: its last two digits."""
    return f"\u2022\u2022\u2022\u2022 {e164[-2:]}" if e164 else None


class BadNumbers(ValueError):
    """Numbers given for recipients that are not valid; `fields` says which and why."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("invalid phone numbers")
        self.fields = fields


def recipients_numbers(given: Mapping[str, Any], recipients: Iterable[str], *, region: str,
                       prefix: str) -> dict[str, dict[str, str]]:
    """The numbers a sender gives for recipients ({address: object with phone and
    cell_phone}), checked: each address one of `recipients`, each number valid. Answers them
    by lower-cased address in E.164, empty ones left out; raises BadNumbers naming every bad
    one as `<prefix>.<address>[.<field>]`."""
    wanted = {r.strip().lower() for r in recipients}
    numbers: dict[str, dict[str, str]] = {}
    bad: dict[str, str] = {}
    for address, entry in given.items():
        if address.strip().lower() not in wanted:
            bad[f"{prefix}.{address}"] = "not one of the recipients"
            continue
        checked = numbers.setdefault(address.strip().lower(), {})
        for field in ("phone", "cell_phone"):
            raw = (getattr(entry, field, None) or "").strip()
            if not raw:
                continue
            try:
                checked[field] = normalize(raw, region=region)
            except InvalidPhone:
                bad[f"{prefix}.{address}.{field}"] = "Enter a valid phone number, with the area code."
    if bad:
        raise BadNumbers(bad)
    return numbers

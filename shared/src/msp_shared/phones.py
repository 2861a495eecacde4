"""Phone numbers: validated and kept in E.164 (+15551234567), the form verify-service and
Twilio take. Pure (phonenumbers is a library with its data built in). auth-service stores
numbers; mail-service checks the ones a sender gives for new recipients before any upload."""
from __future__ import annotations

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

"""Phone numbers: validated and kept in E.164 (+15551234567), the form verify-service and
Twilio take. Pure (phonenumbers is a library with its data built in). auth-service stores
numbers; mail-service checks the ones a sender gives for new recipients before any upload;
verify-service applies the same rule (`receives_codes`) once more before it sends a code."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import phonenumbers
from phonenumbers import PhoneNumberType

#: The kinds of number (phonenumbers.number_type) a verification code may be sent to. Every
#: other kind is refused: premium-rate, shared-cost, toll-free, UAN, pager, voicemail and
#: personal ("follow-me") numbers, and numbers of no known kind. Texting or calling those
#: costs the portal money or pays whoever owns them: the SMS pumping / toll fraud way in.
CODE_NUMBER_TYPES = frozenset({
    PhoneNumberType.MOBILE,
    PhoneNumberType.FIXED_LINE,
    PhoneNumberType.FIXED_LINE_OR_MOBILE,
    PhoneNumberType.VOIP,
})

ENTER_A_VALID_NUMBER = "Enter a valid phone number, with the area code."
NOT_FOR_CODES = ("Premium-rate, toll-free and shared-cost numbers cannot receive verification codes. "
                 "Enter a mobile or landline number.")


class InvalidPhone(ValueError):
    """A number that is refused; its text is a sentence for the person who typed it (the
    services put it next to the field)."""


def receives_codes(number: phonenumbers.PhoneNumber) -> bool:
    """Whether a verification code may go to this (valid) number: see CODE_NUMBER_TYPES."""
    return phonenumbers.number_type(number) in CODE_NUMBER_TYPES


def normalize(raw: str, *, region: str = "US", for_codes: bool = True) -> str:
    """E.164 form of a number (without a country code it is read as one of `region`'s), or
    InvalidPhone. `for_codes`: a person's number, that verification codes may go to; a
    practice's office line (never sent a code) may also be toll-free or shared-cost."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(ENTER_A_VALID_NUMBER) from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone(ENTER_A_VALID_NUMBER)
    if for_codes and not receives_codes(number):
        raise InvalidPhone(NOT_FOR_CODES)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def hint(e164: str | None) -> str | None:
    """What a screen may show of a number: its last two digits."""
    return f"\u2022\u2022\u2022\u2022 {e164[-2:]}" if e164 else None


class BadNumbers(ValueError):
    """Numbers given for recipients that are refused; `fields` says which and why."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("invalid phone numbers")
        self.fields = fields


def recipients_numbers(given: Mapping[str, Any], recipients: Iterable[str], *, region: str,
                       prefix: str) -> dict[str, dict[str, str]]:
    """The numbers a sender gives for recipients ({address: object with phone and
    cell_phone}), checked: each address one of `recipients`, each number one `normalize`
    takes. Answers them by lower-cased address in E.164, empty ones left out; raises
    BadNumbers naming every bad one as `<prefix>.<address>[.<field>]`, with the reason."""
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
            except InvalidPhone as exc:
                bad[f"{prefix}.{address}.{field}"] = str(exc)
    if bad:
        raise BadNumbers(bad)
    return numbers

"""Phone numbers: validated and normalised to E.164 with `phonenumbers`. Pure: no I/O.
The kinds of number a code may go to are msp_shared.phones's rule, the one auth-service
and mail-service apply when numbers are entered: checked again here, the last step before
anything is sent."""
from __future__ import annotations

import phonenumbers

from msp_shared.phones import receives_codes


class InvalidPhone(ValueError):
    pass


def normalise(raw: str) -> str:
    """E.164 form of an international number ('+' and country code required) of a kind codes
    may go to (mobile, landline, VoIP), or InvalidPhone: its text completes "This phone
    number cannot receive codes: ..."."""
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone("not a phone number in international format") from exc
    if number.extension:
        raise InvalidPhone("numbers with an extension cannot receive codes")
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("not a valid phone number")
    if not receives_codes(number):
        raise InvalidPhone("it is a premium-rate, toll-free, shared-cost or other special-service number; "
                           "use a mobile or landline number instead")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def hint(e164: str) -> str:
    """At most the last two digits: enough for a person to recognise their number in an
    audit line, useless to anyone else."""
    digits = [c for c in e164 if c.isdigit()]
    return "".join(digits[-2:])

"""msp_shared.phones: the numbers auth-service stores and mail-service takes for recipients
are ones a verification code may be sent to (no premium-rate, toll-free... numbers: SMS
pumping / toll fraud). Each number's kind is what phonenumbers says (checked in the test)."""
from __future__ import annotations

import phonenumbers
import pytest
from phonenumbers import PhoneNumberType as T

from msp_shared import phones

ACCEPTED = [
    ("+1 202 555 0100", "+12025550100", T.FIXED_LINE_OR_MOBILE),  # US numbers are both, to phonenumbers
    ("(202) 555-0123", "+12025550123", T.FIXED_LINE_OR_MOBILE),   # national, read in the default region
    ("+44 7911 123456", "+447911123456", T.MOBILE),
    ("+44 20 7946 0958", "+442079460958", T.FIXED_LINE),
    ("+44 56 1234 5678", "+445612345678", T.VOIP),
]
REFUSED = [
    ("+1 900 222 3333", T.PREMIUM_RATE),
    ("(900) 222-3333", T.PREMIUM_RATE),
    ("+1 800 222 3333", T.TOLL_FREE),
    ("888-555-1212", T.TOLL_FREE),
    ("+44 909 879 0000", T.PREMIUM_RATE),
    ("+49 180 12345", T.SHARED_COST),
    ("+44 55 1234 5678", T.UAN),
    ("+44 7640 123456", T.PAGER),
    ("+49 177 991234567", T.VOICEMAIL),
    ("+44 70 1234 5678", T.PERSONAL_NUMBER),
    ("+1 500 555 0001", T.PERSONAL_NUMBER),  # Twilio's magic test numbers are of this kind
]


@pytest.mark.parametrize("raw, e164, kind", ACCEPTED)
def test_mobile_landline_and_voip_numbers_are_kept_in_e164(raw: str, e164: str, kind: int) -> None:
    assert phonenumbers.number_type(phonenumbers.parse(raw, "US")) == kind
    assert phones.normalize(raw, region="US") == e164


@pytest.mark.parametrize("raw, kind", REFUSED)
def test_numbers_codes_must_never_go_to_are_refused_in_words(raw: str, kind: int) -> None:
    number = phonenumbers.parse(raw, "US")
    assert phonenumbers.is_valid_number(number) and phonenumbers.number_type(number) == kind
    assert not phones.receives_codes(number)
    with pytest.raises(phones.InvalidPhone) as refused:
        phones.normalize(raw, region="US")
    assert str(refused.value) == phones.NOT_FOR_CODES
    assert "Premium-rate, toll-free and shared-cost numbers cannot receive verification codes" in str(refused.value)
    assert "mobile or landline" in str(refused.value)


@pytest.mark.parametrize("raw", ["12", "555", "+1 201 555 01", "not a number", "+1 700 555 0100"])
def test_what_is_not_a_valid_number_keeps_its_message(raw: str) -> None:
    with pytest.raises(phones.InvalidPhone) as refused:
        phones.normalize(raw, region="US")
    assert str(refused.value) == "Enter a valid phone number, with the area code."


def test_the_accepted_kinds_are_exactly_mobile_landline_and_voip() -> None:
    assert phones.CODE_NUMBER_TYPES == {T.MOBILE, T.FIXED_LINE, T.FIXED_LINE_OR_MOBILE, T.VOIP}
    refused = {value for name, value in vars(T).items() if name.isupper()} - phones.CODE_NUMBER_TYPES
    assert {T.PREMIUM_RATE, T.SHARED_COST, T.TOLL_FREE, T.UAN, T.PAGER, T.VOICEMAIL, T.PERSONAL_NUMBER,
            T.UNKNOWN} <= refused


def test_recipients_numbers_name_each_refused_number_and_say_why() -> None:
    class Entry:
        def __init__(self, phone: str | None = None, cell_phone: str | None = None) -> None:
            self.phone, self.cell_phone = phone, cell_phone

    given = {"Pat@example.org": Entry(phone="(202) 555-0161", cell_phone="+1 900 222 3333"),
             "lee@example.org": Entry(phone="800-222-3333", cell_phone="12")}
    with pytest.raises(phones.BadNumbers) as bad:
        phones.recipients_numbers(given, ["pat@example.org", "lee@example.org"], region="US", prefix="phones")
    assert bad.value.fields == {
        "phones.Pat@example.org.cell_phone": phones.NOT_FOR_CODES,
        "phones.lee@example.org.phone": phones.NOT_FOR_CODES,
        "phones.lee@example.org.cell_phone": "Enter a valid phone number, with the area code.",
    }
    fine = {"Pat@example.org": Entry(phone="(202) 555-0161", cell_phone="+44 7911 123456")}
    assert phones.recipients_numbers(fine, ["pat@example.org"], region="US", prefix="phones") == {
        "pat@example.org": {"phone": "+12025550161", "cell_phone": "+447911123456"}}


def test_an_office_line_may_be_toll_free_but_must_still_be_a_number() -> None:
    """A practice's own number never receives a code: for_codes=False lets a toll-free or
    shared-cost office line through, but not nonsense."""
    assert phones.normalize("1-800-222-3333", for_codes=False) == "+18002223333"
    with pytest.raises(phones.InvalidPhone):
        phones.normalize("1-800-222-3333")
    with pytest.raises(phones.InvalidPhone, match="valid phone number"):
        phones.normalize("call the front desk", for_codes=False)

"""What the user receives: the SMS text and the voice call's script. Pure: no I/O.

The SMS ends with the origin-bound line `@host #code` (WebOTP / Apple's domain-bound codes),
so browsers and phones offer to autofill the code only on the real portal. The call reads
the code digit by digit, twice; it works only when the number rings a person directly
(no dial tree or extension menu: nothing presses keys on our side)."""
from __future__ import annotations

from twilio.twiml.voice_response import VoiceResponse

BRAND = "SecurePractice"
CALL_HELP = (
    "A voice call reads the code aloud. It only works for a number that rings you directly: "
    "not a number behind a menu (dial tree) or an extension."
)


def sms_body(code: str, host: str) -> str:
    return f"Your {BRAND} code is {code}.\n\n@{host} #{code}"


def _digits(code: str) -> str:
    return ", ".join(code)  # commas make text-to-speech pause between digits


def call_lines(code: str) -> list[str]:
    digits = _digits(code)
    return [
        f"Hello. This is {BRAND}. Your verification code is: {digits}.",
        f"Again, your code is: {digits}. Goodbye.",
    ]


def spoken_text(code: str) -> str:
    """What the call says, as one string (the dev outbox's `body` for a call)."""
    return " ".join(call_lines(code))


def call_twiml(code: str) -> str:
    response = VoiceResponse()
    first, second = call_lines(code)
    response.say(first)
    response.pause(length=1)
    response.say(second)
    return str(response)

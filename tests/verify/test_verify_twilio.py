"""The Twilio path: the official, unchanged `twilio` SDK talking to the local
Twilio-protocol server over HTTP (form bodies, basic auth, JSON answers, error codes), on
its own and as verify-service's transport."""
from __future__ import annotations

import asyncio
import base64
import re
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from msp_shared.events import Envelope
from msp_verify.messages import call_twiml, spoken_text
from msp_verify.transport import RedirectingHttpClient, TwilioTransport
from verify_helpers import DEFAULT_IP, LocalTwilio, Verify, code_in, phone, read_sms

FROM = "+15005550006"


def sdk(local: LocalTwilio, *, token: str | None = None) -> Client:
    return Client(
        local.settings.twilio_account_sid,
        token or local.settings.twilio_auth_token.get_secret_value(),
        http_client=RedirectingHttpClient(local.base_url, timeout=5),
    )


async def in_thread(fn: Callable, **kwargs: object) -> object:
    return await asyncio.to_thread(lambda: fn(**kwargs))


async def test_the_sdk_sends_an_sms_in_twilios_shapes(local_twilio: LocalTwilio, dev_outbox) -> None:
    client = sdk(local_twilio)
    message = await in_thread(client.messages.create, to=phone(301), from_=FROM, body="Hello from the SDK")
    assert re.fullmatch(r"SM[0-9a-f]{32}", message.sid)
    assert (message.status, message.to, message.from_, message.body) == ("queued", phone(301), FROM, "Hello from the SDK")
    assert message.account_sid == local_twilio.settings.twilio_account_sid
    assert message.date_created is not None and message.date_created.tzinfo is not None  # RFC 2822 parsed by the SDK
    assert message.direction == "outbound-api"
    fetched = await in_thread(client.messages(message.sid).fetch)
    assert fetched.sid == message.sid and fetched.body == "Hello from the SDK"
    [line] = read_sms(dev_outbox)
    assert (line["to"], line["channel"], line["body"]) == (phone(301), "sms", "Hello from the SDK")


async def test_the_sdk_places_a_call_with_inline_twiml(local_twilio: LocalTwilio, dev_outbox) -> None:
    call = await in_thread(sdk(local_twilio).calls.create, to=phone(302), from_=FROM, twiml=call_twiml("908172"))
    assert re.fullmatch(r"CA[0-9a-f]{32}", call.sid)
    assert (call.status, call.to, call.from_formatted) == ("queued", phone(302), "(500) 555-0006")
    [received] = local_twilio.received
    assert received["_twiml"] == call_twiml("908172")
    [line] = read_sms(dev_outbox)
    assert (line["channel"], line["body"]) == ("call", spoken_text("908172"))


async def test_wrong_credentials_raise_the_sdks_20003(local_twilio: LocalTwilio, dev_outbox) -> None:
    with pytest.raises(TwilioRestException) as caught:
        await in_thread(sdk(local_twilio, token="wrong-token").messages.create, to=phone(303), from_=FROM, body="x")
    assert (caught.value.status, caught.value.code) == (401, 20003)
    wrong_account = Client("AC" + "2" * 32, local_twilio.settings.twilio_auth_token.get_secret_value(),
                           http_client=RedirectingHttpClient(local_twilio.base_url, timeout=5))
    with pytest.raises(TwilioRestException) as caught:
        await in_thread(wrong_account.calls.create, to=phone(303), from_=FROM, twiml=call_twiml("1"))
    assert caught.value.code == 20003
    assert local_twilio.received == [] and read_sms(dev_outbox) == []


async def test_the_error_body_is_twilios(local_twilio: LocalTwilio) -> None:
    url = f"{local_twilio.base_url}/2010-04-01/Accounts/{local_twilio.settings.twilio_account_sid}/Messages.json"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data={"To": phone(304), "From": FROM, "Body": "x"}) as r:
            assert r.status == 401
            assert await r.json() == {
                "code": 20003, "message": "Authenticate",
                "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401,
            }
        auth = base64.b64encode(
            f"{local_twilio.settings.twilio_account_sid}:{local_twilio.settings.twilio_auth_token.get_secret_value()}".encode()
        ).decode()
        async with http.post(url, data={"From": FROM, "Body": "x"}, headers={"Authorization": f"Basic {auth}"}) as r:
            assert r.status == 400 and (await r.json())["code"] == 21604


@pytest.mark.parametrize("to", ["+1555", "+15005550001"])
async def test_an_invalid_number_is_21211(local_twilio: LocalTwilio, to: str) -> None:
    with pytest.raises(TwilioRestException) as caught:
        await in_thread(sdk(local_twilio).messages.create, to=to, from_=FROM, body="x")
    assert (caught.value.status, caught.value.code) == (400, 21211)
    with pytest.raises(TwilioRestException) as caught:
        await in_thread(sdk(local_twilio).calls.create, to=to, from_=FROM, twiml=call_twiml("1"))
    assert caught.value.code == 21211


async def test_missing_parameters_get_twilios_codes(local_twilio: LocalTwilio) -> None:
    client = sdk(local_twilio)
    cases = [
        (client.messages.create, {"to": "", "from_": FROM, "body": "x"}, 21604),
        (client.messages.create, {"to": phone(305), "body": "x"}, 21603),
        (client.messages.create, {"to": phone(305), "from_": FROM}, 21602),
        (client.calls.create, {"to": "", "from_": FROM, "twiml": call_twiml("1")}, 21201),
        (client.calls.create, {"to": phone(305), "from_": "", "twiml": call_twiml("1")}, 21213),
        (client.calls.create, {"to": phone(305), "from_": FROM}, 21205),
        (client.calls.create, {"to": phone(305), "from_": FROM, "twiml": "<Response><Say>"}, 12100),
    ]
    for create, kwargs, code in cases:
        with pytest.raises(TwilioRestException) as caught:
            await in_thread(create, **kwargs)
        assert caught.value.code == code, kwargs
    assert local_twilio.received == []


async def test_the_transport_runs_the_sdk_off_the_event_loop(local_twilio: LocalTwilio, dev_outbox) -> None:
    transport = TwilioTransport(
        account_sid=local_twilio.settings.twilio_account_sid,
        auth_token=local_twilio.settings.twilio_auth_token.get_secret_value(),
        from_number=FROM, base_url=local_twilio.base_url, timeout=5,
    )
    try:
        # The local server runs on this same event loop: a blocking SDK call would deadlock.
        await asyncio.wait_for(transport.send_sms(phone(306), "one"), timeout=10)
        await asyncio.wait_for(transport.call(phone(306), twiml=call_twiml("12"), spoken=spoken_text("12")), timeout=10)
    finally:
        await transport.close()
    assert [(line["channel"], line["body"]) for line in read_sms(dev_outbox)] == [("sms", "one"), ("call", spoken_text("12"))]


async def _twilio_verify(start_verify: Callable[..., Awaitable[Verify]], local: LocalTwilio, **overrides: object) -> Verify:
    settings = {
        "sms_transport": "twilio", "twilio_base_url": local.base_url, "twilio_from_number": FROM,
        "twilio_account_sid": local.settings.twilio_account_sid,
        "twilio_auth_token": local.settings.twilio_auth_token.get_secret_value(),
    }
    return await start_verify(**{**settings, **overrides})


async def test_verify_service_sends_sms_and_calls_through_twilio(start_verify, local_twilio: LocalTwilio) -> None:
    verify = await _twilio_verify(start_verify, local_twilio)
    user = uuid.uuid4()
    ticket = verify.ticket(user, phone(307))
    sms = await verify.send(ticket, "sms")
    assert sms.status == 201, sms.body
    [message] = local_twilio.received
    assert message["sid"].startswith("SM") and message["from"] == FROM and message["to"] == phone(307)
    assert message["body"].endswith(f"\n\n@portal.example.com #{code_in(verify.sms()[-1])}")

    verify.clock.advance(seconds=31)
    call = await verify.send(ticket, "call")
    assert call.status == 201, call.body
    assert local_twilio.received[-1]["sid"].startswith("CA")
    assert "<Say>" in local_twilio.received[-1]["_twiml"]
    line = verify.sms()[-1]
    assert line["channel"] == "call"
    assert (await verify.check(call.body["id"], code_in(line))).status == 200


async def test_an_unreachable_number_fails_cleanly_and_is_audited(start_verify, local_twilio: LocalTwilio,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    verify = await _twilio_verify(start_verify, local_twilio)
    user = uuid.uuid4()
    # Twilio's magic +15005550001 is a personal number, which verify-service never sends to:
    # here an ordinary number is one Twilio refuses (a valid mobile or landline it still rejects).
    refused = phone(310)
    monkeypatch.setattr("msp_verify.twilio_local.MAGIC_TO_ERRORS",
                        {refused: (21211, f"The 'To' number {refused} is not a valid phone number.")})
    reply = await verify.send(verify.ticket(user, refused), "sms")  # valid to phonenumbers, refused by Twilio
    assert reply.status == 422 and reply.body["error"] == "phone_unreachable"
    assert reply.body["details"] == {"provider_code": 21211}
    conn = await verify.db()
    try:
        assert await conn.fetchval("SELECT status FROM verifications WHERE user_id = $1", user) == "failed"
        assert await conn.fetchval("SELECT outcome FROM audit WHERE user_id = $1", user) == "send_failed"
        [event] = [Envelope.model_validate_json(r["envelope"]) for r in await conn.fetch("SELECT envelope FROM outbox")]
        failed_id = await conn.fetchval("SELECT id FROM verifications WHERE user_id = $1", user)
    finally:
        await conn.close()
    # announced for the audit trail Support reads, with the failed verification's id
    assert event.type == "verify.code.sent"
    assert event.data == {"user_id": str(user), "verification_id": str(failed_id), "purpose": "registration",
                          "channel": "sms", "outcome": "send_failed", "ip": DEFAULT_IP, "actor_id": None}
    # A failed send does not hold the user back by the resend cooldown.
    verify.clock.advance(seconds=1)
    retry = await verify.send(verify.ticket(user, phone(308)), "sms")
    assert retry.status == 201, retry.body


async def test_bad_twilio_credentials_are_a_502_without_details(start_verify, local_twilio: LocalTwilio) -> None:
    verify = await _twilio_verify(start_verify, local_twilio, twilio_auth_token="not-the-token")
    reply = await verify.send(verify.ticket(uuid.uuid4(), phone(309)), "sms")
    assert reply.status == 502 and reply.body["error"] == "send_failed"
    assert "20003" not in str(reply.body) and "Authenticate" not in str(reply.body)
    assert local_twilio.received == [] and verify.sms() == []
    conn = await verify.db()
    try:
        [event] = [Envelope.model_validate_json(r["envelope"]) for r in await conn.fetch("SELECT envelope FROM outbox")]
    finally:
        await conn.close()
    assert (event.type, event.data["outcome"], event.data["ip"]) == ("verify.code.sent", "send_failed", DEFAULT_IP)

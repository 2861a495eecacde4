"""A local server that speaks Twilio's REST protocol for Messages and Calls, so the official
`twilio` SDK (unchanged, pointed here by `twilio_base_url`) is exercised end to end in
development and tests — the production code path, without Twilio.

Wire shapes as Twilio's API 2010-04-01:
  POST /2010-04-01/Accounts/{AccountSid}/Messages.json   To, From|MessagingServiceSid, Body
  POST /2010-04-01/Accounts/{AccountSid}/Calls.json      To, From, Twiml|Url|ApplicationSid
  GET  /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json, .../Calls/{Sid}.json
Form-encoded bodies, HTTP basic auth (Account SID : auth token), JSON answers (201 with
"SM..."/"CA..." sids, status "queued"), Twilio's error JSON
`{"code", "message", "more_info", "status"}`: 20003 bad credentials, 20404 unknown
resource, 21211 invalid 'To', 21602/21603/21604 missing Body/From/To, 21201/21213/21205 for
calls, 12100 unparsable TwiML. Twilio's magic test numbers are honoured: +15005550001
invalid (21211), +15005550002 unroutable (21612), +15005550004 opted out (21610),
+15005550009 not SMS-capable (21614).

Everything accepted is kept in memory (app[RECEIVED]) and appended to the dev outbox
`sms.jsonl` in the local transport's line format (for a call, the <Say> text), so the
local stack runs the same with MSP_SMS_TRANSPORT=twilio.

Run: `python -m msp_verify.twilio_local` (MSP_TWILIO_LOCAL_PORT, default 8106)."""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
import secrets
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from email.utils import format_datetime

import phonenumbers
from aiohttp import web

from .config import TwilioLocalSettings
from .transport import append_sms_line

log = logging.getLogger(__name__)

API = "/2010-04-01"
CONFIG = web.AppKey("twilio_local_settings", TwilioLocalSettings)
RECEIVED = web.AppKey("twilio_local_received", list)
RESOURCES = web.AppKey("twilio_local_resources", dict)

MAGIC_TO_ERRORS = {
    "+15005550001": (21211, "The 'To' number +15005550001 is not a valid phone number."),
    "+15005550002": (21612, "The 'To' phone number is not currently reachable via SMS or voice."),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
}
SMS_ONLY_MAGIC = {"+15005550009": (21614, "'To' number is not a valid mobile number")}


class TwilioError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> web.Response:
        return web.json_response(
            {
                "code": self.code,
                "message": self.message,
                "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
                "status": self.status,
            },
            status=self.status,
        )


def _authenticated_sid(request: web.Request, settings: TwilioLocalSettings) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        user = password = ""
    # Both comparisons always run (constant time, no short-circuit on the first mismatch).
    sid_ok = hmac.compare_digest(user.encode(), settings.twilio_account_sid.encode())
    token_ok = hmac.compare_digest(password.encode(), settings.twilio_auth_token.get_secret_value().encode())
    ok = scheme.lower() == "basic" and sid_ok and token_ok
    if not ok or request.match_info.get("account_sid") != user:
        raise TwilioError(401, 20003, "Authenticate")
    return user


@web.middleware
async def twilio_errors(request: web.Request, handler) -> web.StreamResponse:  # noqa: ANN001
    try:
        if request.match_info.route.resource is not None:
            _authenticated_sid(request, request.app[CONFIG])
        return await handler(request)
    except TwilioError as exc:
        return exc.response()
    except web.HTTPNotFound:
        return TwilioError(404, 20404, "The requested resource was not found").response()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _rfc2822(when: datetime) -> str:
    return format_datetime(when, usegmt=False).replace("-0000", "+0000")


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _check_to(to: str, *, sms: bool) -> None:
    magic = MAGIC_TO_ERRORS.get(to) or (SMS_ONLY_MAGIC.get(to) if sms else None)
    if magic:
        raise TwilioError(400, *magic)
    try:
        valid = phonenumbers.is_valid_number(phonenumbers.parse(to, None))
    except phonenumbers.NumberParseException:
        valid = False
    if not valid:
        raise TwilioError(400, 21211, f"The 'To' number {to} is not a valid phone number.")


def _formatted(number: str) -> str:
    try:
        return phonenumbers.format_number(phonenumbers.parse(number, None), phonenumbers.PhoneNumberFormat.NATIONAL)
    except phonenumbers.NumberParseException:
        return number


def _segments(body: str) -> str:
    # GSM-7: one segment up to 160 characters, else 153 per concatenated segment.
    return "1" if len(body) <= 160 else str(-(-len(body) // 153))


def _record(request: web.Request, resource: dict, *, channel: str, body: str) -> None:
    request.app[RESOURCES][resource["sid"]] = resource
    request.app[RECEIVED].append({**resource, "channel": channel, "spoken_or_body": body})
    log.info("received", extra={"resource": channel, "sid": resource["sid"]})
    append_sms_line(
        request.app[CONFIG].dev_outbox,
        {"to": resource["to"], "channel": channel, "body": body, "at": resource["_at"]},
    )


def _public(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if not k.startswith("_")}


async def create_message(request: web.Request) -> web.Response:
    form = await request.post()
    account_sid = request.match_info["account_sid"]
    to, from_, body = form.get("To"), form.get("From"), form.get("Body")
    service = form.get("MessagingServiceSid")
    if not to:
        raise TwilioError(400, 21604, "A 'To' phone number is required.")
    if not from_ and not service:
        raise TwilioError(400, 21603, "A 'From' phone number is required.")
    if not body and not form.get("MediaUrl") and not form.get("ContentSid"):
        raise TwilioError(400, 21602, "Message body is required.")
    _check_to(str(to), sms=True)
    now = _now()
    sid = _sid("SM")
    uri = f"{API}/Accounts/{account_sid}/Messages/{sid}.json"
    message = {
        "account_sid": account_sid,
        "api_version": "2010-04-01",
        "body": body,
        "date_created": _rfc2822(now),
        "date_sent": None,
        "date_updated": _rfc2822(now),
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": from_,
        "messaging_service_sid": service,
        "num_media": "0",
        "num_segments": _segments(str(body or "")),
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "status": "accepted" if service and not from_ else "queued",
        "subresource_uris": {"media": f"{API}/Accounts/{account_sid}/Messages/{sid}/Media.json"},
        "to": to,
        "uri": uri,
        "_at": now.isoformat(),
    }
    _record(request, message, channel="sms", body=str(body or ""))
    return web.json_response(_public(message), status=201)


def spoken_text(twiml: str) -> str:
    """The words a call would say: every <Say> of the TwiML, joined by a space."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        raise TwilioError(400, 12100, "Document parse failure")
    if root.tag != "Response":
        raise TwilioError(400, 12100, "Document parse failure")
    return " ".join((say.text or "").strip() for say in root.iter("Say"))


async def create_call(request: web.Request) -> web.Response:
    form = await request.post()
    account_sid = request.match_info["account_sid"]
    to, from_ = form.get("To"), form.get("From")
    twiml, url, app_sid = form.get("Twiml"), form.get("Url"), form.get("ApplicationSid")
    if not to:
        raise TwilioError(400, 21201, "No 'To' number is specified")
    if not from_:
        raise TwilioError(400, 21213, "No 'From' number is specified")
    if not (twiml or url or app_sid):
        raise TwilioError(400, 21205, "Url parameter is required.")
    _check_to(str(to), sms=False)
    spoken = spoken_text(str(twiml)) if twiml else f"(TwiML fetched from {url or app_sid})"
    now = _now()
    sid = _sid("CA")
    base = f"{API}/Accounts/{account_sid}/Calls/{sid}"
    call = {
        "account_sid": account_sid,
        "annotation": None,
        "answered_by": None,
        "api_version": "2010-04-01",
        "caller_name": None,
        "date_created": _rfc2822(now),
        "date_updated": _rfc2822(now),
        "direction": "outbound-api",
        "duration": None,
        "end_time": None,
        "forwarded_from": None,
        "from": from_,
        "from_formatted": _formatted(str(from_)),
        "group_sid": None,
        "parent_call_sid": None,
        "phone_number_sid": None,
        "price": None,
        "price_unit": "USD",
        "queue_time": "0",
        "sid": sid,
        "start_time": None,
        "status": "queued",
        "subresource_uris": {
            "notifications": f"{base}/Notifications.json",
            "recordings": f"{base}/Recordings.json",
            "payments": f"{base}/Payments.json",
        },
        "to": to,
        "to_formatted": _formatted(str(to)),
        "trunk_sid": None,
        "uri": f"{base}.json",
        "_at": now.isoformat(),
        "_twiml": twiml,
    }
    _record(request, call, channel="call", body=spoken)
    return web.json_response(_public(call), status=201)


async def fetch_resource(request: web.Request) -> web.Response:
    resource = request.app[RESOURCES].get(request.match_info["sid"])
    kind = request.match_info["kind"]
    if resource is None or not resource["sid"].startswith("SM" if kind == "Messages" else "CA"):
        raise TwilioError(404, 20404, "The requested resource was not found")
    return web.json_response(_public(resource))


def create_app(settings: TwilioLocalSettings | None = None) -> web.Application:
    settings = settings or TwilioLocalSettings()
    app = web.Application(middlewares=[twilio_errors], client_max_size=256 * 1024)
    app[CONFIG] = settings
    app[RECEIVED] = []
    app[RESOURCES] = {}
    accounts = API + "/Accounts/{account_sid}"
    app.router.add_post(accounts + "/Messages.json", create_message)
    app.router.add_post(accounts + "/Calls.json", create_call)
    app.router.add_get(accounts + "/{kind:Messages|Calls}/{sid}.json", fetch_resource)
    return app


def main() -> None:
    from msp_shared.logs import setup_logging

    settings = TwilioLocalSettings()
    setup_logging("twilio-local", settings.log_level, settings.log_format)
    log.info("local twilio listening", extra={"port": settings.twilio_local_port})
    web.run_app(
        create_app(settings), host=settings.twilio_local_host, port=settings.twilio_local_port, print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()

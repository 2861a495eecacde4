"""HTTP handlers of secure messages (the gateway maps /api/v1/messages... here).

Every handler authorises from the verified gateway identity: a message exists only for its
sender and its recipients; to anyone else (another practice, the same practice, a guessed
id) it is 404. Every open and every download is written to the disclosure log."""
from __future__ import annotations

import csv
import io
import re
import uuid
from base64 import urlsafe_b64decode, urlsafe_b64encode
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from msp_shared import phones
from msp_shared.errors import ApiError
from msp_shared.identity import Identity
from msp_shared.mailer import request_email
from msp_shared.web import CLOCK, POOL, SETTINGS, read_model, require_user

from . import auth_client, downloads, expiry, permissions, store
from .keys import BLOBS, HTTP, MASTER_KEYS, SEALER
from .permissions import ATTACHMENT_NOT_FOUND, NOT_FOUND, SENDER_ONLY
from .uploads import Upload

_ADDRESS = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")
MAX_RECIPIENTS = 50


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecipientPhones(Model):
    phone: str | None = Field(None, max_length=40)
    cell_phone: str | None = Field(None, max_length=40)


class ComposeIn(Model):
    to: list[str] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    subject: str = Field(min_length=1, max_length=300)
    body: str = Field("", max_length=200_000)
    expires_in_days: int | None = None
    # Numbers for recipients new to the portal, by address: their invitation carries them
    # and the registration code goes to `phone`. Ignored for people who have an account.
    recipient_phones: dict[str, RecipientPhones] = Field(default_factory=dict, max_length=MAX_RECIPIENTS)


class ReplyIn(Model):
    body: str = Field(min_length=1, max_length=200_000)
    subject: str | None = Field(None, max_length=300)
    expires_in_days: int | None = None


class PatchIn(Model):
    read: bool | None = None
    expires_at: datetime | None = None
    expires_in_days: int | None = Field(None, ge=0)  # from now; 0 = expire at once


class SettingsIn(Model):
    default_expiry_days: int


@dataclass
class Ctx:
    settings: Any
    pool: asyncpg.Pool
    identity: Identity
    now: datetime
    request: web.Request

    @property
    def user_id(self) -> str:
        return str(self.identity.user_id)

    def upload(self) -> Upload:
        app = self.request.app
        return Upload(app[BLOBS], app[MASTER_KEYS], max_files=self.settings.attachment_max_files)

    def link(self, fragment: str) -> str:
        """A link into the web app: `fragment` is one of its hash routes (gateway static/app.js,
        PUBLIC and PRIVATE), e.g. "message?id=..."; tests/gateway/test_email_links.py checks each."""
        return self.settings.public_url.rstrip("/") + "/#/" + fragment.lstrip("/")


def signed_in(request: web.Request) -> Identity:
    """The verified caller, refused if not signed in or if the session is restricted."""
    ident = require_user(request)
    refusal = permissions.restriction_refusal(ident.extra.get("restriction"))
    if refusal:
        raise refusal
    return ident


def ctx(request: web.Request) -> Ctx:
    ident = signed_in(request)
    return Ctx(request.app[SETTINGS], request.app[POOL], ident, request.app[CLOCK].now(), request)


def parse_id(value: str, error: ApiError = NOT_FOUND) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise error from None


def _normalise_recipients(addresses: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    bad = []
    for raw in addresses:
        address = raw.strip()
        if not _ADDRESS.match(address) or len(address) > 320:
            bad.append(address[:3] + "…")
            continue
        seen.setdefault(address.lower(), address)
    if bad or not seen:
        raise ApiError(400, "invalid_input", "Some recipients' addresses are not valid.",
                       {"fields": {"to": "Enter valid email addresses."}})
    return list(seen.values())


# ---- views -----------------------------------------------------------------------------------

def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _sender(msg: asyncpg.Record) -> dict[str, Any]:
    return {"user_id": str(msg["sender_id"]), "name": msg["sender_name"], "practice_name": msg["sender_practice_name"]}


def summary(msg: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(msg["id"]),
        "thread_id": str(msg["thread_id"]),
        "parent_id": str(msg["parent_id"]) if msg["parent_id"] else None,
        "from": _sender(msg),
        "subject": msg["subject"],
        "created_at": _iso(msg["created_at"]),
        "expires_at": _iso(msg["expires_at"]),
        "attachment_count": msg["attachment_count"],
    }


def recipient_view(row: asyncpg.Record, *, receipts: bool) -> dict[str, Any]:
    view = {"user_id": str(row["user_id"]), "email": row["email"]}
    if receipts:  # read receipts are the sender's to see
        view["first_opened_at"] = _iso(row["first_opened_at"])
    return view


def full_view(msg: asyncpg.Record, recipients: list[asyncpg.Record], attachments: list[asyncpg.Record],
              access: permissions.Access, thread: list[asyncpg.Record], user_id: str) -> dict[str, Any]:
    mine = next((r for r in recipients if str(r["user_id"]) == user_id), None)
    return {
        **summary(msg),
        "body": msg["body"],
        "to": [recipient_view(r, receipts=access.is_sender) for r in recipients],
        "attachments": [
            {"id": str(a["id"]), "filename": a["filename"], "content_type": a["content_type"], "size": a["size"]}
            for a in attachments
        ],
        "folder": "sent" if access.is_sender else "inbox",
        "read": mine is not None and mine["read_at"] is not None,
        "can_recall": access.is_sender and all(r["first_opened_at"] is None for r in recipients),
        "thread": [summary(m) for m in thread],
    }


# ---- loading with authorisation ------------------------------------------------------------------

async def load(conn: asyncpg.Connection, c: Ctx, message_id: uuid.UUID, *, for_update: bool = False,
               for_share: bool = False) -> tuple[asyncpg.Record, list[asyncpg.Record], permissions.Access]:
    """The message and its recipients if the caller may see it, else 404. Opens and downloads
    load it `for_share` in the transaction that records them, serialising them with a
    recall (which loads it `for_update`): see store.get_message."""
    msg = await store.get_message(conn, message_id, c.now, for_update=for_update, for_share=for_share)
    if msg is None:
        raise NOT_FOUND
    recipients = await store.recipients(conn, message_id)
    access = permissions.access(
        c.user_id, sender_id=str(msg["sender_id"]), sender_deleted=msg["sender_deleted_at"] is not None,
        recipients={str(r["user_id"]): r["deleted_at"] is not None for r in recipients},
    )
    if not access.any:
        raise NOT_FOUND
    return msg, recipients, access


async def _notify(conn: asyncpg.Connection, c: Ctx, message_id: uuid.UUID, sender: dict, emails: list[str]) -> None:
    """"A secure message is waiting, from <practice>, link": never subject, body or file names."""
    sealer = c.request.app[SEALER]
    from_name = sender.get("practice_name") or "a SecurePractice user"
    for address in emails:
        await request_email(
            conn, sealer, template="message_waiting", to=address,
            params={"practice_name": from_name}, secrets={"link": c.link(f"message?id={message_id}")},
            requested_by="mail",
        )


def _expires(c: Ctx, requested: int | None, practice_days: int | None) -> datetime:
    s = c.settings
    default = expiry.default_days(service_default=s.message_default_expiry_days, service_max=s.message_max_expiry_days,
                                  practice_default=practice_days)
    try:
        return expiry.expires_at(c.now, requested_days=requested, default=default, service_max=s.message_max_expiry_days)
    except expiry.ExpiryRefused as exc:
        raise ApiError(422, "expiry_not_allowed", str(exc), {"max_days": s.message_max_expiry_days}) from None


# ---- compose and reply -------------------------------------------------------------------------

async def send_message(request: web.Request) -> web.Response:
    c = ctx(request)
    upload = c.upload()
    state: dict[str, Any] = {}

    async def check(fields: ComposeIn) -> None:
        # Refused before a byte of any file is read: not paid, bad addresses, bad expiry.
        async with c.pool.acquire() as conn:
            paid = await store.is_paid(conn, c.user_id)
            practice_days = await store.practice_default_days(conn, c.identity.practice_id)
        refusal = permissions.may_start_message(paid)
        if refusal:
            raise refusal
        state["emails"] = _normalise_recipients(fields.to)
        try:  # checked here, before any file is read; auth-service checks again and stores them
            state["phones"] = phones.recipients_numbers(fields.recipient_phones, state["emails"],
                                                        region=c.settings.phone_default_region, prefix="recipient_phones")
        except phones.BadNumbers as exc:
            raise ApiError(400, "invalid_input", "Some fields are missing or invalid.", {"fields": exc.fields}) from None
        state["expires_at"] = _expires(c, fields.expires_in_days, practice_days)

    try:
        fields = await upload.receive(request, ComposeIn, check)
        resolved = await auth_client.resolve(
            request.app[HTTP], c.settings, request.app[CLOCK], emails=state["emails"],
            sender_id=c.user_id, practice_id=c.identity.practice_id, phones=state["phones"],
        )
        message_id = uuid.uuid4()
        now = request.app[CLOCK].now()
        recipients = [(r["user_id"], r["email"]) for r in resolved.recipients]
        async with upload.saving(c.pool, store.attachments_exist) as conn:
            await store.insert_message(
                conn, message_id=message_id, thread_id=message_id, parent_id=None, sender=resolved.sender,
                subject=fields.subject.strip(), body=fields.body, created_at=now, expires_at=state["expires_at"],
                recipients=recipients, files=upload.files,
            )
            await _notify(conn, c, message_id, resolved.sender, [email for _, email in recipients])
            answer = await _view(conn, c, message_id, record_open=False)
    except BaseException:
        await upload.discard()  # keeps the files if the rows were committed after all
        raise
    return web.json_response(answer, status=201)


async def reply(request: web.Request) -> web.Response:
    c = ctx(request)
    parent_id = parse_id(request.match_info["message_id"])
    async with c.pool.acquire() as conn:
        parent, parent_recipients, _access = await load(conn, c, parent_id)
        practice_days = await store.practice_default_days(conn, c.identity.practice_id)
    to_ids = permissions.reply_recipients(c.user_id, str(parent["sender_id"]), [str(r["user_id"]) for r in parent_recipients])
    emails = {str(parent["sender_id"]): parent["sender_email"], **{str(r["user_id"]): r["email"] for r in parent_recipients}}
    if not to_ids:
        raise ApiError(422, "no_recipients", "There is nobody else in this conversation to reply to.")
    upload = c.upload()
    state: dict[str, Any] = {}

    async def check(fields: ReplyIn) -> None:
        state["expires_at"] = _expires(c, fields.expires_in_days, practice_days)

    try:
        fields = await upload.receive(request, ReplyIn, check)
        resolved = await auth_client.resolve(
            request.app[HTTP], c.settings, request.app[CLOCK], emails=[], sender_id=c.user_id,
            practice_id=c.identity.practice_id,
        )
        message_id = uuid.uuid4()
        now = request.app[CLOCK].now()
        subject = (fields.subject or "").strip() or _re(parent["subject"])
        async with upload.saving(c.pool, store.attachments_exist) as conn:
            # The parent may have expired or been removed while the files streamed in.
            await load(conn, c, parent_id, for_update=True)
            await store.insert_message(
                conn, message_id=message_id, thread_id=parent["thread_id"], parent_id=parent_id, sender=resolved.sender,
                subject=subject, body=fields.body, created_at=now, expires_at=state["expires_at"],
                recipients=[(uid, emails[uid]) for uid in to_ids], files=upload.files,
            )
            await _notify(conn, c, message_id, resolved.sender, [emails[uid] for uid in to_ids])
            answer = await _view(conn, c, message_id, record_open=False)
    except BaseException:
        await upload.discard()  # keeps the files if the rows were committed after all
        raise
    return web.json_response(answer, status=201)


def _re(subject: str) -> str:
    return subject if subject.lower().startswith("re:") else f"Re: {subject}"[:300]


# ---- reading -----------------------------------------------------------------------------------

async def _view(conn: asyncpg.Connection, c: Ctx, message_id: uuid.UUID, *, record_open: bool) -> dict[str, Any]:
    msg, recipients, access = await load(conn, c, message_id, for_share=record_open)
    if record_open:
        if access.is_recipient:
            await store.mark_opened(conn, message_id, c.user_id, c.now)
            recipients = await store.recipients(conn, message_id)
        await store.record_disclosure(conn, message_id=message_id, sender_id=msg["sender_id"], user_id=c.user_id,
                                      action="open", at=c.now, ip=c.identity.ip)
    attachments = await store.attachments(conn, message_id)
    thread = await store.thread(conn, msg["thread_id"], c.user_id, c.now)
    return full_view(msg, recipients, attachments, access, thread, c.user_id)


async def get_message(request: web.Request) -> web.Response:
    c = ctx(request)
    message_id = parse_id(request.match_info["message_id"])
    async with c.pool.acquire() as conn, conn.transaction():
        answer = await _view(conn, c, message_id, record_open=True)
    return web.json_response(answer)


async def download(request: web.Request) -> web.StreamResponse:
    c = ctx(request)
    message_id = parse_id(request.match_info["message_id"])
    attachment_id = parse_id(request.match_info["attachment_id"], ATTACHMENT_NOT_FOUND)
    async with c.pool.acquire() as conn, conn.transaction():
        msg, _recipients, access = await load(conn, c, message_id, for_share=True)  # not while a recall runs
        row = await store.attachment(conn, message_id, attachment_id)
        if row is None:
            raise ATTACHMENT_NOT_FOUND
        try:
            byte_range = downloads.range_of(request, row["size"])
        except downloads.RangeNotSatisfiable:
            return downloads.unsatisfiable(row["size"])
        if access.is_recipient:
            await store.mark_opened(conn, message_id, c.user_id, c.now)
        shown = f"{byte_range[0]}-{byte_range[1] - 1}" if byte_range else None
        await store.record_disclosure(conn, message_id=message_id, sender_id=msg["sender_id"], user_id=c.user_id,
                                      action="download", at=c.now, ip=c.identity.ip, attachment_id=attachment_id,
                                      byte_range=shown)
    return await downloads.serve(request, row, request.app[BLOBS], request.app[MASTER_KEYS], byte_range)


def _cursor_out(row: asyncpg.Record) -> str:
    return urlsafe_b64encode(f"{row['sort_at'].isoformat()}|{row['id']}".encode()).decode().rstrip("=")


def _cursor_in(value: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not value:
        return None
    try:
        at, _, mid = urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode().partition("|")
        return datetime.fromisoformat(at), uuid.UUID(mid)
    except ValueError:
        raise ApiError(400, "invalid_input", "The page cursor is not valid.", {"fields": {"cursor": "invalid"}}) from None


async def list_messages(request: web.Request) -> web.Response:
    c = ctx(request)
    folder = request.query.get("folder", "inbox")
    if folder not in ("inbox", "sent"):
        raise ApiError(400, "invalid_input", "folder is inbox or sent.", {"fields": {"folder": "inbox or sent"}})
    try:
        limit = max(1, min(int(request.query.get("limit", c.settings.message_page_size)), 200))
    except ValueError:
        raise ApiError(400, "invalid_input", "limit must be a number.", {"fields": {"limit": "a number"}}) from None
    after = _cursor_in(request.query.get("cursor"))
    async with c.pool.acquire() as conn:
        if folder == "inbox":
            rows = await store.inbox_page(conn, c.user_id, c.now, after, limit + 1)
        else:
            rows = await store.sent_page(conn, c.user_id, c.now, after, limit + 1)
        page = rows[:limit]
        items = [summary(r) for r in page]
        if folder == "inbox":
            for item, row in zip(items, page):
                item["read"] = row["read_at"] is not None
        elif page:
            by_message: dict[str, list] = {}
            for r in await store.recipients_of(conn, [row["id"] for row in page]):
                by_message.setdefault(str(r["message_id"]), []).append(recipient_view(r, receipts=True))
            for item in items:
                item["to"] = by_message.get(item["id"], [])
    next_cursor = _cursor_out(page[-1]) if len(rows) > limit else None
    return web.json_response({"folder": folder, "messages": items, "next_cursor": next_cursor})


# ---- changing, removing, recalling ----------------------------------------------------------------

async def patch_message(request: web.Request) -> web.Response:
    c = ctx(request)
    message_id = parse_id(request.match_info["message_id"])
    body = await read_model(request, PatchIn)
    destroyed: list[str] | None = None
    async with c.pool.acquire() as conn, conn.transaction():
        msg, _recipients, access = await load(conn, c, message_id, for_update=True)
        if body.read is not None:
            if not access.is_recipient:
                raise ApiError(403, "recipient_only", "Only a recipient marks a message read or unread.")
            await store.set_read(conn, message_id, c.user_id, body.read, c.now)
        wanted = body.expires_at
        if body.expires_in_days is not None:
            wanted = c.now + timedelta(days=body.expires_in_days)
        if wanted is not None:
            if not access.is_sender:
                raise SENDER_ONLY
            if wanted.tzinfo is None:
                raise ApiError(400, "invalid_input", "Give expires_at with a time zone.", {"fields": {"expires_at": "time zone"}})
            try:
                new = expiry.shortened(msg["expires_at"], wanted, c.now)
            except expiry.ExpiryRefused as exc:
                raise ApiError(422, "expiry_not_allowed", str(exc)) from None
            if new <= c.now:
                destroyed = await store.destroy_messages(conn, [message_id], c.now)
            else:
                await store.set_expiry(conn, message_id, new)
        answer = None if destroyed is not None else await _view(conn, c, message_id, record_open=False)
    if destroyed is not None:
        await _delete_blobs(request, destroyed)
        return web.json_response({"id": str(message_id), "expired": True})
    return web.json_response(answer)


async def remove_message(request: web.Request) -> web.Response:
    c = ctx(request)
    message_id = parse_id(request.match_info["message_id"])
    async with c.pool.acquire() as conn, conn.transaction():
        await load(conn, c, message_id, for_update=True)
        await store.remove_from_folders(conn, message_id, c.user_id, c.now)
    return web.Response(status=204)


async def recall(request: web.Request) -> web.Response:
    c = ctx(request)
    message_id = parse_id(request.match_info["message_id"])
    async with c.pool.acquire() as conn, conn.transaction():
        # FOR UPDATE waits for any open or download in progress (they hold FOR SHARE until
        # their first_opened_at is committed), and the recipients are read after it: a
        # message a recipient has seen is never reported recalled unread.
        _msg, recipients, access = await load(conn, c, message_id, for_update=True)
        if not access.is_sender:
            raise SENDER_ONLY
        refusal = permissions.may_recall(r["first_opened_at"] for r in recipients)
        if refusal:
            raise refusal
        keys = await store.destroy_messages(conn, [message_id], c.now)
    await _delete_blobs(request, keys)
    return web.json_response({"id": str(message_id), "recalled": True})


async def _delete_blobs(request: web.Request, keys: list[str]) -> None:
    """Right away after a recall or an immediate expiry; whatever fails stays queued for the sweeper."""
    done = []
    for key in keys:
        try:
            await request.app[BLOBS].delete(key)
            done.append(key)
        except Exception:  # noqa: BLE001
            pass
    if done:
        async with request.app[POOL].acquire() as conn:
            await store.blob_deleted(conn, done)


# ---- accounting of disclosures ------------------------------------------------------------------

DISCLOSURE_FIELDS = ["at", "action", "user_id", "ip", "attachment_id", "byte_range", "message_id"]


async def _disclosures(request: web.Request, *, support: bool) -> web.Response:
    c = ctx(request)
    message_id = parse_id(request.match_info["message_id"])
    async with c.pool.acquire() as conn:
        sender_id = await store.disclosure_sender(conn, message_id)
        allowed = support or (sender_id is not None and str(sender_id) == c.user_id)
        if sender_id is None or not allowed:
            raise NOT_FOUND
        rows = await store.disclosures(conn, message_id)
    entries = [
        {
            "at": _iso(r["at"]), "action": r["action"], "user_id": str(r["user_id"]), "ip": r["ip"],
            "attachment_id": str(r["attachment_id"]) if r["attachment_id"] else None, "byte_range": r["byte_range"],
            "message_id": str(r["message_id"]),
        }
        for r in rows
    ]
    if request.query.get("format") == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=DISCLOSURE_FIELDS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in e.items()} for e in entries)
        return web.Response(
            text=out.getvalue(), content_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="disclosures-{message_id}.csv"',
                     "X-Content-Type-Options": "nosniff"},
        )
    return web.json_response({"message_id": str(message_id), "disclosures": entries})


async def disclosures(request: web.Request) -> web.Response:
    ident = signed_in(request)
    return await _disclosures(request, support=ident.has_role("support"))


async def admin_disclosures(request: web.Request) -> web.Response:
    ident = signed_in(request)
    if not ident.has_role("support"):
        raise ApiError(403, "support_only", "Only SecurePractice Support can do this.")
    return await _disclosures(request, support=True)


# ---- practice settings ----------------------------------------------------------------------------

async def get_settings(request: web.Request) -> web.Response:
    c = ctx(request)
    async with c.pool.acquire() as conn:
        practice_days = await store.practice_default_days(conn, c.identity.practice_id)
    s = c.settings
    return web.json_response({
        "default_expiry_days": expiry.default_days(service_default=s.message_default_expiry_days,
                                                   service_max=s.message_max_expiry_days, practice_default=practice_days),
        "max_expiry_days": s.message_max_expiry_days,
        "securemail": await _paid(c),
    })


async def _paid(c: Ctx) -> bool:
    async with c.pool.acquire() as conn:
        return await store.is_paid(conn, c.user_id)


async def put_settings(request: web.Request) -> web.Response:
    c = ctx(request)
    if not c.identity.practice_id or not c.identity.has_role("user_manager"):
        raise ApiError(403, "user_manager_only", "Only a User Manager of the practice can change its message settings.")
    body = await read_model(request, SettingsIn)
    if not expiry.practice_default_allowed(body.default_expiry_days, c.settings.message_max_expiry_days):
        raise ApiError(422, "expiry_not_allowed", f"Choose between 1 and {c.settings.message_max_expiry_days} days.")
    async with c.pool.acquire() as conn:
        await store.set_practice_default_days(conn, c.identity.practice_id, body.default_expiry_days, c.user_id, c.now)
    return await get_settings(request)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/messages", list_messages)
    app.router.add_post("/messages", send_message)
    app.router.add_get("/messages/settings", get_settings)
    app.router.add_put("/messages/settings", put_settings)
    app.router.add_get("/messages/{message_id}", get_message)
    app.router.add_patch("/messages/{message_id}", patch_message)
    app.router.add_delete("/messages/{message_id}", remove_message)
    app.router.add_post("/messages/{message_id}/replies", reply)
    app.router.add_post("/messages/{message_id}/recall", recall)
    app.router.add_get("/messages/{message_id}/attachments/{attachment_id}", download)
    app.router.add_get("/messages/{message_id}/disclosures", disclosures)
    app.router.add_get("/admin/messages/{message_id}/disclosures", admin_disclosures)

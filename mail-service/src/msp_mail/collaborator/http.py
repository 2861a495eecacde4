"""HTTP handlers of Collaborator referral cases (the gateway maps /api/v1/cases... here).

Authorisation on every request from the verified identity: a case exists only for its
participants (404 to anyone else); patients see only what is shared with them. Notification
emails say only that there is activity, never the patient, the posts or the file names."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from msp_shared.errors import ApiError
from msp_shared.mailer import request_email
from msp_shared.web import CLOCK, POOL, SETTINGS, read_model

from ..messaging import auth_client
from ..messaging import store as message_store
from ..messaging.downloads import RangeNotSatisfiable, range_of, serve, unsatisfiable
from ..messaging.http import Ctx, _normalise_recipients, parse_id, signed_in
from ..messaging.keys import BLOBS, HTTP, MASTER_KEYS, SEALER
from . import rules, store
from .rules import CASE_NOT_FOUND, FILE_NOT_FOUND, OWNER_ONLY


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaseIn(Model):
    patient_name: str = Field(min_length=1, max_length=200)
    summary: str = Field("", max_length=20_000)
    refer_to: str = Field(min_length=3, max_length=320)


class DeclineIn(Model):
    reason: str | None = Field(None, max_length=2000)


class PostIn(Model):
    body: str = Field("", max_length=50_000)
    shared_with_patient: bool = False


class ParticipantIn(Model):
    email: str = Field(min_length=3, max_length=320)
    role: str = Field(pattern="^(doctor|member|patient)$")


def ctx(request: web.Request) -> Ctx:
    ident = signed_in(request)
    return Ctx(request.app[SETTINGS], request.app[POOL], ident, request.app[CLOCK].now(), request)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def case_summary(case: asyncpg.Record, role: str) -> dict[str, Any]:
    return {
        "id": str(case["id"]),
        "status": case["status"],
        "role": role,
        "patient_name": case["patient_name"],
        "owner_practice_name": case["owner_practice_name"],
        "created_at": _iso(case["created_at"]),
        "accepted_at": _iso(case["accepted_at"]),
    }


async def load(conn: asyncpg.Connection, c: Ctx, case_id: uuid.UUID, *, for_update: bool = False) -> tuple[asyncpg.Record, str]:
    case = await store.get_case(conn, case_id, for_update=for_update)
    role = await store.role_of(conn, case_id, c.user_id) if case else None
    if case is None or not rules.may_view(case["status"], role):
        raise CASE_NOT_FOUND
    return case, role


async def _notify(conn: asyncpg.Connection, c: Ctx, addresses: list[str], title: str, text: str) -> None:
    # The mail links to the portal itself (the template's default link): the web app has no
    # case page yet, and a link to a route it does not have (#/cases/<id>) only fell back to
    # the Inbox. When it gets one, link to it here (c.link("case?id=...")); the links in mails
    # are checked against the app's routes by tests/gateway/test_email_links.py.
    sealer = c.request.app[SEALER]
    for address in addresses:
        await request_email(
            conn, sealer, template="generic_notice", to=address,
            params={"title": title, "text": text}, requested_by="mail",
        )


async def _notify_activity(conn: asyncpg.Connection, c: Ctx, case_id: uuid.UUID, *, shared_with_patient: bool) -> None:
    others = [
        p["email"] for p in await store.participants(conn, case_id)
        if str(p["user_id"]) != c.user_id and rules.sees(p["role"], shared_with_patient)
    ]
    await _notify(conn, c, others, "New activity in a SecurePractice case",
                  "There is new activity in a case you take part in. Sign in to see it.")


async def _view(conn: asyncpg.Connection, c: Ctx, case: asyncpg.Record, role: str) -> dict[str, Any]:
    patient_view = role == rules.PATIENT
    post_rows = await store.posts(conn, case["id"], patient_view=patient_view)
    file_rows = await store.files(conn, case["id"])
    visible = {p["id"] for p in post_rows}
    files_by_post: dict = {}
    for f in file_rows:
        if f["post_id"] in visible:
            files_by_post.setdefault(f["post_id"], []).append(
                {"id": str(f["id"]), "filename": f["filename"], "content_type": f["content_type"], "size": f["size"]}
            )
    people = await store.participants(conn, case["id"])
    return {
        **case_summary(case, role),
        "summary": case["summary"],
        "decline_reason": case["decline_reason"] if role == rules.OWNER else None,
        "participants": [
            {"user_id": str(p["user_id"]), "email": p["email"], "name": p["name"], "role": p["role"]}
            for p in people if not patient_view or p["role"] != rules.PATIENT or str(p["user_id"]) == c.user_id
        ],
        "posts": [
            {
                "id": str(p["id"]), "author_id": str(p["author_id"]), "author_name": p["author_name"], "body": p["body"],
                "shared_with_patient": p["shared_with_patient"], "created_at": _iso(p["created_at"]),
                "files": files_by_post.get(p["id"], []),
            }
            for p in post_rows
        ],
    }


# ---- handlers -------------------------------------------------------------------------------------

async def open_case(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_model(request, CaseIn)
    [address] = _normalise_recipients([body.refer_to])
    async with c.pool.acquire() as conn:
        if not await message_store.is_paid(conn, c.user_id):
            raise rules.SECUREMAIL_REQUIRED
    resolved = await auth_client.resolve(request.app[HTTP], c.settings, request.app[CLOCK], emails=[address],
                                         sender_id=c.user_id, practice_id=c.identity.practice_id)
    referred = resolved.recipients[0]
    if referred["user_id"] == c.user_id:
        raise ApiError(422, "cannot_refer_to_self", "Refer the case to another doctor.")
    case_id = uuid.uuid4()
    async with c.pool.acquire() as conn, conn.transaction():
        await store.create_case(conn, case_id=case_id, owner=resolved.sender, patient_name=body.patient_name.strip(),
                                summary=body.summary, referred=referred, now=c.now)
        practice = resolved.sender.get("practice_name") or "A SecurePractice user"
        await _notify(conn, c, [referred["email"]], "New referral on SecurePractice",
                      f"{practice} has referred a case to you. Sign in to accept or decline it.")
        case, role = await load(conn, c, case_id)
        answer = await _view(conn, c, case, role)
    return web.json_response(answer, status=201)


async def list_cases(request: web.Request) -> web.Response:
    c = ctx(request)
    async with c.pool.acquire() as conn:
        rows = await store.cases_of(conn, c.user_id)
    return web.json_response({"cases": [case_summary(r, r["role"]) for r in rows if rules.may_view(r["status"], r["role"])]})


async def get_case(request: web.Request) -> web.Response:
    c = ctx(request)
    case_id = parse_id(request.match_info["case_id"], CASE_NOT_FOUND)
    async with c.pool.acquire() as conn:
        case, role = await load(conn, c, case_id)
        return web.json_response(await _view(conn, c, case, role))


async def accept_case(request: web.Request) -> web.Response:
    c = ctx(request)
    case_id = parse_id(request.match_info["case_id"], CASE_NOT_FOUND)
    async with c.pool.acquire() as conn, conn.transaction():
        case, role = await load(conn, c, case_id, for_update=True)
        if role != rules.DOCTOR or str(case["referred_to_id"]) != c.user_id:
            raise ApiError(403, "referred_doctor_only", "Only the doctor the case was referred to can accept it.")
        if case["status"] != "pending":
            raise ApiError(409, "case_not_pending", "This referral was already answered.")
        await store.lock_owner_quota(conn, case["owner_id"])
        refusal = rules.quota_refusal(await store.accepted_count(conn, case["owner_id"]), c.settings.case_quota,
                                      case["owner_practice_name"])
        if refusal:
            raise refusal
        await store.accept(conn, case_id, c.now)
        owner = [p["email"] for p in await store.participants(conn, case_id) if p["role"] == rules.OWNER]
        await _notify(conn, c, owner, "Your referral was accepted",
                      "A doctor accepted a case you referred. Sign in to see it.")
        case, role = await load(conn, c, case_id)
        return web.json_response(await _view(conn, c, case, role))


async def decline_case(request: web.Request) -> web.Response:
    c = ctx(request)
    case_id = parse_id(request.match_info["case_id"], CASE_NOT_FOUND)
    body = await read_model(request, DeclineIn)
    async with c.pool.acquire() as conn, conn.transaction():
        case, role = await load(conn, c, case_id, for_update=True)
        if role != rules.DOCTOR or str(case["referred_to_id"]) != c.user_id:
            raise ApiError(403, "referred_doctor_only", "Only the doctor the case was referred to can decline it.")
        if case["status"] != "pending":
            raise ApiError(409, "case_not_pending", "This referral was already answered.")
        owner = [p["email"] for p in await store.participants(conn, case_id) if p["role"] == rules.OWNER]
        await store.decline(conn, case_id, body.reason, c.now)
        await _notify(conn, c, owner, "Your referral was declined",
                      "A doctor declined a case you referred. Sign in to see it.")
    return web.json_response({"id": str(case_id), "status": "declined"})


async def add_post(request: web.Request) -> web.Response:
    c = ctx(request)
    case_id = parse_id(request.match_info["case_id"], CASE_NOT_FOUND)
    async with c.pool.acquire() as conn:
        case, role = await load(conn, c, case_id)
    refusal = rules.may_post(case["status"], role)
    if refusal:
        raise refusal
    upload = c.upload()
    try:
        body = await upload.receive(request, PostIn)
        if not body.body.strip() and not upload.files:
            raise ApiError(400, "invalid_input", "Write something or attach a file.", {"fields": {"body": "empty"}})
        post_id = uuid.uuid4()
        now = request.app[CLOCK].now()
        async with upload.saving(c.pool, store.files_exist) as conn:
            case, role = await load(conn, c, case_id, for_update=True)  # removed while uploading: refused
            if rules.may_post(case["status"], role):
                raise CASE_NOT_FOUND
            name = next((p["name"] for p in await store.participants(conn, case_id) if str(p["user_id"]) == c.user_id), "")
            await store.add_post(conn, post_id=post_id, case_id=case_id, author_id=c.user_id, author_name=name,
                                 body=body.body, shared_with_patient=body.shared_with_patient, files=upload.files, now=now)
            await _notify_activity(conn, c, case_id, shared_with_patient=body.shared_with_patient)
            answer = await _view(conn, c, case, role)
    except BaseException:
        await upload.discard()  # keeps the files if the rows were committed after all
        raise
    post = next(p for p in answer["posts"] if p["id"] == str(post_id))
    return web.json_response(post, status=201)


async def download_file(request: web.Request) -> web.StreamResponse:
    c = ctx(request)
    case_id = parse_id(request.match_info["case_id"], CASE_NOT_FOUND)
    file_id = parse_id(request.match_info["file_id"], FILE_NOT_FOUND)
    async with c.pool.acquire() as conn:
        case, role = await load(conn, c, case_id)
        row = await store.file_with_post(conn, case_id, file_id)
    if row is None or not rules.sees(role, row["shared_with_patient"]) or case["status"] != "accepted":
        raise FILE_NOT_FOUND
    try:
        byte_range = range_of(request, row["size"])
    except RangeNotSatisfiable:
        return unsatisfiable(row["size"])
    return await serve(request, row, request.app[BLOBS], request.app[MASTER_KEYS], byte_range)


async def add_participant(request: web.Request) -> web.Response:
    c = ctx(request)
    case_id = parse_id(request.match_info["case_id"], CASE_NOT_FOUND)
    body = await read_model(request, ParticipantIn)
    [address] = _normalise_recipients([body.email])
    async with c.pool.acquire() as conn:
        case, role = await load(conn, c, case_id)
    if role != rules.OWNER:
        raise OWNER_ONLY
    if case["status"] != "accepted":
        raise rules.NOT_ACCEPTED
    resolved = await auth_client.resolve(request.app[HTTP], c.settings, request.app[CLOCK], emails=[address],
                                         sender_id=c.user_id, practice_id=c.identity.practice_id)
    person = resolved.recipients[0]
    if person["user_id"] == c.user_id:
        raise ApiError(422, "already_owner", "You already own this case.")
    async with c.pool.acquire() as conn, conn.transaction():
        await store.add_participant(conn, case_id, person["user_id"], person["email"], body.role, c.now)
        await _notify(conn, c, [person["email"]], "You were added to a SecurePractice case",
                      "A doctor added you to a case. Sign in to see what is shared with you.")
        case, role = await load(conn, c, case_id)
        answer = await _view(conn, c, case, role)
    return web.json_response(answer, status=201)


async def remove_participant(request: web.Request) -> web.Response:
    c = ctx(request)
    case_id = parse_id(request.match_info["case_id"], CASE_NOT_FOUND)
    user_id = parse_id(request.match_info["user_id"], ApiError(404, "participant_not_found", "No such participant."))
    async with c.pool.acquire() as conn, conn.transaction():
        _case, role = await load(conn, c, case_id, for_update=True)
        if role != rules.OWNER:
            raise OWNER_ONLY
        if not await store.remove_participant(conn, case_id, user_id):
            raise ApiError(404, "participant_not_found", "No such participant (the owner cannot be removed).")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/cases", list_cases)
    app.router.add_post("/cases", open_case)
    app.router.add_get("/cases/{case_id}", get_case)
    app.router.add_post("/cases/{case_id}/accept", accept_case)
    app.router.add_post("/cases/{case_id}/decline", decline_case)
    app.router.add_post("/cases/{case_id}/posts", add_post)
    app.router.add_post("/cases/{case_id}/files", add_post)  # the gateway streams this route's big bodies
    app.router.add_get("/cases/{case_id}/files/{file_id}", download_file)
    app.router.add_post("/cases/{case_id}/participants", add_participant)
    app.router.add_delete("/cases/{case_id}/participants/{user_id}", remove_participant)

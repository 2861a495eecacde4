"""An invited account is shared by everyone who writes to its address: the first practice to
write (A) sees it in Manage Users, but practice B's messages to the same address are stored
against the same account. So A's User Managers may change its email and phones only while no
other practice has written to it; otherwise A could move B's messages (and attachments, and
referral cases) to an address or phone of A's choosing. The help page's flow (A mistyped the
address, corrects it, writes again) keeps working while A is the only practice that wrote.

And a User Manager's re-invite of someone else's invitee tells them nothing about that person,
and cannot be repeated to keep a link dead or flood an inbox."""
from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import asyncpg

from auth_kit import GOOD_PASSWORD, Auth, invitation_links, message_to
from msp_auth import invitations
from msp_shared import db

UM_ROLES = ("member", "user_manager")
MIGRATIONS = Path(__file__).resolve().parents[2] / "auth-service" / "migrations"




async def _two_practices(auth: Auth) -> dict:
    a = await auth.make_practice("Practice A")
    b = await auth.make_practice("Practice B")
    return {
        "a": a, "b": b,
        "sender_a": await auth.make_user("dr@a.example", practice=a),
        "um_a": auth.user_identity(await auth.make_user("um@a.example", practice=a, roles=UM_ROLES)),
        "sender_b": await auth.make_user("dr@b.example", practice=b),
        "um_b": auth.user_identity(await auth.make_user("um@b.example", practice=b, roles=UM_ROLES)),
    }


async def _registration(auth: Auth, token: str, phone: str | None = None) -> Any:
    body = {"token": token, "first_name": "Ana", "last_name": "Lopez", "password": GOOD_PASSWORD,
            "terms_version": "2026-01", "accept_terms": True}
    if phone:
        body["phone"] = phone
    return await auth.call("POST", "/registrations", body)


async def _addressed_by(auth: Auth, user_id: Any) -> set:
    rows = await auth.pool.fetch("SELECT practice_id FROM recipient_practices WHERE user_id = $1", user_id)
    return {r["practice_id"] for r in rows}


# ---- finding 1: taking over an account another practice writes to ------------------------------------


async def test_a_manager_cannot_redirect_an_invited_account_another_practice_wrote_to(auth: Auth) -> None:
    w = await _two_practices(auth)
    # A writes first (with the patient's numbers): the shared invited account is A's invitee.
    [first] = await message_to(auth, w["sender_a"], "patient@example.org",
                                phones={"patient@example.org": {"phone": "202-555-0161", "cell_phone": "202-555-0162"}})
    patient_id = first["user_id"]
    # B writes to the same address: the same account (B's message is stored against its id).
    auth.clock.advance(minutes=1)
    [from_b] = await message_to(auth, w["sender_b"], "patient@example.org")
    assert from_b["user_id"] == patient_id
    assert await _addressed_by(auth, patient_id) == {w["a"]["id"], w["b"]["id"]}
    real_link = await auth.invitation_token("patient@example.org")
    before = await auth.user(patient_id)

    # Step 1 of the attack: A's manager puts their own address (or number) on the account.
    for patch in ({"email": "um-private@a.example"}, {"email": "Patient2@example.org"}, {"phone": "202-555-0199"},
                  {"cell_phone": "202-555-0198"}, {"phone": None}, {"email": "um-private@a.example", "phone": "202-555-0199"}):
        resp = await auth.call("PATCH", f"/practice/users/{patient_id}", patch, who=w["um_a"])
        assert resp.status == 409 and resp.body["error"] == "addressed_by_other_practices", (patch, resp.body)
        assert "Other practices have also written to this address" in resp.body["message"]
    assert await auth.user(patient_id) == before  # not a field changed, updated_at included
    # Refusals are audited (and the audit rows survive the refusal), without the new values.
    refused = [r for r in await auth.audit("invited_user_edited") if r["outcome"] == "refused"]
    assert len(refused) == 6
    assert all(str(r["actor_id"]) == w["um_a"].user_id and r["subject_id"] == before["id"] for r in refused)
    details = [json.loads(r["details"]) for r in refused]
    assert details[0] == {"fields": ["email"], "reason": "addressed_by_other_practices"}
    assert details[-1]["fields"] == ["email", "phone"]
    assert "um-private" not in json.dumps(details)

    # Saving the Edit form unchanged (it sends every field) is not an edit: 2-step can still be set.
    same = await auth.call("PATCH", f"/practice/users/{patient_id}", {
        "email": "PATIENT@example.org", "phone": "(202) 555-0161", "cell_phone": "+1 202 555 0162",
        "two_step_required": True}, who=w["um_a"])
    assert same.status == 200, same.body
    assert (await auth.user(patient_id))["phone_from_inviter"] is True

    # Step 2: a re-invite goes to the real address only, and not more often than the bound.
    again = await auth.call("POST", f"/practice/users/{patient_id}/reinvite", who=w["um_a"])
    assert again.status == 429 and again.body["error"] == "too_many_requests"
    auth.clock.advance(invitations.MESSAGE_REINVITE_INTERVAL)
    again = await auth.call("POST", f"/practice/users/{patient_id}/reinvite", who=w["um_a"])
    assert again.status == 202 and again.body["user"]["email"] == "patient@example.org"
    assert {m["to"] for m in await auth.emails("invitation")} == {"patient@example.org"}
    assert (await auth.call("GET", f"/invitations/{real_link}")).status == 404  # replaced by the new one
    # Step 3: whoever registers is the holder of the patient's mailbox, proving the number A entered first.
    token = await auth.invitation_token("patient@example.org")
    done = await _registration(auth, token)
    assert done.status == 201, done.body
    assert done.body["user"]["email"] == "patient@example.org"
    assert done.body["verification"]["phone_hint"].endswith("61")
    # Still proving the phone (listed in A's Manage Users): the phone cannot be changed either.
    fixed = await auth.call("PATCH", f"/practice/users/{patient_id}", {"phone": "202-555-0199"}, who=w["um_a"])
    assert fixed.status == 409 and fixed.body["error"] == "addressed_by_other_practices"

    # B's manager never could edit it (not in B's list), and learns nothing from re-invite.
    assert (await auth.call("PATCH", f"/practice/users/{patient_id}", {"phone": "202-555-0199"}, who=w["um_b"])).status == 404


async def test_a_message_from_a_practice_less_sender_also_freezes_the_details(auth: Auth) -> None:
    w = await _two_practices(auth)
    [first] = await message_to(auth, w["sender_a"], "patient@example.org")
    loner = await auth.make_user("someone@elsewhere.example")  # a sender who belongs to no practice here
    await message_to(auth, loner, "patient@example.org")
    assert await _addressed_by(auth, first["user_id"]) == {w["a"]["id"], None}
    resp = await auth.call("PATCH", f"/practice/users/{first['user_id']}", {"email": "x@a.example"}, who=w["um_a"])
    assert resp.status == 409 and resp.body["error"] == "addressed_by_other_practices"


async def test_the_help_page_flow_still_works_while_only_the_inviting_practice_wrote(auth: Auth) -> None:
    """Manage Users → Edit: correct the address and the number "you entered during the sending
    of the original message", SAVE, then re-invite or send a new message to the current address."""
    w = await _two_practices(auth)
    [first] = await message_to(auth, w["sender_a"], "ana.lopez@exmaple.org",  # mistyped
                                phones={"ana.lopez@exmaple.org": {"phone": "202-555-0191"}})
    auth.clock.advance(minutes=1)
    await message_to(auth, w["sender_a"], "ana.lopez@exmaple.org")  # a second message from A: still only A
    patient_id = first["user_id"]
    assert await _addressed_by(auth, patient_id) == {w["a"]["id"]}
    old_link = await auth.invitation_token("ana.lopez@exmaple.org")

    fixed = await auth.call("PATCH", f"/practice/users/{patient_id}",
                            {"email": "ana.lopez@example.org", "phone": "202-555-0192", "cell_phone": None}, who=w["um_a"])
    assert fixed.status == 200 and fixed.body["invitation_revoked"] is True, fixed.body
    assert (fixed.body["user"]["email"], fixed.body["user"]["phone"]) == ("ana.lopez@example.org", "+12025550192")
    edits = [json.loads(r["details"]) for r in await auth.audit("invited_user_edited")]
    assert edits == [{"fields": ["email", "phone"], "invitation_revoked": True}]  # cell_phone was already empty

    # Re-invite at once: the link the bound counts was revoked by the correction.
    sent = await auth.call("POST", f"/practice/users/{patient_id}/reinvite", who=w["um_a"])
    assert sent.status == 202 and sent.body["reinvited"] is True and sent.body["user"]["email"] == "ana.lopez@example.org"
    # ...and a new message to the current address within the interval adds no second link.
    [again] = await message_to(auth, w["sender_a"], "ana.lopez@example.org")
    assert again == {"email": "ana.lopez@example.org", "user_id": patient_id, "invited": False}
    [link] = await invitation_links(auth, "ana.lopez@example.org")
    assert (await auth.call("GET", f"/invitations/{old_link}")).status == 404
    done = await _registration(auth, link)
    assert done.status == 201 and done.body["verification"]["phone_hint"].endswith("92")


async def test_after_a_correction_the_other_practice_writing_to_the_old_address_reaches_a_new_account(auth: Auth) -> None:
    w = await _two_practices(auth)
    [first] = await message_to(auth, w["sender_a"], "typo@example.org")
    assert (await auth.call("PATCH", f"/practice/users/{first['user_id']}", {"email": "right@example.org"},
                            who=w["um_a"])).status == 200
    [from_b] = await message_to(auth, w["sender_b"], "typo@example.org")
    assert from_b["user_id"] != first["user_id"] and from_b["invited"] is True
    assert (await auth.user(from_b["user_id"]))["invited_by_practice"] == w["b"]["id"]
    # B writes to the corrected address too: from now on A can no longer change it.
    [to_right] = await message_to(auth, w["sender_b"], "right@example.org")
    assert to_right["user_id"] == first["user_id"]
    resp = await auth.call("PATCH", f"/practice/users/{first['user_id']}", {"email": "mine@a.example"}, who=w["um_a"])
    assert resp.status == 409 and resp.body["error"] == "addressed_by_other_practices"


async def test_a_registered_recipient_is_not_recorded(auth: Auth) -> None:
    """Only accounts whose details a practice may still edit need the record; messages to
    registered users write nothing (their lookup stays a read)."""
    w = await _two_practices(auth)
    known = await auth.make_user("known@b.example", practice=w["b"])
    await message_to(auth, w["sender_a"], "known@b.example")
    assert await _addressed_by(auth, known["id"]) == set()


# ---- the same, at the same moment ----------------------------------------------------------------------


async def _lock_waiters(auth: Auth) -> int:
    return await auth.pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")


async def _until_waiting(auth: Auth, count: int) -> None:
    for _ in range(500):
        if await _lock_waiters(auth) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {count} waiting for a lock")


async def _holding_the_row(auth: Auth, user_id: Any) -> tuple[asyncpg.Connection, Any]:
    """A transaction of the test's own holding the account's row lock, so that the handlers
    started next queue on it in a known order."""
    conn = await auth.pool.acquire()
    tx = conn.transaction()
    await tx.start()
    await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id)
    return conn, tx


async def test_an_edit_and_another_practices_message_at_the_same_moment(auth: Auth) -> None:
    """Both orders, with the real handlers, queued on the account's row lock: the edit first
    (then B's message, to the old address, finds no account there and gets a new one, never
    the redirected account), or B's message first (then the edit is refused)."""
    w = await _two_practices(auth)
    [first] = await message_to(auth, w["sender_a"], "race@example.org")
    patient_id = first["user_id"]

    # The edit queues first.
    conn, tx = await _holding_the_row(auth, patient_id)
    try:
        edit = asyncio.ensure_future(auth.call("PATCH", f"/practice/users/{patient_id}", {"email": "um-private@a.example"},
                                               who=w["um_a"]))
        await _until_waiting(auth, 1)
        message = asyncio.ensure_future(message_to(auth, w["sender_b"], "race@example.org"))
        await _until_waiting(auth, 2)
    finally:
        await tx.rollback()
        await auth.pool.release(conn)
    edited, [from_b] = await asyncio.gather(edit, message)
    assert edited.status == 200, edited.body
    assert from_b["user_id"] != patient_id and from_b["invited"] is True
    assert (await auth.user(from_b["user_id"]))["email"] == "race@example.org"
    assert await _addressed_by(auth, patient_id) == {w["a"]["id"]}

    # B's message queues first.
    [second] = await message_to(auth, w["sender_a"], "race2@example.org")
    conn, tx = await _holding_the_row(auth, second["user_id"])
    try:
        message = asyncio.ensure_future(message_to(auth, w["sender_b"], "race2@example.org"))
        await _until_waiting(auth, 1)
        edit = asyncio.ensure_future(auth.call("PATCH", f"/practice/users/{second['user_id']}",
                                               {"email": "um-private2@a.example"}, who=w["um_a"]))
        await _until_waiting(auth, 2)
    finally:
        await tx.rollback()
        await auth.pool.release(conn)
    [from_b], edited = await asyncio.gather(message, edit)
    assert from_b["user_id"] == second["user_id"]
    assert edited.status == 409 and edited.body["error"] == "addressed_by_other_practices"
    assert (await auth.user(second["user_id"]))["email"] == "race2@example.org"


async def test_edits_and_messages_racing_never_hand_a_message_to_a_redirected_account(auth: Auth) -> None:
    w = await _two_practices(auth)
    for round_ in range(6):
        address = f"r{round_}@example.org"
        [first] = await message_to(auth, w["sender_a"], address)
        edit = auth.call("PATCH", f"/practice/users/{first['user_id']}", {"email": f"um{round_}@a.example"}, who=w["um_a"])
        message = message_to(auth, w["sender_b"], address)
        if round_ % 2:
            [from_b], edited = await asyncio.gather(message, edit)
        else:
            edited, [from_b] = await asyncio.gather(edit, message)
        if edited.status == 200:
            assert from_b["user_id"] != first["user_id"], round_
        else:
            assert edited.status == 409 and from_b["user_id"] == first["user_id"], round_
            assert (await auth.user(first["user_id"]))["email"] == address


# ---- finding 2: re-invite -------------------------------------------------------------------------------


async def test_reinviting_another_practices_invitee_reveals_nothing_and_is_bounded(auth: Auth) -> None:
    w = await _two_practices(auth)
    [first] = await message_to(auth, w["sender_a"], "patient@example.org",
                                phones={"patient@example.org": {"phone": "202-555-0161"}})
    patient_id = first["user_id"]
    first_link = await auth.invitation_token("patient@example.org")

    # Within the interval of the first invitation: refused (audited), and the link still works.
    early = await auth.call("POST", f"/practice/users/{patient_id}/reinvite", who=w["um_b"])
    assert early.status == 429 and early.body["error"] == "too_many_requests"
    interval = int(invitations.MESSAGE_REINVITE_INTERVAL.total_seconds())
    assert early.body["details"] == {"retry_after": interval} and early.headers["Retry-After"] == str(interval)
    assert "patient" not in json.dumps(early.body) and "555" not in json.dumps(early.body)
    assert (await auth.call("GET", f"/invitations/{first_link}")).status == 200

    auth.clock.advance(invitations.MESSAGE_REINVITE_INTERVAL)
    sent = await auth.call("POST", f"/practice/users/{patient_id}/reinvite", who=w["um_b"])
    assert sent.status == 202 and sent.body == {"reinvited": True}
    link = await auth.invitation_token("patient@example.org")
    assert link != first_link
    mail = (await auth.emails("invitation"))[-1]
    assert mail["params"] == {"practice_name": "Practice A"}  # named for the practice that invited them

    # A second re-invite at once (by anyone but Support) is refused; the link just sent still works.
    auth.clock.advance(minutes=5)
    for who in (w["um_b"], w["um_a"]):
        again = await auth.call("POST", f"/practice/users/{patient_id}/reinvite", who=who)
        assert again.status == 429 and again.body["details"]["retry_after"] == interval - 300
    assert len(await invitation_links(auth, "patient@example.org")) == 2
    assert (await auth.call("GET", f"/invitations/{link}")).status == 200
    throttled = [r for r in await auth.audit("invitation_sent") if r["outcome"] == "throttled"]
    assert [str(r["actor_id"]) for r in throttled] == [w["um_b"].user_id, w["um_b"].user_id, w["um_a"].user_id]
    assert json.loads(throttled[-1]["details"]) == {"by": "user_manager", "reinvite": True, "retry_after": interval - 300}

    # Support's re-invite is not bounded (the user on the phone with Support wants it now).
    support = await auth.support()
    for _ in range(2):
        resp = await auth.call("POST", f"/practice/users/{patient_id}/reinvite", who=support)
        assert resp.status == 202 and resp.body["user"]["email"] == "patient@example.org"
    assert len(await invitation_links(auth, "patient@example.org")) == 4

    # The practice's own invitee: the full row, as Manage Users shows it.
    auth.clock.advance(invitations.MESSAGE_REINVITE_INTERVAL)
    own = await auth.call("POST", f"/practice/users/{patient_id}/reinvite", who=w["um_a"])
    assert own.status == 202 and own.body["user"]["id"] == patient_id and own.body["user"]["own_practice"] is False


# ---- the migration ----------------------------------------------------------------------------------------


async def test_the_migration_records_the_inviter_and_assumes_unknown_senders_for_existing_recipients(
        database_url: str, tmp_path: Path) -> None:
    before = tmp_path / "migrations"
    before.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if path.name < "0004":
            shutil.copy(path, before / path.name)
    await db.migrate(database_url, "auth", before)
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "auth,public"})
    try:
        a = await conn.fetchval("INSERT INTO practices (id, name, created_at, updated_at) VALUES"
                                " (gen_random_uuid(), 'A', now(), now()) RETURNING id")

        async def user(email: str, practice: Any, invited_by: Any, status: str) -> Any:
            return await conn.fetchval(
                "INSERT INTO users (id, email, practice_id, invited_by_practice, status, created_at, updated_at)"
                " VALUES (gen_random_uuid(), $1, $2, $3, $4, now(), now()) RETURNING id", email, practice, invited_by, status)

        recipient = await user("patient@example.org", None, a, "invited")
        staff = await user("new@a.example", a, a, "invited")
        unverified = await user("unverified@example.org", None, a, "registered_unverified")
        verified = await user("verified@example.org", None, a, "verified")
        await db.migrate(database_url, "auth", MIGRATIONS)
        rows = await conn.fetch("SELECT user_id, practice_id FROM recipient_practices")
        got = {(r["user_id"], r["practice_id"]) for r in rows}
        assert got == {(recipient, a), (recipient, None), (staff, a), (unverified, a), (unverified, None)}
        assert verified not in {r["user_id"] for r in rows}
    finally:
        await conn.close()


async def test_correcting_the_address_back_and_forth_is_no_way_around_the_bound(auth: Auth) -> None:
    """A correction revokes the link, so the corrected address may get one at once; but not
    more than MAX_INVITATIONS_PER_INTERVAL links in all, or a manager could mail an address of
    their choice without end by switching the account between it and another."""
    w = await _two_practices(auth)
    [first] = await message_to(auth, w["sender_a"], "victim@example.org")
    patient_id = first["user_id"]
    path = f"/practice/users/{patient_id}"
    sent = 1
    for address in ("other@example.org", "victim@example.org"):
        assert (await auth.call("PATCH", path, {"email": address}, who=w["um_a"])).status == 200
        assert (await auth.call("POST", f"{path}/reinvite", who=w["um_a"])).status == 202
        sent += 1
    assert sent == invitations.MAX_INVITATIONS_PER_INTERVAL
    auth.clock.advance(minutes=1)
    assert (await auth.call("PATCH", path, {"email": "other@example.org"}, who=w["um_a"])).status == 200
    refused = await auth.call("POST", f"{path}/reinvite", who=w["um_a"])
    interval = int(invitations.MESSAGE_REINVITE_INTERVAL.total_seconds())
    assert refused.status == 429 and refused.body["details"]["retry_after"] == interval - 60
    [again] = await message_to(auth, w["sender_a"], "other@example.org")  # nor by a message
    assert again["invited"] is False
    assert len(await invitation_links(auth, "victim@example.org")) == 2
    auth.clock.advance(seconds=interval - 60)  # the first link leaves the window
    assert (await auth.call("POST", f"{path}/reinvite", who=w["um_a"])).status == 202

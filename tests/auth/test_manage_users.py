"""Who may manage whom: members nothing, User Managers their own practice (plus re-inviting
invited users of another practice), Support the rest, never a password. Audit append-only."""
from __future__ import annotations

import json

import asyncpg
import pytest

from msp_shared import phones

from auth_kit import GOOD_PASSWORD, Auth

UM_ROLES = ("member", "user_manager")


@pytest.fixture
async def world(auth: Auth) -> dict:
    a = await auth.make_practice("Practice A")
    b = await auth.make_practice("Practice B")
    return {
        "a": a, "b": b,
        "um": await auth.make_user("um@a.example", practice=a, roles=UM_ROLES),
        "member": await auth.make_user("member@a.example", practice=a),
        "invited": await auth.make_user("new@a.example", password=None, practice=a),
        "recipient": await auth.make_user("patient@example.org", password=None, practice=None, invited_by=a),
        "other": await auth.make_user("staff@b.example", practice=b),
        "other_invited": await auth.make_user("new@b.example", password=None, practice=b),
    }


async def test_member_cannot_act_as_user_manager_or_support(auth: Auth, world: dict) -> None:
    who = auth.user_identity(world["member"])
    target = world["invited"]["id"]
    for method, path, body in [
        ("GET", "/practice/users", None),
        ("PATCH", f"/practice/users/{target}", {"two_step_required": False}),
        ("POST", f"/practice/users/{target}/reinvite", None),
        ("POST", f"/practice/users/{target}/unlock", None),
        ("GET", "/admin/audit", None),
        ("POST", f"/admin/users/{target}/unlock", None),
        ("PUT", f"/admin/users/{world['member']['id']}/roles/user_manager", None),
        ("PATCH", f"/admin/practices/{world['a']['id']}", {"name": "Mine now"}),
    ]:
        resp = await auth.call(method, path, body, who=who)
        assert resp.status == 403, (method, path, resp.body)
    assert await auth.emails("invitation") == []


async def test_user_manager_sees_own_practice_and_its_unregistered_invitees(auth: Auth, world: dict) -> None:
    who = auth.user_identity(world["um"])
    resp = await auth.call("GET", "/practice/users", who=who)
    assert resp.status == 200
    emails = sorted(u["email"] for u in resp.body["users"])
    assert emails == ["member@a.example", "new@a.example", "patient@example.org", "um@a.example"]
    row = next(u for u in resp.body["users"] if u["email"] == "patient@example.org")
    assert row["status"] == "invited" and row["own_practice"] is False
    assert {"status", "two_step_required", "securemail_paid", "last_invited_at", "locked"} <= set(row)
    assert all("password" not in key for u in resp.body["users"] for key in u)

    # Once the invitee from outside registers, they drop out of the list.
    await auth.pool.execute("UPDATE users SET status = 'verified' WHERE id = $1", world["recipient"]["id"])
    resp = await auth.call("GET", "/practice/users", who=who)
    assert "patient@example.org" not in [u["email"] for u in resp.body["users"]]


async def test_user_manager_edits_invited_users_toggles_two_step_and_sends_nothing(auth: Auth, world: dict) -> None:
    who = auth.user_identity(world["um"])
    invited = world["invited"]["id"]
    resp = await auth.call("PATCH", f"/practice/users/{invited}",
                           {"email": "right@a.example", "phone": "202-555-0177", "two_step_required": False}, who=who)
    assert resp.status == 200, resp.body
    assert (resp.body["user"]["email"], resp.body["user"]["phone"]) == ("right@a.example", "+12025550177")
    assert await auth.emails() == []  # saving re-sends nothing
    registered = await auth.call("PATCH", f"/practice/users/{world['member']['id']}", {"email": "x@a.example"}, who=who)
    assert registered.status == 409 and registered.body["error"] == "user_registered"
    toggled = await auth.call("PATCH", f"/practice/users/{world['member']['id']}", {"two_step_required": True}, who=who)
    assert toggled.status == 200 and toggled.body["user"]["two_step_required"] is True
    taken = await auth.call("PATCH", f"/practice/users/{invited}", {"email": "STAFF@b.example"}, who=who)
    assert taken.status == 409 and taken.body["error"] == "email_taken"
    assert {r["action"] for r in await auth.audit()} >= {"invited_user_edited", "two_step_changed"}
    # Asking whether an address has an account leaves a trace Support can see.
    [refused] = [r for r in await auth.audit("invited_user_edited") if r["outcome"] == "refused"]
    assert json.loads(refused["details"])["reason"] == "email_taken" and refused["subject_id"] == invited


async def test_an_invited_users_email_must_be_an_address_mail_can_be_sent_to(auth: Auth, world: dict) -> None:
    who = auth.user_identity(world["um"])
    invited = world["invited"]["id"]
    for bad in ("not an address", "a<b@a.example", "x@a.example, y@a.example", " right@a.example"):
        resp = await auth.call("PATCH", f"/practice/users/{invited}", {"email": bad}, who=who)
        assert resp.status == 400 and "email" in resp.body["details"]["fields"], (bad, resp.body)
    # One saved before addresses were checked this way is refused clearly, not with a 500.
    await auth.pool.execute("UPDATE users SET email = 'a<b@a.example' WHERE id = $1", invited)
    resp = await auth.call("POST", f"/practice/users/{invited}/reinvite", who=who)
    assert resp.status == 409 and resp.body["error"] == "invalid_email"
    assert await auth.emails("invitation") == []


async def test_a_user_manager_cannot_give_a_premium_rate_number_for_codes(auth: Auth, world: dict) -> None:
    """The invited user's code would go to it: refused (SMS pumping / toll fraud), saying why."""
    who = auth.user_identity(world["um"])
    invited = world["invited"]["id"]
    for patch, field in [({"phone": "+1 900 222 3333"}, "phone"), ({"cell_phone": "1-800-222-3333"}, "cell_phone")]:
        resp = await auth.call("PATCH", f"/practice/users/{invited}", patch, who=who)
        assert resp.status == 400 and resp.body["error"] == "invalid_input", resp.body
        assert resp.body["details"]["fields"] == {field: phones.NOT_FOR_CODES}
    assert (await auth.user(invited))["phone"] == world["invited"]["phone"]
    fixed = await auth.call("PATCH", f"/practice/users/{invited}", {"phone": "202-555-0189"}, who=who)
    assert fixed.status == 200 and fixed.body["user"]["phone"] == "+12025550189"


async def test_correcting_an_invited_users_email_kills_the_link_sent_to_the_wrong_address(auth: Auth, world: dict) -> None:
    """The first invitation went to a mistyped address: whoever reads that mailbox must not be
    able to register as this user once the manager corrects it. A phone correction keeps the
    link, so the user can follow it again, as the help page says."""
    who = auth.user_identity(world["um"])
    invited = world["invited"]["id"]
    assert (await auth.call("POST", f"/practice/users/{invited}/reinvite", who=who)).status == 202
    link = await auth.invitation_token("new@a.example")

    phone_only = await auth.call("PATCH", f"/practice/users/{invited}", {"phone": "202-555-0178"}, who=who)
    assert phone_only.status == 200 and phone_only.body["invitation_revoked"] is False
    assert (await auth.call("GET", f"/invitations/{link}")).status == 200

    fixed = await auth.call("PATCH", f"/practice/users/{invited}", {"email": "right@a.example"}, who=who)
    assert fixed.status == 200 and fixed.body["invitation_revoked"] is True
    assert [m["to"] for m in await auth.emails("invitation")] == ["new@a.example"]  # saving sent nothing
    stale = await auth.call("GET", f"/invitations/{link}")
    assert stale.status == 404 and stale.body["error"] == "invitation_invalid"
    edits = [json.loads(r["details"]) for r in await auth.audit("invited_user_edited")]
    assert {"fields": ["email"], "invitation_revoked": True} in edits

    assert (await auth.call("POST", f"/practice/users/{invited}/reinvite", who=who)).status == 202
    fresh = await auth.invitation_token("right@a.example")
    assert (await auth.call("GET", f"/invitations/{fresh}")).body["email"] == "right@a.example"


async def test_user_manager_cannot_touch_another_practices_users(auth: Auth, world: dict) -> None:
    who = auth.user_identity(world["um"])
    other = world["other"]["id"]
    assert (await auth.call("PATCH", f"/practice/users/{other}", {"two_step_required": False}, who=who)).status == 404
    assert (await auth.call("POST", f"/practice/users/{other}/unlock", who=who)).status == 404
    assert (await auth.call("POST", f"/practice/users/{other}/reinvite", who=who)).status == 404  # registered elsewhere
    assert (await auth.call("PATCH", "/practice/users/not-an-id", {}, who=who)).status == 404
    assert (await auth.user(other))["two_step_required"] is False
    # ...but may re-invite an invited user of another practice, as the help page says, learning
    # nothing about them (the answer once carried their email, names, phones and practice).
    resp = await auth.call("POST", f"/practice/users/{world['other_invited']['id']}/reinvite", who=who)
    assert resp.status == 202 and resp.body == {"reinvited": True}
    assert [m["to"] for m in await auth.emails("invitation")] == ["new@b.example"]
    assert (await auth.emails("invitation"))[0]["params"] == {"practice_name": "Practice B"}
    already = await auth.call("POST", f"/practice/users/{world['member']['id']}/reinvite", who=who)
    assert already.status == 409


async def test_unlock_by_someone_else_leaves_the_password_unusable_until_reset(auth: Auth, world: dict) -> None:
    for _ in range(5):
        await auth.login("member@a.example", "Wrong-Pass-9!")
    assert (await auth.login("member@a.example", GOOD_PASSWORD)).status == 423
    resp = await auth.call("POST", f"/practice/users/{world['member']['id']}/unlock", who=auth.user_identity(world["um"]))
    assert resp.status == 200 and resp.body["unlocked"] is True
    # the manager's list says what the member must do now
    assert (resp.body["user"]["locked"], resp.body["user"]["reset_required"]) == (False, True)
    still = await auth.login("member@a.example", GOOD_PASSWORD)
    assert still.status == 423 and still.body["error"] == "password_reset_required"
    assert (await auth.login("member@a.example", "Wrong-Pass-9!")).status == 401  # a guesser learns nothing
    assert (await auth.audit("account_unlocked"))[0]["actor_id"] == world["um"]["id"]

    # Support unlocks too, and can neither see nor set the password.
    for _ in range(5):
        await auth.login("staff@b.example", "Wrong-Pass-9!")
    support = await auth.support()
    resp = await auth.call("POST", f"/admin/users/{world['other']['id']}/unlock", who=support)
    assert resp.status == 200 and "password" not in resp.raw.decode().replace("password_reset_required", "")
    assert (await auth.login("staff@b.example", GOOD_PASSWORD)).body["error"] == "password_reset_required"
    for method, path in [("POST", f"/admin/users/{world['other']['id']}/password"),
                         ("PUT", f"/admin/users/{world['other']['id']}/password"),
                         ("PATCH", f"/admin/users/{world['other']['id']}")]:
        assert (await auth.call(method, path, {"password": "Support-Set-1!"}, who=support)).status in (404, 405)
    found = await auth.call("GET", "/admin/users?email=staff@b", who=support)
    assert [u["email"] for u in found.body["users"]] == ["staff@b.example"]
    # by the id an audit row carries; locked accounts only; % and _ are plain characters
    by_id = await auth.call("GET", f"/admin/users?id={world['other']['id']}", who=support)
    assert [u["email"] for u in by_id.body["users"]] == ["staff@b.example"]
    for _ in range(5):
        await auth.login("um@a.example", "Wrong-Pass-9!")
    locked = await auth.call("GET", "/admin/users?locked=true", who=support)
    assert [u["email"] for u in locked.body["users"]] == ["um@a.example"]
    assert (await auth.call("GET", "/admin/users?email=%25", who=support)).body["users"] == []
    assert (await auth.call("GET", "/admin/users?email=staff_b", who=support)).body["users"] == []
    for query, field in [("id=nope", "id"), ("locked=yes", "locked"), ("practice_id=1", "practice_id")]:
        bad = await auth.call("GET", f"/admin/users?{query}", who=support)
        assert bad.status == 400 and list(bad.body["details"]["fields"]) == [field], query
    assert "hash" not in found.raw.decode()


async def test_support_grants_and_revokes_user_manager_and_sessions_end(auth: Auth, world: dict) -> None:
    support = await auth.support()
    member = world["member"]["id"]
    granted = await auth.call("PUT", f"/admin/users/{member}/roles/user_manager", who=support)
    assert granted.status == 200 and granted.body["user"]["roles"] == ["member", "user_manager"]
    now_um = auth.user_identity(await auth.user(member))
    assert (await auth.call("GET", "/practice/users", who=now_um)).status == 200
    revoked = await auth.call("DELETE", f"/admin/users/{member}/roles/user_manager", who=support)
    assert revoked.body["user"]["roles"] == ["member"]
    # An old session still claiming the role is refused: roles are checked in the database.
    assert (await auth.call("GET", "/practice/users", who=now_um)).status == 403
    assert [(e["data"]["user_id"], e["data"]["reason"]) for e in await auth.events("auth.sessions.revoked")] == [
        (str(member), "role_changed")] * 2
    assert [r["action"] for r in await auth.audit() if r["action"].startswith("role_")] == ["role_granted", "role_revoked"]
    # billing-service learns of each change (it opens a new User Manager's Stripe customer)
    assert [(e["data"]["user_id"], e["data"]["roles"]) for e in await auth.events("auth.user.roles_changed")] == [
        (str(member), ["member", "user_manager"]), (str(member), ["member"])]
    assert (await auth.call("PUT", f"/admin/users/{member}/roles/support", who=support)).status == 400
    # granting a role already held changes nothing and announces nothing
    await auth.call("DELETE", f"/admin/users/{member}/roles/user_manager", who=support)
    assert len(await auth.events("auth.user.roles_changed")) == 2


async def test_support_edits_practice_details_users_cannot(auth: Auth, world: dict) -> None:
    support = await auth.support()
    pid = world["a"]["id"]
    resp = await auth.call("PATCH", f"/admin/practices/{pid}", {"name": "Practice A Dental", "identifiers": {"ada": "77"}}, who=support)
    assert resp.status == 200 and resp.body["practice"]["name"] == "Practice A Dental"
    me = await auth.call("GET", "/me", who=auth.user_identity(world["um"]))
    assert me.body["user"]["practice"]["name"] == "Practice A Dental"
    # The profile endpoint has no practice fields: sending one is refused as bad input.
    sneaky = await auth.call("PATCH", "/me", {"practice": {"name": "Hacked"}}, who=auth.user_identity(world["um"]))
    assert sneaky.status == 400
    listed = await auth.call("GET", "/admin/practices?name=dental", who=support)
    assert [p["name"] for p in listed.body["practices"]] == ["Practice A Dental"]
    # The practice's phone is kept in E.164, as users' phones are; nonsense is refused, field named.
    phoned = await auth.call("PATCH", f"/admin/practices/{pid}", {"phone": "(202) 555-0123"}, who=support)
    assert phoned.status == 200 and phoned.body["practice"]["phone"] == "+12025550123"
    bad = await auth.call("PATCH", f"/admin/practices/{pid}", {"phone": "call the front desk"}, who=support)
    assert bad.status == 400 and list(bad.body["details"]["fields"]) == ["phone"]
    assert (await auth.call("GET", f"/admin/practices/{pid}", who=support)).body["practice"]["phone"] == "+12025550123"
    # An office's toll-free line is fine (no code ever goes to a practice's number); a person's is not.
    toll_free = await auth.call("PATCH", f"/admin/practices/{pid}", {"phone": "1-800-222-3333"}, who=support)
    assert toll_free.status == 200 and toll_free.body["practice"]["phone"] == "+18002223333"


async def test_audit_trail_readable_as_json_and_csv_and_append_only(auth: Auth, world: dict) -> None:
    await auth.login("member@a.example", "Wrong-Pass-9!")
    await auth.login("member@a.example", GOOD_PASSWORD)
    support = await auth.support()
    resp = await auth.call("GET", f"/admin/audit?subject_id={world['member']['id']}", who=support)
    assert resp.status == 200
    assert [(e["action"], e["outcome"], e["ip"]) for e in resp.body["entries"]] == [
        ("login", "ok", "203.0.113.7"), ("login", "failed", "203.0.113.7")]
    csv_resp = await auth.call("GET", "/admin/audit?format=csv&action=login", who=support)
    assert csv_resp.status == 200 and csv_resp.headers["Content-Type"].startswith("text/csv")
    lines = csv_resp.raw.decode().strip().splitlines()
    assert lines[0] == "id,at,action,outcome,actor_id,subject_id,practice_id,ip,details" and len(lines) == 3
    everything = (await auth.call("GET", "/admin/audit?limit=1000", who=support)).raw.decode()
    assert GOOD_PASSWORD not in everything and "Wrong-Pass-9!" not in everything
    assert "member@a.example" not in everything

    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await auth.pool.execute("UPDATE audit_log SET outcome = 'ok'")
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await auth.pool.execute("DELETE FROM audit_log")
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await auth.pool.execute("TRUNCATE audit_log")
    assert len(await auth.audit("login")) == 2


async def test_audit_queries_name_the_wrong_field_and_want_a_time_zone(auth: Auth, world: dict) -> None:
    await auth.login("member@a.example", GOOD_PASSWORD)
    support = await auth.support()
    for query, field in [("before_id=abc", "before_id"), ("before_id=" + "9" * 30, "before_id"), ("limit=ten", "limit"),
                         ("since=yesterday", "since"),
                         ("until=2026-11-26T09:00:00", "until"), ("subject_id=not-an-id", "subject_id")]:
        resp = await auth.call("GET", f"/admin/audit?{query}", who=support)
        assert resp.status == 400 and list(resp.body["details"]["fields"]) == [field], (query, resp.body)
    zoned = await auth.call("GET", "/admin/audit?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00%2B02:00", who=support)
    assert zoned.status == 200 and [e["action"] for e in zoned.body["entries"]][:1] == ["login"]


async def test_support_finds_users_by_name_and_pages_through_them(auth: Auth, world: dict) -> None:
    """A practice with more users than one page: Support reads them all, page by page, in
    email order, and finds one by a part of their name."""
    support = await auth.support()
    async with auth.pool.acquire() as conn:
        await conn.execute("UPDATE users SET first_name = 'Ann', last_name = 'O''Neil' WHERE id = $1", world["member"]["id"])
    named = await auth.call("GET", "/admin/users?name=ann%20o'n", who=support)
    assert [u["email"] for u in named.body["users"]] == ["member@a.example"] and named.body["next"] is None
    assert (await auth.call("GET", "/admin/users?name=%25", who=support)).body["users"] == []  # no wildcards

    practice_a = world["a"]["id"]
    everyone = sorted(["um@a.example", "member@a.example", "new@a.example"])
    pages, after = [], None
    while True:
        resp = await auth.call("GET", f"/admin/users?practice_id={practice_a}&limit=2" + (f"&after={after}" if after else ""),
                               who=support)
        assert resp.status == 200
        pages.append([u["email"] for u in resp.body["users"]])
        after = resp.body["next"]
        if after is None:
            break
    assert pages == [everyone[:2], everyone[2:]]
    # the cursor is an id, not an address
    assert "@" not in (await auth.call("GET", f"/admin/users?practice_id={practice_a}&limit=1", who=support)).body["next"]

    for query, field in [("limit=0", "limit"), ("limit=201", "limit"), ("limit=ten", "limit"), ("after=nope", "after"),
                         ("after=00000000-0000-0000-0000-000000000000", "after"), ("name=" + "x" * 201, "name")]:
        bad = await auth.call("GET", f"/admin/users?{query}", who=support)
        assert bad.status == 400 and list(bad.body["details"]["fields"]) == [field], query
    # a User Manager cannot search beyond their practice through it
    assert (await auth.call("GET", "/admin/users?name=ann", who=auth.user_identity(world["um"]))).status == 403


async def test_two_step_is_not_required_of_a_registered_user_with_no_phone_for_the_codes(auth: Auth, world: dict) -> None:
    """Otherwise their next password reset would quietly go without it (nothing to send a code
    to). An invited user may have it on: registration asks them for a number."""
    who = auth.user_identity(world["um"])
    no_phone = await auth.make_user("nophone@a.example", practice=world["a"], phone=None)
    refused = await auth.call("PATCH", f"/practice/users/{no_phone['id']}", {"two_step_required": True}, who=who)
    assert refused.status == 409 and refused.body["error"] == "no_phone"
    assert (await auth.user(no_phone["id"]))["two_step_required"] is False
    mine = await auth.call("PATCH", "/me", {"two_step_required": True}, who=auth.user_identity(no_phone))
    assert mine.status == 422 and mine.body["error"] == "phone_required"
    assert (await auth.user(no_phone["id"]))["two_step_required"] is False

    invited = await auth.make_user("invited-nophone@a.example", password=None, practice=world["a"], phone=None)
    await auth.pool.execute("UPDATE users SET two_step_required = false WHERE id = $1", invited["id"])
    on = await auth.call("PATCH", f"/practice/users/{invited['id']}", {"two_step_required": True}, who=who)
    assert on.status == 200 and on.body["user"]["two_step_required"] is True
    with_phone = await auth.call("PATCH", f"/practice/users/{world['member']['id']}", {"two_step_required": True}, who=who)
    assert with_phone.status == 200

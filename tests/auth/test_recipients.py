"""auth-service's /internal/recipients, called by mail-service when a secure message goes to
email addresses: existing accounts are returned, new addresses invited. Services only; the
gateway never routes /internal."""
from __future__ import annotations

import asyncio
import json
import uuid

from auth_kit import Auth, invitation_links, message_to
from msp_auth import invitations
from msp_auth.keys import AUTH_SETTINGS
from msp_gateway.routing import service_for
from msp_shared import signed
from msp_shared.identity import Identity

SERVICE = Identity(user_id="service:mail", roles=("service",))


async def test_existing_accounts_are_returned_and_new_addresses_invited(auth: Auth) -> None:
    practice = await auth.make_practice("Bright Smiles Dental")
    sender = await auth.make_user("dr.sender@example.com", practice=practice)
    known = await auth.make_user("known@other.example", practice=await auth.make_practice("Other"))

    resp = await auth.call("POST", "/internal/recipients", {
        "emails": ["Known@Other.example", "new.patient@example.org", "new.patient@example.org"],
        "inviting_practice_id": str(practice["id"]), "sender_id": str(sender["id"]),
    }, who=SERVICE)
    assert resp.status == 200, resp.body
    got = resp.body["recipients"]
    assert got[0] == {"email": "known@other.example", "user_id": str(known["id"]), "invited": False}
    assert got[1]["email"] == "new.patient@example.org" and got[1]["invited"] is True
    assert len(got) == 2
    assert resp.body["sender"] == {
        "user_id": str(sender["id"]), "email": "dr.sender@example.com", "name": "Pat Example",
        "practice_id": str(practice["id"]), "practice_name": "Bright Smiles Dental",
    }

    invited = await auth.user(got[1]["user_id"])
    assert invited["status"] == "invited" and invited["practice_id"] is None
    assert invited["invited_by_practice"] == practice["id"]
    assert invited["two_step_required"] is True  # the practice's User Managers may turn it off in Manage Users
    mails = await auth.emails("invitation")
    assert [m["to"] for m in mails] == ["new.patient@example.org"]
    assert mails[0]["params"] == {"practice_name": "Bright Smiles Dental"}
    assert [r["subject_id"] for r in await auth.audit("invitation_sent")] == [invited["id"]]

    # Asked again (a second message) at once: the same account, and no second invitation, since the
    # link just sent still works (the anti-flood bound; see the tests of re-invitation below).
    again = await auth.call("POST", "/internal/recipients", {
        "emails": ["new.patient@example.org"], "inviting_practice_id": str(practice["id"]), "sender_id": str(sender["id"]),
    }, who=SERVICE)
    assert again.body["recipients"] == [{"email": "new.patient@example.org", "user_id": got[1]["user_id"], "invited": False}]
    assert len(await auth.emails("invitation")) == 1


async def test_only_services_may_call_it(auth: Auth) -> None:
    practice = await auth.make_practice()
    user = await auth.make_user("someone@example.com", practice=practice)
    support = await auth.make_user("support@example.com", roles=("support",))
    body = {"emails": ["victim@example.org"], "inviting_practice_id": str(practice["id"]), "sender_id": str(user["id"])}
    for who in (auth.user_identity(user), auth.user_identity(support), None):
        resp = await auth.call("POST", "/internal/recipients", body, who=who)
        assert resp.status == 403 and resp.body["error"] == "service_only"
    async with auth.client.post("/internal/recipients", json=body) as resp:
        assert resp.status == 401  # no gateway/service identity at all
    assert await auth.pool.fetchval("SELECT count(*) FROM users WHERE email = 'victim@example.org'") == 0


async def test_bad_input_is_refused(auth: Auth) -> None:
    user = await auth.make_user("someone@example.com", practice=await auth.make_practice())
    bad = await auth.call("POST", "/internal/recipients", {"emails": ["not an address"], "sender_id": str(user["id"])}, who=SERVICE)
    assert bad.status == 400
    unknown = await auth.call("POST", "/internal/recipients", {"emails": [], "sender_id": str(uuid.uuid4())}, who=SERVICE)
    assert unknown.status == 404


def test_the_gateway_does_not_route_internal_paths() -> None:
    assert service_for("/internal/recipients") is None
    assert service_for("/messages") == "mail"


async def test_a_new_recipient_gets_the_numbers_the_sender_entered_an_existing_account_keeps_its_own(auth: Auth) -> None:
    """The help page: the manager edits "the phone number or cell phone number you entered
    during the sending of the original message"; the invited recipient then proves that phone."""
    practice = await auth.make_practice("Bright Smiles Dental")
    sender = await auth.make_user("dr.sender@example.com", practice=practice)
    known = await auth.make_user("known@other.example", practice=await auth.make_practice("Other"))
    resp = await auth.call("POST", "/internal/recipients", {
        "emails": ["new.patient@example.org", "known@other.example"], "sender_id": str(sender["id"]),
        "phones": {"New.Patient@example.org": {"phone": "(202) 555-0161", "cell_phone": "202-555-0162"},
                   "known@other.example": {"phone": "202-555-0199"}},
    }, who=SERVICE)
    assert resp.status == 200, resp.body
    invited = await auth.user(resp.body["recipients"][0]["user_id"])
    assert (invited["phone"], invited["cell_phone"], invited["phone_from_inviter"]) == ("+12025550161", "+12025550162", True)
    assert (await auth.user(known["id"]))["phone"] == known["phone"]  # a sender never changes someone's numbers
    form = await auth.call("GET", f"/invitations/{await auth.invitation_token('new.patient@example.org')}")
    assert form.body["phone_hint"].endswith("61")

    for phones, field in [({"new2@example.org": {"phone": "12"}}, "phones.new2@example.org.phone"),
                          ({"new2@example.org": {"cell_phone": "+1 900 222 3333"}}, "phones.new2@example.org.cell_phone"),
                          ({"stranger@example.org": {"phone": "202-555-0163"}}, "phones.stranger@example.org")]:
        bad = await auth.call("POST", "/internal/recipients", {
            "emails": ["new2@example.org"], "sender_id": str(sender["id"]), "phones": phones}, who=SERVICE)
        assert bad.status == 400 and list(bad.body["details"]["fields"]) == [field]
    assert await auth.pool.fetchval("SELECT count(*) FROM users WHERE email = 'new2@example.org'") == 0  # nothing half-done


async def test_a_wrong_number_from_the_sender_is_corrected_by_the_practice_until_the_phone_is_proven(auth: Auth) -> None:
    """The recipient cannot swap in a number of their own (accounts.phone_to_prove); the
    sending practice's User Manager can correct it, also after the recipient registered, and
    the recipient drops out of that practice's list once fully registered."""
    practice = await auth.make_practice("Bright Smiles Dental")
    sender = await auth.make_user("dr.sender@example.com", practice=practice)
    manager = auth.user_identity(await auth.make_user("um@example.com", practice=practice, roles=("member", "user_manager")))
    resp = await auth.call("POST", "/internal/recipients", {
        "emails": ["new.patient@example.org"], "sender_id": str(sender["id"]),
        "phones": {"new.patient@example.org": {"phone": "202-555-0191"}}}, who=SERVICE)  # mistyped by the sender
    patient_id = resp.body["recipients"][0]["user_id"]
    token = await auth.invitation_token("new.patient@example.org")
    done = await auth.call("POST", "/registrations", {
        "token": token, "first_name": "Ana", "last_name": "Lopez", "password": "Tulip-Harbor-42!",
        "terms_version": "2026-01", "accept_terms": True})
    assert done.status == 201 and done.body["user"]["status"] == "registered_unverified"
    patient = auth.identity_of(done.body["grant"])
    own = await auth.call("POST", "/me/verification/ticket", {"phone": "202-555-0192"}, who=patient)
    assert own.status == 422 and own.body["error"] == "phone_not_on_file" and "sign in again" in own.body["message"]

    listed = await auth.call("GET", "/practice/users", who=manager)
    row = next(u for u in listed.body["users"] if u["id"] == patient_id)
    assert (row["status"], row["own_practice"]) == ("registered_unverified", False)
    email = await auth.call("PATCH", f"/practice/users/{patient_id}", {"email": "other@example.org"}, who=manager)
    assert email.status == 409  # the link proved the address: no longer the practice's to change
    fixed = await auth.call("PATCH", f"/practice/users/{patient_id}", {"phone": "202-555-0192"}, who=manager)
    assert fixed.status == 200, fixed.body

    ticket = await auth.call("POST", "/me/verification/ticket", {}, who=patient)
    claims = signed.verify_claims(ticket.body["verification"]["ticket"], purpose="verify-ticket",
                                  secret=auth.verify_secret, now=auth.clock.now().timestamp())
    assert claims["phone"] == "+12025550192"
    verified = await auth.call("POST", "/me/verification", {"proof": auth.proof(patient_id, "+12025550192", "registration")},
                               who=patient)
    assert verified.status == 200 and verified.body["user"]["status"] == "verified"
    listed = await auth.call("GET", "/practice/users", who=manager)
    assert patient_id not in [u["id"] for u in listed.body["users"]]
    assert (await auth.call("PATCH", f"/practice/users/{patient_id}", {"phone": "202-555-0193"}, who=manager)).status == 404


# ---- a new message to someone still waiting to register -----------------------------------------------
# The help page (Manage Users → Edit): correct the address, "then you can ask the user to try
# following the registration link again and/or send them a new message to the current email
# address for the account". A new message to an account that is only invited re-invites it.



async def test_after_the_manager_corrects_the_address_a_new_message_brings_a_working_link(auth: Auth) -> None:
    practice = await auth.make_practice("Bright Smiles Dental")
    sender = await auth.make_user("dr.sender@example.com", practice=practice)
    manager = auth.user_identity(await auth.make_user("um@example.com", practice=practice, roles=("member", "user_manager")))
    [first] = await message_to(auth, sender, "ana.lopez@exmaple.org")  # mistyped by the sender
    assert first["invited"] is True
    old_link = await auth.invitation_token("ana.lopez@exmaple.org")

    fixed = await auth.call("PATCH", f"/practice/users/{first['user_id']}", {"email": "ana.lopez@example.org"}, who=manager)
    assert fixed.status == 200 and fixed.body["invitation_revoked"] is True
    assert await invitation_links(auth, "ana.lopez@example.org") == []  # saving sends nothing

    # Within minutes of the first invitation: its link was revoked, so the bound does not hold this one back.
    auth.clock.advance(minutes=2)
    [again] = await message_to(auth, sender, "ana.lopez@example.org")
    assert again == {"email": "ana.lopez@example.org", "user_id": first["user_id"], "invited": True}
    [new_link] = await invitation_links(auth, "ana.lopez@example.org")
    mail = [m for m in await auth.emails("invitation") if m["to"] == "ana.lopez@example.org"][-1]
    assert mail["params"] == {"practice_name": "Bright Smiles Dental"}

    assert (await auth.call("GET", f"/invitations/{old_link}")).status == 404
    form = await auth.call("GET", f"/invitations/{new_link}")
    assert form.status == 200 and form.body["email"] == "ana.lopez@example.org"
    assert form.body["practice_name"] == "Bright Smiles Dental"
    done = await auth.call("POST", "/registrations", {
        "token": new_link, "first_name": "Ana", "last_name": "Lopez", "password": "Tulip-Harbor-42!",
        "phone": "202-555-0170", "terms_version": "2026-01", "accept_terms": True})
    assert done.status == 201, done.body
    refused = await auth.call("POST", "/registrations", {
        "token": old_link, "first_name": "Eve", "last_name": "Il", "password": "Tulip-Harbor-42!",
        "phone": "202-555-0171", "terms_version": "2026-01", "accept_terms": True})
    assert refused.status == 404 and refused.body["error"] == "invitation_invalid"

    # Audited as a re-invitation by the sender.
    rows = [r for r in await auth.audit("invitation_sent") if str(r["subject_id"]) == first["user_id"]]
    assert [json.loads(r["details"]) for r in rows] == [
        {"reason": "message_recipient"}, {"reason": "message_recipient", "reinvite": True}]
    assert all(r["actor_id"] == sender["id"] and r["practice_id"] == practice["id"] for r in rows)

    # Registered now (still proving the phone): a further message invites nobody.
    [registered] = await message_to(auth, sender, "ana.lopez@example.org")
    assert registered["invited"] is False
    assert len(await invitation_links(auth, "ana.lopez@example.org")) == 1


async def test_a_registered_recipient_gets_no_invitation_and_is_not_touched(auth: Auth) -> None:
    practice = await auth.make_practice("Bright Smiles Dental")
    sender = await auth.make_user("dr.sender@example.com", practice=practice)
    other = await auth.make_practice("Other")
    verified = await auth.make_user("verified@other.example", practice=other)
    unverified = await auth.make_user("unverified@other.example", practice=other, status="registered_unverified",
                                      two_step=True)
    before = {u["id"]: await auth.user(u["id"]) for u in (verified, unverified)}
    auth.clock.advance(hours=100)  # no live link for anyone: the bound is not what holds these back
    got = await message_to(auth, sender, "verified@other.example", "Unverified@Other.example")
    assert [(r["user_id"], r["invited"]) for r in got] == [(str(verified["id"]), False), (str(unverified["id"]), False)]
    assert await auth.emails("invitation") == []
    assert await auth.audit("invitation_sent") == []
    assert await auth.pool.fetchval("SELECT count(*) FROM tokens WHERE kind = 'invitation'") == 0
    for user_id, row in before.items():
        assert await auth.user(user_id) == row  # not a field changed, updated_at included


async def test_an_expired_invitation_is_renewed_by_a_new_message(auth: Auth) -> None:
    practice = await auth.make_practice("Bright Smiles Dental")
    sender = await auth.make_user("dr.sender@example.com", practice=practice)
    [first] = await message_to(auth, sender, "late@example.org")
    expired = await auth.invitation_token("late@example.org")
    auth.clock.advance(hours=auth.app[AUTH_SETTINGS].invitation_ttl_hours + 1)
    assert (await auth.call("GET", f"/invitations/{expired}")).status == 404
    [again] = await message_to(auth, sender, "late@example.org")
    assert again["invited"] is True and again["user_id"] == first["user_id"]
    renewed = await auth.invitation_token("late@example.org")
    assert renewed != expired
    assert (await auth.call("GET", f"/invitations/{renewed}")).status == 200
    assert (await auth.call("GET", f"/invitations/{expired}")).status == 404
    # The account is the same invited one, its numbers and practice unchanged.
    user = await auth.user(first["user_id"])
    assert (user["status"], user["practice_id"], user["invited_by_practice"]) == ("invited", None, practice["id"])


async def test_messages_cannot_flood_an_invited_address(auth: Auth) -> None:
    """At most one invitation per recipient per MESSAGE_REINVITE_INTERVAL, however many
    messages (from however many senders); each new one kills the previous link."""
    interval = invitations.MESSAGE_REINVITE_INTERVAL
    practice = await auth.make_practice("Bright Smiles Dental")
    senders = [await auth.make_user(f"sender{i}@example.com", practice=practice) for i in range(2)]
    await message_to(auth, senders[0], "target@example.org")
    minutes = 60
    for minute in range(1, minutes + 1):
        auth.clock.advance(minutes=1)
        for sender in senders:
            [got] = await message_to(auth, sender, "target@example.org")
            assert got["invited"] is (minute * 60 % interval.total_seconds() == 0 and sender is senders[0]), minute
    links = await invitation_links(auth, "target@example.org")
    assert len(links) == 1 + minutes // int(interval.total_seconds() // 60) == 5
    # Only the newest link works.
    assert [(await auth.call("GET", f"/invitations/{t}")).status for t in links] == [404] * 4 + [200]

    # A User Manager's re-invite is bound by the same interval (it once was not: a manager could
    # keep the link dead), and counts too: a message right after it sends no second link.
    manager = auth.user_identity(await auth.make_user("um@example.com", practice=practice, roles=("member", "user_manager")))
    auth.clock.advance(minutes=14)
    target = await auth.user_by_email("target@example.org")
    early = await auth.call("POST", f"/practice/users/{target['id']}/reinvite", who=manager)
    assert early.status == 429 and early.body["details"]["retry_after"] == 60 and early.headers["Retry-After"] == "60"
    assert len(await invitation_links(auth, "target@example.org")) == 5
    auth.clock.advance(minutes=1)
    assert (await auth.call("POST", f"/practice/users/{target['id']}/reinvite", who=manager)).status == 202
    [got] = await message_to(auth, senders[1], "target@example.org")
    assert got["invited"] is False
    assert len(await invitation_links(auth, "target@example.org")) == 6


async def test_two_messages_at_the_same_moment_send_one_new_invitation(auth: Auth) -> None:
    practice = await auth.make_practice("Bright Smiles Dental")
    sender = await auth.make_user("dr.sender@example.com", practice=practice)
    await message_to(auth, sender, "both@example.org", "also@example.org")
    auth.clock.advance(hours=auth.app[AUTH_SETTINGS].invitation_ttl_hours + 1)  # both links expired
    answers = await asyncio.gather(*(auth.call("POST", "/internal/recipients", {
        "emails": emails, "sender_id": str(sender["id"])}, who=SERVICE)
        for emails in (["both@example.org", "also@example.org"], ["also@example.org", "both@example.org"]) * 3))
    assert all(a.status == 200 for a in answers), [a.body for a in answers]
    for email in ("both@example.org", "also@example.org"):
        assert len(await invitation_links(auth, email)) == 2
        user = await auth.user_by_email(email)
        live = await auth.pool.fetchval(
            "SELECT count(*) FROM tokens WHERE user_id = $1 AND kind = 'invitation' AND used_at IS NULL"
            " AND revoked_at IS NULL AND expires_at > $2", user["id"], auth.clock.now())
        assert live == 1


async def test_a_link_shorter_lived_than_the_bound_does_not_open_it(auth: Auth) -> None:
    """With invitation links configured to live less than the bound, an expired link is not
    a way around it: the interval counts from when the link was sent."""
    practice = await auth.make_practice("Bright Smiles Dental")
    sender = await auth.make_user("dr.sender@example.com", practice=practice)
    await message_to(auth, sender, "short@example.org")
    await auth.pool.execute("UPDATE tokens SET expires_at = created_at + interval '5 minutes'")  # as if configured so
    auth.clock.advance(minutes=6)
    assert (await auth.call("GET", f"/invitations/{await auth.invitation_token('short@example.org')}")).status == 404
    assert [r["invited"] for r in await message_to(auth, sender, "short@example.org")] == [False]
    auth.clock.advance(minutes=9)
    assert [r["invited"] for r in await message_to(auth, sender, "short@example.org")] == [True]
    assert (await auth.call("GET", f"/invitations/{await auth.invitation_token('short@example.org')}")).status == 200

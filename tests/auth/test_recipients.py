"""auth-service's /internal/recipients, called by mail-service when a secure message goes to
email addresses: existing accounts are returned, new addresses invited. Services only; the
gateway never routes /internal."""
from __future__ import annotations

import uuid

from auth_kit import Auth
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

    # Asked again (a second message): the same account, no second invitation.
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

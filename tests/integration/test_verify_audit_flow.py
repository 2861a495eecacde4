"""2-step codes in the audit trail Support reads (issue 3, "Audit"), end to end through the
gateway: verify-service announces every send (refused and failed ones too) and every check
(refused checks of another user's code too) through its outbox, auth-service writes them to
its trail, Support reads them at GET /api/v1/admin/audit (JSON and CSV).

The attacker's case: someone who is not signed in (a password reset needs no session) asks
for codes from one address until verify-service's per-IP limit refuses them (SMS pumping
looks like this). Support must see that address, no actor (nobody was signed in; not the
victim, whose account it is), the victim's practice, and the refusal's reason.

The gateway here believes X-Forwarded-For from 127.0.0.1 (its reverse proxy, as in
production), so each client below has its own address while every socket is local."""
from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from stack import SUPPORT_EMAIL, SUPPORT_PASSWORD, Browser, Stack, eventually, token_link

PASSWORD = "Tulip-Harbor-42!"
VICTIM_PHONE = "+12025550161"
PROWLER_PHONE = "+12025550162"
ATTACKER_IP = "198.51.100.23"
PROWLER_IP = "192.0.2.44"


@pytest.fixture
def stack_settings() -> dict[str, dict]:
    return {
        "gateway": {"trusted_proxies": ["127.0.0.1/32"],
                    "rate_limit_login_per_ip": 1000, "rate_limit_login_per_account": 1000,
                    "rate_limit_sensitive_per_ip": 1000, "rate_limit_sensitive_per_account": 1000},
        # Two codes per client address an hour: the third request from one address is refused.
        "verify": {"send_limit_per_ip": 2},
    }


class Client:
    """A browser behind the reverse proxy: every request says it comes from `ip`."""

    def __init__(self, browser: Browser, ip: str) -> None:
        self.browser, self.ip = browser, ip

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any, dict]:
        return await self.browser.call(method, path, headers={"X-Forwarded-For": self.ip}, **kw)


async def register_staff(stack: Stack, support: Browser, practice_id: str | None, email: str, phone: str,
                         ip: str) -> tuple[str, str, Client]:
    """Support opens a practice (practice_id None) or invites to one; the invitee registers from
    `ip`, proving the phone: (user id, practice id, the signed-in client)."""
    before = stack.mail_count()
    if practice_id is None:
        status, body, _ = await support.call("POST", "/admin/practices", json={
            "name": "Pump Dental", "address": "1 Main St", "phone": "+12025550100", "identifiers": {"npi": "1234567890"},
            "first_user": {"email": email, "first_name": "Vic", "last_name": "Tim", "phone": phone,
                           "two_step_required": True}})
    else:
        status, body, _ = await support.call("POST", f"/admin/practices/{practice_id}/users", json={
            "email": email, "first_name": "Pro", "last_name": "Wler", "phone": phone, "two_step_required": True})
    assert status == 201, body
    practice_id = practice_id or body["practice"]["id"]
    token = token_link(await stack.mail_to(email, after=before, subject="invites you"), "register")
    client = Client(stack.browser(), ip)
    status, invite, _ = await client.call("GET", f"/invitations/{token}")
    assert status == 200, invite
    status, reg, _ = await client.call("POST", "/registrations", json={
        "token": token, "first_name": "Reg", "last_name": "Istered", "password": PASSWORD, "phone": phone,
        "terms_version": invite["terms_version"], "accept_terms": True})
    assert status == 201 and reg["restriction"] == "verification_required", reg
    sms_before = len(stack.sms())
    status, sent, _ = await client.call("POST", "/verifications",
                                        json={"ticket": reg["verification"]["ticket"], "channel": "sms"})
    assert status == 201, sent
    code = await stack.code_for(phone, after=sms_before)
    status, checked, _ = await client.call("POST", f"/verifications/{sent['id']}/check", json={"code": code})
    assert status == 200, checked
    status, done, _ = await client.call("POST", "/registrations/verify", json={"proof": checked["proof"]})
    assert status == 200 and done["user"]["status"] == "verified", done
    return done["user"]["id"], practice_id, client


async def test_an_anonymous_reset_and_its_refused_sends_reach_supports_trail(stack: Stack) -> None:
    support = stack.browser()
    status, body, _ = await support.login(SUPPORT_EMAIL, SUPPORT_PASSWORD)
    assert status == 200, body
    victim_email = "victim@pump.example"
    victim_id, practice_id, _ = await register_staff(stack, support, None, victim_email, VICTIM_PHONE, "203.0.113.60")
    prowler_id, _, prowler = await register_staff(stack, support, practice_id, "prowler@pump.example",
                                                  PROWLER_PHONE, PROWLER_IP)

    # The attacker, signed in as nobody, starts a password reset for the victim and gets a ticket
    # (here by the emailed link: the flow is the real one).
    attacker = Client(stack.browser(), ATTACKER_IP)
    mails_before = stack.mail_count()
    assert (await attacker.call("POST", "/password/forgot", json={"email": victim_email}))[0] == 202
    link = token_link(await stack.mail_to(victim_email, after=mails_before, subject="Reset your"), "reset")
    status, form, _ = await attacker.call("POST", "/password/reset/verification", json={"token": link})
    assert status == 200 and form["two_step"] is True, form
    ticket = form["verification"]["ticket"]

    sms_before = len(stack.sms())
    status, first, _ = await attacker.call("POST", "/verifications", json={"ticket": ticket, "channel": "sms"})
    assert status == 201, first
    code = await stack.code_for(VICTIM_PHONE, after=sms_before)
    wrong = "000000" if code != "000000" else "111111"
    status, body, _ = await attacker.call("POST", f"/verifications/{first['id']}/check", json={"code": wrong})
    assert status == 422 and body["error"] == "wrong_code", body
    # A signed-in user of the same practice tries the victim's verification: refused as not found.
    status, body, _ = await prowler.call("POST", f"/verifications/{first['id']}/check", json={"code": code})
    assert status == 404, body
    stack.clock.advance(seconds=31)  # past the resend cooldown
    status, second, _ = await attacker.call("POST", "/verifications", json={"ticket": ticket, "channel": "call"})
    assert status == 201, second
    stack.clock.advance(seconds=31)
    status, refused, _ = await attacker.call("POST", "/verifications", json={"ticket": ticket, "channel": "sms"})
    assert status == 429 and refused["error"] == "too_many_codes_from_ip", refused
    assert len([r for r in stack.sms() if r["to"] == VICTIM_PHONE]) == 3  # registration + the two allowed

    async def trail() -> list[dict] | None:
        status, body, _ = await support.call(
            "GET", f"/admin/audit?subject_id={victim_id}&since=2000-01-01T00:00:00Z&limit=1000")
        assert status == 200, body
        rows = [e for e in reversed(body["entries"]) if e["action"].startswith("verification_code_")]
        return rows if len(rows) == 7 else None  # registration: 2; the attack: 5

    rows = await eventually(trail, what="every send and check of the victim's codes audited")
    attack = [(e["action"], e["outcome"], e["actor_id"], e["subject_id"], e["practice_id"], e["ip"])
              for e in rows if e["details"]["purpose"] == "password_reset"]
    # Rows are written as the events arrive; the bus does not promise their order.
    assert sorted(attack, key=str) == sorted([
        ("verification_code_sent", "ok", None, victim_id, practice_id, ATTACKER_IP),
        ("verification_code_checked", "wrong_code", None, victim_id, practice_id, ATTACKER_IP),
        ("verification_code_checked", "not_yours", prowler_id, victim_id, practice_id, PROWLER_IP),
        ("verification_code_sent", "ok", None, victim_id, practice_id, ATTACKER_IP),
        ("verification_code_sent", "too_many_codes_from_ip", None, victim_id, practice_id, ATTACKER_IP),
    ], key=str)
    by_outcome = {(e["action"], e["outcome"], e["details"].get("channel")): e["details"] for e in rows}
    assert by_outcome[("verification_code_sent", "too_many_codes_from_ip", "sms")]["verification_id"] is None
    assert by_outcome[("verification_code_checked", "not_yours", None)]["verification_id"] == first["id"]
    # The registration's own codes: the victim signed in, from the victim's address.
    registration = [(e["outcome"], e["actor_id"], e["ip"]) for e in rows if e["details"]["purpose"] == "registration"]
    assert registration == [("ok", victim_id, "203.0.113.60"), ("ok", victim_id, "203.0.113.60")]

    # Filtering the trail by the practice finds the refused send; so does the CSV export.
    status, body, _ = await support.call(
        "GET", f"/admin/audit?practice_id={practice_id}&action=verification_code_sent&limit=1000")
    assert status == 200
    assert [(e["outcome"], e["ip"], e["actor_id"]) for e in body["entries"]
            if e["outcome"] != "ok"] == [("too_many_codes_from_ip", ATTACKER_IP, None)]
    status, raw, headers = await support.call("GET", f"/admin/audit?format=csv&subject_id={victim_id}&limit=1000")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(raw.decode())))
    assert [(r["action"], r["actor_id"], r["practice_id"], r["ip"]) for r in table
            if r["outcome"] == "too_many_codes_from_ip"] == [("verification_code_sent", "", practice_id, ATTACKER_IP)]
    assert code not in raw.decode() and VICTIM_PHONE not in raw.decode() and "5550161" not in raw.decode()

"""Events auth-service consumes over the real broker: SecureMail purchases mark users paid,
2-step codes sent and checked and the gateway's session ends land in the audit trail; a
redelivered event changes nothing."""
from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from datetime import UTC, datetime
from collections.abc import Awaitable, Callable

from msp_auth.config import AuthSettings
from msp_shared.bus import Bus
from msp_shared.events import (
    Envelope, SecureMailGranted, SecureMailRevoked, SessionEnded, VerifyCodeChecked, VerifyCodeSent, make_envelope,
)

from auth_kit import Auth


async def eventually(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 15) -> None:
    for _ in range(int(seconds / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def test_purchases_and_codes_from_other_services(auth: Auth, auth_settings: AuthSettings) -> None:
    practice = await auth.make_practice()
    manager = await auth.make_user("um@example.org", practice=practice, roles=("member", "user_manager"))
    user = await auth.make_user("staff@example.org", practice=practice)
    bus = Bus(auth_settings.amqp_url, auth_settings.bus_exchange, service="auth-test", retry_delay_ms=50)
    await bus.connect()
    try:
        granted = make_envelope(SecureMailGranted(user_id=user["id"], paid_by=manager["id"]))
        await bus.publish(granted)
        await bus.publish(granted)  # delivered twice: one effect

        async def paid() -> bool:
            return (await auth.user(user["id"]))["securemail_paid"]

        await eventually(paid, "user marked paid")
        listing = await auth.call("GET", "/practice/users", who=auth.user_identity(manager))
        assert next(u for u in listing.body["users"] if u["email"] == "staff@example.org")["securemail_paid"] is True

        verification = uuid.uuid4()
        await bus.publish(make_envelope(VerifyCodeSent(user_id=user["id"], verification_id=verification,
                                                       purpose="password_reset", channel="call")))
        await bus.publish(make_envelope(VerifyCodeChecked(user_id=user["id"], verification_id=verification,
                                                          purpose="password_reset", outcome="wrong_code")))
        await bus.publish(make_envelope(SecureMailRevoked(user_id=user["id"])))

        async def all_there() -> bool:
            actions = {r["action"] for r in await auth.audit()}
            return {"verification_code_sent", "verification_code_checked", "securemail_revoked"} <= actions

        await eventually(all_there, "audit rows for codes and revocation")
        assert not await paid()
        assert len(await auth.audit("securemail_granted")) == 1
        checked = (await auth.audit("verification_code_checked"))[0]
        assert (checked["outcome"], checked["subject_id"]) == ("wrong_code", user["id"])
        # no IP or actor given (an anonymous client): none invented; the practice is the user's
        assert (checked["actor_id"], checked["ip"], checked["practice_id"]) == (None, None, practice["id"])
    finally:
        await bus.close()


async def test_codes_sent_refused_and_checked_reach_supports_trail_with_ip_actor_and_practice(
        auth: Auth, auth_settings: AuthSettings) -> None:
    """verify-service's events as Support reads them: the client's IP, the signed-in actor (None
    in an anonymous password reset), the subject's practice, and why a send or a check was
    refused (a send-limit hit is what SMS pumping looks like)."""
    practice = await auth.make_practice()
    user = await auth.make_user("reset@example.org", practice=practice)
    prowler = await auth.make_user("prowler@example.org", practice=await auth.make_practice("Other Dental"))
    gone = uuid.uuid4()  # a verification's user auth-service does not have (any more)
    sent_id, failed_id = uuid.uuid4(), uuid.uuid4()
    events = [
        VerifyCodeSent(user_id=user["id"], verification_id=sent_id, purpose="password_reset", channel="sms",
                       ip="198.51.100.23"),
        VerifyCodeSent(user_id=user["id"], verification_id=None, purpose="password_reset", channel="call",
                       outcome="too_many_codes_from_ip", ip="198.51.100.23"),
        VerifyCodeSent(user_id=user["id"], verification_id=failed_id, purpose="phone_change", channel="sms",
                       outcome="send_failed", ip="2001:db8::1", actor_id=user["id"]),
        VerifyCodeChecked(user_id=user["id"], verification_id=sent_id, purpose="password_reset",
                          outcome="not_yours", ip="192.0.2.44", actor_id=prowler["id"]),
        VerifyCodeChecked(user_id=user["id"], verification_id=sent_id, purpose="password_reset", outcome="ok",
                          ip="198.51.100.23"),
        VerifyCodeSent(user_id=gone, verification_id=uuid.uuid4(), purpose="registration", channel="sms",
                       outcome="resend_too_soon", ip="192.0.2.45"),
    ]
    bus = Bus(auth_settings.amqp_url, auth_settings.bus_exchange, service="verify-test", retry_delay_ms=50)
    await bus.connect()
    try:
        for data in events:  # one at a time: the rows' order is the events' order
            before = len(await auth.audit())
            await bus.publish(make_envelope(data))

            async def landed(before: int = before) -> bool:
                return len(await auth.audit()) > before

            await eventually(landed, f"{data.TYPE} {data.outcome} audited")
    finally:
        await bus.close()

    rows = [r for r in await auth.audit() if r["action"].startswith("verification_code_")]
    assert [(r["action"], r["outcome"], r["actor_id"], r["subject_id"], r["practice_id"], r["ip"]) for r in rows] == [
        ("verification_code_sent", "ok", None, user["id"], practice["id"], "198.51.100.23"),
        ("verification_code_sent", "too_many_codes_from_ip", None, user["id"], practice["id"], "198.51.100.23"),
        ("verification_code_sent", "send_failed", user["id"], user["id"], practice["id"], "2001:db8::1"),
        ("verification_code_checked", "not_yours", prowler["id"], user["id"], practice["id"], "192.0.2.44"),
        ("verification_code_checked", "ok", None, user["id"], practice["id"], "198.51.100.23"),
        ("verification_code_sent", "resend_too_soon", None, gone, None, "192.0.2.45"),
    ]
    assert [json.loads(r["details"]) for r in rows[:4]] == [
        {"purpose": "password_reset", "channel": "sms", "verification_id": str(sent_id)},
        {"purpose": "password_reset", "channel": "call", "verification_id": None},
        {"purpose": "phone_change", "channel": "sms", "verification_id": str(failed_id)},
        {"purpose": "password_reset", "verification_id": str(sent_id)},
    ]

    # Support finds them by the practice, and in the CSV export with the refusal's outcome.
    support = await auth.support()
    by_practice = await auth.call("GET", f"/admin/audit?practice_id={practice['id']}&action=verification_code_sent",
                                  who=support)
    assert by_practice.status == 200
    assert [(e["outcome"], e["actor_id"], e["ip"]) for e in by_practice.body["entries"]] == [
        ("send_failed", str(user["id"]), "2001:db8::1"),
        ("too_many_codes_from_ip", None, "198.51.100.23"),
        ("ok", None, "198.51.100.23"),
    ]
    exported = await auth.call("GET", f"/admin/audit?format=csv&subject_id={user['id']}", who=support)
    table = list(csv.DictReader(io.StringIO(exported.raw.decode())))
    refused = [r for r in table if r["outcome"] == "too_many_codes_from_ip"]
    assert [(r["action"], r["actor_id"], r["subject_id"], r["practice_id"], r["ip"]) for r in refused] == [
        ("verification_code_sent", "", str(user["id"]), str(practice["id"]), "198.51.100.23")]


async def test_code_events_queued_before_ip_and_actor_existed_are_still_audited(
        auth: Auth, auth_settings: AuthSettings) -> None:
    """An event published by an older verify-service (no ip, actor_id, outcome) is still read:
    no actor is made up (it used to be the subject), the send counts as sent."""
    practice = await auth.make_practice()
    user = await auth.make_user("old@example.org", practice=practice)
    verification = uuid.uuid4()
    old = Envelope(type="verify.code.sent", data={
        "user_id": str(user["id"]), "verification_id": str(verification), "purpose": "registration", "channel": "sms"})
    bus = Bus(auth_settings.amqp_url, auth_settings.bus_exchange, service="verify-test", retry_delay_ms=50)
    await bus.connect()
    try:
        await bus.publish(old)

        async def there() -> bool:
            return bool(await auth.audit("verification_code_sent"))

        await eventually(there, "the old-shaped event audited")
    finally:
        await bus.close()
    [row] = await auth.audit("verification_code_sent")
    assert (row["outcome"], row["actor_id"], row["subject_id"], row["practice_id"], row["ip"]) == (
        "ok", None, user["id"], practice["id"], None)
    assert json.loads(row["details"])["verification_id"] == str(verification)


async def test_session_ends_from_the_gateway_are_audited(auth: Auth, auth_settings: AuthSettings) -> None:
    practice = await auth.make_practice()
    user = await auth.make_user("leaving@example.org", practice=practice)
    bus = Bus(auth_settings.amqp_url, auth_settings.bus_exchange, service="gateway-test", retry_delay_ms=50)
    await bus.connect()
    try:
        logout = make_envelope(SessionEnded(user_id=user["id"], session_id=uuid.uuid4(), reason="logout", ip="203.0.113.9"))
        await bus.publish(logout)
        await bus.publish(logout)  # delivered twice: one row
        idle_since = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
        await bus.publish(make_envelope(SessionEnded(user_id=user["id"], session_id=uuid.uuid4(), reason="idle",
                                                     last_seen_at=idle_since)))

        async def both() -> bool:
            return bool(await auth.audit("logout")) and bool(await auth.audit("session_expired"))

        await eventually(both, "logout and expiry audited")
        [out] = await auth.audit("logout")
        assert (out["actor_id"], out["subject_id"], out["practice_id"]) == (user["id"], user["id"], practice["id"])
        assert str(out["ip"]) == "203.0.113.9" and json.loads(out["details"])["reason"] == "logout"
        [expired] = await auth.audit("session_expired")
        # the clock ended it, not a person: no actor, no address
        assert (expired["actor_id"], expired["subject_id"], expired["ip"]) == (None, user["id"], None)
        details = json.loads(expired["details"])
        assert details["reason"] == "idle" and datetime.fromisoformat(details["last_seen_at"]) == idle_since
    finally:
        await bus.close()


async def test_late_securemail_events_do_not_undo_newer_ones(auth: Auth, auth_settings: AuthSettings) -> None:
    """A grant retried (through the bus's delay queues) after its cancel, or a revoke of an old
    subscription arriving after a new grant, must not change what Manage Users shows."""
    practice = await auth.make_practice()
    manager = await auth.make_user("um@example.org", practice=practice, roles=("member", "user_manager"))
    cancelled = await auth.make_user("cancelled@example.org", practice=practice)
    renewed = await auth.make_user("renewed@example.org", practice=practice)
    t0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    t1 = t0.replace(hour=10)
    bus = Bus(auth_settings.amqp_url, auth_settings.bus_exchange, service="auth-test", retry_delay_ms=50)
    await bus.connect()
    try:
        # cancelled: granted at t0, revoked at t1; the grant arrives last
        await bus.publish(make_envelope(SecureMailRevoked(user_id=cancelled["id"], subscription_id="sub_1"),
                                        occurred_at=t1))
        # renewed: the old subscription revoked at t0, a new one granted at t1; the revoke arrives last
        new_grant = SecureMailGranted(user_id=renewed["id"], paid_by=manager["id"], subscription_id="sub_3")
        await bus.publish(make_envelope(new_grant, occurred_at=t1))

        async def both_applied() -> bool:
            return len(await auth.audit("securemail_revoked")) == 1 and len(await auth.audit("securemail_granted")) == 1

        await eventually(both_applied, "the newer events applied")
        old_grant = SecureMailGranted(user_id=cancelled["id"], paid_by=manager["id"], subscription_id="sub_1")
        await bus.publish(make_envelope(old_grant, occurred_at=t0))
        late_revoke = make_envelope(SecureMailRevoked(user_id=renewed["id"], subscription_id="sub_2"), occurred_at=t0)
        await bus.publish(late_revoke)

        async def late_ones_consumed() -> bool:
            rows = await auth.pool.fetch("SELECT 1 FROM inbox WHERE event_id = $1", late_revoke.id)
            return bool(rows)

        await eventually(late_ones_consumed, "the late events consumed")
    finally:
        await bus.close()
    assert (await auth.user(cancelled["id"]))["securemail_paid"] is False
    assert (await auth.user(renewed["id"]))["securemail_paid"] is True


async def test_the_paid_flag_follows_subscriptions_as_mail_does_whatever_the_clocks(
        auth: Auth, auth_settings: AuthSettings) -> None:
    """Billing replicas' clocks may disagree: the revoke of an old subscription stamped after the
    grant of the new one must not end the new one (mail-service decides the same way)."""
    practice = await auth.make_practice()
    manager = await auth.make_user("um@example.org", practice=practice, roles=("member", "user_manager"))
    user = await auth.make_user("staff@example.org", practice=practice)
    t0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    bus = Bus(auth_settings.amqp_url, auth_settings.bus_exchange, service="auth-test", retry_delay_ms=50)
    await bus.connect()
    try:
        new_grant = SecureMailGranted(user_id=user["id"], paid_by=manager["id"], subscription_id="sub_new")
        await bus.publish(make_envelope(new_grant, occurred_at=t0))
        old_revoke = make_envelope(SecureMailRevoked(user_id=user["id"], subscription_id="sub_old"),
                                   occurred_at=t0.replace(second=5))
        await bus.publish(old_revoke)

        async def consumed() -> bool:
            return bool(await auth.pool.fetch("SELECT 1 FROM inbox WHERE event_id = $1", old_revoke.id))

        await eventually(consumed, "the old subscription's revoke consumed")
    finally:
        await bus.close()
    assert (await auth.user(user["id"]))["securemail_paid"] is True


"""Events auth-service consumes over the real broker: SecureMail purchases mark users paid,
2-step codes sent and checked and the gateway's session ends land in the audit trail; a
redelivered event changes nothing."""
from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from collections.abc import Awaitable, Callable

from msp_auth.config import AuthSettings
from msp_shared.bus import Bus
from msp_shared.events import (
    SecureMailGranted, SecureMailRevoked, SessionEnded, VerifyCodeChecked, VerifyCodeSent, make_envelope,
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
    finally:
        await bus.close()


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

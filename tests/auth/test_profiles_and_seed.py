"""The NIST Rev. 4 profile end to end, the seeded Support account, and fail-closed restrictions."""
from __future__ import annotations

import pytest
from pydantic import SecretStr

from msp_auth.config import AuthSettings
from msp_auth.seed import WeakSeedPassword
from msp_shared.clock import ManualClock
from msp_shared.identity import Identity

from auth_kit import GOOD_PASSWORD, start_auth, violation_codes


async def test_nist_profile_has_no_composition_history_or_expiry(auth_settings: AuthSettings, clock: ManualClock) -> None:
    settings = auth_settings.model_copy(update={"password_policy": "nist_rev4"})
    kit, client = await start_auth(settings, clock)
    try:
        user = await kit.make_user("uma@example.org", password="a long passphrase here")
        who = kit.user_identity(user)

        async def change(current: str, new: str):  # noqa: ANN202
            return await kit.call("POST", "/me/password", {"current_password": current, "new_password": new}, who=who)

        assert violation_codes(await change("a long passphrase here", "Short-1!")) == ["too_short"]
        assert violation_codes(await change("a long passphrase here", "1234567890")) == ["too_short", "common_password"]
        assert (await change("a long passphrase here", "lowercase only phrase")).status == 200
        assert (await change("lowercase only phrase", "a long passphrase here")).status == 200  # no history rule
        clock.advance(days=200)
        login = await kit.login("uma@example.org", "a long passphrase here")
        assert login.status == 200 and login.body["grant"]["restriction"] is None  # no forced expiry
        assert login.body["user"]["password_expires_at"] is None
    finally:
        await client.close()


async def test_support_is_seeded_once_and_a_weak_seed_password_is_refused(auth_settings: AuthSettings, clock: ManualClock) -> None:
    kit, client = await start_auth(auth_settings, clock)
    await client.close()
    kit, client = await start_auth(auth_settings, clock)  # a second start (or replica) seeds nothing more
    try:
        count = await kit.pool.fetchval("SELECT count(*) FROM users WHERE 'support' = ANY(roles)")
        assert count == 1
        assert (await kit.login("support@securepractice.local", "Dev-Only-Harbor-Lantern-73!")).status == 200
    finally:
        await client.close()
    weak = auth_settings.model_copy(update={"seed_support_email": "ops@example.org",
                                            "seed_support_password": SecretStr("password")})
    with pytest.raises(WeakSeedPassword):
        await start_auth(weak, clock)


async def test_unknown_restriction_fails_closed(auth) -> None:  # noqa: ANN001
    user = await auth.make_user("vic@example.org")
    odd = Identity(user_id=str(user["id"]), ip="203.0.113.7", extra={"restriction": "something_new"})
    assert (await auth.call("GET", "/me", who=odd)).status == 200
    refused = await auth.call("PATCH", "/me", {"first_name": "V"}, who=odd)
    assert refused.status == 403 and refused.body["error"] == "something_new"


def test_settings_defaults_follow_the_brief() -> None:
    s = AuthSettings()
    assert (s.http_port, s.argon2_memory_kib, s.argon2_time_cost, s.argon2_parallelism) == (8101, 19456, 2, 1)
    assert (s.lockout_threshold, s.password_max_age_days, s.password_history_size) == (5, 90, 6)
    assert GOOD_PASSWORD != s.seed_support_password.get_secret_value()

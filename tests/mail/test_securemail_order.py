"""Billing's SecureMail grants and revokes reach mail-service out of order (bus retries go
through delay queues) and more than once: whatever the order, the user ends paid exactly
when billing says so, and a redelivery changes nothing.

The pure rule (securemail.current_grant) is checked over every order of each history; the
consumer itself (inbox + handler, real PostgreSQL) is fed the events in the orders that went
wrong before, one at a time and as one burst, and the send endpoint answers accordingly."""
from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from messages_kit import Stack
from msp_mail.messaging import handlers
from msp_shared import securemail
from msp_mail.messaging import store as mail_store
from msp_shared import inbox
from msp_shared.events import Envelope, SecureMailGranted, SecureMailRevoked, make_envelope
from msp_shared.web import CLOCK

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
PAYER = uuid.UUID(int=7)


def grant(minute: float, sub: str | None = None, payer: uuid.UUID = PAYER) -> securemail.Change:
    return securemail.Change(uuid.uuid4(), securemail.GRANT, T0 + timedelta(minutes=minute), sub, payer)


def revoke(minute: float, sub: str | None = None) -> securemail.Change:
    return securemail.Change(uuid.uuid4(), securemail.REVOKE, T0 + timedelta(minutes=minute), sub)


def _every_order(changes: list[securemail.Change]) -> set:
    """The answers of current_grant for the history given in every order (one answer, or
    the rule depends on the order of arrival)."""
    finals = set()
    for order in itertools.permutations(changes):
        finals.add(securemail.current_grant(order))
    return finals


# ---- the rule ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sub", ["sub_A", None], ids=["with-subscription", "without"])
def test_a_grant_then_its_revoke_ends_unpaid_in_any_order(sub: str | None) -> None:
    assert _every_order([grant(0, sub), revoke(1, sub)]) == {None}


def test_a_new_subscription_after_a_cancelled_one_ends_paid_in_any_order() -> None:
    for a, b in [("sub_A", "sub_B"), (None, None)]:
        history = [grant(0, a), revoke(5, a), grant(10, b)]
        assert _every_order(history) == {history[2]}, (a, b)


def test_buy_cancel_buy_cancel_ends_unpaid_in_any_order() -> None:
    for a, b in [("sub_A", "sub_B"), (None, None), ("sub_A", None), (None, "sub_B")]:
        assert _every_order([grant(0, a), revoke(5, a), grant(10, b), revoke(20, b)]) == {None}, (a, b)


def test_subscription_ids_make_the_outcome_immune_to_clock_skew() -> None:
    """Two billing replicas' clocks disagree: the revoke of sub_A is stamped *before* its own
    grant, and the cancel of sub_A after the purchase of sub_B."""
    skewed_cancel = [grant(10, "sub_A"), revoke(9, "sub_A")]
    assert _every_order(skewed_cancel) == {None}
    new_sub = [grant(0, "sub_A"), revoke(12, "sub_A"), grant(11, "sub_B")]
    assert _every_order(new_sub) == {new_sub[2]}


def test_what_has_arrived_so_far_decides_until_the_rest_comes() -> None:
    a, cancel_a, b = grant(0, "sub_A"), revoke(5, "sub_A"), grant(10, "sub_B")
    assert securemail.current_grant([b, a]) == b  # an older subscription's late grant does not replace a newer one
    assert securemail.current_grant([b, cancel_a]) == b  # cancelling sub_A does not end sub_B
    assert securemail.current_grant([cancel_a, a]) is None  # sub_A's grant, retried after its cancel
    assert securemail.current_grant([]) is None


def test_a_revoke_and_a_grant_of_the_same_instant_leave_it_revoked() -> None:
    assert _every_order([grant(0), revoke(0)]) == {None}


# ---- the consumer -------------------------------------------------------------------------------

def _envelope(kind: str, user: uuid.UUID, minute: float, sub: str | None = None) -> Envelope:
    at = T0 + timedelta(minutes=minute)
    if kind == "grant":
        return make_envelope(SecureMailGranted(user_id=user, paid_by=PAYER, subscription_id=sub), occurred_at=at)
    return make_envelope(SecureMailRevoked(user_id=user, subscription_id=sub), occurred_at=at)


async def _paid(stack: Stack, user: uuid.UUID) -> bool:
    async with stack.pool.acquire() as conn:
        return await mail_store.is_paid(conn, user)


def _consumer(stack: Stack) -> inbox.Idempotent:
    """The handler the bus calls (the same wiring as handlers.subscribe)."""
    return inbox.idempotent(stack.pool, handlers.GROUP, handlers.on_securemail(stack.mail_app[CLOCK]))


@pytest.mark.parametrize("sub", ["sub_A", None], ids=["with-subscription", "without"])
async def test_a_grant_retried_after_a_quick_cancel_leaves_the_user_unpaid(stack: Stack, sub: str | None) -> None:
    consume = _consumer(stack)
    user = uuid.uuid4()
    granted, revoked = _envelope("grant", user, 0, sub), _envelope("revoke", user, 1, sub)
    await consume(revoked)
    await consume(granted)  # the retry of the grant comes last
    assert not await _paid(stack, user)
    for again in (granted, revoked, granted):  # redeliveries change nothing
        await consume(again)
        assert not await _paid(stack, user)


@pytest.mark.parametrize("subs", [("sub_A", "sub_B"), (None, None)], ids=["with-subscription", "without"])
async def test_a_late_revoke_of_an_old_subscription_leaves_the_new_one_paid(stack: Stack, subs: tuple) -> None:
    consume = _consumer(stack)
    user = uuid.uuid4()
    old, new = subs
    first, cancel, second = _envelope("grant", user, 0, old), _envelope("revoke", user, 5, old), _envelope("grant", user, 10, new)
    await consume(first)
    await consume(second)
    await consume(cancel)  # retried, it arrives after the new subscription's grant
    assert await _paid(stack, user)
    row = await stack.pool.fetchrow("SELECT * FROM securemail_accounts WHERE user_id = $1", user)
    assert (row["grant_event_id"], row["subscription_id"], row["paid_by"]) == (second.id, new, PAYER)
    for again in (cancel, first, second):
        await consume(again)
        assert await _paid(stack, user)

    # And in order, it ends as it should: the new subscription's cancel ends it.
    await consume(_envelope("revoke", user, 20, new))
    assert not await _paid(stack, user)


async def test_a_burst_delivered_out_of_order_takes_effect_in_billing_order(stack: Stack) -> None:
    consume = _consumer(stack)
    paying, cancelled = uuid.uuid4(), uuid.uuid4()
    burst = [
        _envelope("grant", paying, 10, "sub_B"), _envelope("revoke", paying, 5, "sub_A"), _envelope("grant", paying, 0, "sub_A"),
        _envelope("revoke", cancelled, 3, "sub_C"), _envelope("grant", cancelled, 2, "sub_C"),
    ]
    assert await consume.handle_batch(burst) == [None] * len(burst)
    assert await _paid(stack, paying) and not await _paid(stack, cancelled)
    assert await consume.handle_batch(list(reversed(burst))) == [None] * len(burst)  # redelivered: nothing changes
    assert await _paid(stack, paying) and not await _paid(stack, cancelled)
    assert await stack.pool.fetchval("SELECT count(*) FROM securemail_changes") == len(burst)


async def test_out_of_order_events_decide_who_may_start_a_message(stack: Stack) -> None:
    consume = _consumer(stack)
    user = await stack.user("late.cancel@example.com", await stack.practice("Late Cancel Dental"))
    other = await stack.user("other@example.com", await stack.practice("Other"))
    uid = uuid.UUID(user.id)
    granted, revoked = _envelope("grant", uid, 0, "sub_X"), _envelope("revoke", uid, 1, "sub_X")
    await consume(revoked)
    await consume(granted)
    refused = await stack.send(user, [other.email])
    assert refused.status == 403 and refused.body["error"] == "securemail_required"

    await consume(_envelope("grant", uid, 30, "sub_Y"))  # buys again
    await consume(_envelope("revoke", uid, 2, "sub_W"))  # an even older subscription's cancel, retried
    assert (await stack.send(user, [other.email])).status == 201


async def test_a_grant_and_a_revoke_consumed_at_once_serialise(stack: Stack) -> None:
    """Competing consumers hold a user's grant and its revoke at the same time: the second
    waits for the first to commit, then decides with both in view."""
    user = uuid.uuid4()
    handle = handlers.on_securemail(stack.mail_app[CLOCK])
    revoking = None
    async with stack.pool.acquire() as conn:
        async with conn.transaction():
            await handle(conn, _envelope("grant", user, 0, "sub_A"))  # not committed yet
            revoking = asyncio.create_task(_consumer(stack)(_envelope("revoke", user, 1, "sub_A")))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while not await stack.pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
            ):
                assert not revoking.done(), "the revoke did not wait for the grant in progress"
                assert loop.time() < deadline, "the revoke neither waited nor finished"
                await asyncio.sleep(0.01)
    await revoking
    assert not await _paid(stack, user)


def test_the_subscription_id_is_optional_and_absent_from_payloads_without_it() -> None:
    user = uuid.uuid4()
    # Events published before the field existed still parse...
    old = Envelope(type=SecureMailRevoked.TYPE, data={"user_id": str(user)})
    assert old.payload() == SecureMailRevoked(user_id=user)
    # ...and events without it are published exactly as before (consumers on the older model,
    # which forbids unknown fields, keep accepting them).
    assert make_envelope(SecureMailGranted(user_id=user, paid_by=PAYER)).data == {"user_id": str(user), "paid_by": str(PAYER)}
    with_sub = make_envelope(SecureMailGranted(user_id=user, paid_by=PAYER, subscription_id="sub_1"))
    assert with_sub.data["subscription_id"] == "sub_1" and with_sub.payload().subscription_id == "sub_1"
    revoked = make_envelope(SecureMailRevoked(user_id=user, subscription_id="sub_1"))
    assert Envelope.model_validate_json(revoked.model_dump_json()).payload() == SecureMailRevoked(user_id=user, subscription_id="sub_1")

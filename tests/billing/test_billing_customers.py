"""Every User Manager has a Stripe customer the Billing Dept. can find: made when auth-service
announces a User Manager (registered with the role, or granted it by Support), once per user
whatever is redelivered or asked at the same moment, with our ids in its metadata and the
practice named in its description (billing asks the real auth-service for the name). Nobody
else gets one."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from msp_shared.events import UserRegistered, UserRolesChanged, make_envelope

from billing_kit import UM, Accounts, Billing, support_user


@pytest.fixture
def billing_extra(accounts: Accounts) -> dict:
    """billing-service asks this test's auth-service for the practice's name."""
    return {"auth_url": accounts.url}


async def created_audits(billing: Billing, user_id: str) -> list[str]:
    rows = await billing.pool.fetch(
        "SELECT details->>'cause' AS cause FROM audit WHERE action = 'billing.customer.created' AND subject = $1",
        uuid.UUID(user_id))
    return [r["cause"] for r in rows]


async def test_a_user_manager_announced_by_auth_gets_exactly_one_stripe_customer(
        billing: Billing, accounts: Accounts) -> None:
    lee = await accounts.make_user("lee@bright.example", roles=UM)
    envelope = await billing.announce_manager(lee)

    [customer] = billing.stripe.objects["customer"].values()
    assert await billing.customer_of(lee) == customer["id"]
    assert customer["metadata"] == {"msp_user_id": lee.id, "msp_practice_id": lee.practice_id}
    assert customer["description"] == f"SecurePractice User Manager, Bright Smiles (practice {lee.practice_id})"
    assert customer["email"] is None and customer["name"] is None  # no copy of the person's details
    assert await created_audits(billing, lee.id) == ["auth.user.registered"]
    assert await billing.card(lee) is None  # a customer, no card yet

    # The same event delivered again, then Support granting the role Lee already has, and
    # Support looking Lee up three times at once: still the one customer.
    await billing.bus.publish(envelope)
    await billing.announce_manager(lee, how="granted")
    support = support_user()
    answers = await asyncio.gather(*(billing.call("GET", f"/admin/billing/users/{lee.id}", support) for _ in range(3)))
    assert [(status, body["customer_id"]) for status, body in answers] == [(200, customer["id"])] * 3
    assert list(billing.stripe.objects["customer"]) == [customer["id"]]
    assert await billing.pool.fetchval("SELECT count(*) FROM payers") == 1
    assert await created_audits(billing, lee.id) == ["auth.user.registered"]


async def test_a_user_manager_granted_by_support_gets_a_customer_and_nobody_else_does(
        billing: Billing, accounts: Accounts) -> None:
    lee = await accounts.make_user("lee@bright.example")
    mel = await accounts.make_user("mel@bright.example", lee.practice_id)
    quiet = [
        make_envelope(UserRegistered(user_id=lee.id, practice_id=lee.practice_id, roles=("member",))),
        make_envelope(UserRegistered(user_id=mel.id, practice_id=mel.practice_id)),  # roles not said
        make_envelope(UserRolesChanged(user_id=mel.id, practice_id=mel.practice_id, roles=("member",))),  # revoked
        # A User Manager role on a user of no practice means nothing to bill.
        make_envelope(UserRolesChanged(user_id=str(uuid.uuid4()), practice_id=None,
                                       roles=("member", "user_manager"))),
    ]
    for envelope in quiet:
        await billing.bus.publish(envelope)
    for envelope in quiet:
        await billing.handled(envelope)
    assert billing.stripe.objects["customer"] == {}
    assert await billing.pool.fetchval("SELECT count(*) FROM payers") == 0

    await billing.announce_manager(lee, how="granted")
    [customer] = billing.stripe.objects["customer"].values()
    assert customer["metadata"] == {"msp_user_id": lee.id, "msp_practice_id": lee.practice_id}
    assert "Bright Smiles" in customer["description"]
    assert await created_audits(billing, lee.id) == ["auth.user.roles_changed"]


async def test_a_user_manager_from_before_is_set_up_by_supports_look_up(billing: Billing, accounts: Accounts) -> None:
    """Registered before customers were made on announcement (auth.user.registered without
    roles): the first look-up makes the customer; concurrent ones and a late announcement
    find it."""
    lee = await accounts.make_user("lee@bright.example", roles=UM)
    await billing.register(lee)
    assert billing.stripe.objects["customer"] == {}
    support = support_user()
    answers = await asyncio.gather(
        *(billing.call("GET", f"/admin/billing/users/{lee.id}", support) for _ in range(3)),
        billing.announce_manager(lee, how="granted"),
    )
    [customer] = billing.stripe.objects["customer"].values()
    assert [(status, body["customer_id"], body["card"]) for status, body in answers[:3]] == [
        (200, customer["id"], None)] * 3
    assert customer["metadata"] == {"msp_user_id": lee.id, "msp_practice_id": lee.practice_id}
    assert len(await created_audits(billing, lee.id)) == 1

"""The purchase rules on their own (purchase_rules.py: pure, no I/O)."""
from __future__ import annotations

import pytest

from msp_billing.purchase_rules import PurchaseFacts, check_purchase, idempotency_key, require_user_manager
from msp_shared.errors import ApiError


def facts(**overrides) -> PurchaseFacts:
    values = dict(caller_id="um", caller_practice_id="p", target_id="u", target_practice_id="p",
                  has_card=True, caller_paid_by=None)
    return PurchaseFacts(**{**values, **overrides})


@pytest.mark.parametrize("overrides, status, code", [
    ({"target_practice_id": "other"}, 404, "user_not_found"),
    ({"target_practice_id": None}, 404, "user_not_found"),
    ({"caller_paid_by": "another-um"}, 422, "paid_by_another_user_manager"),
    ({"has_card": False}, 422, "card_required"),
    # another practice's user is "not found" even when the caller also lacks a card
    ({"target_practice_id": "other", "has_card": False}, 404, "user_not_found"),
])
def test_refusals(overrides, status, code) -> None:
    with pytest.raises(ApiError) as caught:
        check_purchase(facts(**overrides))
    assert (caught.value.status, caught.value.code) == (status, code)


def test_allowed_for_a_colleague_and_for_oneself_and_when_paying_for_oneself() -> None:
    check_purchase(facts())
    check_purchase(facts(target_id="um", target_practice_id=None))
    check_purchase(facts(caller_paid_by="um"))


def test_only_user_managers_of_a_practice() -> None:
    require_user_manager(("user_manager",), "p")
    for roles, practice in [((), "p"), (("support",), "p"), (("user_manager",), None)]:
        with pytest.raises(ApiError) as caught:
            require_user_manager(roles, practice)
        assert caught.value.status == 403


def test_idempotency_key_changes_with_generation_and_card_only() -> None:
    key = idempotency_key("a", "b", 0, "pm_1")
    assert key == idempotency_key("a", "b", 0, "pm_1")
    assert len({key, idempotency_key("a", "b", 1, "pm_1"), idempotency_key("a", "b", 0, "pm_2"),
                idempotency_key("a", "c", 0, "pm_1")}) == 4

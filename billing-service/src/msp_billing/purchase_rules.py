"""Who may pay for SecureMail, and for whom (pure rules, no I/O).

From the help page (User Manager section): only a practice's User Managers pay, with the
credit card on file, for user accounts of their own practice; a User Manager whose own
account is paid for by another User Manager cannot pay for additional accounts; the price is
$10/month per account."""
from __future__ import annotations

from dataclasses import dataclass

from msp_shared.errors import ApiError

USER_MANAGER = "user_manager"


def require_user_manager(roles: tuple[str, ...], practice_id: str | None) -> None:
    if USER_MANAGER not in roles or not practice_id:
        raise ApiError(403, "user_manager_required", "Only a User Manager of the practice can manage billing.")


@dataclass(frozen=True)
class PurchaseFacts:
    caller_id: str
    caller_practice_id: str | None
    target_id: str
    target_practice_id: str | None  # None: billing has never heard of this user
    has_card: bool
    caller_paid_by: str | None  # the payer of the caller's own active subscription, if any


def check_purchase(facts: PurchaseFacts) -> None:
    """Raise the ApiError the purchase breaks, in the order a user should hear them."""
    if facts.target_id != facts.caller_id and (
        facts.target_practice_id is None or facts.target_practice_id != facts.caller_practice_id
    ):
        # Users of another practice are answered exactly like users that do not exist.
        raise ApiError(404, "user_not_found", "No such user in your practice.")
    if facts.caller_paid_by is not None and facts.caller_paid_by != facts.caller_id:
        raise ApiError(
            422,
            "paid_by_another_user_manager",
            "Your account is paid for by another User Manager, so you cannot pay for other accounts.",
        )
    if not facts.has_card:
        raise ApiError(422, "card_required", "There is no credit card on file for you. To add one, contact the PBHS Billing Dept. at 800-840-5383.")


def idempotency_key(payer_id: str, user_id: str, generation: int, payment_method_id: str) -> str:
    """One Stripe subscription per (payer, user, generation, card): a repeated or concurrent
    purchase reuses the key and gets the same subscription; after a cancellation the generation
    moves on so a new purchase is a new subscription. The card is part of it because Stripe
    stores a decline under the key too: after changing the card, the retry must be new."""
    return f"msp-securemail-{payer_id}-{user_id}-{generation}-{payment_method_id}"

"""Who may do what with a secure message (pure rules, no I/O).

- Only the sender and the recipients of a message see it or its attachments; to anyone
  else it does not exist (404), whatever their practice or role.
- Starting a new message needs paid SecureMail; anyone may reply in a thread where they are
  the sender or a recipient of the message they answer.
- A message can be recalled by its sender only while no recipient has opened it."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from msp_shared.errors import ApiError

NOT_FOUND = ApiError(404, "message_not_found", "There is no such message.")
ATTACHMENT_NOT_FOUND = ApiError(404, "attachment_not_found", "There is no such attachment.")
SECUREMAIL_REQUIRED = ApiError(
    403,
    "securemail_required",
    "Starting a new secure message needs a paid SecureMail account. You can still read the messages "
    "sent to you and reply to them. Ask your practice's User Manager to purchase SecureMail for you.",
)
ALREADY_OPENED = ApiError(
    409, "already_opened", "This message cannot be recalled: a recipient has already opened it."
)
SENDER_ONLY = ApiError(403, "sender_only", "Only the sender of a message can do this.")


@dataclass(frozen=True)
class Access:
    """What the caller is to one message (both if they wrote to themselves)."""

    is_sender: bool
    is_recipient: bool

    @property
    def any(self) -> bool:
        return self.is_sender or self.is_recipient


def access(user_id: str, *, sender_id: str, sender_deleted: bool, recipients: dict[str, bool]) -> Access:
    """`recipients` maps recipient user id → whether they removed it from their Inbox.
    A message removed from one's own folder is gone for that user."""
    is_sender = user_id == sender_id and not sender_deleted
    is_recipient = user_id in recipients and not recipients[user_id]
    return Access(is_sender, is_recipient)


def may_start_message(paid: bool) -> ApiError | None:
    return None if paid else SECUREMAIL_REQUIRED


def may_recall(first_opened: Iterable[object | None]) -> ApiError | None:
    return ALREADY_OPENED if any(t is not None for t in first_opened) else None


def reply_recipients(user_id: str, sender_id: str, recipient_ids: Iterable[str]) -> list[str]:
    """A reply goes to everyone on the answered message but the one replying."""
    everyone = [sender_id, *recipient_ids]
    seen: list[str] = []
    for uid in everyone:
        if uid != user_id and uid not in seen:
            seen.append(uid)
    return seen


RESTRICTED_MESSAGES = {
    "password_expired": "Your password has expired. Choose a new one to continue.",
    "verification_required": "Confirm your phone number with the code we send you to continue.",
}


def restriction_refusal(restriction: str | None) -> ApiError | None:
    """A restricted session (password expired, phone not verified yet) reads no messages and
    no cases: it may only do what auth-service allows to lift the restriction."""
    if not restriction:
        return None
    return ApiError(403, restriction, RESTRICTED_MESSAGES.get(restriction, "This session cannot do that yet."))

"""Collaborator's rules (pure, no I/O).

- A referring user with paid SecureMail opens a case for a patient and refers it to a doctor;
  the doctor accepts or declines it.
- Pending: the owner and the referred doctor see it. Declined: only the owner. Accepted: a
  shared workspace for every participant; patients see only what is shared with them.
- Only the owner adds and removes participants; a removed participant loses access at once.
- Each SecureMail account includes `quota` accepted cases: a case counts against its
  owner's account once accepted, and past the quota a referral cannot be accepted."""
from __future__ import annotations

from msp_shared.errors import ApiError

OWNER, DOCTOR, MEMBER, PATIENT = "owner", "doctor", "member", "patient"
ADDABLE_ROLES = (DOCTOR, MEMBER, PATIENT)

CASE_NOT_FOUND = ApiError(404, "case_not_found", "There is no such case.")
FILE_NOT_FOUND = ApiError(404, "file_not_found", "There is no such file.")
OWNER_ONLY = ApiError(403, "case_owner_only", "Only the doctor who opened the case can do this.")
NOT_ACCEPTED = ApiError(409, "case_not_accepted", "This case has not been accepted yet.")
PATIENT_READ_ONLY = ApiError(403, "patient_read_only", "Patients can read what is shared with them, not post.")
SECUREMAIL_REQUIRED = ApiError(
    403, "securemail_required",
    "Opening a Collaborator case needs a paid SecureMail account. Ask your practice's User Manager to purchase "
    "SecureMail for you.",
)


def may_view(status: str, role: str | None) -> bool:
    if role is None:
        return False
    if status == "pending":
        return role in (OWNER, DOCTOR)
    if status == "declined":
        return role == OWNER
    return True


def may_post(status: str, role: str) -> ApiError | None:
    if status != "accepted":
        return NOT_ACCEPTED
    if role == PATIENT:
        return PATIENT_READ_ONLY
    return None


def sees(role: str, shared_with_patient: bool) -> bool:
    return role != PATIENT or shared_with_patient


def quota_refusal(accepted: int, quota: int, owner_practice: str | None) -> ApiError | None:
    if accepted < quota:
        return None
    who = f"{owner_practice}'s" if owner_practice else "The referring doctor's"
    return ApiError(
        422, "case_quota_reached",
        f"This referral cannot be accepted: {who} SecureMail account includes {quota} accepted Collaborator cases "
        f"and all {quota} are used. The referring doctor can contact SecurePractice to add more.",
        {"quota": quota, "accepted": accepted},
    )

"""auth-service settings (env prefix MSP_, see msp_shared.config). Every setting documented;
secrets are SecretStr."""
from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr

from msp_shared.config import ServiceSettings

DEV_SUPPORT_EMAIL = "support@securepractice.local"
DEV_SUPPORT_PASSWORD = "Dev-Only-Harbor-Lantern-73!"  # dev default; set MSP_SEED_SUPPORT_PASSWORD elsewhere


class AuthSettings(ServiceSettings):
    service_name: str = Field("auth", description="Name used in logs, traces and queue names.")
    http_port: int = Field(
        8101,
        validation_alias=AliasChoices("MSP_AUTH_PORT", "http_port"),
        description="Port auth-service listens on (env MSP_AUTH_PORT).",
    )

    # Password hashing: argon2id. Defaults are the OWASP minimum (19 MiB, 2 passes, 1 lane);
    # raise them, never lower them, in production. Hashes made with other parameters are
    # re-hashed at the next successful login.
    argon2_time_cost: int = Field(2, ge=1, description="argon2id iterations (passes over memory).")
    argon2_memory_kib: int = Field(19 * 1024, ge=8, description="argon2id memory per hash, in KiB (OWASP minimum 19456).")
    argon2_parallelism: int = Field(1, ge=1, description="argon2id lanes per hash.")
    argon2_hash_len: int = Field(32, ge=16, description="argon2id output length in bytes.")
    argon2_salt_len: int = Field(16, ge=16, description="argon2id salt length in bytes.")
    hash_workers: int = Field(
        0, ge=0, description="Threads hashing passwords off the event loop (argon2 releases the GIL); 0 = one per CPU core."
    )
    hash_worker_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness added to the hashing threads, so that under a burst of logins the OS runs "
        "the event loops (every other request) before hashes; 0 = same priority.",
    )

    # Password rules.
    password_policy: Literal["practice_portal", "nist_rev4"] = Field(
        "practice_portal",
        description="practice_portal: 8+ chars, lower/upper/digit/special, history of 6, 90-day "
        "expiry, blocklist. nist_rev4: NIST SP 800-63B Rev. 4 (15+ chars, or 8+ with 2-step; "
        "blocklist; no composition rules, expiry or history).",
    )
    common_passwords_file: str | None = Field(
        None,
        description="Blocklist of common passwords (text or .gz, one per line); default: the list "
        "shipped in msp_auth/data (see its README).",
    )
    password_history_size: int = Field(6, ge=0, description="A new password may not match any of the last N (practice_portal).")
    password_max_age_days: int = Field(90, ge=1, description="Passwords expire this many days after being set (practice_portal).")
    password_expiry_warning_days: list[int] = Field(
        [14, 7, 1], description="Days before expiry on which a warning email is sent (each once)."
    )
    expiry_check_interval_seconds: float = Field(
        3600, gt=0, description="How often the expiry-warning task looks for passwords about to expire."
    )

    # Lockout.
    lockout_threshold: int = Field(5, ge=1, description="Consecutive wrong passwords that lock the account (the Nth locks).")

    # Tokens and tickets.
    invitation_ttl_hours: float = Field(72, gt=0, le=24 * 14, description="Lifetime of an invitation link.")
    reset_ttl_minutes: float = Field(30, gt=0, le=24 * 60, description="Lifetime of a password-reset link.")
    token_retention_days: float = Field(
        30, ge=1, description="Days an expired link's digest (invitation, reset, email change) is kept, then deleted.")
    reset_requests_per_hour: int = Field(
        5, ge=1, description="Reset emails sent to one account per hour at most; more requests answer the same but send nothing."
    )
    email_change_ttl_hours: float = Field(24, gt=0, description="Lifetime of the link confirming a new email address.")
    email_change_requests_per_hour: int = Field(
        5, ge=1, description="New email addresses a user may ask to confirm per hour (each sends a mail to that address).")
    verify_ticket_ttl_seconds: int = Field(900, ge=60, description="Lifetime of a 2-step verification ticket given to the client.")

    terms_version: str = Field("2026-01", description="Current Terms of Use version a registering user must accept.")
    default_time_zone: str = Field("America/New_York", description="Time zone given to new users.")

    # Support account seeded at start (idempotent); unset either to seed nothing.
    seed_support_email: str | None = Field(
        DEV_SUPPORT_EMAIL, description="Email of the Support user created at start if missing (env MSP_SEED_SUPPORT_EMAIL)."
    )
    seed_support_password: SecretStr | None = Field(
        SecretStr(DEV_SUPPORT_PASSWORD),
        description="Initial password of the seeded Support user (env MSP_SEED_SUPPORT_PASSWORD); must meet the policy.",
    )

    def secrets_in_use(self) -> tuple[str, ...]:
        return (*super().secrets_in_use(), "verify_secret", "seed_support_password")

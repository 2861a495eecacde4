"""verify-service settings: where codes go (dev outbox or Twilio), how long they live, how
often they may be checked and sent. Every value has a safe default for local use; production
sets the Twilio credentials and the secrets through the environment (prefix MSP_)."""
from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from msp_shared.config import ServiceSettings

# Twilio-shaped dev credentials: the local Twilio-protocol server accepts them by default,
# so `MSP_SMS_TRANSPORT=twilio` works out of the box against it. Never valid at Twilio.
DEV_TWILIO_ACCOUNT_SID = "AC" + "0" * 32
DEV_TWILIO_AUTH_TOKEN = "dev-only-twilio-auth-token"
DEV_TWILIO_FROM = "+15005550006"  # Twilio's documented "valid From" test number


class TwilioCredentials(BaseSettings):
    """The Twilio account, shared by verify-service (client) and the local Twilio server."""

    model_config = SettingsConfigDict(env_prefix="MSP_", env_file=".env", extra="ignore", hide_input_in_errors=True)

    twilio_account_sid: str = Field(DEV_TWILIO_ACCOUNT_SID, description="Twilio Account SID (AC...).")
    twilio_auth_token: SecretStr = Field(
        SecretStr(DEV_TWILIO_AUTH_TOKEN), description="Twilio auth token (HTTP basic auth password)."
    )


class VerifySettings(ServiceSettings, TwilioCredentials):
    service_name: str = Field("verify", description="Name used in logs, traces and queue names.")
    http_port: int = Field(
        8102,
        validation_alias=AliasChoices("MSP_VERIFY_PORT", "http_port"),
        description="Port of verify-service's HTTP API.",
    )

    sms_transport: Literal["outbox", "twilio"] = Field(
        "outbox",
        description="Where codes go: 'outbox' appends to $MSP_DEV_OUTBOX/sms.jsonl (local default); "
        "'twilio' sends through the official Twilio SDK (Programmable Messaging and Voice).",
    )
    twilio_from_number: str = Field(DEV_TWILIO_FROM, description="E.164 number SMS and calls come from.")
    twilio_base_url: str | None = Field(
        None,
        description="Send the Twilio SDK's requests to this base URL instead of https://api.twilio.com "
        "(the local Twilio-protocol server, e.g. http://127.0.0.1:8106). Unset in production.",
    )
    twilio_timeout_seconds: float = Field(10.0, description="HTTP timeout of one Twilio API request.")
    twilio_workers: int = Field(4, description="Threads running the (blocking) Twilio SDK off the event loop.")

    code_length: int = Field(6, ge=4, le=10, description="Digits in a verification code.")
    code_ttl_seconds: int = Field(600, description="Lifetime of a code (Twilio Verify uses 10 minutes).")
    code_max_checks: int = Field(5, description="Wrong guesses that kill a code (Twilio Verify allows 5 checks).")
    resend_cooldown_seconds: int = Field(
        30, description="Minimum time between two sends to the same user for the same purpose."
    )
    send_window_seconds: int = Field(3600, description="Window over which the send limits below are counted.")
    send_limit_per_phone: int = Field(5, description="Codes sent to one phone number per window (SMS pumping defence).")
    send_limit_per_user: int = Field(5, description="Codes sent for one user per window.")
    send_limit_per_ip: int = Field(20, description="Codes requested from one client IP per window.")
    proof_ttl_seconds: int = Field(600, description="Lifetime of the signed proof a right code earns.")
    verification_retention_hours: float = Field(
        24, gt=0,
        description="Hours a sent code's row (phone number, client IP, code hash) is kept, then deleted; at "
        "least the send window and the code's and proof's lifetimes. The audit trail keeps its record "
        "without the full number.",
    )
    verification_prune_interval_seconds: float = Field(3600, gt=0, description="How often old code rows are deleted.")
    sms_origin_host: str | None = Field(
        None,
        description="Host in the origin-bound SMS line '@host #code' (WebOTP / iOS autofill); "
        "defaults to the host of public_url.",
    )

    @model_validator(mode="after")
    def _rows_outlive_the_rules_that_read_them(self) -> VerifySettings:
        needed = max(self.send_window_seconds, self.code_ttl_seconds, self.proof_ttl_seconds, self.resend_cooldown_seconds)
        if self.verification_retention_hours * 3600 < needed:
            raise ValueError("verification_retention_hours must cover the send window, the resend cooldown and the "
                             f"code and proof lifetimes ({needed} s)")
        return self

    def origin_host(self) -> str:
        return self.sms_origin_host or urlsplit(self.public_url).hostname or "localhost"

    def secrets_in_use(self) -> tuple[str, ...]:
        twilio = ("twilio_auth_token",) if self.sms_transport == "twilio" else ()
        return (*super().secrets_in_use(), "verify_secret", *twilio)


class TwilioLocalSettings(TwilioCredentials):
    """The local Twilio-protocol server (python -m msp_verify.twilio_local)."""

    twilio_local_host: str = Field("127.0.0.1", description="Interface the local Twilio server binds to.")
    twilio_local_port: int = Field(8106, description="Port of the local Twilio server (MSP_TWILIO_LOCAL_PORT).")
    dev_outbox: str = Field("var/outbox", description="Dev outbox folder: received SMS and calls go to sms.jsonl.")
    log_level: str = Field("INFO", description="Root log level.")
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")

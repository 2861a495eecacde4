"""mail-service settings (env prefix MSP_, see msp_shared.config.ServiceSettings).

The SMTP defaults point at the local dev SMTP server (`python -m msp_mail.devsmtp`, plain
SMTP on 127.0.0.1:2525). Production sets MSP_SMTP_HOST/PORT, MSP_SMTP_STARTTLS=true and the
relay's credentials."""
from __future__ import annotations

from typing import Literal

from msp_shared.config import ServiceSettings
from pydantic import AliasChoices, Field, SecretStr, model_validator

# Dev only: base64 of 32 bytes. Production sets MSP_ATTACHMENT_MASTER_KEYS.
DEV_MASTER_KEYS = "dev1:ZGV2LW9ubHktYXR0YWNobWVudC1tYXN0ZXIta2V5ISE="


class MailSettings(ServiceSettings):
    service_name: str = Field("mail", description="Name used in logs, traces and queue names.")
    http_port: int = Field(
        8103,
        validation_alias=AliasChoices("MSP_MAIL_PORT", "http_port"),
        description="Port mail-service's HTTP server binds to (MSP_MAIL_PORT).",
    )

    # --- the SMTP relay outbound email goes through --------------------------------------
    smtp_host: str = Field("127.0.0.1", description="SMTP relay host (MSP_SMTP_HOST).")
    smtp_port: int = Field(2525, description="SMTP relay port (MSP_SMTP_PORT); 587 for a STARTTLS relay.")
    smtp_starttls: bool = Field(
        False,
        description="Require STARTTLS before sending (MSP_SMTP_STARTTLS). On in production; the local "
        "dev server speaks plain SMTP.",
    )
    smtp_validate_certs: bool = Field(True, description="Verify the relay's TLS certificate (MSP_SMTP_VALIDATE_CERTS).")
    smtp_ca_file: str | None = Field(
        None, description="CA bundle to verify a relay with a private certificate (MSP_SMTP_CA_FILE); "
        "none = the system's CAs.",
    )
    smtp_username: SecretStr | None = Field(None, description="SMTP AUTH user name (MSP_SMTP_USERNAME); none = no AUTH.")
    smtp_password: SecretStr | None = Field(None, description="SMTP AUTH password (MSP_SMTP_PASSWORD).")
    smtp_timeout_seconds: float = Field(30.0, description="Timeout of each SMTP connection/command (MSP_SMTP_TIMEOUT_SECONDS).")
    mail_from: str = Field(
        "SecurePractice <no-reply@securepractice.local>",
        description="From header and envelope sender of outbound email (MSP_MAIL_FROM).",
    )

    # --- delivery and retries ------------------------------------------------------------
    mail_retry_first_delay_seconds: float = Field(
        30.0, description="Delay before the first retry after a transient SMTP failure; doubles per attempt "
        "(MSP_MAIL_RETRY_FIRST_DELAY_SECONDS).",
    )
    mail_retry_max_delay_seconds: float = Field(
        3600.0, description="Longest delay between two attempts (MSP_MAIL_RETRY_MAX_DELAY_SECONDS)."
    )
    mail_retry_give_up_seconds: float = Field(
        3 * 24 * 3600.0,
        description="A mail still undelivered this long after it was requested is marked failed "
        "(MSP_MAIL_RETRY_GIVE_UP_SECONDS); until then an SMTP outage only delays it.",
    )
    mail_scan_interval_seconds: float = Field(
        15.0, description="How often the sender looks for retries that fell due (MSP_MAIL_SCAN_INTERVAL_SECONDS); "
        "new requests wake it at once.",
    )
    mail_claim_lease_seconds: float = Field(
        300.0, description="How long a replica holds a claimed mail before another may take it over after a "
        "crash (MSP_MAIL_CLAIM_LEASE_SECONDS).",
    )
    mail_send_batch: int = Field(20, description="Mails claimed per round by one replica (MSP_MAIL_SEND_BATCH).")

    # --- secure messages and attachments (msp_mail.messaging, msp_mail.collaborator) -------
    attachment_storage: Literal["disk", "s3"] = Field(
        "disk", description="Where encrypted attachments live (MSP_ATTACHMENT_STORAGE): disk (one replica, or a "
        "shared volume) or s3 (S3-compatible object storage shared by every replica).",
    )
    attachment_dir: str = Field("var/attachments", description="Folder of encrypted attachments when storage is disk (MSP_ATTACHMENT_DIR).")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MSP_S3_ENDPOINT_URL); none = AWS.")
    s3_region: str = Field("us-east-1", description="S3 region (MSP_S3_REGION).")
    s3_bucket: str = Field("msp-attachments", description="Bucket holding encrypted attachments (MSP_S3_BUCKET).")
    s3_prefix: str = Field("attachments/", description="Key prefix of attachment objects in the bucket (MSP_S3_PREFIX).")
    s3_access_key_id: SecretStr | None = Field(None, description="S3 access key (MSP_S3_ACCESS_KEY_ID); none = the default AWS credential chain.")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key (MSP_S3_SECRET_ACCESS_KEY).")
    attachment_master_keys: SecretStr = Field(
        SecretStr(DEV_MASTER_KEYS),
        description='Master keys wrapping the per-attachment data keys (MSP_ATTACHMENT_MASTER_KEYS): "kid:base64-32-bytes,..."; '
        "the last one (or MSP_ATTACHMENT_MASTER_KEY_CURRENT) wraps new keys, every listed one unwraps, so a key "
        "rotates by adding a new one and re-wrapping (python -m msp_mail.messaging.rewrap).",
    )
    attachment_master_key_current: str | None = Field(None, description="Key id wrapping new data keys (MSP_ATTACHMENT_MASTER_KEY_CURRENT).")
    attachment_max_files: int = Field(100, ge=1, description="Most files one message or case upload may carry (MSP_ATTACHMENT_MAX_FILES).")
    message_default_expiry_days: int = Field(
        30, ge=1, description="Days a message lives unless the practice or the sender says shorter (MSP_MESSAGE_DEFAULT_EXPIRY_DAYS).",
    )
    message_max_expiry_days: int = Field(30, ge=1, description="Longest life of a message, in days (MSP_MESSAGE_MAX_EXPIRY_DAYS).")
    message_digest_days_before: int = Field(
        3, ge=1, description="Senders get one digest this many days before their messages with attachments expire "
        "(MSP_MESSAGE_DIGEST_DAYS_BEFORE).",
    )
    message_sweep_interval_seconds: float = Field(
        60.0, gt=0, description="How often expired messages are deleted and expiry digests sent (MSP_MESSAGE_SWEEP_INTERVAL_SECONDS).",
    )
    message_page_size: int = Field(50, ge=1, le=200, description="Messages per folder page (MSP_MESSAGE_PAGE_SIZE).")
    auth_url: str = Field("http://127.0.0.1:8101", description="Base URL of auth-service, asked for recipients' accounts (MSP_AUTH_URL).")
    auth_timeout_seconds: float = Field(10.0, description="Timeout of a call to auth-service (MSP_AUTH_TIMEOUT_SECONDS).")
    case_quota: int = Field(10, ge=0, description="Accepted Collaborator cases included with each SecureMail account (MSP_CASE_QUOTA).")

    @model_validator(mode="after")
    def _no_credentials_in_clear(self) -> "MailSettings":
        if self.smtp_username is not None and not self.smtp_starttls:
            raise ValueError("MSP_SMTP_USERNAME is set but MSP_SMTP_STARTTLS is off: refusing to send SMTP credentials in clear")
        if self.mail_retry_first_delay_seconds <= 0 or self.mail_retry_max_delay_seconds < self.mail_retry_first_delay_seconds:
            raise ValueError("retry delays must be positive and max >= first")
        return self

    def secrets_in_use(self) -> tuple[str, ...]:
        return (*super().secrets_in_use(), "attachment_master_keys", "smtp_password", "s3_secret_access_key")

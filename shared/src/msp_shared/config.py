"""Settings common to every process. Each service subclasses ServiceSettings and adds its own.

Every setting is read from the environment (prefix MSP_) or a `.env` file. Secrets are
`SecretStr`, so they print as '**********' in logs and reprs."""
from __future__ import annotations

import base64
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_IDENTITY_SECRET = "dev-only-identity-secret-change-me-in-production"
DEV_VERIFY_SECRET = "dev-only-verification-secret-change-me-in-production"
DEV_SEAL_KEY = "ZGV2LW9ubHktc2VhbC1rZXktMzItYnl0ZXMtbG9uZyE="  # base64 of 32 bytes, dev only
# public_url hosts no real deployment can have, where development secrets are allowed: this
# machine, and the special-use names for testing that public DNS never resolves (RFC 6761).
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
TESTING_DOMAINS = (".localhost", ".test", ".invalid")
PLACEHOLDER = "change-me"  # deploy/k8s/secrets.example.yaml's values, as public as the defaults
HMAC_SECRETS = ("identity_secret", "verify_secret")  # need MIN_HMAC_SECRET_BYTES on a real site
MIN_HMAC_SECRET_BYTES = 32


class ServiceSettings(BaseSettings):
    # hide_input_in_errors: a refused setting must not print the others, secrets among them,
    # into the start-up log (pydantic's error shows the input otherwise).
    model_config = SettingsConfigDict(env_prefix="MSP_", env_file=".env", extra="ignore", hide_input_in_errors=True)

    service_name: str = Field("service", description="Name used in logs, traces and queue names.")
    http_host: str = Field("127.0.0.1", description="Interface the HTTP server binds to.")
    http_port: int = Field(8100, description="Port the HTTP server binds to (per-service alias).")
    database_url: str = Field(
        "postgresql://msp:msp@127.0.0.1:5432/securepractice",
        description="This service's PostgreSQL DSN; each service may point at its own database.",
    )
    migrate_on_start: bool = Field(True, description="Apply pending migrations at start (advisory-locked, safe with replicas).")
    db_pool_min: int = Field(1, description="Minimum connections in the pool.")
    db_pool_max: int = Field(10, description="Maximum connections in the pool.")
    amqp_url: str = Field("amqp://guest:guest@127.0.0.1:5672/", description="RabbitMQ URL.")
    bus_exchange: str = Field(
        "msp.events",
        description="Topic exchange for domain events; queue names are prefixed by it, so a "
        "test run or a staging stack gets its own names on a shared broker.",
    )
    bus_queue_type: Literal["quorum", "classic"] = Field(
        "quorum",
        description="Queue type of consumer groups and DLQs: quorum in production (replicated, "
        "delivery limit); classic only where a broker must host many short-lived test stacks.",
    )
    bus_prefetch: int = Field(32, description="Unacknowledged messages per consumer.")
    bus_max_retries: int = Field(5, description="Retries of a failing message (after its first delivery) before it is parked in the DLQ.")
    bus_retry_delay_ms: int = Field(1000, description="First retry delay; doubles per retry.")
    outbox_retention_days: float = Field(
        7, gt=0,
        description="Days a published outbox row is kept (to trace what was sent); unpublished rows are never deleted.",
    )
    inbox_retention_days: float = Field(
        30, ge=1,
        description="Days a processed event id is kept in the inbox (redelivery comes within moments).",
    )
    retention_interval_seconds: float = Field(3600, gt=0, description="How often old outbox and inbox rows are deleted.")
    identity_secret: SecretStr = Field(
        SecretStr(DEV_IDENTITY_SECRET),
        description="HMAC key shared by the gateway (signs) and services (verify identity headers).",
    )
    identity_ttl_seconds: int = Field(30, description="Lifetime of a signed identity header.")
    seal_key: SecretStr = Field(
        SecretStr(DEV_SEAL_KEY),
        description="Base64 32-byte AES key sealing secret fields (email addresses, links) in events.",
    )
    verify_secret: SecretStr = Field(
        SecretStr(DEV_VERIFY_SECRET),
        description="HMAC key shared by auth-service and verify-service for verification tickets and proofs.",
    )
    log_level: str = Field("INFO", description="Root log level.")
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")
    tracing_exporter: Literal["none", "console", "otlp"] = Field("none", description="Span exporter.")
    otlp_endpoint: str = Field("http://127.0.0.1:4318/v1/traces", description="OTLP/HTTP traces endpoint.")
    shutdown_grace_seconds: float = Field(10.0, description="Time allowed for in-flight work on shutdown.")
    public_url: str = Field("http://127.0.0.1:8080", description="Where users open the portal (links in emails).")
    dev_outbox: str = Field("var/outbox", description="Dev outbox folder: local mail and SMS land here.")
    phone_default_region: str = Field("US", description="Region assumed for phone numbers written without +country code.")

    def secrets_in_use(self) -> tuple[str, ...]:
        """Names of the secret settings this service uses; each subclass adds its own. The URLs
        carry the service's database and broker passwords (checked for the placeholder)."""
        return ("identity_secret", "seal_key", "database_url", "amqp_url")

    @field_validator("public_url")
    @classmethod
    def _one_unambiguous_host(cls, url: str) -> str:
        """The host checked below must be the one browsers open: urlsplit reads
        "https://portal.example.com\\@localhost/" as localhost, a browser as portal.example.com."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 -- raises on a port that is not a number
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(
                c in parts.netloc for c in "@\\"):
            raise ValueError("MSP_PUBLIC_URL must be an http:// or https:// URL naming its host, with no '@' or '\\'")
        return url

    @model_validator(mode="after")
    def _no_development_secrets_in_public(self) -> "ServiceSettings":
        """A secret left at its development default, in any form, or at the example's placeholder
        is public knowledge (it is in this repository): refuse to start with one, or with a short
        HMAC key, unless the portal is on this machine or a testing name. Never prints a secret."""
        host = (urlsplit(self.public_url).hostname or "").lower().rstrip(".")
        if host in LOCAL_HOSTS or host.endswith(TESTING_DOMAINS):
            return self
        fields = type(self).model_fields
        published = set().union(*(_meanings(f.default) for f in fields.values() if isinstance(f.default, SecretStr)))
        in_use = [(name, _reveal(getattr(self, name))) for name in self.secrets_in_use() if getattr(self, name) is not None]
        known = [name for name, text in in_use if PLACEHOLDER in text.lower() or _meanings(text) & published]
        short = [name for name, text in in_use if name in HMAC_SECRETS and len(text.strip().encode()) < MIN_HMAC_SECRET_BYTES]
        named = lambda names: ", ".join(env_name(type(self), name) for name in names)  # noqa: E731
        if known:
            raise ValueError(
                f"public_url is {self.public_url} but these secrets still have their development values "
                f"(published in the source code) or the example's CHANGE-ME placeholder: set {named(known)}"
            )
        if short:
            raise ValueError(f"public_url is {self.public_url}: {named(short)} must be at least "
                             f"{MIN_HMAC_SECRET_BYTES} bytes (e.g. openssl rand -base64 48)")
        return self


def _reveal(value: SecretStr | str) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _meanings(secret: SecretStr | str) -> set[str | bytes]:
    """What a secret means to the code that reads it, so that one written differently still
    matches: its text, stripped (an HMAC key, a password); its base64 decoding (b64decode skips
    newlines and stray characters); and for a "kid:base64,..." key list, each entry's key (any
    listed key unwraps)."""
    text = _reveal(secret).strip()
    meanings: set[str | bytes] = {text}
    for encoded in [text, *(entry.partition(":")[2] for entry in text.split(",") if ":" in entry)]:
        try:
            meanings.add(base64.b64decode(encoded))
        except ValueError:  # not base64 (binascii.Error, or not ASCII)
            pass
    return meanings - {"", b""}


def env_name(settings_class: type[BaseSettings], name: str) -> str:
    """The environment variable a setting is read from."""
    alias = settings_class.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return "MSP_" + name.upper()

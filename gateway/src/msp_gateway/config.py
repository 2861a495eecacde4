"""Gateway settings (env prefix MSP_). Every setting is documented; secrets are SecretStr."""
from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field

from msp_shared.config import ServiceSettings

KIB = 1024
MIB = 1024 * KIB


class GatewaySettings(ServiceSettings):
    service_name: str = Field("gateway", description="Name used in logs, traces and queue names.")
    http_port: int = Field(
        8080,
        validation_alias=AliasChoices("MSP_GATEWAY_PORT", "http_port"),
        description="Port the gateway listens on (env MSP_GATEWAY_PORT).",
    )

    # Upstream services: the gateway maps /api/v1/<area>/... to one of them.
    auth_url: str = Field("http://127.0.0.1:8101", description="Base URL of auth-service.")
    verify_url: str = Field("http://127.0.0.1:8102", description="Base URL of verify-service.")
    mail_url: str = Field("http://127.0.0.1:8103", description="Base URL of mail-service.")
    billing_url: str = Field("http://127.0.0.1:8104", description="Base URL of billing-service.")
    upstream_pool_size: int = Field(256, description="Maximum open connections to all upstreams (one pool per process).")
    upstream_connect_timeout_seconds: float = Field(5.0, description="Time allowed to connect to an upstream.")
    upstream_read_timeout_seconds: float = Field(
        60.0,
        description="Longest wait for an upstream's answer on ordinary requests: for it to start "
        "(and, if small, to complete), then between two chunks of a streamed one; enforced within "
        "a quarter of itself (at most 1 s) late. Uploads have none: the upstream reads the whole "
        "body before it answers.",
    )

    # Sessions.
    session_idle_minutes: float = Field(30, description="Sliding idle expiry: a session ends after this long without a request.")
    session_absolute_hours: float = Field(12, description="Absolute session lifetime, activity or not.")
    session_touch_seconds: float = Field(
        30,
        description="last_seen_at is written to PostgreSQL at most this often per session; idle "
        "expiry seen by another replica may come this much early, never late.",
    )
    session_cache_seconds: float = Field(
        5,
        description="How long a replica trusts its in-memory copy of a session row; bounds how "
        "long a logout on another replica can go unseen here (revocations are broadcast at once).",
    )
    session_cookie_name: str = Field("msp_session", description="Name of the session cookie.")
    session_cookie_secure: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Secure cookie flag (and HSTS): auto = Secure unless public_url is http on localhost/127.0.0.1.",
    )
    session_cookie_samesite: Literal["Lax", "Strict"] = Field("Lax", description="SameSite attribute of the session cookie.")
    session_purge_seconds: float = Field(300, description="How often expired sessions and old rate-limit hits are deleted.")

    # Request bodies.
    json_body_limit_bytes: int = Field(64 * KIB, description="Largest body accepted on ordinary (JSON) API routes (413 above).")
    upload_body_limit_bytes: int = Field(
        300 * MIB + 4 * MIB,
        description="Largest streamed body on upload routes (messages, replies, case files): "
        "300 MB of attachments plus multipart overhead; mail-service enforces the exact 300 MB.",
    )

    # Who the client is.
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="CIDRs of reverse proxies whose X-Forwarded-For is believed (JSON list, e.g. "
        '\'["10.0.0.0/8"]\'); from anyone else the header is ignored.',
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Extra browser origins allowed to make state-changing requests (public_url's origin always is).",
    )

    # Rate limits: sliding windows on sensitive routes.
    rate_limit_store: Literal["postgres", "memory"] = Field(
        "postgres",
        description="Where rate-limit hits are counted: postgres (shared by all replicas) or memory (per process).",
    )
    rate_limit_window_seconds: int = Field(900, description="Length of every rate-limit sliding window.")
    rate_limit_login_per_ip: int = Field(50, description="Login attempts per client IP per window.")
    rate_limit_login_per_account: int = Field(10, description="Login attempts per email address per window.")
    rate_limit_sensitive_per_ip: int = Field(
        30, description="Requests per client IP per window to other sensitive routes (password, verifications, registrations, invitations)."
    )
    rate_limit_sensitive_per_account: int = Field(
        10, description="Requests per account (email in the body, or the signed-in user) per window to those routes."
    )

"""billing-service settings (env prefix MSP_, see msp_shared.config.ServiceSettings)."""
from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr

from msp_shared.config import ServiceSettings

from .stripe_local import DEV_API_KEY, DEV_WEBHOOK_SECRET


class BillingSettings(ServiceSettings):
    service_name: str = Field("billing", description="Name used in logs, traces and queue names.")
    http_port: int = Field(
        8104,
        validation_alias=AliasChoices("MSP_BILLING_PORT", "http_port"),
        description="Port billing-service listens on (MSP_BILLING_PORT).",
    )
    stripe_api_key: SecretStr = Field(
        SecretStr(DEV_API_KEY),
        description="Stripe secret API key (sk_...). The default only works with the local Stripe server.",
    )
    stripe_api_base: str = Field(
        "http://127.0.0.1:12111",
        description="Stripe API base URL: https://api.stripe.com in production, the local "
        "Stripe-compatible server (python -m msp_billing.stripe_local) by default.",
    )
    stripe_webhook_secret: SecretStr = Field(
        SecretStr(DEV_WEBHOOK_SECRET),
        description="Signing secret (whsec_...) of the webhook endpoint /billing/webhooks/stripe.",
    )
    stripe_webhook_tolerance_seconds: int = Field(
        300, description="Oldest webhook signature timestamp accepted (Stripe's default tolerance)."
    )
    stripe_timeout_seconds: float = Field(20.0, description="Timeout of one call to the Stripe API.")
    stripe_max_network_retries: int = Field(
        2, description="SDK retries of a failed Stripe call (safe: every POST carries an idempotency key)."
    )
    securemail_price_cents: int = Field(1000, description="Price of one SecureMail account per month, in cents.")
    securemail_price_lookup_key: str = Field(
        "msp_securemail_monthly",
        description="Stripe price lookup_key of the SecureMail plan; created on first use if absent.",
    )
    currency: str = Field("usd", description="Currency of the SecureMail price.")
    auth_url: str = Field(
        "http://127.0.0.1:8101",
        description="Base URL of auth-service, asked for a user's sign-in address when they email "
        "their invoices to themselves (MSP_AUTH_URL).",
    )
    auth_timeout_seconds: float = Field(10.0, description="Timeout of a call to auth-service (MSP_AUTH_TIMEOUT_SECONDS).")

    def secrets_in_use(self) -> tuple[str, ...]:
        return (*super().secrets_in_use(), "stripe_api_key", "stripe_webhook_secret")

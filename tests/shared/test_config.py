"""Settings refuse to serve a real site on development secrets (they are published in this
repository); on this machine and on testing names (RFC 6761) the defaults keep working."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from msp_shared.config import DEV_IDENTITY_SECRET, ServiceSettings


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080",
                                 "https://portal.localhost", "https://portal.example.test", "https://x.invalid"])
def test_development_secrets_are_allowed_on_this_machine_and_testing_names(url: str) -> None:
    assert ServiceSettings(public_url=url).identity_secret.get_secret_value() == DEV_IDENTITY_SECRET


@pytest.mark.parametrize("url", ["https://portal.example.com", "https://portal.example.com.", "https://localhost.evil.example",
                                 "https://127.0.0.1.nip.io", "http://10.0.0.5:8080"])
def test_a_real_site_on_development_secrets_refuses_to_start(url: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ServiceSettings(public_url=url)
    assert "MSP_IDENTITY_SECRET" in str(refused.value) and "MSP_SEAL_KEY" in str(refused.value)


def test_only_the_secrets_left_at_their_defaults_are_named() -> None:
    with pytest.raises(ValidationError) as refused:
        ServiceSettings(public_url="https://portal.example.com", identity_secret="a-real-secret-" + "q" * 40)
    assert "MSP_SEAL_KEY" in str(refused.value) and "MSP_IDENTITY_SECRET" not in str(refused.value)
    assert "a-real-secret" not in str(refused.value)
    real = ServiceSettings(public_url="https://portal.example.com", identity_secret="s" * 48, seal_key="k" * 44)
    assert real.secrets_in_use() == ("identity_secret", "seal_key")

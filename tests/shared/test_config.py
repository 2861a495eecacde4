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
    assert real.secrets_in_use() == ("identity_secret", "seal_key", "database_url", "amqp_url")


# --- a published secret in another form, the example's placeholders, short HMAC keys --------

import base64  # noqa: E402
import os  # noqa: E402

from msp_shared.config import DEV_SEAL_KEY, DEV_VERIFY_SECRET  # noqa: E402

REAL_SITE = "https://portal.example.com"


def _fresh_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _real(**secrets: str) -> dict[str, str]:
    """Every shared secret set to a fresh random value, then the ones given."""
    return {"identity_secret": base64.b64encode(os.urandom(48)).decode(),
            "verify_secret": base64.b64encode(os.urandom(48)).decode(), "seal_key": _fresh_key(), **secrets}


def _refusal(settings_class: type, **values: str) -> str:
    with pytest.raises(ValidationError) as refused:
        settings_class(**values)
    return str(refused.value)


def _line_wrapped(key: str) -> str:
    return key[:20] + "\n" + key[20:]


@pytest.mark.parametrize("seal_key", [DEV_SEAL_KEY + "\n", f"  {DEV_SEAL_KEY}\r\n", _line_wrapped(DEV_SEAL_KEY),
                                      DEV_SEAL_KEY[:8] + "*" + DEV_SEAL_KEY[8:]])
def test_the_development_seal_key_written_another_way_is_refused(seal_key: str) -> None:
    """base64.b64decode (how Sealer reads the key) skips newlines and stray characters: the same AES key."""
    assert base64.b64decode(seal_key) == base64.b64decode(DEV_SEAL_KEY)
    printed = _refusal(ServiceSettings, public_url=REAL_SITE, **_real(seal_key=seal_key))
    assert "MSP_SEAL_KEY" in printed and "development values" in printed
    assert DEV_SEAL_KEY[:12] not in printed and "MSP_IDENTITY_SECRET" not in printed


@pytest.mark.parametrize("secret", [DEV_IDENTITY_SECRET + "\n", f" {DEV_IDENTITY_SECRET} ", DEV_VERIFY_SECRET])
def test_a_development_hmac_key_with_whitespace_or_another_secrets_default_is_refused(secret: str) -> None:
    printed = _refusal(ServiceSettings, public_url=REAL_SITE, **_real(identity_secret=secret))
    assert "MSP_IDENTITY_SECRET" in printed and "dev-only" not in printed


@pytest.mark.parametrize("value", ["CHANGE-ME-48-random-bytes-base64", "CHANGE-ME-32-random-bytes-base64",
                                   "x" * 40 + "CHANGE-ME", "change-me-" + "y" * 40])
def test_the_example_placeholders_are_refused(value: str) -> None:
    printed = _refusal(ServiceSettings, public_url=REAL_SITE, **_real(identity_secret=value))
    assert "MSP_IDENTITY_SECRET" in printed and "CHANGE-ME placeholder" in printed
    assert "random-bytes" not in printed and "x" * 20 not in printed and "y" * 20 not in printed


@pytest.mark.parametrize("length", [1, 16, 31])
def test_a_short_hmac_key_is_refused_on_a_real_site(length: int) -> None:
    short = "Zq9" * 11
    printed = _refusal(ServiceSettings, public_url=REAL_SITE, **_real(identity_secret=short[:length]))
    assert "MSP_IDENTITY_SECRET must be at least 32 bytes" in printed and "Zq9" not in printed
    padded = _refusal(ServiceSettings, public_url=REAL_SITE, **_real(identity_secret=f"  {short[:31]}\n"))
    assert "MSP_IDENTITY_SECRET" in padded  # whitespace does not count
    assert ServiceSettings(public_url=REAL_SITE, **_real(identity_secret=short[:32]))
    assert ServiceSettings(public_url="http://127.0.0.1:8080", identity_secret=short[:length])  # this machine: any key


def test_verify_secret_is_held_to_the_same_rules_where_it_is_used() -> None:
    pytest.importorskip("msp_auth")
    from msp_auth.config import AuthSettings

    base = {"public_url": REAL_SITE, "seed_support_password": "Real-Support-" + _fresh_key(), **_real()}
    for bad in (DEV_VERIFY_SECRET + "\n", "CHANGE-ME-48-random-bytes-base64", "v" * 31):
        printed = _refusal(AuthSettings, **{**base, "verify_secret": bad})
        assert "MSP_VERIFY_SECRET" in printed and "MSP_IDENTITY_SECRET" not in printed and "vvvv" not in printed
    assert AuthSettings(**base).verify_secret.get_secret_value() == base["verify_secret"]
    # The gateway does not use verify_secret: its default there is not a reason to refuse.
    assert ServiceSettings(public_url=REAL_SITE, identity_secret=base["identity_secret"], seal_key=base["seal_key"])


def test_a_master_key_list_holding_the_development_key_is_refused() -> None:
    pytest.importorskip("msp_mail")
    from msp_mail.config import DEV_MASTER_KEYS, MailSettings
    from msp_mail.crypto import MasterKeys

    dev_kid, _, dev_key = DEV_MASTER_KEYS.partition(":")
    new = _fresh_key()
    for keys in (f"k2:{new},{DEV_MASTER_KEYS}", f"{DEV_MASTER_KEYS},k2:{new}", f"k2:{new}, k1:{dev_key}\n",
                 f"k2:{new},old:{_line_wrapped(dev_key)}", DEV_MASTER_KEYS + "\n", "k1:CHANGE-ME-32-random-bytes-base64"):
        if "CHANGE-ME" not in keys:  # the dev key would still unwrap (and so decrypt) attachments
            assert base64.b64decode(dev_key) in MasterKeys.parse(keys).keys.values()
        printed = _refusal(MailSettings, public_url=REAL_SITE, **_real(attachment_master_keys=keys))
        assert "MSP_ATTACHMENT_MASTER_KEYS" in printed and "MSP_SEAL_KEY" not in printed
        assert dev_key[:12] not in printed and new[:12] not in printed
    accepted = MailSettings(public_url=REAL_SITE, **_real(attachment_master_keys=f"k1:{_fresh_key()},k2:{new}"))
    assert MasterKeys.parse(accepted.attachment_master_keys.get_secret_value()).current == "k2"


def test_real_random_secrets_are_accepted_and_never_printed() -> None:
    secrets = _real()
    settings = ServiceSettings(public_url=REAL_SITE, **secrets)
    assert settings.seal_key.get_secret_value() == secrets["seal_key"]
    # One left at its default: the refusal names it and prints none of the values given.
    printed = _refusal(ServiceSettings, public_url=REAL_SITE, **{**secrets, "seal_key": DEV_SEAL_KEY + "\n"})
    assert not [value for value in secrets.values() if value[:12] in printed or value[-12:] in printed]
    assert DEV_SEAL_KEY[:12] not in printed and DEV_SEAL_KEY[-12:] not in printed


@pytest.mark.parametrize("url", ["https://portal.example.com\\@localhost/", "https://portal.example.com\\@127.0.0.1",
                                 "https://user@portal.example.com", "https://localhost@portal.example.com",
                                 "https://user:pass@localhost", "ftp://localhost", "javascript://localhost",
                                 "portal.example.com", "localhost:8080", "https://", "https://localhost:80x",
                                 "http://[::1", "https://portal.example.com\\"])
def test_a_public_url_browsers_could_read_differently_is_refused(url: str) -> None:
    """Always, real secrets or not: the host the check reads must be the one browsers open."""
    printed = _refusal(ServiceSettings, public_url=url, **_real())
    assert "MSP_PUBLIC_URL must be an http:// or https:// URL" in printed
    assert "pass" not in printed and "user" not in printed


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://127.0.0.1:8080/", "https://portal.example.test",
                                 "https://portal.example.com", "https://portal.example.com:8443/portal/",
                                 "http://[::1]:8080", "https://PORTAL.example.com/#/x?y=@z"])
def test_ordinary_public_urls_are_accepted(url: str) -> None:
    assert ServiceSettings(public_url=url, **_real()).public_url == url


def test_every_public_url_the_repository_sets_validates() -> None:
    """docker-compose, scripts/up.sh's default, bench and the tests use local or testing hosts;
    the k8s ConfigMap a real one (with real secrets)."""
    for url in ("http://127.0.0.1:8080", "http://127.0.0.1:18080", "https://portal.example.test"):
        assert ServiceSettings(public_url=url).public_url == url
    assert ServiceSettings(public_url="https://portal.example.com", **_real())


def test_the_example_placeholder_in_a_database_or_broker_url_refuses_to_start() -> None:
    """deploy/k8s/secrets.example.yaml puts CHANGE-ME in the service's database and broker URLs too."""
    real = {"identity_secret": "s" * 48, "seal_key": "k" * 44}
    for name, url in (("database_url", "postgresql://msp_auth:CHANGE-ME@db.example.com:5432/sp"),
                      ("amqp_url", "amqps://msp_auth:CHANGE-ME@mq.example.com:5671/sp")):
        with pytest.raises(ValidationError) as refused:
            ServiceSettings(public_url="https://portal.example.com", **real, **{name: url})
        assert f"MSP_{name.upper()}" in str(refused.value)

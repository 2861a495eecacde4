import time

import pytest

from msp_shared import identity, signed
from msp_shared.identity import Identity, IdentityError

SECRET = b"k" * 32


def _sign(ident: Identity, method: str = "GET", path: str = "/me", now: float | None = None, ttl: int = 30) -> str:
    return identity.sign(ident, secret=SECRET, method=method, path=path, now=now or time.time(), ttl=ttl)


def test_round_trip_keeps_who_and_where() -> None:
    header = _sign(Identity(user_id="u1", practice_id="p1", roles=("user_manager",), session_id="s1", ip="10.0.0.9"))
    got = identity.verify(header, secret=SECRET, method="GET", path="/me", now=time.time())
    assert (got.user_id, got.practice_id, got.roles, got.ip) == ("u1", "p1", ("user_manager",), "10.0.0.9")
    assert got.has_role("user_manager") and got.authenticated


@pytest.mark.parametrize(
    "method,path,secret,now_shift",
    [
        ("POST", "/me", SECRET, 0),  # same header, other method
        ("GET", "/practice/users", SECRET, 0),  # other path
        ("GET", "/me", b"x" * 32, 0),  # forged with another key
        ("GET", "/me", SECRET, 31),  # expired
    ],
)
def test_header_is_refused_for_another_request_key_or_time(method: str, path: str, secret: bytes, now_shift: int) -> None:
    now = time.time()
    header = _sign(Identity(user_id="u1"), now=now)
    with pytest.raises(IdentityError):
        identity.verify(header, secret=secret, method=method, path=path, now=now + now_shift)


def test_tampered_payload_is_refused() -> None:
    header = _sign(Identity(user_id="u1", roles=()))
    forged_payload = _sign(Identity(user_id="u1", roles=("support",))).split(".")[0]
    with pytest.raises(IdentityError):
        identity.verify(forged_payload + "." + header.split(".")[1], secret=SECRET, method="GET", path="/me", now=time.time())


@pytest.mark.parametrize("header", [None, "", "no-dot", "a.b"])
def test_missing_or_malformed_header_is_refused(header: str | None) -> None:
    with pytest.raises(IdentityError):
        identity.verify(header, secret=SECRET, method="GET", path="/me", now=time.time())


@pytest.mark.parametrize(
    "forged",
    [
        "x.é",  # non-ASCII signature: hmac.compare_digest refuses such str
        "\udcff.\udcff",  # undecodable header bytes, as aiohttp hands them over
        "eyJzdWIiOiJ1MSJ9.\ud800",  # a lone surrogate
    ],
)
def test_crafted_characters_in_a_header_are_refused_not_a_crash(forged: str) -> None:
    with pytest.raises(IdentityError):
        identity.verify(forged, secret=SECRET, method="GET", path="/me", now=time.time())


@pytest.mark.parametrize("forged", ["x.é", "\udcff.\udcff", "e30.\ud800", "\ud800.abc"])
def test_crafted_characters_in_a_signed_token_are_refused_not_a_crash(forged: str) -> None:
    with pytest.raises(signed.InvalidToken):
        signed.verify_claims(forged, purpose="verification-ticket", secret=SECRET, now=time.time())
    good = signed.sign_claims({"sub": "u1"}, purpose="verification-ticket", secret=SECRET, now=time.time(), ttl=60)
    assert signed.verify_claims(good, purpose="verification-ticket", secret=SECRET, now=time.time())["sub"] == "u1"


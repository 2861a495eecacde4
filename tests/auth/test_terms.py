"""The Terms of Use as versioned text: GET /terms (current) and GET /terms/{version}, public;
the version in the URL is validated strictly, so an attacker's input ("../", encoded slashes,
very long or odd characters) names nothing and never reads another file; the app refuses to
start with a configured version that has no text."""
from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest
from yarl import URL

from msp_auth import terms
from msp_auth.app import create_app
from msp_auth.config import AuthSettings
from msp_shared import identity
from msp_shared.identity import Identity

from auth_kit import CLIENT_IP, Auth, Response

SHIPPED = resources.files("msp_auth").joinpath("data/terms")


async def get_raw(auth: Auth, raw_path: str) -> Response:
    """GET exactly `raw_path` (no client-side normalising of dot segments or escapes), with an
    anonymous gateway identity signed for the path as the service decodes it."""
    url = URL.build(path=raw_path, encoded=True)
    header = identity.sign(Identity(user_id=None, ip=CLIENT_IP), secret=auth.secret, method="GET", path=url.path,
                           now=auth.clock.now().timestamp(), ttl=30)
    target = auth.client.make_url("").with_path(raw_path, encoded=True)
    async with auth.client.session.get(target, headers={identity.HEADER: header}) as resp:
        raw = await resp.read()
        body: Any = json.loads(raw) if resp.content_type == "application/json" and raw else raw.decode("utf-8", "replace")
        return Response(resp.status, body, dict(resp.headers), raw)


def assert_api_error(resp: Response, status: int, code: str) -> None:
    assert resp.status == status, (resp.status, resp.body)
    assert isinstance(resp.body, dict) and set(resp.body) == {"error", "message", "details"}, resp.body
    assert resp.body["error"] == code and resp.body["message"]


async def test_current_terms_are_public_and_match_the_configured_version(auth: Auth, auth_settings: AuthSettings) -> None:
    resp = await auth.call("GET", "/terms")  # an anonymous gateway identity: no session
    assert resp.status == 200, resp.body
    assert resp.body["version"] == auth_settings.terms_version == "2026-01"
    assert resp.body["current"] is True
    assert resp.body["text"] == SHIPPED.joinpath("2026-01.txt").read_text(encoding="utf-8")
    assert "SecurePractice" in resp.body["text"] and "HIPAA" in resp.body["text"]
    # The same text by its version, as a user who accepted it would look it up.
    by_version = await auth.call("GET", "/terms/2026-01")
    assert by_version.status == 200 and by_version.body == resp.body


async def test_an_unknown_version_is_404_in_the_api_shape(auth: Auth) -> None:
    for version in ("2020-01", "2026-02", "9999-99"):
        assert_api_error(await auth.call("GET", f"/terms/{version}"), 404, "terms_not_found")


ATTACKS = [
    "..", "...", "..%2F..%2Fhttp.py", "..%2fhttp.py", "%2e%2e%2fhttp.py", "%2E%2E", "2026-01%2F..%2F..%2Fhttp.py",
    "..%5Chttp.py", "2026-01.txt", "2026-01%00", "2026-01%00.txt", "%00", "2026-01%0A", "%202026-01", "2026-01%20",
    "2026-1", "26-01", "2026_01", "2026-001", "02026-01", "2026-01-01",
    "%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%96-%EF%BC%90%EF%BC%91",  # fullwidth digits: not ASCII
    "%D9%A2%D9%A0%D9%A2%D9%A6-%D9%A0%D9%A1",  # Arabic-Indic digits, which \d would accept
    "1" * 5000, "2026-01" * 1000, "%2F" * 2000,
    "README", "LICENSE-django", "common-passwords", "%2Fetc%2Fpasswd", "__init__", "..%2F..%2F__init__.py",
]


@pytest.mark.parametrize("version", ATTACKS)
async def test_an_attackers_version_names_nothing(auth: Auth, version: str) -> None:
    resp = await get_raw(auth, f"/terms/{version}")
    # It reached the handler (not the router's 404) and was refused there, in the API's shape.
    assert_api_error(resp, 404, "terms_not_found")
    # Nothing of any file in the package, only the error sentence.
    leaked = resp.raw.decode("utf-8", "replace")
    assert "import" not in leaked and "SecurePractice Terms" not in leaked and "root:" not in leaked


async def test_dot_segments_in_the_path_do_not_climb_out(auth: Auth) -> None:
    for path in ("/terms/../me", "/terms/./2026-01", "/terms/2026-01/", "/terms/2026-01/..", "/terms//2026-01"):
        resp = await get_raw(auth, path)
        assert resp.status == 404 or (resp.status == 200 and resp.body["version"] == "2026-01"), (path, resp.status)
        assert resp.status != 401, path  # never reached /me (signed-out: 401)


def test_the_version_check_is_strict() -> None:
    assert terms.valid_version("2026-01")
    for bad in ("2026-01\n", "２０２６-０１", "٢٠٢٦-٠١", "2026-01/", "../2026-01", "", "2026-01" * 2, "2026/01"):
        assert not terms.valid_version(bad), bad
        assert terms.text(bad) is None


def test_every_shipped_text_has_a_valid_version_name_and_content() -> None:
    names = [entry.name for entry in SHIPPED.iterdir()]
    assert names, "no Terms of Use shipped"
    for name in names:
        version, _, ext = name.partition(".")
        assert ext == "txt" and terms.valid_version(version), f"unexpected file in data/terms: {name}"
        text = terms.text(version)
        assert text and f"Version {version}" in text, name
    assert set(terms.texts()) == {n.partition(".")[0] for n in names}


def test_the_default_configured_version_has_a_text() -> None:
    version = AuthSettings.model_fields["terms_version"].default
    assert terms.text(version), f"terms_version {version} has no text in msp_auth/data/terms"


def test_the_app_refuses_to_start_with_a_version_that_has_no_text(base_env: dict) -> None:
    # Building the app connects to nothing; the check runs while the routes are added.
    with pytest.raises(ValueError, match="2031-07"):
        create_app(AuthSettings(**base_env, terms_version="2031-07"))
    with pytest.raises(ValueError, match="no text"):
        create_app(AuthSettings(**base_env, terms_version="../data/README"))
    create_app(AuthSettings(**base_env, terms_version="2026-01"))  # the shipped one is fine

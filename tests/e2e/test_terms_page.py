"""The Terms of Use through the whole stack: the registration form shows the text of the
version it asks the user to accept; GET /api/v1/terms works without a session, also for a
browser whose session cookie died; an attacker's version names nothing, in the API's shape."""
from __future__ import annotations

from importlib import resources

import aiohttp
import pytest
from e2e_kit import needs_chromium
from playwright.async_api import Page, expect
from stack import SUPPORT_EMAIL, SUPPORT_PASSWORD, Stack, links
from yarl import URL

TEXT = resources.files("msp_auth").joinpath("data/terms/2026-01.txt").read_text(encoding="utf-8")


async def get(stack: Stack, raw_path: str, cookie: str | None = None) -> tuple[int, dict]:
    """GET exactly this path on the gateway (no client-side normalising of dots or escapes)."""
    url = URL(stack.gateway).with_path(raw_path, encoded=True)
    headers = {"Cookie": f"msp_session={cookie}"} if cookie else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.content_type == "application/json", (raw_path, resp.status)
        return resp.status, await resp.json()


async def test_terms_are_public_even_with_a_dead_session_cookie(stack: Stack) -> None:
    for cookie in (None, "forged-or-expired"):
        status, body = await get(stack, "/api/v1/terms", cookie)
        assert status == 200, body
        assert body == {"version": "2026-01", "current": True, "text": TEXT}
        status, body = await get(stack, "/api/v1/terms/2026-01", cookie)
        assert status == 200 and body["text"] == TEXT
    # A dead cookie still cannot reach anything private.
    status, body = await get(stack, "/api/v1/me", "forged-or-expired")
    assert status == 401 and body["error"] == "session_expired"


@pytest.mark.parametrize("raw", [
    "/api/v1/terms/2019-12",
    "/api/v1/terms/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/v1/terms/%2e%2e%2fhttp.py",
    "/api/v1/terms/2026-01%2F..%2F..%2Fhttp.py",
    "/api/v1/terms/2026-01.txt",
    "/api/v1/terms/" + "9" * 3000,
    "/api/v1/terms/../me",
    "/api/v1/terms/../../../etc/passwd",
])
async def test_an_attackers_version_is_404_through_the_gateway(stack: Stack, raw: str) -> None:
    status, body = await get(stack, raw)
    assert status == 404, (raw, status, body)
    assert set(body) == {"error", "message", "details"} and body["error"] in ("terms_not_found", "not_found")
    assert "root:" not in body["message"] and "import" not in body["message"]


@needs_chromium
async def test_registration_shows_the_terms_next_to_the_checkbox(page: Page, stack: Stack) -> None:
    async with stack.browser() as support:
        status, body, _ = await support.login(SUPPORT_EMAIL, SUPPORT_PASSWORD)
        assert status == 200, body
        status, body, _ = await support.call("POST", "/admin/practices", json={
            "name": "Lakeside Dental", "first_user": {"email": "dana@lakeside.example", "two_step_required": False},
        })
        assert status == 201, body
    invitation = await stack.mail_to("dana@lakeside.example")
    link = next(link for link in links(invitation) if "#/register?token=" in link)

    await page.goto(link)
    await expect(page.get_by_role("heading", name="Register")).to_be_visible()
    terms = page.get_by_role("region", name="Terms of Use, version 2026-01")
    await expect(terms).to_be_hidden()  # folded until asked for
    await page.get_by_text("Read the Terms of Use (version 2026-01)").click()
    await expect(terms).to_be_visible()
    await expect(terms).to_contain_text("SecurePractice Terms of Use")
    await expect(terms).to_contain_text("HIPAA")
    assert (await terms.text_content()) == TEXT
    # The checkbox it belongs to names the same version, and registration still works.
    await page.get_by_label("First name").fill("Dana")
    await page.get_by_label("Last name").fill("Reyes")
    await page.get_by_label("Password", exact=True).fill("Sunny-Lake-42")
    await page.get_by_label("Repeat the password").fill("Sunny-Lake-42")
    await page.get_by_label("I have read and accept the Terms of Use (version 2026-01).").check()
    await page.get_by_role("button", name="Create my account").click()
    await expect(page.get_by_role("heading", name="Inbox")).to_be_visible()
    async with stack.browser() as dana:
        await dana.login("dana@lakeside.example", "Sunny-Lake-42")
        status, me, _ = await dana.call("GET", "/me")
    assert status == 200 and me["user"]["terms_version"] == "2026-01"

"""The templates: every one renders text and HTML, values are escaped in HTML, undeclared
values never appear, bad input is a permanent error."""
from __future__ import annotations

import pytest
from msp_mail.outbound.templates import (
    TEMPLATES,
    InvalidLink,
    MissingField,
    UnknownTemplate,
    render,
)

PORTAL = "https://portal.example.test"
LINK = "https://portal.example.test/x?token=abc&n=1"

SAMPLES = {
    "password_reset": {"link": LINK},
    "account_locked": {"link": LINK},
    "invitation": {"practice_name": "Smile Dental", "link": LINK},
    "password_expiry_warning": {"days_left": "7"},
    "message_waiting": {"practice_name": "Smile Dental", "link": LINK},
    "verification_required": {},
    "generic_notice": {"title": "Maintenance tonight", "text": "The portal is offline 1-2 am."},
}


def test_every_template_has_a_sample():
    assert set(SAMPLES) == set(TEMPLATES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_template_renders_text_and_html_with_its_link(name):
    mail = render(name, SAMPLES[name], portal_url=PORTAL)
    assert mail.subject and "\n" not in mail.subject
    link = SAMPLES[name].get("link", PORTAL)
    assert link in mail.text
    assert f'href="{link.replace("&", "&amp;")}"' in mail.html
    assert mail.html.lstrip().startswith("<!DOCTYPE html>")


def test_values_are_escaped_in_html_but_not_in_text():
    evil = '<script>alert("x")</script> & <b>Co</b>'
    mail = render("invitation", {"practice_name": evil, "link": LINK}, portal_url=PORTAL)
    assert "<script>" not in mail.html and "<b>Co</b>" not in mail.html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;Co&lt;/b&gt;" in mail.html
    assert evil in mail.text  # the text part is plain text: shown as typed


def test_a_link_cannot_break_out_of_the_href_attribute():
    link = 'https://portal.example.test/"><script>alert(1)</script>'
    mail = render("password_reset", {"link": link}, portal_url=PORTAL)
    assert '"><script>' not in mail.html
    assert "&quot;&gt;&lt;script&gt;" in mail.html


@pytest.mark.parametrize("link", ["javascript:alert(1)", "data:text/html,hi", "/relative/path", "https:///nohost",
                                  "https://portal.example.test/a b"])
def test_links_must_be_absolute_http_urls(link):
    with pytest.raises(InvalidLink):
        render("password_reset", {"link": link}, portal_url=PORTAL)


def test_subject_values_lose_line_breaks():
    mail = render("invitation", {"practice_name": "Smile\r\nBcc: victim@example.com", "link": LINK}, portal_url=PORTAL)
    assert "\r" not in mail.subject and "\n" not in mail.subject


def test_message_waiting_never_renders_subject_body_or_attachment_names():
    values = {"practice_name": "Smile Dental", "link": LINK, "subject": "Biopsy result",
              "body": "The lesion is malignant", "attachment_name": "biopsy.pdf", "attachments": "xray.png"}
    mail = render("message_waiting", values, portal_url=PORTAL)
    everything = mail.subject + mail.text + mail.html
    assert "Smile Dental" in everything
    for secret in ("Biopsy", "malignant", "biopsy.pdf", "xray.png"):
        assert secret not in everything


def test_unknown_template_and_missing_fields_are_errors():
    with pytest.raises(UnknownTemplate):
        render("no_such_template", {}, portal_url=PORTAL)
    with pytest.raises(MissingField):
        render("invitation", {"link": LINK}, portal_url=PORTAL)
    with pytest.raises(MissingField):
        render("password_reset", {"link": "  "}, portal_url=PORTAL)


def test_optional_link_defaults_to_the_portal():
    mail = render("password_expiry_warning", {"days_left": "3"}, portal_url=PORTAL)
    assert "3 day(s)" in mail.text and PORTAL in mail.text

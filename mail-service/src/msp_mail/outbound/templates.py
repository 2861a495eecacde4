"""The outbound email templates and their rendering (pure: no I/O).

Each template declares the fields it uses; a value not declared is never rendered, so a
producer that passes more than it should (a message subject, say) cannot leak it into an
email. Values are escaped for the HTML part, links must be absolute http(s) URLs, and header
values (the subject) lose line breaks. An unknown template or a missing field is a permanent
failure of that one mail (TemplateError)."""
from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from string import Template
from urllib.parse import urlsplit


class TemplateError(Exception):
    """The mail cannot be rendered, and retrying will not help."""


class UnknownTemplate(TemplateError):
    pass


class MissingField(TemplateError):
    pass


class InvalidLink(TemplateError):
    pass


@dataclass(frozen=True)
class EmailTemplate:
    subject: str
    text: str
    html: str
    required: frozenset[str]
    # Optional fields and their defaults; "$portal" as a default means the portal's URL.
    optional: Mapping[str, str] = field(default_factory=dict)
    # Fields that hold URLs: checked, and rendered as links in the HTML part.
    links: frozenset[str] = frozenset({"link"})

    @property
    def fields(self) -> frozenset[str]:
        return self.required | frozenset(self.optional)


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


_PORTAL = "$portal"
_FOOTER_TEXT = "\n--\nSecurePractice. This is an automated message; replies are not read.\n"
_LAYOUT = Template(
    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>$subject</title></head>\n"
    "<body style=\"font-family: Arial, sans-serif; line-height: 1.5; color: #222;\">\n"
    "$content\n"
    "<p style=\"color: #666; font-size: 12px;\">SecurePractice. This is an automated message; "
    "replies are not read.</p>\n</body></html>\n"
)


def _button(name: str) -> str:
    return f'<p><a href="${name}">${name}</a></p>'


TEMPLATES: dict[str, EmailTemplate] = {
    "password_reset": EmailTemplate(
        subject="Reset your SecurePractice password",
        text=(
            "Hello,\n\nSomeone, hopefully you, asked to reset the password of your SecurePractice account.\n"
            "To choose a new password, open this link:\n\n$link\n\n"
            "The link works once and expires soon. If you did not ask for this, ignore this email: "
            "your password stays as it is.\n"
        ),
        html=(
            "<p>Hello,</p><p>Someone, hopefully you, asked to reset the password of your SecurePractice "
            "account. To choose a new password, open this link:</p>" + _button("link") +
            "<p>The link works once and expires soon. If you did not ask for this, ignore this email: "
            "your password stays as it is.</p>"
        ),
        required=frozenset({"link"}),
    ),
    "account_locked": EmailTemplate(
        subject="Your SecurePractice account is locked",
        text=(
            "Hello,\n\nYour SecurePractice account was locked after too many unsuccessful sign-in attempts.\n"
            "To unlock it, reset your password with this link:\n\n$link\n\n"
            "If you did not try to sign in, someone else may have: reset your password, and tell your "
            "practice's User Manager or SecurePractice Support.\n"
        ),
        html=(
            "<p>Hello,</p><p>Your SecurePractice account was locked after too many unsuccessful sign-in "
            "attempts. To unlock it, reset your password with this link:</p>" + _button("link") +
            "<p>If you did not try to sign in, someone else may have: reset your password, and tell your "
            "practice's User Manager or SecurePractice Support.</p>"
        ),
        required=frozenset({"link"}),
    ),
    "invitation": EmailTemplate(
        subject="$practice_name invites you to SecurePractice",
        text=(
            "Hello,\n\n$practice_name invites you to join its SecurePractice portal, where you can exchange "
            "secure messages.\nTo create your account, open this link:\n\n$link\n\n"
            "The invitation works once and expires. If you did not expect it, ignore this email.\n"
        ),
        html=(
            "<p>Hello,</p><p><strong>$practice_name</strong> invites you to join its SecurePractice portal, "
            "where you can exchange secure messages. To create your account, open this link:</p>"
            + _button("link") +
            "<p>The invitation works once and expires. If you did not expect it, ignore this email.</p>"
        ),
        required=frozenset({"practice_name", "link"}),
    ),
    "password_expiry_warning": EmailTemplate(
        subject="Your SecurePractice password expires soon",
        text=(
            "Hello,\n\nYour SecurePractice password expires in $days_left day(s).\n"
            "Sign in and change it before then:\n\n$link\n"
        ),
        html=(
            "<p>Hello,</p><p>Your SecurePractice password expires in <strong>$days_left day(s)</strong>. "
            "Sign in and change it before then:</p>" + _button("link")
        ),
        required=frozenset({"days_left"}),
        optional={"link": _PORTAL},
    ),
    "message_waiting": EmailTemplate(
        # Only who sent it and where to read it: never a subject, body or attachment name.
        subject="New secure message from $practice_name",
        text=(
            "Hello,\n\nYou have a new secure message from $practice_name.\n"
            "For your privacy it is not included in this email. Sign in to read it:\n\n$link\n"
        ),
        html=(
            "<p>Hello,</p><p>You have a new secure message from <strong>$practice_name</strong>. "
            "For your privacy it is not included in this email. Sign in to read it:</p>" + _button("link")
        ),
        required=frozenset({"practice_name"}),
        optional={"link": _PORTAL},
    ),
    "verification_required": EmailTemplate(
        subject="Confirm your phone number to keep using SecurePractice",
        text=(
            "Hello,\n\nYour account needs 2-step verification. The next time you sign in, we will send a code "
            "to your phone by text message or call, and you will enter it to continue.\n\n"
            "Sign in here:\n\n$link\n"
        ),
        html=(
            "<p>Hello,</p><p>Your account needs 2-step verification. The next time you sign in, we will send "
            "a code to your phone by text message or call, and you will enter it to continue.</p>"
            "<p>Sign in here:</p>" + _button("link")
        ),
        required=frozenset(),
        optional={"link": _PORTAL},
    ),
    "generic_notice": EmailTemplate(
        subject="$title",
        text="Hello,\n\n$text\n\n$link\n",
        html="<p>Hello,</p><p>$text</p>" + _button("link"),
        required=frozenset({"title", "text"}),
        optional={"link": _PORTAL},
    ),
}

_LINE_BREAKS = re.compile(r"[\r\n\t\v\f\x1c-\x1e\x85\u2028\u2029]+")


def _check_link(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
        raise InvalidLink(name)
    return value


def render(name: str, values: Mapping[str, str], *, portal_url: str) -> RenderedEmail:
    """Render template `name` with `values` (params and opened secrets, merged)."""
    try:
        template = TEMPLATES[name]
    except KeyError:
        raise UnknownTemplate(name) from None
    missing = sorted(f for f in template.required if not str(values.get(f, "")).strip())
    if missing:
        raise MissingField(",".join(missing))
    used: dict[str, str] = {}
    for key in template.fields:
        value = values.get(key)
        if value is None or not str(value).strip():
            value = template.optional.get(key, "")
            value = portal_url if value == _PORTAL else value
        used[key] = str(value)
    for key in template.links & template.fields:
        _check_link(key, used[key])

    subject = _LINE_BREAKS.sub(" ", Template(template.subject).substitute(used)).strip()
    text = Template(template.text).substitute(used) + _FOOTER_TEXT
    escaped = {k: html.escape(v, quote=True) for k, v in used.items()}
    content = Template(template.html).substitute(escaped)
    page = _LAYOUT.substitute(subject=html.escape(subject, quote=True), content=content)
    return RenderedEmail(subject=subject, text=text, html=page)

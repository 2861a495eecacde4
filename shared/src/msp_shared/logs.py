"""Structured logging with a redaction filter.

Logs carry ids, never secrets or PHI. The filter is the last line of defence: it masks
values of sensitive keys in `extra`, and email addresses, phone numbers, bearer tokens and
long secrets that slip into message text."""
from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone

SENSITIVE_KEYS = re.compile(
    r"pass(word)?|secret|token|code|otp|authorization|cookie|body|subject|filename|file_name|"
    r"email|phone|address|ssn|dob",
    re.I,
)
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_PHONE = re.compile(r"(?<![\w-])\+?\d[\d ()-]{7,}\d(?![\w-])")
_BEARER = re.compile(r"(?i)(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_LONG_SECRET = re.compile(r"\b[A-Za-z0-9_-]{32,}\b")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def redact_text(text: str) -> str:
    text = _EMAIL.sub(r"\1***@\2", text)
    text = _BEARER.sub(r"\1 [redacted]", text)
    text = _PHONE.sub("[phone]", text)
    return _LONG_SECRET.sub(lambda m: m.group(0) if _UUID.match(m.group(0)) else "[redacted]", text)


def redact_value(key: str, value: object) -> object:
    if SENSITIVE_KEYS.search(key):
        return "[redacted]"
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(key, v) for v in value]
    return value


class RedactionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact_text(message), ()
        for key in list(vars(record)):
            if key not in _STANDARD:
                setattr(record, key, redact_value(key, getattr(record, key)))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "at": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            line["exc"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


def setup_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactionFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel("WARNING")

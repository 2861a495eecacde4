"""The redaction filter (the last line of defence against PHI and secrets in logs) and the
event envelope's versioning."""
import io
import json
import logging
import uuid

import pytest
from pydantic import ValidationError

from msp_shared.events import REGISTRY, Envelope, EventData, Registry, SessionsRevoked, UnknownEvent, make_envelope
from msp_shared.logs import JsonFormatter, RedactionFilter


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactionFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.redaction.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def test_secrets_and_personal_data_never_reach_the_log_line(captured) -> None:  # noqa: ANN001
    logger, stream = captured
    user_id = str(uuid.uuid4())
    logger.info(
        "login failed for jane.roe@example.com from +1 (555) 201-3344 with Bearer abc.def.ghi %s",
        "tok_9f8e7d6c5b4a39281706f5e4d3c2b1a0ffeeddcc",
        extra={"password": "Hunter2!x", "user_id": user_id, "detail": {"email": "jane.roe@example.com", "n": 3},
               "subject": "Biopsy results", "note": "call 555-201-3344"},
    )
    line = stream.getvalue()
    for secret in ("jane.roe", "555) 201-3344", "555-201-3344", "abc.def.ghi", "tok_9f8e7d6c5b4a", "Hunter2", "Biopsy"):
        assert secret not in line, secret
    record = json.loads(line)
    assert record["user_id"] == user_id  # ids stay readable
    assert record["password"] == "[redacted]" and record["subject"] == "[redacted]"
    assert "j***@example.com" in record["msg"]


def test_exception_text_is_redacted_too(captured) -> None:  # noqa: ANN001
    logger, stream = captured
    try:
        raise ValueError("no user jane.roe@example.com")
    except ValueError:
        logger.exception("lookup failed")
    assert "jane.roe@example.com" not in stream.getvalue()


def test_envelope_round_trips_through_json_with_its_typed_payload() -> None:
    data = SessionsRevoked(user_id=uuid.uuid4(), reason="password_changed")
    envelope = make_envelope(data, trace={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    again = Envelope.model_validate_json(envelope.model_dump_json())
    assert again.id == envelope.id and again.type == "auth.sessions.revoked"
    assert again.payload() == data


def test_older_versions_are_upcast_and_unknown_types_refused() -> None:
    registry = Registry()

    @registry.register
    class Renamed(EventData):
        TYPE = "demo.thing.renamed"
        VERSION = 2
        thing_id: uuid.UUID
        new_name_length: int

    @registry.upcaster("demo.thing.renamed", 1)
    def v1_to_v2(data: dict) -> dict:
        return {"thing_id": data["id"], "new_name_length": len(data["name"])}

    thing = uuid.uuid4()
    old = Envelope(type="demo.thing.renamed", version=1, data={"id": str(thing), "name": "abc"})
    assert registry.parse(old) == Renamed(thing_id=thing, new_name_length=3)
    with pytest.raises(UnknownEvent):
        registry.parse(Envelope(type="demo.nope", data={}))
    with pytest.raises(ValidationError):  # values are checked
        REGISTRY.parse(Envelope(type="auth.sessions.revoked", data={"user_id": "x", "reason": "r"}))


def test_a_consumer_ignores_fields_newer_than_its_model_and_producers_stay_strict() -> None:
    """A rolling deploy: a producer already sends a field the consumer's model does not have."""
    user = uuid.uuid4()
    newer = Envelope(type="auth.sessions.revoked", data={"user_id": str(user), "reason": "r", "added_later": 1})
    assert REGISTRY.parse(newer) == SessionsRevoked(user_id=user, reason="r")
    with pytest.raises(ValidationError):  # a producer cannot put a field the model does not declare
        SessionsRevoked(user_id=user, reason="r", added_later=1)

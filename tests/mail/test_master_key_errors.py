"""A badly written MSP_ATTACHMENT_MASTER_KEYS refuses to start with an error that goes to the
start-up log: it names the entry by position (and kid), never prints key material."""
from __future__ import annotations

import base64
import os

import pytest

from msp_mail.crypto import MasterKeys


def _key(size: int = 32) -> str:
    return base64.b64encode(os.urandom(size)).decode()


GOOD = _key()


@pytest.mark.parametrize(("spec", "entry", "kid"), [
    (f"k1:{GOOD},{_key()}", 2, None),  # kid forgotten: the whole entry is a key
    (f"{_key()}", 1, None),
    (f"k1:{GOOD},{_key()}:k2", 2, None),  # written the wrong way round: the "kid" is a key
    (f"k1:{GOOD},k2:{_key(24)}", 2, "k2"),  # wrong size
    (f"k1:{_key(31)}", 1, "k1"),
    (f"k1:{GOOD}, ,k3:{_key()[:-2]}", 2, "k3"),  # bad padding; empty entries are not counted
], ids=["no-kid", "no-kid-only", "reversed", "24-bytes", "31-bytes", "bad-padding"])
def test_a_bad_entry_is_named_by_position_and_kid_never_by_its_text(spec: str, entry: int, kid: str | None) -> None:
    with pytest.raises(ValueError) as refused:
        MasterKeys.parse(spec)
    message = str(refused.value)
    assert f"entry {entry} of MSP_ATTACHMENT_MASTER_KEYS" in message
    assert (f"(kid '{kid}')" in message) if kid else "(kid" not in message
    material = [piece for item in spec.split(",") for piece in item.strip().split(":") if len(piece) > 4]
    assert material and not [piece for piece in material if piece[:8] in message or piece[-8:] in message]


def test_a_well_written_list_still_parses() -> None:
    second = _key()
    keys = MasterKeys.parse(f" k1:{GOOD} , k2:{second}\n")
    assert keys.current == "k2" and keys.keys["k1"] == base64.b64decode(GOOD) and keys.keys["k2"] == base64.b64decode(second)
    assert MasterKeys.parse(f"k1:{GOOD},k2:{second}", "k1").current == "k1"

"""Sealing secret event fields.

Events must not carry raw tokens or full email addresses in clear (DESIGN.md §4), yet a
"send this email" command has to tell mail-service where to send a reset link. Such fields
travel sealed: AES-256-GCM under a key only producers and the consumer hold, with the event
type as associated data so a sealed blob cannot be moved into another kind of event."""
from __future__ import annotations

import base64
import json
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class Sealer:
    def __init__(self, key_b64: str) -> None:
        key = base64.b64decode(key_b64)
        if len(key) != 32:
            raise ValueError("seal key must be 32 bytes, base64-encoded")
        self._aead = AESGCM(key)

    def seal(self, value: dict, *, context: str) -> str:
        nonce = os.urandom(12)
        blob = self._aead.encrypt(nonce, json.dumps(value).encode(), context.encode())
        return base64.b64encode(nonce + blob).decode()

    def open(self, sealed: str, *, context: str) -> dict:
        raw = base64.b64decode(sealed)
        return json.loads(self._aead.decrypt(raw[:12], raw[12:], context.encode()))

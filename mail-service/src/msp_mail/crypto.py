"""Attachment encryption at rest (DESIGN.md §8).

Each attachment gets a random 256-bit data key. The plaintext is cut into fixed-size chunks,
each sealed with AES-256-GCM under its own nonce, with (file id, chunk index, last-chunk
flag) as associated data: chunks cannot be reordered, dropped, truncated or moved between
files without failing authentication. The data key is stored wrapped by a master key named
by a key id, so master keys rotate by re-wrapping data keys, without rewriting files.
Destroying the wrapped key (message expiry) leaves the file unreadable forever.

The SHA-256 of the plaintext is recorded sealed under the same data key: a database reader
who guesses a file's content (a known form, a published image) cannot confirm the guess by
hashing it, and expiry makes the digest unreadable with the file.

Pure byte functions: no file or network I/O here."""
from __future__ import annotations

import base64
import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CHUNK_SIZE = 64 * 1024
NONCE_SIZE = 12
TAG_SIZE = 16
SEALED_CHUNK_SIZE = CHUNK_SIZE + NONCE_SIZE + TAG_SIZE


class TamperedError(Exception):
    """A chunk failed authentication: the stored file was changed or corrupted."""


def _aad(file_id: str, index: int, last: bool) -> bytes:
    return file_id.encode() + struct.pack(">Q?", index, last)


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def seal_chunk(data_key: bytes, file_id: str, index: int, plaintext: bytes, *, last: bool) -> bytes:
    if len(plaintext) > CHUNK_SIZE:
        raise ValueError("chunk larger than CHUNK_SIZE")
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(data_key).encrypt(nonce, plaintext, _aad(file_id, index, last))


def seal_chunks(aead: AESGCM, file_id: str, first_index: int, plaintext: memoryview | bytes, *, last: bool) -> bytearray:
    """Seal `plaintext` as consecutive CHUNK_SIZE chunks numbered from `first_index`, into
    one buffer: byte for byte what `seal_chunk` gives for each (the final one flagged
    `last` if asked; an empty plaintext with `last` gives the one empty chunk). One
    allocation per batch and no copies: the ciphertext is written in place."""
    view = memoryview(plaintext)
    count = -(-len(view) // CHUNK_SIZE) or (1 if last else 0)
    out = bytearray(len(view) + count * (NONCE_SIZE + TAG_SIZE))
    target = memoryview(out)
    pos = 0
    for i in range(count):
        piece = view[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE]
        nonce = os.urandom(NONCE_SIZE)
        target[pos : pos + NONCE_SIZE] = nonce
        end = pos + NONCE_SIZE + len(piece) + TAG_SIZE
        aead.encrypt_into(nonce, piece, _aad(file_id, first_index + i, last and i == count - 1), target[pos + NONCE_SIZE : end])
        pos = end
    return out


SEALED_DIGEST = "sealed:"  # prefix of a recorded digest sealed under the data key


def seal_digest(aead: AESGCM, file_id: str, digest: bytes) -> str:
    """The plaintext's SHA-256 as recorded: sealed under the file's data key."""
    nonce = os.urandom(NONCE_SIZE)
    return SEALED_DIGEST + base64.b64encode(nonce + aead.encrypt(nonce, digest, b"sha256:" + file_id.encode())).decode()


def digest_matches(data_key: bytes, file_id: str, recorded: str, digest: bytes) -> bool:
    """Whether the recorded digest is this one. Digests recorded before they were sealed are
    plain hex, compared as such; a sealed one that fails authentication matches nothing."""
    if not recorded.startswith(SEALED_DIGEST):
        return hmac.compare_digest(recorded, digest.hex())
    try:
        raw = base64.b64decode(recorded[len(SEALED_DIGEST):], validate=True)
        opened = AESGCM(data_key).decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], b"sha256:" + file_id.encode())
    except (ValueError, InvalidTag):
        return False
    return hmac.compare_digest(opened, digest)


def open_chunk(data_key: bytes, file_id: str, index: int, sealed: bytes, *, last: bool) -> bytes:
    try:
        return AESGCM(data_key).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], _aad(file_id, index, last))
    except InvalidTag:
        raise TamperedError(f"chunk {index} failed authentication") from None


def sealed_size(plain_size: int) -> int:
    chunks = max(1, -(-plain_size // CHUNK_SIZE))
    return plain_size + chunks * (NONCE_SIZE + TAG_SIZE)


def chunk_count(plain_size: int) -> int:
    return max(1, -(-plain_size // CHUNK_SIZE))


@dataclass(frozen=True)
class MasterKeys:
    """Master keys by id; `current` wraps new data keys, any listed key unwraps."""

    keys: dict[str, bytes]
    current: str

    @classmethod
    def parse(cls, spec: str, current: str | None = None) -> "MasterKeys":
        """`spec` is "kid1:base64key,kid2:base64key"; the last is current unless named.
        An error names a bad entry by position (and kid), never by its text: it goes to the
        start-up log, and an entry written without its kid, or the wrong way round, is a key."""
        keys: dict[str, bytes] = {}
        for n, item in enumerate(filter(None, (part.strip() for part in spec.split(","))), 1):
            kid, colon, b64 = item.partition(":")
            # A kid is a short name; anything longer may be key material and is not shown.
            where = f"entry {n} of MSP_ATTACHMENT_MASTER_KEYS" + (f" (kid {kid!r})" if colon and len(kid) <= 16 else "")
            try:
                key = base64.b64decode(b64)
            except ValueError:
                key = b""
            if not colon or len(key) != 32:
                raise ValueError(f"{where} must be written kid:base64 of a 32-byte key")
            keys[kid] = key
        if not keys:
            raise ValueError("no master key configured")
        chosen = current or list(keys)[-1]
        if chosen not in keys:
            raise ValueError(f"current master key {chosen!r} is not configured")
        return cls(keys, chosen)

    def wrap(self, data_key: bytes, file_id: str) -> str:
        nonce = os.urandom(NONCE_SIZE)
        blob = AESGCM(self.keys[self.current]).encrypt(nonce, data_key, b"wrap:" + file_id.encode())
        return f"{self.current}:{base64.b64encode(nonce + blob).decode()}"

    def unwrap(self, wrapped: str, file_id: str) -> bytes:
        kid, _, b64 = wrapped.partition(":")
        raw = base64.b64decode(b64)
        try:
            return AESGCM(self.keys[kid]).decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], b"wrap:" + file_id.encode())
        except (KeyError, InvalidTag):
            raise TamperedError("the data key cannot be unwrapped") from None

    def rewrap(self, wrapped: str, file_id: str) -> str:
        return self.wrap(self.unwrap(wrapped, file_id), file_id)

"""Encrypted attachment storage on top of a BlobStore: streams plaintext in, sealed chunks
out, with the SHA-256 of the plaintext recorded and checked on every full read, and
random-access decryption for HTTP Range requests."""
from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .attachment_rules import SNIFF_BYTES, AttachmentBudget, Refusal, check_content
from .blobstore import BlobStore
from .crypto import CHUNK_SIZE, SEALED_CHUNK_SIZE, MasterKeys, TamperedError, chunk_count, new_data_key, open_chunk, seal_chunk


class AttachmentRefused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


@dataclass(frozen=True)
class StoredAttachment:
    file_id: str
    size: int
    sha256: str
    wrapped_key: str


async def _rechunk(source: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    buffer = bytearray()
    async for data in source:
        buffer += data
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    yield bytes(buffer)  # last chunk, possibly empty


async def store_encrypted(
    store: BlobStore, keys: MasterKeys, file_id: str, filename: str, source: AsyncIterator[bytes], budget: AttachmentBudget
) -> StoredAttachment:
    """Encrypt and store one attachment. Raises AttachmentRefused (content or budget) before
    anything becomes visible in the store."""
    data_key = new_data_key()
    digest = hashlib.sha256()
    size = 0

    async def sealed_chunks() -> AsyncIterator[bytes]:
        nonlocal size
        pending: bytes | None = None  # held back: only the final chunk is sealed with last=True
        index = 0
        async for plain in _rechunk(source, CHUNK_SIZE):
            if pending is not None and not plain:
                break  # the empty remainder after a whole number of chunks
            if pending is None:
                refusal = check_content(filename, plain[:SNIFF_BYTES])
                if refusal:
                    raise AttachmentRefused(refusal)
            refusal = budget.take(len(plain))
            if refusal:
                raise AttachmentRefused(refusal)
            digest.update(plain)
            size += len(plain)
            if pending is not None:
                yield seal_chunk(data_key, file_id, index, pending, last=False)
                index += 1
            pending = plain
        yield seal_chunk(data_key, file_id, index, pending or b"", last=True)

    await store.put(file_id, sealed_chunks())
    return StoredAttachment(file_id, size, digest.hexdigest(), keys.wrap(data_key, file_id))


async def read_decrypted(
    store: BlobStore, keys: MasterKeys, att: StoredAttachment, start: int = 0, end: int | None = None
) -> AsyncIterator[bytes]:
    """Plaintext bytes [start, end), decrypting only the chunks that cover them. Every chunk
    is authenticated before a byte of it is yielded; a full read also checks the recorded
    SHA-256 before its last chunk goes out."""
    end = att.size if end is None else min(end, att.size)
    if start >= end and att.size > 0:
        return
    data_key = keys.unwrap(att.wrapped_key, att.file_id)
    last_index = chunk_count(att.size) - 1
    first, final = start // CHUNK_SIZE, max(0, end - 1) // CHUNK_SIZE
    digest = hashlib.sha256() if (start == 0 and end == att.size) else None
    index, buffer = first, bytearray()
    byte_range = (first * SEALED_CHUNK_SIZE, min((final + 1) * SEALED_CHUNK_SIZE, _sealed_total(att.size)))
    async for data in store.read(att.file_id, *byte_range):
        buffer += data
        while index <= final and len(buffer) >= (need := _sealed_len(att.size, index)):
            plain = open_chunk(data_key, att.file_id, index, bytes(buffer[:need]), last=index == last_index)
            del buffer[:need]
            if digest is not None:
                digest.update(plain)
                if index == final and digest.hexdigest() != att.sha256:
                    raise TamperedError("checksum mismatch")
            lo = start - index * CHUNK_SIZE if index == first else 0
            hi = end - index * CHUNK_SIZE if index == final else len(plain)
            index += 1
            yield plain[lo:hi]
    if index <= final:
        raise TamperedError("stored file is shorter than recorded")


def _sealed_len(size: int, index: int) -> int:
    plain = min(CHUNK_SIZE, size - index * CHUNK_SIZE)
    return max(plain, 0) + SEALED_CHUNK_SIZE - CHUNK_SIZE


def _sealed_total(size: int) -> int:
    return size + chunk_count(size) * (SEALED_CHUNK_SIZE - CHUNK_SIZE)

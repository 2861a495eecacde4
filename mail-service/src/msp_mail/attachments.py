"""Encrypted attachment storage on top of a BlobStore: streams plaintext in, sealed chunks
out, with the SHA-256 of the plaintext recorded and checked on every full read, and
random-access decryption for HTTP Range requests."""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .attachment_rules import SNIFF_BYTES, AttachmentBudget, Refusal, check_content
from .blobstore import BlobStore
from .crypto import CHUNK_SIZE, SEALED_CHUNK_SIZE, MasterKeys, TamperedError, chunk_count, new_data_key, open_chunk, seal_chunks


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


SEAL_BATCH = 1024 * 1024  # plaintext hashed and sealed per worker-thread hop (16 chunks)


async def store_encrypted(
    store: BlobStore, keys: MasterKeys, file_id: str, filename: str, source: AsyncIterator[bytes], budget: AttachmentBudget
) -> StoredAttachment:
    """Encrypt and store one attachment. Raises AttachmentRefused (content or budget) before
    anything becomes visible in the store.

    Works a batch (~1 MiB) at a time: SHA-256 runs in a worker thread (hashlib releases the
    GIL on big buffers) while the event loop seals the same batch and goes on receiving.
    AES-GCM stays on the loop: cryptography's AESGCM holds the GIL (measured, 50.0.2), so
    a worker would only take turns with the loop, and at GB/s it costs little."""
    data_key = new_data_key()
    aead = AESGCM(data_key)
    digest = hashlib.sha256()
    size = 0

    async def sealed_batches() -> AsyncIterator[bytearray]:
        nonlocal size
        # Two plaintext buffers, allocated once: one is hashed by a worker while the other
        # fills (growing a fresh buffer per batch cost more CPU than sealing it).
        buffers = [bytearray(SEAL_BATCH + CHUNK_SIZE), bytearray(SEAL_BATCH + CHUNK_SIZE)]
        filling, used = 0, 0
        sniffed = False  # the content check sees the first SNIFF_BYTES before any budget or sealing
        untaken = 0  # bytes received but not yet counted against the budget
        index = 0
        hashing: asyncio.Future[None] | None = None  # one batch at a time: the digest sees bytes in order
        try:
            async for data in source:
                view = memoryview(data)
                while view:
                    buffer = buffers[filling]
                    take = min(len(view), len(buffer) - used)
                    buffer[used : used + take] = view[:take]
                    used += take
                    untaken += take
                    view = view[take:]
                    if not sniffed:
                        if used < SNIFF_BYTES:
                            continue
                        _refuse(check_content(filename, bytes(buffer[:SNIFF_BYTES])))
                        sniffed = True
                    _refuse(budget.take(untaken))
                    untaken = 0
                    if used > SEAL_BATCH:
                        # Whole chunks only, and at least one byte held back: only the final
                        # chunk is sealed with last=True, and we do not know yet which one it is.
                        cut = (used - 1) // CHUNK_SIZE * CHUNK_SIZE
                        if hashing is not None:
                            await hashing  # the other buffer is free again
                        batch = memoryview(buffer)[:cut]
                        hashing = asyncio.ensure_future(asyncio.to_thread(digest.update, batch))
                        sealed = seal_chunks(aead, file_id, index, batch, last=False)
                        # What was held back starts the other buffer.
                        filling = 1 - filling
                        buffers[filling][: used - cut] = memoryview(buffer)[cut:used]
                        used -= cut
                        index += cut // CHUNK_SIZE
                        size += cut
                        yield sealed
            buffer = buffers[filling]
            if not sniffed:
                _refuse(check_content(filename, bytes(buffer[: min(used, SNIFF_BYTES)])))
            _refuse(budget.take(untaken))
            if hashing is not None:
                await hashing
                hashing = None
            last = memoryview(buffer)[:used]
            digest.update(last)  # at most a batch: small files never leave the loop
            size += used
            yield seal_chunks(aead, file_id, index, last, last=True)
        finally:
            if hashing is not None:
                await asyncio.wait([hashing])  # never leave a worker reading our buffers behind
                if not hashing.cancelled():
                    hashing.exception()  # retrieved: the error that matters is already propagating

    await store.put(file_id, sealed_batches())
    return StoredAttachment(file_id, size, digest.hexdigest(), keys.wrap(data_key, file_id))


def _refuse(refusal: Refusal | None) -> None:
    if refusal:
        raise AttachmentRefused(refusal)


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

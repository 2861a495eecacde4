"""Receiving a message (or a case post) with its files: a streamed multipart body, checked
and encrypted file by file as it arrives, never held in memory.

The body is `multipart/form-data`: first a JSON part named "message" (the fields), then any
number of file parts. Each file is refused by name (415) before a byte of it is read, then by
its first bytes (415); all files of one upload together may total at most 300 MB, and the
upload stops as soon as that is crossed (413). aiohttp's client_max_size does not limit
streamed bodies, so every byte is counted here.

Files are stored (encrypted) as they arrive, but nothing refers to them until the caller
inserts its rows in one transaction at the end, `async with upload.saving(pool, rows_exist)`.
On any refusal or failure the caller calls `discard()`, so a refused message leaves nothing
on disk, in object storage or in the database. A plain JSON body (no files) is accepted too.

The one failure that must not discard is a COMMIT that happened. A cancellation (the
shutdown grace running out, a client gone) can land while COMMIT is in flight, and a broken
connection can lose its answer: the rows may then be in the database although the caller
sees an exception. So `saving()` lets a COMMIT it has sent run to its end whatever
cancellation arrives (and passes the cancellation on afterwards), hands the blobs to the rows
as soon as it succeeded, and if its outcome is unknown, `discard()` asks the database whether
the rows exist before deleting anything; if it cannot tell, it keeps the blobs (orphans
are encrypted under data keys that exist nowhere else, a missing blob would damage a
message for good)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from urllib.parse import unquote
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from aiohttp import BodyPartReader, web
from pydantic import BaseModel, ValidationError

from msp_shared.errors import ApiError
from msp_shared.web import read_model

from ..attachment_rules import AttachmentBudget, check_name, content_type_for, safe_filename
from ..attachments import AttachmentRefused, StoredAttachment, store_encrypted
from ..blobstore import BlobStore
from ..crypto import MasterKeys

FIELDS_PART = "message"
MAX_FIELDS_BYTES = 256 * 1024
READ_CHUNK = 256 * 1024

M = TypeVar("M", bound=BaseModel)
# Whether any row refers to one of these blob ids (the attachments or case files table).
RowsExist = Callable[[asyncpg.Connection, Sequence[uuid.UUID]], Awaitable[bool]]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedFile:
    stored: StoredAttachment
    filename: str  # sanitised
    content_type: str

    @property
    def id(self) -> str:
        return self.stored.file_id


def refusal_error(refusal: Any, filename: str | None = None) -> ApiError:
    details: dict[str, Any] = {"file": safe_filename(filename)} if filename else {}
    if refusal.code == "too_large":
        return ApiError(413, "attachments_too_large", refusal.message, details)
    return ApiError(415, refusal.code, refusal.message, details)


def _invalid(exc: ValidationError) -> ApiError:
    fields = {".".join(str(p) for p in e["loc"]) or "body": e["msg"] for e in exc.errors()}
    return ApiError(400, "invalid_input", "Some fields are missing or invalid.", {"fields": fields})


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(READ_CHUNK):
        yield chunk


class Upload:
    def __init__(self, store: BlobStore, keys: MasterKeys, *, max_files: int, budget: AttachmentBudget | None = None) -> None:
        self.store = store
        self.keys = keys
        self.max_files = max_files
        self.budget = budget or AttachmentBudget()
        self.files: list[ReceivedFile] = []
        self._written: list[str] = []
        # Set once COMMIT of the rows was sent and until it is known to have succeeded: the
        # rows may exist, so discard() must ask (see saving()).
        self._in_doubt: tuple[asyncpg.Pool, RowsExist] | None = None

    async def receive(self, request: web.Request, model: type[M], check: Callable[[M], Awaitable[None]] | None = None) -> M:
        """Read the fields, let `check` refuse early (before any file is read), then store
        every file. Raises ApiError; the caller discards on any exception."""
        if not request.content_type.startswith("multipart/"):
            fields = await read_model(request, model)
            if check is not None:
                await check(fields)
            return fields
        reader = await request.multipart()
        first = await reader.next()
        if not isinstance(first, BodyPartReader) or first.name != FIELDS_PART or first.filename:
            raise ApiError(400, "invalid_input", f'The first part must be the JSON part named "{FIELDS_PART}".')
        raw = bytearray()
        while chunk := await first.read_chunk(64 * 1024):
            raw += chunk
            if len(raw) > MAX_FIELDS_BYTES:
                raise ApiError(413, "too_large", "The message fields are too large.")
        try:
            fields = model.model_validate_json(bytes(raw) or b"{}")
        except ValidationError as exc:
            raise _invalid(exc) from None
        if check is not None:
            await check(fields)
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.filename is None:
                raise ApiError(400, "invalid_input", "Every part after the message must be a file.")
            if len(self.files) >= self.max_files:
                raise ApiError(413, "too_many_files", f"At most {self.max_files} files can be attached at once.")
            await self._store(part)
        return fields

    async def _store(self, part: BodyPartReader) -> None:
        # Browsers percent-encode quotes and line breaks in form-data names (HTML's rule),
        # aiohttp's client every unsafe character: decode, then sanitise.
        filename = unquote(part.filename or "")
        refusal = check_name(filename)
        if refusal:
            raise refusal_error(refusal, filename)
        file_id = str(uuid.uuid4())
        self._written.append(file_id)  # discard() deletes it even if put() fails half-way
        try:
            stored = await store_encrypted(self.store, self.keys, file_id, filename, _part_chunks(part), self.budget)
        except AttachmentRefused as exc:
            raise refusal_error(exc.refusal, filename) from None
        self.files.append(ReceivedFile(stored, safe_filename(filename), content_type_for(filename)))

    @contextlib.asynccontextmanager
    async def saving(self, pool: asyncpg.Pool, rows_exist: RowsExist) -> AsyncIterator[asyncpg.Connection]:
        """A connection in a transaction, for the rows that refer to this upload's files.
        On an exception in the block it rolls back (COMMIT never sent: the rows cannot
        exist, discard() deletes). Otherwise it commits: see the module's docstring for why
        COMMIT cannot be interrupted and what happens when its outcome is unknown."""
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception):  # a connection left mid-query is reset by the pool
                    await transaction.rollback()
                raise
            self._in_doubt = (pool, rows_exist)
            cancelled = await _commit_to_the_end(transaction)
            self.committed()  # before anything else can happen: the blobs are the rows' now
            if cancelled:
                raise asyncio.CancelledError()

    async def discard(self) -> None:
        """Delete every blob this upload stored (best effort on each; all are tried), unless
        a COMMIT whose outcome is unknown may have made rows refer to them."""
        if self._written and self._in_doubt is not None and not await self._rows_absent():
            self.committed()
            return
        for key in self._written:
            try:
                await self.store.delete(key)
            except Exception:  # noqa: BLE001 - the sweeper's queue is not involved: nothing refers to it
                pass
        self._written.clear()
        self.files.clear()

    def committed(self) -> None:
        """The rows are in: the blobs now belong to them."""
        self._written.clear()
        self._in_doubt = None

    async def _rows_absent(self) -> bool:
        """After a COMMIT with an unknown outcome: True only if the database says that no row
        refers to any of the stored files."""
        assert self._in_doubt is not None
        pool, rows_exist = self._in_doubt
        ids = [uuid.UUID(key) for key in self._written]
        try:
            async with pool.acquire() as conn:
                exist = await rows_exist(conn, ids)
        except Exception as exc:  # noqa: BLE001 - cannot tell: keep the blobs
            log.warning("upload's commit outcome unknown; its blobs are kept",
                        extra={"blobs": len(ids), "error": type(exc).__name__})
            return False
        if exist:
            log.warning("upload committed although its request failed; its blobs are kept", extra={"blobs": len(ids)})
        return not exist


async def _commit_to_the_end(transaction: asyncpg.transaction.Transaction) -> bool:
    """COMMIT, run to its end even if the calling task is cancelled meanwhile. Returns
    whether a cancellation arrived (the caller passes it on once it has taken the outcome
    into account); raises what COMMIT raised (the cancellation instead, if one arrived)."""
    commit = asyncio.ensure_future(transaction.commit())
    cancelled = False
    while not commit.done():
        try:
            await asyncio.shield(commit)
        except asyncio.CancelledError:
            cancelled = True  # the COMMIT goes on: wait for its outcome
        except Exception:  # noqa: BLE001 - commit is done: its error is raised below
            pass
    error = asyncio.CancelledError() if commit.cancelled() else commit.exception()
    if error is not None:
        raise asyncio.CancelledError() if cancelled else error
    return cancelled

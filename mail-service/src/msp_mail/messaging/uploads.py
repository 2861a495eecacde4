"""Receiving a message (or a case post) with its files: a streamed multipart body, checked
and encrypted file by file as it arrives, never held in memory.

The body is `multipart/form-data`: first a JSON part named "message" (the fields), then any
number of file parts. Each file is refused by name (415) before a byte of it is read, then by
its first bytes (415); all files of one upload together may total at most 300 MB, and the
upload stops as soon as that is crossed (413). aiohttp's client_max_size does not limit
streamed bodies, so every byte is counted here.

Files are stored (encrypted) as they arrive, but nothing refers to them until the caller
inserts its rows in one transaction at the end. On any refusal or failure the caller calls
`discard()`, so a refused message leaves nothing on disk, in object storage or in the
database. A plain JSON body (no files) is accepted too."""
from __future__ import annotations

import uuid
from urllib.parse import unquote
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

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

    async def discard(self) -> None:
        """Delete every blob this upload stored (best effort on each; all are tried)."""
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

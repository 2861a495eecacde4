"""Where encrypted attachment bytes live: local disk (default) or S3-compatible object
storage (so several mail-service replicas share attachments). Both store opaque sealed
chunks under a key; encryption is the caller's business (attachments.py)."""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol


WRITE_BATCH = 1024 * 1024


class BlobNotFound(Exception):
    pass


class BlobStore(Protocol):
    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        """Store the stream under key (visible only once complete); returns bytes written.
        The producer must not modify a chunk after yielding it (it may be written later)."""

    def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the stored blob."""

    async def delete(self, key: str) -> None: ...

    async def exists(self, key: str) -> bool: ...


def _check_key(key: str) -> None:
    if not key or "/" in key or "\\" in key or key.startswith("."):
        raise ValueError("invalid blob key")


class DiskBlobStore:
    """Files under a root folder; written to a temporary name, fsynced, then renamed, so a
    crash or a refused upload never leaves a half file under the real name."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        final = self._path(key)
        temp = final.with_name(f".{key}.part")
        fh = await asyncio.to_thread(open, temp, "wb")
        written = 0
        # ~1 MiB per write, handed over as they are (writelines: no joining copy), with one
        # write in flight while the next batch is produced: disk and CPU work overlap.
        pending: list[bytes] = []
        pending_size = 0
        writing: asyncio.Future[None] | None = None
        try:
            async for chunk in chunks:
                pending.append(chunk)
                pending_size += len(chunk)
                written += len(chunk)
                if pending_size >= WRITE_BATCH:
                    if writing is not None:
                        await writing
                    writing = asyncio.ensure_future(asyncio.to_thread(fh.writelines, pending))
                    pending, pending_size = [], 0
            if writing is not None:
                await writing
            if pending:
                await asyncio.to_thread(fh.writelines, pending)
            await asyncio.to_thread(fh.flush)
            await asyncio.to_thread(os.fsync, fh.fileno())
        except BaseException:
            if writing is not None:
                await asyncio.wait([writing])  # never close the file under a running write
                if not writing.cancelled():
                    writing.exception()  # retrieved: the error that matters is already propagating
            fh.close()
            temp.unlink(missing_ok=True)
            raise
        fh.close()
        await asyncio.to_thread(os.replace, temp, final)
        return written

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            fh = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        try:
            await asyncio.to_thread(fh.seek, start)
            remaining = end - start
            while remaining > 0:
                data = await asyncio.to_thread(fh.read, min(remaining, 1024 * 1024))
                if not data:
                    break
                remaining -= len(data)
                yield data
        finally:
            fh.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, True)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).exists)


class S3BlobStore:
    """S3-compatible storage through aiobotocore; multipart upload in parts of `part_size`
    (S3's minimum is 5 MiB), aborted on any failure so nothing partial stays behind."""

    def __init__(self, client, bucket: str, *, prefix: str = "attachments/", part_size: int = 8 * 1024 * 1024) -> None:  # noqa: ANN001
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size

    def _key(self, key: str) -> str:
        _check_key(key)
        return self.prefix + key

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        object_key = self._key(key)
        upload = await self.client.create_multipart_upload(Bucket=self.bucket, Key=object_key)
        upload_id, parts, buffer, written = upload["UploadId"], [], bytearray(), 0

        async def flush() -> None:
            number = len(parts) + 1
            answer = await self.client.upload_part(
                Bucket=self.bucket, Key=object_key, UploadId=upload_id, PartNumber=number, Body=bytes(buffer)
            )
            parts.append({"ETag": answer["ETag"], "PartNumber": number})
            buffer.clear()

        try:
            async for chunk in chunks:
                buffer += chunk
                written += len(chunk)
                if len(buffer) >= self.part_size:
                    await flush()
            if buffer or not parts:
                await flush()
            await self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=object_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            await asyncio.shield(
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
            )
            raise
        return written

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        if end <= start:
            return
        try:
            answer = await self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{end - 1}")
        except self.client.exceptions.NoSuchKey:
            raise BlobNotFound(key) from None
        async with answer["Body"] as body:
            while data := await body.read(1024 * 1024):
                yield data

    async def delete(self, key: str) -> None:
        await self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    async def exists(self, key: str) -> bool:
        try:
            await self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.ClientError:
            return False
        return True

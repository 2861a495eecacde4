"""A message (or reply, or case post) whose COMMIT happened keeps its attachments, whatever
befell the request at that moment; one whose COMMIT did not happen leaves no file behind.

The COMMIT of the rows is where a cancellation (the shutdown grace running out) or a lost
connection can strike with the outcome already decided on the server. These tests inject
exactly that at the real COMMIT of the request's own transaction (asyncpg's
Transaction.commit is wrapped for that one connection):

- cancelled: COMMIT succeeds, then the request's task is cancelled before it sees the answer;
- answer lost: COMMIT succeeds, then the connection breaks before the answer arrives;
- never arrived: the connection breaks before COMMIT reaches the server.

Before, the handler's error path deleted the blobs in the first two cases, leaving a
committed message whose attachments can never be downloaded again."""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from asyncpg.transaction import Transaction

from messages_kit import DICOM, PDF, Resp, Stack, User, compose
from msp_mail.collaborator import store as case_store
from msp_mail.messaging import store as mail_store


class CommitTrap:
    """Arms itself when the request inserts its rows (wrapping the store function that does),
    then strikes at the next COMMIT on that request's connection."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any, insert: str, mode: str) -> None:
        self.mode = mode
        self.handler: asyncio.Task | None = None
        self.pid: int | None = None
        self.struck = False
        original_insert = getattr(module, insert)
        original_commit = Transaction.commit

        async def inserting(conn: Any, *args: Any, **kwargs: Any) -> Any:
            self.handler, self.pid = asyncio.current_task(), conn.get_server_pid()
            return await original_insert(conn, *args, **kwargs)

        async def commit(tx: Transaction) -> None:
            con = tx._connection  # noqa: SLF001 - the transaction's connection
            if self.struck or self.pid is None or con.get_server_pid() != self.pid:
                return await original_commit(tx)
            self.struck = True
            if self.mode == "never arrived":
                con.terminate()
                raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
            await original_commit(tx)  # on the server, it is done
            if self.mode == "answer lost":
                con.terminate()
                raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
            assert self.handler is not None
            self.handler.cancel()  # the request is cancelled as the answer comes back
            await asyncio.sleep(0)

        monkeypatch.setattr(module, insert, inserting)
        monkeypatch.setattr(Transaction, "commit", commit)


async def _call(stack: Stack, method: str, path: str, who: User, data: Any) -> Resp | None:
    """The request's answer; None if the server dropped it (its handler was cancelled)."""
    try:
        return await stack.call(method, path, who, data=data)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None


def _blobs(stack: Stack) -> set[str]:
    root = Path(stack.settings.attachment_dir)
    return {p.name for p in root.iterdir() if not p.name.startswith(".")} if root.exists() else set()


async def _people(stack: Stack) -> tuple[User, User]:
    sender = await stack.user("sender@example.com", await stack.practice("Sender Dental"), paid=True)
    reader = await stack.user("reader@example.com", await stack.practice("Reader Ortho"))
    return sender, reader


MODES = ["cancelled", "answer lost", "never arrived"]


@pytest.mark.parametrize("mode", MODES)
async def test_sending(stack: Stack, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    sender, reader = await _people(stack)
    trap = CommitTrap(monkeypatch, mail_store, "insert_message", mode)
    body = {"to": [reader.email], "subject": "Scan", "body": "See the scan."}
    answer = await _call(stack, "POST", "/messages", sender, compose(body, [("scan.pdf", PDF)]))
    assert trap.struck
    await _check_message(stack, reader, mode, answer)


@pytest.mark.parametrize("mode", MODES)
async def test_replying(stack: Stack, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    sender, reader = await _people(stack)
    first = await stack.send(sender, [reader.email])  # no attachment
    assert first.status == 201
    trap = CommitTrap(monkeypatch, mail_store, "insert_message", mode)
    answer = await _call(stack, "POST", f"/messages/{first.body['id']}/replies", sender,
                         compose({"body": "And the scan."}, [("scan.pdf", PDF)]))
    assert trap.struck
    await _check_message(stack, reader, mode, answer, parent=first.body["id"])


async def _check_message(stack: Stack, reader: User, mode: str, answer: Resp | None, parent: str | None = None) -> None:
    rows = await stack.pool.fetch(
        "SELECT a.id, a.message_id FROM attachments a JOIN messages m ON m.id = a.message_id"
        " WHERE m.parent_id IS NOT DISTINCT FROM $1", uuid.UUID(parent) if parent else None,
    )
    if mode == "never arrived":
        assert answer is not None and answer.status == 500
        assert rows == [] and _blobs(stack) == set()  # nothing committed, nothing left on disk
        return
    if answer is not None:
        assert answer.status >= 500
    # Committed: the message is there and its file is whole.
    [row] = rows
    assert _blobs(stack) == {str(row["id"])}
    got = await stack.download(reader, str(row["message_id"]), str(row["id"]))
    assert got.status == 200 and got.raw == PDF


@pytest.mark.parametrize("mode", MODES)
async def test_posting_in_a_case(stack: Stack, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    owner, doctor = await _people(stack)
    opened = await stack.call("POST", "/cases", owner, json_body={
        "patient_name": "Ana Lopez", "summary": "Please evaluate.", "refer_to": doctor.email})
    case_id = opened.body["id"]
    assert (await stack.call("POST", f"/cases/{case_id}/accept", doctor)).status == 200
    trap = CommitTrap(monkeypatch, case_store, "add_post", mode)
    answer = await _call(stack, "POST", f"/cases/{case_id}/files", doctor,
                         compose({"body": "CBCT attached."}, [("cbct.dcm", DICOM)]))
    assert trap.struck
    rows = await stack.pool.fetch("SELECT id FROM case_files WHERE case_id = $1", uuid.UUID(case_id))
    if mode == "never arrived":
        assert answer is not None and answer.status == 500
        assert rows == [] and _blobs(stack) == set()
        return
    if answer is not None:
        assert answer.status >= 500
    [row] = rows
    assert _blobs(stack) == {str(row["id"])}
    got = await stack.call("GET", f"/cases/{case_id}/files/{row['id']}", owner)
    assert got.status == 200 and got.raw == DICOM

"""Recall against a recipient's first open, run concurrently: exactly one of them wins.

"A message can be recalled only while no recipient has opened it." The recipient's open (or
download) and the sender's recall are two transactions on two real connections. Each test
holds one of them open at a chosen point (the handler is paused on an asyncio event inside
its transaction), starts the other, waits until PostgreSQL reports it waiting for a lock (no
sleeps, no timing), then lets the first one finish:

- open first: the recall must wait for the open to commit, see first_opened_at and answer
  409 already_opened; the message stays;
- recall first: the open must wait for the recall to commit and answer 404, as for any
  recalled message, with nothing disclosed or recorded.

Without the lock on opens, the second one does not wait at all: the recall deletes a message
whose body the recipient is being handed, and reports it recalled unread."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from messages_kit import PDF, Resp, Stack, User
from msp_mail.messaging import store as mail_store


async def _waits_for_lock(stack: Stack, task: asyncio.Task, *, timeout: float = 15.0) -> bool:
    """True once another backend of this test's database waits for a row lock; False if
    `task` finished first (it did not wait: the race the lock prevents)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        waiting = await stack.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
        )
        if waiting:
            return True
        if loop.time() > deadline:
            pytest.fail("the second request neither waited for the lock nor finished")
        await asyncio.sleep(0.01)
    return False


class Pause:
    """Wraps a store function so that the first matching call stops, inside the caller's
    transaction, until `release` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str, when: Callable[..., bool] = lambda *a, **k: True):
        self.inside = asyncio.Event()
        self.release = asyncio.Event()
        original: Callable[..., Awaitable[Any]] = getattr(mail_store, name)

        async def paused(*args: Any, **kwargs: Any) -> Any:
            if not self.inside.is_set() and when(*args, **kwargs):
                self.inside.set()
                await self.release.wait()
            return await original(*args, **kwargs)

        monkeypatch.setattr(mail_store, name, paused)


async def _message(stack: Stack) -> tuple[User, User, dict]:
    sender = await stack.user("sender@example.com", await stack.practice("Sender Dental"), paid=True)
    reader = await stack.user("reader@example.com", await stack.practice("Reader Ortho"))
    sent = await stack.send(sender, [reader.email], [("scan.pdf", PDF)], body="Clinical details")
    assert sent.status == 201, sent.body
    return sender, reader, sent.body


def _reading(stack: Stack, reader: User, message: dict, how: str) -> Awaitable[Resp]:
    if how == "open":
        return stack.call("GET", f"/messages/{message['id']}", reader)
    return stack.download(reader, message["id"], message["attachments"][0]["id"])


async def _opened_at(stack: Stack, message: dict) -> Any:
    return await stack.pool.fetchval("SELECT first_opened_at FROM message_recipients WHERE message_id = $1",
                                     uuid.UUID(message["id"]))


async def _disclosed(stack: Stack, message: dict) -> list[str]:
    rows = await stack.pool.fetch("SELECT action FROM disclosures WHERE message_id = $1 ORDER BY id", uuid.UUID(message["id"]))
    return [r["action"] for r in rows]


@pytest.mark.parametrize("how", ["open", "download"])
async def test_a_recall_during_a_first_open_waits_and_is_refused(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                                                 how: str) -> None:
    sender, reader, message = await _message(stack)
    # The recipient's transaction has marked the message opened and is about to record the
    # disclosure: it has not committed yet.
    pause = Pause(monkeypatch, "record_disclosure", lambda *a, **k: k.get("action") == how)
    reading = asyncio.create_task(_reading(stack, reader, message, how))
    await asyncio.wait_for(pause.inside.wait(), 15)

    recall = asyncio.create_task(stack.call("POST", f"/messages/{message['id']}/recall", sender))
    waited = await _waits_for_lock(stack, recall)
    pause.release.set()
    read, recalled = await reading, await recall

    assert waited, f"the recall did not wait for the open in progress: {recalled.status} {recalled.body}"
    assert read.status == 200
    if how == "open":
        assert read.body["body"] == "Clinical details"
    else:
        assert read.raw == PDF
    assert recalled.status == 409 and recalled.body["error"] == "already_opened"
    # Still there for both, with its read receipt and its disclosure.
    assert await _opened_at(stack, message) is not None
    assert await _disclosed(stack, message) == [how]
    assert (await stack.call("GET", f"/messages/{message['id']}", sender)).body["to"][0]["first_opened_at"]


@pytest.mark.parametrize("how", ["open", "download"])
async def test_a_first_open_during_a_recall_waits_and_finds_it_gone(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                                                    how: str) -> None:
    sender, reader, message = await _message(stack)
    # The sender's transaction has checked that nobody opened it and is about to delete it.
    pause = Pause(monkeypatch, "destroy_messages")
    recall = asyncio.create_task(stack.call("POST", f"/messages/{message['id']}/recall", sender))
    await asyncio.wait_for(pause.inside.wait(), 15)

    reading = asyncio.create_task(_reading(stack, reader, message, how))
    waited = await _waits_for_lock(stack, reading)
    pause.release.set()
    recalled, read = await recall, await reading

    assert waited, f"the {how} did not wait for the recall in progress: {read.status}"
    assert recalled.status == 200 and recalled.body["recalled"] is True
    assert read.status == 404
    assert b"Clinical details" not in read.raw and PDF not in read.raw
    assert await _disclosed(stack, message) == []  # nothing was shown, nothing is recorded
    assert (await stack.counts())["messages"] == 0

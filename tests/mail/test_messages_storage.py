"""Attachment storage as deployed: S3-compatible object storage shared by two mail-service
replicas (moto's server on a local port), master-key rotation without rewriting files, and
the Inbox query staying on its index with 100,000 messages."""
from __future__ import annotations

import base64
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiobotocore.session import get_session
from moto.server import ThreadedMotoServer

from messages_kit import PDF, Stack, start_stack, stop_stack
from msp_mail.crypto import MasterKeys
from msp_mail.messaging.rewrap import rewrap_all


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


async def test_two_replicas_share_attachments_in_s3(base_env: dict, clock, tmp_path, s3_endpoint: str) -> None:  # noqa: ANN001
    bucket = f"att-{uuid.uuid4().hex[:8]}"
    s3 = {"attachment_storage": "s3", "s3_endpoint_url": s3_endpoint, "s3_bucket": bucket,
          "s3_access_key_id": "test", "s3_secret_access_key": "test"}
    session = get_session()
    async with session.create_client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                                     aws_access_key_id="test", aws_secret_access_key="test") as client:
        await client.create_bucket(Bucket=bucket)
        one, servers_one = await start_stack(base_env, clock, tmp_path / "one", **s3)
        two, servers_two = await start_stack({**base_env}, clock, tmp_path / "two", **s3)
        try:
            sender = await one.user("s@example.com", await one.practice("S"), paid=True)
            reader = await one.user("r@example.com", await one.practice("R"))
            sent = await one.send(sender, [reader.email], [("scan.pdf", PDF)])
            assert sent.status == 201, sent.body
            att = sent.body["attachments"][0]
            got = await two.download(reader, sent.body["id"], att["id"])  # the other replica
            assert got.status == 200 and got.raw == PDF
            listed = await client.list_objects_v2(Bucket=bucket)
            assert [o["Key"] for o in listed["Contents"]] == [f"attachments/{att['id']}"]
            assert PDF[:20] not in (await (await client.get_object(Bucket=bucket, Key=f"attachments/{att['id']}"))["Body"].read())

            # A refused upload leaves no object and no unfinished multipart upload behind.
            refused = await one.send(sender, [reader.email], [("ok.pdf", PDF), ("bad.pdf", b"MZ\x90\x00")])
            assert refused.status == 415
            listed = await client.list_objects_v2(Bucket=bucket)
            assert len(listed["Contents"]) == 1
            assert not (await client.list_multipart_uploads(Bucket=bucket)).get("Uploads")

            # Recall deletes the object.
            assert (await one.call("POST", f"/messages/{sent.body['id']}/recall", sender)).status == 409  # opened
            fresh = await one.send(sender, [reader.email], [("new.pdf", PDF)])
            assert (await one.call("POST", f"/messages/{fresh.body['id']}/recall", sender)).status == 200
            keys = [o["Key"] for o in (await client.list_objects_v2(Bucket=bucket))["Contents"]]
            assert keys == [f"attachments/{att['id']}"]
        finally:
            await stop_stack(servers_two)
            await stop_stack(servers_one)


async def test_master_key_rotation_rewraps_without_rewriting_files(stack: Stack) -> None:
    sender = await stack.user("s@example.com", await stack.practice("S"), paid=True)
    reader = await stack.user("r@example.com", await stack.practice("R"))
    sent = (await stack.send(sender, [reader.email], [("scan.pdf", PDF)])).body
    att_id = sent["attachments"][0]["id"]
    path = Path(stack.settings.attachment_dir) / att_id
    before = path.read_bytes()

    old = stack.settings.attachment_master_keys.get_secret_value()
    rotated = MasterKeys.parse(old + ",k2:" + base64.b64encode(os.urandom(32)).decode())
    assert await rewrap_all(stack.pool, rotated) == 1
    assert await rewrap_all(stack.pool, rotated) == 0
    wrapped = await stack.pool.fetchval("SELECT wrapped_key FROM attachments WHERE id = $1", uuid.UUID(att_id))
    assert wrapped.startswith("k2:")
    assert path.read_bytes() == before  # the file was not rewritten

    # With only the new key (the old one dropped from the settings) the file still decrypts.
    from msp_mail.attachments import StoredAttachment, read_decrypted
    from msp_mail.blobstore import DiskBlobStore

    row = await stack.pool.fetchrow("SELECT * FROM attachments WHERE id = $1", uuid.UUID(att_id))
    only_new = MasterKeys({"k2": rotated.keys["k2"]}, "k2")
    stored = StoredAttachment(att_id, row["size"], row["sha256"], row["wrapped_key"])
    plain = b"".join([c async for c in read_decrypted(DiskBlobStore(stack.settings.attachment_dir), only_new, stored)])
    assert plain == PDF


async def test_inbox_page_stays_on_its_index_with_100k_messages(stack: Stack) -> None:
    sender = await stack.user("s@example.com", await stack.practice("S"), paid=True)
    reader = await stack.user("r@example.com", await stack.practice("R"))
    async with stack.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO messages (id, thread_id, sender_id, sender_email, subject, body, created_at, expires_at)"
            " SELECT g.id, g.id, $1, 's@example.com', 'bulk', '', $2::timestamptz - make_interval(secs => g.n), $2::timestamptz + interval '30 days'"
            " FROM (SELECT gen_random_uuid() AS id, n FROM generate_series(1, 100000) n) g",
            uuid.UUID(sender.id), stack.clock.now(),
        )
        await conn.execute(
            "INSERT INTO message_recipients (message_id, user_id, email, created_at)"
            " SELECT id, $1, 'r@example.com', created_at FROM messages", uuid.UUID(reader.id))
        await conn.execute("ANALYZE messages; ANALYZE message_recipients")
    first = await stack.call("GET", "/messages?folder=inbox&limit=50", reader)
    assert len(first.body["messages"]) == 50 and first.body["next_cursor"]
    second = await stack.call("GET", f"/messages?folder=inbox&limit=50&cursor={first.body['next_cursor']}", reader)
    assert second.body["messages"][0]["created_at"] < first.body["messages"][-1]["created_at"]

    # The plan walks the (user, created_at, id) index and stops at the page size: no sort, no
    # scan of the whole folder, whichever page is asked for.
    from msp_mail.messaging import store

    async with stack.pool.acquire() as conn:
        after = (stack.clock.now(), uuid.uuid4())
        for page_after in (None, after):
            cursor = " AND (r.created_at, r.message_id) < ($4, $5)" if page_after else ""
            plan = await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) SELECT {store.MESSAGE_COLUMNS}, r.read_at FROM message_recipients r"
                " JOIN messages m ON m.id = r.message_id"
                f" WHERE r.user_id = $1 AND r.deleted_at IS NULL AND m.expires_at > $2{cursor}"
                " ORDER BY r.created_at DESC, r.message_id DESC LIMIT $3",
                uuid.UUID(reader.id), stack.clock.now(), 51, *(page_after or ()),
            )
            text = str(plan)
            assert "message_recipients_inbox" in text
            assert "'Node Type': 'Sort'" not in text

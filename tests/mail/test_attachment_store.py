"""Encrypted attachment storage against both backends: local disk, and S3 through
aiobotocore against moto's S3-compatible server on a local port."""
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiobotocore.session import get_session
from moto.server import ThreadedMotoServer

from msp_mail.attachment_rules import AttachmentBudget
from msp_mail.attachments import AttachmentRefused, StoredAttachment, read_decrypted, store_encrypted
from msp_mail.blobstore import DiskBlobStore, S3BlobStore
from msp_mail.crypto import CHUNK_SIZE, MasterKeys, TamperedError, digest_matches

KEYS = MasterKeys.parse("k1:" + __import__("base64").b64encode(os.urandom(32)).decode())


def records_sha256_of(att: StoredAttachment, data: bytes) -> bool:
    """The recorded digest is this data's SHA-256, as the file's data key opens it."""
    return digest_matches(KEYS.unwrap(att.wrapped_key, att.file_id), att.file_id, att.sha256, hashlib.sha256(data).digest())


async def _stream(data: bytes, piece: int = 10_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


async def _read(store, att, start=0, end=None) -> bytes:  # noqa: ANN001
    return b"".join([c async for c in read_decrypted(store, KEYS, att, start, end)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint() -> AsyncIterator[str]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(params=["disk", "s3"])
async def store(request, tmp_path: Path):  # noqa: ANN001
    if request.param == "disk":
        yield DiskBlobStore(tmp_path / "blobs")
        return
    endpoint = request.getfixturevalue("moto_endpoint")
    session = get_session()
    async with session.create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    ) as client:
        bucket = f"att-{os.urandom(4).hex()}"
        await client.create_bucket(Bucket=bucket)
        yield S3BlobStore(client, bucket, part_size=5 * 1024 * 1024)


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, 3 * CHUNK_SIZE + 5, 6 * 1024 * 1024 + 3])
async def test_round_trip_is_byte_identical(store, size: int) -> None:  # noqa: ANN001
    name, data = ("scan.pdf", b"%PDF-" + os.urandom(size - 5)) if size >= 5 else ("note.txt", b"x" * size)
    att = await store_encrypted(store, KEYS, f"f{size}", name, _stream(data), AttachmentBudget())
    assert att.size == len(data) and records_sha256_of(att, data)
    assert await _read(store, att) == data


async def test_ranges_decrypt_only_what_is_asked(store) -> None:  # noqa: ANN001
    data = b"%PDF-" + os.urandom(5 * CHUNK_SIZE)
    att = await store_encrypted(store, KEYS, "r1", "scan.pdf", _stream(data), AttachmentBudget())
    for start, end in [(0, 10), (CHUNK_SIZE - 3, CHUNK_SIZE + 3), (2 * CHUNK_SIZE, 4 * CHUNK_SIZE + 1), (len(data) - 1, len(data))]:
        assert await _read(store, att, start, end) == data[start:end]


async def test_refused_content_leaves_nothing_behind(store) -> None:  # noqa: ANN001
    with pytest.raises(AttachmentRefused) as refused:
        await store_encrypted(store, KEYS, "bad", "invoice.pdf", _stream(b"MZ" + os.urandom(1000)), AttachmentBudget())
    assert refused.value.refusal.code == "executable_content"
    assert not await store.exists("bad")


async def test_budget_crossed_mid_stream_leaves_nothing_behind(store) -> None:  # noqa: ANN001
    with pytest.raises(AttachmentRefused) as refused:
        await store_encrypted(store, KEYS, "big", "a.txt", _stream(os.urandom(3 * CHUNK_SIZE)), AttachmentBudget(limit=2 * CHUNK_SIZE))
    assert refused.value.refusal.code == "too_large"
    assert not await store.exists("big")


async def test_tampered_file_on_disk_is_detected(tmp_path: Path) -> None:
    store = DiskBlobStore(tmp_path)
    data = b"%PDF-" + os.urandom(2 * CHUNK_SIZE)
    att = await store_encrypted(store, KEYS, "t1", "x.pdf", _stream(data), AttachmentBudget())
    raw = bytearray((tmp_path / "t1").read_bytes())
    raw[CHUNK_SIZE + 100] ^= 0x01
    (tmp_path / "t1").write_bytes(bytes(raw))
    with pytest.raises(TamperedError):
        await _read(store, att)
    (tmp_path / "t1").write_bytes(bytes(raw[: CHUNK_SIZE + 28]))  # truncated after chunk 0
    with pytest.raises(TamperedError):
        await _read(store, att)


@pytest.mark.parametrize("direct_io", [True, False])
@pytest.mark.parametrize("size", [1, 4095, 4096, 4 * 1024 * 1024, 4 * 1024 * 1024 + 1, 9 * 1024 * 1024 - 7])
async def test_disk_store_writes_exact_bytes_direct_or_buffered(tmp_path: Path, direct_io: bool, size: int) -> None:
    # Direct I/O writes whole aligned blocks and cuts the file to size at the end: every
    # size around the 4 KiB alignment and the 4 MiB block must come back byte for byte.
    store = DiskBlobStore(tmp_path, direct_io=direct_io)
    data = os.urandom(size)
    assert await store.put("b1", _stream(data, 300_000)) == size
    assert (tmp_path / "b1").read_bytes() == data
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


async def test_disk_store_uses_direct_io_where_the_filesystem_allows(tmp_path: Path) -> None:
    from msp_mail.blobstore import _BlockFile

    out = _BlockFile(tmp_path / "probe")
    try:
        assert out.direct  # ext4 and tmpfs here: the fast path is the one tested above
    finally:
        out.close()


def test_a_refused_direct_write_goes_on_buffered(tmp_path: Path) -> None:
    # The kernel refuses an O_DIRECT write from an unaligned buffer with EINVAL, as some
    # filesystems refuse every direct write: the file goes on buffered, nothing is lost.
    from msp_mail.blobstore import _BlockFile

    out = _BlockFile(tmp_path / "f")
    assert out.direct
    data = bytearray(os.urandom(5001))
    out._write(memoryview(data)[1:])  # one byte in: unaligned address and length
    out.finish()
    out.close()
    assert not out.direct and (tmp_path / "f").read_bytes() == bytes(data[1:])


async def test_failed_stream_leaves_no_file_in_direct_mode(tmp_path: Path) -> None:
    store = DiskBlobStore(tmp_path)

    async def breaks() -> AsyncIterator[bytes]:
        yield os.urandom(5 * 1024 * 1024)
        raise ConnectionResetError

    with pytest.raises(ConnectionResetError):
        await store.put("gone", breaks())
    assert list(tmp_path.iterdir()) == []


async def test_a_recorded_sha256_that_does_not_match_is_refused_on_a_full_read(tmp_path: Path) -> None:
    store = DiskBlobStore(tmp_path)
    data = b"%PDF-" + os.urandom(2 * CHUNK_SIZE)
    att = await store_encrypted(store, KEYS, "h1", "x.pdf", _stream(data), AttachmentBudget())
    wrong = StoredAttachment(att.file_id, att.size, hashlib.sha256(b"something else").hexdigest(), att.wrapped_key)
    with pytest.raises(TamperedError):
        await _read(store, wrong)
    assert await _read(store, wrong, 0, 100) == data[:100]  # a range read is checked chunk by chunk only


async def test_the_recorded_sha256_confirms_no_guess_without_the_data_key(tmp_path: Path) -> None:
    """A database reader who guesses the content cannot check the guess: the recorded digest
    is sealed under the file's own data key, differs for the same content stored twice, and
    opens for nothing but that file's key and id."""
    store = DiskBlobStore(tmp_path)
    data = b"%PDF-" + b"a well-known consent form" * 1000
    one = await store_encrypted(store, KEYS, "g1", "form.pdf", _stream(data), AttachmentBudget())
    two = await store_encrypted(store, KEYS, "g2", "form.pdf", _stream(data), AttachmentBudget())
    guess = hashlib.sha256(data)
    for att in (one, two):
        assert guess.hexdigest() not in att.sha256 and guess.digest().hex() not in att.sha256
        assert records_sha256_of(att, data) and not records_sha256_of(att, data + b"!")
    assert one.sha256 != two.sha256
    key_of_one = KEYS.unwrap(one.wrapped_key, one.file_id)
    assert not digest_matches(key_of_one, two.file_id, two.sha256, guess.digest())  # another file's key
    assert not digest_matches(key_of_one, "g9", one.sha256, guess.digest())  # moved to another file id
    assert not digest_matches(key_of_one, one.file_id, "sealed:not-base64!", guess.digest())
    assert await _read(store, one) == data


async def test_a_digest_recorded_in_plain_hex_before_sealing_still_verifies(tmp_path: Path) -> None:
    store = DiskBlobStore(tmp_path)
    data = b"%PDF-" + os.urandom(CHUNK_SIZE + 7)
    att = await store_encrypted(store, KEYS, "o1", "x.pdf", _stream(data), AttachmentBudget())
    legacy = StoredAttachment(att.file_id, att.size, hashlib.sha256(data).hexdigest(), att.wrapped_key)
    assert await _read(store, legacy) == data


# The sealed stream itself catches rearrangements, before the recorded SHA-256 is compared.
SEALED = CHUNK_SIZE + 28


async def test_swapped_chunks_are_detected(tmp_path: Path) -> None:
    store = DiskBlobStore(tmp_path)
    data = b"%PDF-" + os.urandom(3 * CHUNK_SIZE)
    att = await store_encrypted(store, KEYS, "s1", "x.pdf", _stream(data), AttachmentBudget())
    raw = (tmp_path / "s1").read_bytes()
    swapped = raw[SEALED : 2 * SEALED] + raw[:SEALED] + raw[2 * SEALED :]
    (tmp_path / "s1").write_bytes(swapped)
    with pytest.raises(TamperedError):
        await _read(store, att)


async def test_truncation_to_whole_chunks_with_a_matching_recorded_size_is_detected(tmp_path: Path) -> None:
    # Someone who can write both the disk and the database cuts the file after its first
    # chunk and records the shorter size: that chunk was not sealed as the last one.
    store = DiskBlobStore(tmp_path)
    data = b"%PDF-" + os.urandom(2 * CHUNK_SIZE)
    att = await store_encrypted(store, KEYS, "c1", "x.pdf", _stream(data), AttachmentBudget())
    (tmp_path / "c1").write_bytes((tmp_path / "c1").read_bytes()[:SEALED])
    with pytest.raises(TamperedError):
        await _read(store, StoredAttachment(att.file_id, CHUNK_SIZE, att.sha256, att.wrapped_key))


async def test_another_attachments_sealed_file_put_in_its_place_is_detected(tmp_path: Path) -> None:
    store = DiskBlobStore(tmp_path)
    data = b"%PDF-" + os.urandom(2 * CHUNK_SIZE)
    mine = await store_encrypted(store, KEYS, "m1", "x.pdf", _stream(data), AttachmentBudget())
    await store_encrypted(store, KEYS, "m2", "x.pdf", _stream(data), AttachmentBudget())
    theirs = (tmp_path / "m2").read_bytes()
    (tmp_path / "m1").write_bytes(theirs)
    with pytest.raises(TamperedError):
        await _read(store, mine)


async def test_plaintext_is_not_on_disk(tmp_path: Path) -> None:
    store = DiskBlobStore(tmp_path)
    data = b"%PDF-" + b"PATIENT NAME: Jane Roe " * 5000
    await store_encrypted(store, KEYS, "p1", "x.pdf", _stream(data), AttachmentBudget())
    assert b"Jane Roe" not in (tmp_path / "p1").read_bytes()


@pytest.mark.parametrize("piece", [10_000, 1024 * 1024])
async def test_whole_chunks_across_several_seal_batches(tmp_path: Path, piece: int) -> None:
    # an exact multiple of the chunk size spanning several worker batches: the held-back
    # final chunk is the one sealed as last, and the file holds exactly the sealed chunks
    from msp_mail.attachments import SEAL_BATCH
    from msp_mail.crypto import sealed_size

    store = DiskBlobStore(tmp_path)
    data = b"%PDF-" + os.urandom(3 * SEAL_BATCH - 5)
    att = await store_encrypted(store, KEYS, "w1", "x.pdf", _stream(data, piece), AttachmentBudget())
    assert att.size == len(data) and records_sha256_of(att, data)
    assert (tmp_path / "w1").stat().st_size == sealed_size(len(data))
    assert await _read(store, att) == data
    assert await _read(store, att, len(data) - CHUNK_SIZE - 1) == data[-CHUNK_SIZE - 1 :]


async def test_budget_crossed_after_batches_were_written_leaves_nothing_behind(tmp_path: Path) -> None:
    from msp_mail.attachments import SEAL_BATCH

    store = DiskBlobStore(tmp_path)
    with pytest.raises(AttachmentRefused) as refused:
        await store_encrypted(
            store, KEYS, "big2", "a.txt", _stream(os.urandom(4 * SEAL_BATCH), 64 * 1024), AttachmentBudget(limit=3 * SEAL_BATCH)
        )
    assert refused.value.refusal.code == "too_large"
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary part

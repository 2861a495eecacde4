import base64
import os

import pytest

from msp_mail.crypto import CHUNK_SIZE, MasterKeys, TamperedError, new_data_key, open_chunk, seal_chunk


def _chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)] or [b""]


def _seal(key: bytes, file_id: str, data: bytes) -> list[bytes]:
    parts = _chunks(data)
    return [seal_chunk(key, file_id, i, p, last=i == len(parts) - 1) for i, p in enumerate(parts)]


def _open(key: bytes, file_id: str, sealed: list[bytes]) -> bytes:
    return b"".join(open_chunk(key, file_id, i, s, last=i == len(sealed) - 1) for i, s in enumerate(sealed))


def test_round_trip() -> None:
    key, data = new_data_key(), os.urandom(3 * CHUNK_SIZE + 17)
    assert _open(key, "f1", _seal(key, "f1", data)) == data


def test_reordered_dropped_truncated_or_moved_chunks_fail() -> None:
    key, data = new_data_key(), os.urandom(3 * CHUNK_SIZE)
    sealed = _seal(key, "f1", data)
    with pytest.raises(TamperedError):
        _open(key, "f1", [sealed[1], sealed[0], sealed[2]])
    with pytest.raises(TamperedError):
        _open(key, "f1", sealed[:2])  # truncated: chunk 1 was not sealed as last
    with pytest.raises(TamperedError):
        _open(key, "f2", sealed)  # moved to another file
    flipped = bytearray(sealed[0])
    flipped[40] ^= 1
    with pytest.raises(TamperedError):
        open_chunk(key, "f1", 0, bytes(flipped), last=False)


def test_master_key_rotation_rewraps_without_touching_data() -> None:
    old = base64.b64encode(os.urandom(32)).decode()
    new = base64.b64encode(os.urandom(32)).decode()
    keys_v1 = MasterKeys.parse(f"k1:{old}")
    data_key = new_data_key()
    wrapped = keys_v1.wrap(data_key, "f1")
    keys_v2 = MasterKeys.parse(f"k1:{old},k2:{new}")
    rewrapped = keys_v2.rewrap(wrapped, "f1")
    assert rewrapped.startswith("k2:")
    assert MasterKeys.parse(f"k2:{new}").unwrap(rewrapped, "f1") == data_key
    with pytest.raises(TamperedError):
        keys_v2.unwrap(wrapped, "another-file")


def test_sealing_a_batch_gives_the_same_chunks_as_sealing_one_by_one() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from msp_mail.crypto import SEALED_CHUNK_SIZE, seal_chunks, sealed_size

    key, data = new_data_key(), os.urandom(3 * CHUNK_SIZE + 17)
    out = bytes(seal_chunks(AESGCM(key), "f1", 5, memoryview(data), last=True))
    assert len(out) == sealed_size(len(data))
    sealed = [out[i : i + SEALED_CHUNK_SIZE] for i in range(0, len(out), SEALED_CHUNK_SIZE)]
    assert b"".join(open_chunk(key, "f1", 5 + i, s, last=i == 3) for i, s in enumerate(sealed)) == data
    assert len({s[:12] for s in sealed}) == 4  # a fresh nonce per chunk
    middle = bytes(seal_chunks(AESGCM(key), "f1", 0, data[: 2 * CHUNK_SIZE], last=False))
    with pytest.raises(TamperedError):
        open_chunk(key, "f1", 1, middle[SEALED_CHUNK_SIZE:], last=True)  # not the last: cannot pass as a truncated end
    assert open_chunk(key, "f1", 0, bytes(seal_chunks(AESGCM(key), "f1", 0, b"", last=True)), last=True) == b""

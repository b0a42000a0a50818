"""Sealed model files (drivers/sealed.py): the round trip, and every way a sealed file is refused."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from model_fixtures import write_checkpoint

from llmos.drivers import sealed
from llmos.drivers.checkpoint import load_checkpoint
from llmos.drivers.sealed import ModelFiles, open_model_files
from llmos.kernel.errors import KernelError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def seal(tmp_path: Path, data: bytes, rel: str = "model.safetensors", chunk_bytes: int = 64) -> Path:
    source, target = tmp_path / "plain", tmp_path / "sealed"
    source.write_bytes(data)
    assert sealed.seal_file(source, target, KEY, rel, chunk_bytes=chunk_bytes) == len(data)
    return target


def refused(path: Path, key: bytes = KEY, rel: str = "model.safetensors") -> str:
    with pytest.raises(KernelError) as err:
        sealed.unseal(path, key, rel)
    assert err.value.errno == "EACCES" and rel in err.value.message
    return err.value.message


def buffer_refused(path: Path, key: bytes = KEY, rel: str = "model.safetensors") -> str:
    with pytest.raises(KernelError) as err:
        sealed.unseal_into_buffer(path, key, rel)
    assert err.value.errno == "EACCES" and rel in err.value.message
    return err.value.message


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 64 * 5, 1000])
def test_a_sealed_file_opens_to_its_plaintext_and_holds_none_of_it(tmp_path, size):
    data = os.urandom(size)
    path = seal(tmp_path, data)
    assert sealed.is_sealed(path) and sealed.sealed_size(path, "model.safetensors") == size
    assert sealed.unseal(path, KEY, "model.safetensors") == data
    assert sealed.unsealed_digest(path, KEY, "model.safetensors") == (hashlib.sha256(data).hexdigest(), size)
    buffer, digest = sealed.unseal_into_buffer(path, KEY, "model.safetensors")
    assert buffer == data and isinstance(buffer, bytearray) and digest == hashlib.sha256(data).hexdigest()
    stored = path.read_bytes()
    assert all(data[i:i + 16] not in stored for i in range(0, max(size - 15, 0), 16))
    assert path.stat().st_mode & 0o077 == 0


def test_a_changed_byte_a_truncation_extra_bytes_or_another_key_or_name_are_refused(tmp_path):
    path = seal(tmp_path, os.urandom(300))
    good = path.read_bytes()
    for offset in (0, 10, 19, 20, 40, len(good) - 1):  # magic, header sizes, nonce, ciphertext, tag
        changed = bytearray(good)
        changed[offset] ^= 0x01
        path.write_bytes(bytes(changed))
        refused(path)
    path.write_bytes(good[:-1])
    assert "truncated" in refused(path)
    assert "truncated" in buffer_refused(path)
    path.write_bytes(good + b"\0")
    assert "after its last chunk" in refused(path)
    assert "after its last chunk" in buffer_refused(path)
    # A header that declares a vast plaintext is refused before any memory is taken for it.
    vast = bytearray(good)
    vast[12:20] = (1 << 60).to_bytes(8, "big")
    path.write_bytes(bytes(vast))
    assert "truncated" in buffer_refused(path)
    path.write_bytes(good)
    assert "authentication" in refused(path, key=OTHER_KEY)
    assert "authentication" in refused(path, rel="tokenizer.json")  # sealed for another file
    (tmp_path / "plain").write_bytes(b"{}")
    assert "not a sealed model file" in refused(tmp_path / "plain")


def test_the_reader_loads_a_sealed_checkpoint_as_the_plain_one_and_checks_the_manifest_hashes(tmp_path):
    plain = tmp_path / "plain"
    write_checkpoint(plain, seed=3)
    locked = tmp_path / "sealed"
    locked.mkdir()
    table = {}
    for path in plain.iterdir():
        sealed.seal_file(path, locked / path.name, KEY, path.name)
        table[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = load_checkpoint(plain)
    got = load_checkpoint(open_model_files(str(locked), {"key": KEY, "sha256": table}))
    assert got.config == expected.config and got.state_dict.keys() == expected.state_dict.keys()
    assert all(torch.equal(got.state_dict[name], tensor) for name, tensor in expected.state_dict.items())

    # A file the manifest does not list is not read; one that does not match it is refused.
    with pytest.raises(KernelError) as err:
        ModelFiles(locked, KEY, {k: v for k, v in table.items() if k != "config.json"}).read_bytes("config.json")
    assert err.value.errno == "EACCES" and "not in the signed manifest" in err.value.message
    with pytest.raises(KernelError) as err:
        load_checkpoint(ModelFiles(locked, KEY, {**table, "model.safetensors": "0" * 64}))
    assert err.value.errno == "EACCES" and "model.safetensors" in err.value.message and "sha256" in err.value.message


@pytest.mark.parametrize("grant", [{"key": KEY}, {"key": b"short", "sha256": {}}, {"key": KEY, "sha256": [1]}, "x"])
def test_a_malformed_grant_is_einval_without_echoing_the_key(grant):
    with pytest.raises(KernelError) as err:
        open_model_files("/nowhere", grant)
    assert err.value.errno == "EINVAL" and repr(KEY) not in err.value.message

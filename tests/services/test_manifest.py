"""Manifests: every file's sha256, canonical bytes, strict verification, signatures."""

from __future__ import annotations

import hashlib
import json

import pytest

from llmos.kernel.errors import KernelError
from llmos.services import manifest as manifests
from llmos.services.keys import KeyStore


def flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_manifest_lists_every_file_with_its_sha256_and_the_config(model_dir):
    manifest = manifests.make_manifest(model_dir, "tiny", "1", created="2025-01-01T00:00:00Z")
    paths = [entry["path"] for entry in manifest["files"]]
    assert paths == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"]
    for entry in manifest["files"]:
        data = (model_dir / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert manifest["config"]["hidden_size"] == 64
    assert (manifest["name"], manifest["version"], manifest["created"]) == ("tiny", "1", "2025-01-01T00:00:00Z")
    assert manifests.verify_files(manifest, model_dir) == 4


def test_canonical_bytes_have_sorted_keys_and_no_whitespace():
    assert manifests.canonical_json({"b": [1, 2], "a": {"y": 1, "x": "é"}}) == '{"a":{"x":"é","y":1},"b":[1,2]}'.encode()
    with pytest.raises(KernelError) as err:
        manifests.canonical_json({"a": float("nan")})
    assert err.value.errno == "EINVAL"


def test_files_are_hashed_in_one_mib_chunks(model_dir, monkeypatch):
    reads = []
    real_open = open

    class Spy:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def read(self, size=-1):
            reads.append(size)
            return self.handle.read(size)

    monkeypatch.setattr(manifests, "open", lambda path, mode: Spy(real_open(path, mode)), raising=False)
    digest, size = manifests.hash_file(model_dir / "model.safetensors")
    assert digest == hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert set(reads) == {1 << 20} and len(reads) == size // (1 << 20) + 2  # 2 full, 1 partial, 1 empty


def test_one_changed_byte_in_a_weight_file_is_refused_naming_the_file(model_dir):
    manifest = manifests.make_manifest(model_dir, "tiny", "1")
    flip_byte(model_dir / "model.safetensors", 1_500_000)  # in the second 1 MiB chunk
    with pytest.raises(KernelError) as err:
        manifests.verify_files(manifest, model_dir)
    assert err.value.errno == "EACCES"
    assert "model.safetensors" in err.value.message and "changed" in err.value.message


def test_a_missing_truncated_or_unlisted_file_is_refused_naming_it(model_dir):
    manifest = manifests.make_manifest(model_dir, "tiny", "1")
    (model_dir / ".cache").mkdir()
    (model_dir / ".cache" / "lock").write_text("ignored: hidden entries are not part of the model")
    (model_dir / manifests.MANIFEST_FILE).write_text("{}")
    assert manifests.verify_files(manifest, model_dir) == 4
    (model_dir / "extra.py").write_text("import os")
    with pytest.raises(KernelError) as err:
        manifests.verify_files(manifest, model_dir)
    assert err.value.errno == "EACCES" and "extra.py" in err.value.message and "not in the manifest" in err.value.message
    (model_dir / "extra.py").unlink()
    (model_dir / "tokenizer.json").write_text("{}")
    with pytest.raises(KernelError) as err:
        manifests.verify_files(manifest, model_dir)
    assert err.value.errno == "EACCES" and "tokenizer.json" in err.value.message and "bytes" in err.value.message
    (model_dir / "config.json").unlink()
    with pytest.raises(KernelError) as err:
        manifests.verify_files(manifest, model_dir)
    assert err.value.errno == "EACCES" and "config.json" in err.value.message and "missing" in err.value.message


def test_a_directory_without_config_or_with_a_directory_link_is_refused(tmp_path, model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "weights.bin").write_bytes(b"x")
    with pytest.raises(KernelError) as err:
        manifests.make_manifest(empty, "x", "1")
    assert err.value.errno == "EINVAL" and "config.json" in err.value.message
    (model_dir / "escape").symlink_to(tmp_path)
    with pytest.raises(KernelError) as err:
        manifests.make_manifest(model_dir, "x", "1")
    assert err.value.errno == "EINVAL" and "link" in err.value.message
    with pytest.raises(KernelError) as err:
        manifests.make_manifest(tmp_path / "nowhere", "x", "1")
    assert err.value.errno == "ENOENT"


@pytest.mark.parametrize("bad_path", ["../etc/passwd", "/etc/passwd", "a/../../b", ".git/config", "", "a\\b"])
def test_a_manifest_path_outside_the_directory_is_einval(model_dir, bad_path):
    manifest = manifests.make_manifest(model_dir, "tiny", "1")
    manifest["files"].append({"path": bad_path, "bytes": 1, "sha256": "0" * 64})
    with pytest.raises(KernelError) as err:
        manifests.verify_files(manifest, model_dir)
    assert err.value.errno == "EINVAL"


def test_a_signed_manifest_verifies_and_any_change_to_it_breaks_the_signature(home, model_dir):
    keys = KeyStore(home)
    envelope = manifests.sign_manifest(manifests.make_manifest(model_dir, "tiny", "1"), keys)
    envelope = json.loads(json.dumps(envelope))  # as stored on disk
    manifest, key_id = manifests.verify_envelope(envelope, keys)
    assert key_id == keys.key_id and manifest["name"] == "tiny"
    envelope["manifest"]["files"][2]["sha256"] = hashlib.sha256(b"evil weights").hexdigest()
    with pytest.raises(KernelError) as err:
        manifests.verify_envelope(envelope, keys)
    assert err.value.errno == "EACCES" and "does not verify" in err.value.message


def test_a_manifest_signed_by_an_untrusted_key_is_refused(home, tmp_path, model_dir):
    ours, stranger = KeyStore(home), KeyStore(tmp_path / "stranger-home")
    envelope = manifests.sign_manifest(manifests.make_manifest(model_dir, "tiny", "1"), stranger)
    with pytest.raises(KernelError) as err:
        manifests.verify_envelope(envelope, ours)
    assert err.value.errno == "EACCES" and f"signed by an untrusted key {stranger.key_id}" in err.value.message


def test_envelopes_round_trip_through_the_manifest_file(home, model_dir):
    keys = KeyStore(home)
    envelope = manifests.sign_manifest(manifests.make_manifest(model_dir, "tiny", "1"), keys)
    manifests.write_envelope(model_dir / manifests.MANIFEST_FILE, envelope)
    assert manifests.read_envelope(model_dir) == envelope
    (model_dir / manifests.MANIFEST_FILE).unlink()
    with pytest.raises(KernelError) as err:
        manifests.read_envelope(model_dir)
    assert err.value.errno == "ENOENT"

"""Manifests of encrypted model versions: the same manifest, hashed over the plaintext.

A version imported with ``--encrypt`` holds only sealed files (drivers/sealed.py). Its manifest
is made and checked as manifest.py does for plain files, except that each file's size and
sha256 are those of its *plaintext*, decrypted chunk by chunk in memory, so a signature means
the same thing for both kinds of store. Such a manifest carries ``"encrypted": true``, inside
what is signed: a signed plain manifest cannot be passed off as an encrypted one, nor the
reverse.

Verification refuses, with EACCES naming the file, what manifest.py refuses (a missing,
changed or unlisted file) and also a file that is not sealed or fails AES-GCM authentication.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from llmos.drivers import sealed
from llmos.kernel.errors import KernelError

from . import manifest as manifests

ENCRYPTED_FIELD = "encrypted"  # manifest field: true for a version whose files are sealed


def is_encrypted(manifest: dict[str, Any]) -> bool:
    """Whether a (checked) manifest describes an encrypted version."""
    return manifest.get(ENCRYPTED_FIELD) is True


def make_sealed_manifest(directory: Path, name: str, version: str, key: bytes, created: str | None = None) -> dict[str, Any]:
    """Describe a directory of sealed files: config and every file's plaintext size and sha256.

    Raises:
        KernelError: ENOENT/EINVAL as ``manifest.make_manifest``; EACCES naming a file that is
            not sealed under ``key`` for its path.
    """
    directory = Path(directory)
    paths = manifests.list_model_files(directory)
    if "config.json" not in paths:
        raise KernelError("EINVAL", f"{directory} has no config.json; it is not a Hugging Face-format checkpoint")
    try:
        config = json.loads(sealed.unseal(directory / "config.json", key, "config.json"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise KernelError("EINVAL", f"{directory / 'config.json'} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise KernelError("EINVAL", f"{directory / 'config.json'} must hold a JSON object")
    files = []
    for rel in paths:
        digest, size = sealed.unsealed_digest(directory / rel, key, rel)
        files.append({"path": rel, "bytes": size, "sha256": digest})
    if created is None:
        created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = {"format": manifests.MANIFEST_FORMAT, "name": name, "version": version, "created": created,
                "config": config, "files": files, ENCRYPTED_FIELD: True}
    manifests.canonical_json(manifest)  # refuse now (EINVAL) what could never be signed
    return manifest


def verify_sealed_files(manifest: dict[str, Any], directory: Path, key: bytes) -> int:
    """Check a directory of sealed files against ``manifest``; return the number of files verified.

    As ``manifest.verify_files``: sizes first (from each sealed header, so a truncated shard is
    caught without decrypting it), then the plaintext's sha256, then unlisted files.

    Raises:
        KernelError: EACCES naming the first file that is missing, not sealed, fails
            authentication, does not match the manifest, or is not listed.
    """
    directory = Path(directory)
    manifests.check_manifest(manifest)
    for entry in manifest["files"]:
        rel = entry["path"]
        path = directory / rel
        if not path.is_file():
            raise KernelError("EACCES", f"model file {rel} listed in the manifest is missing from {directory}")
        size = sealed.sealed_size(path, rel)
        if size != entry["bytes"]:
            raise KernelError("EACCES", f"model file {rel} holds {size} bytes sealed but the manifest says {entry['bytes']}: "
                                        "it was changed after signing")
        digest, _ = sealed.unsealed_digest(path, key, rel)
        if digest != entry["sha256"]:
            raise KernelError("EACCES", f"model file {rel} does not match its sha256 in the manifest: it was changed after signing")
    listed = {entry["path"] for entry in manifest["files"]}
    for rel in manifests.list_model_files(directory):
        if rel not in listed:
            raise KernelError("EACCES", f"model file {rel} in {directory} is not in the manifest; remove it or sign the directory again")
    return len(manifest["files"])

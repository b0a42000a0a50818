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

from pathlib import Path
from typing import Any

from llmos.drivers import sealed

from . import manifest as manifests

ENCRYPTED_FIELD = "encrypted"  # manifest field: true for a version whose files are sealed


def is_encrypted(manifest: dict[str, Any]) -> bool:
    """Whether a (checked) manifest describes an encrypted version."""
    return manifest.get(ENCRYPTED_FIELD) is True


class SealedFiles(manifests.PlainFiles):
    """Reads sealed files for manifest.py: sizes from their headers, content decrypted in memory.

    A file that is not sealed under ``key`` for its path raises EACCES naming it.
    """

    held = "holds, sealed,"

    def __init__(self, key: bytes) -> None:
        self._key = key

    def read(self, path: Path, rel: str) -> bytes:
        return sealed.unseal(path, self._key, rel)

    def size(self, path: Path, rel: str) -> int:
        return sealed.sealed_size(path, rel)  # a truncated shard is caught without decrypting it

    def digest(self, path: Path, rel: str) -> tuple[str, int]:
        return sealed.unsealed_digest(path, self._key, rel)


def make_sealed_manifest(directory: Path, name: str, version: str, key: bytes, created: str | None = None) -> dict[str, Any]:
    """Describe a directory of sealed files: config and every file's plaintext size and sha256.

    Raises:
        KernelError: ENOENT/EINVAL as ``manifest.make_manifest``; EACCES naming a file that is
            not sealed under ``key`` for its path.
    """
    manifest = manifests.make_manifest(directory, name, version, created, SealedFiles(key))
    manifest[ENCRYPTED_FIELD] = True
    return manifest


def verify_sealed_files(manifest: dict[str, Any], directory: Path, key: bytes) -> int:
    """Check a directory of sealed files against ``manifest``; return the number of files verified.

    As ``manifest.verify_files``, over the plaintext. Raises KernelError: EACCES naming the
    first file that is missing, not sealed, fails authentication, does not match the manifest,
    or is not listed.
    """
    return manifests.verify_files(manifest, directory, SealedFiles(key))

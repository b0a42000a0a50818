"""Model manifests: what a Hugging Face-format checkpoint directory held when it was signed.

A manifest is plain JSON-able data::

    {"format": "llmos-manifest/1", "name": "tiny", "version": "1", "created": "2025-...Z",
     "config": {...config.json...},
     "files": [{"path": "config.json", "bytes": 512, "sha256": "ab12..."}, ...]}   # sorted

Its *canonical bytes* (sorted keys, no whitespace, UTF-8) are what a key signs; a signed
manifest travels as an envelope ``{"manifest": {...}, "signature": {"alg": "ed25519",
"key_id": ..., "sig": <base64>}}`` and is stored as ``llmos-manifest.json`` in the directory.

Verification is strict: every listed file must be present with its size and sha256, and the
directory may hold no other files, because a loader might read an unlisted one (a second
weights shard, a tokenizer, code). Hidden entries (names starting with ``.``) and the manifest
file itself are not part of the model and are ignored. Symbolic links to files are followed
(their content is hashed); links to directories are refused, since they could lead anywhere.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from llmos.kernel.errors import KernelError

from .keys import SIGNATURE_BYTES, KeyStore
from .securefiles import PUBLIC_FILE_MODE, replace_file

MANIFEST_FORMAT = "llmos-manifest/1"
MANIFEST_FILE = "llmos-manifest.json"  # the signed envelope, kept next to the weights
CHUNK_BYTES = 1 << 20  # files are hashed in 1 MiB reads, so a 10 GB shard needs no 10 GB buffer
MAX_FILES = 4096  # files in one model directory
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def canonical_json(value: Any) -> bytes:
    """The canonical bytes of JSON-able data: sorted keys, no whitespace, UTF-8, no NaN."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise KernelError("EINVAL", f"value cannot be written as canonical JSON ({exc})") from None


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def list_model_files(directory: Path) -> list[str]:
    """The model's files under ``directory`` as sorted relative POSIX paths.

    Raises:
        KernelError: ENOENT if ``directory`` is not a directory; EINVAL for a link to a
            directory, a special file (FIFO, device, socket) or more than ``MAX_FILES`` files.
    """
    if not directory.is_dir():
        raise KernelError("ENOENT", f"model directory {directory} does not exist or is not a directory")
    found: list[str] = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        base = Path(root)
        for name in sorted(dirs):
            if name.startswith("."):
                dirs.remove(name)  # .git, .cache: not part of the model
            elif (base / name).is_symlink():
                raise KernelError("EINVAL", f"{base / name} is a link to a directory; copy the files in instead")
        for name in files:
            if name.startswith(".") or (base == directory and name == MANIFEST_FILE):
                continue
            path = base / name
            if not stat.S_ISREG(path.stat().st_mode):  # stat follows a file link to its target
                raise KernelError("EINVAL", f"{path} is not a regular file")
            found.append(path.relative_to(directory).as_posix())
            if len(found) > MAX_FILES:
                raise KernelError("EINVAL", f"{directory} holds more than {MAX_FILES} files")
    return sorted(found)


class PlainFiles:
    """How a manifest reads a directory's files: as they are on disk.

    services/sealed_manifest.py supplies another reader, for files sealed with AES-GCM, so one
    manifest maker and one verifier serve both kinds of store.
    """

    held = "has"  # for messages: "model file X has N bytes"

    def read(self, path: Path, rel: str) -> bytes:
        """The file's content."""
        return path.read_bytes()

    def size(self, path: Path, rel: str) -> int:
        """The size the manifest lists (checked before hashing: a truncated shard fails fast)."""
        return path.stat().st_size

    def digest(self, path: Path, rel: str) -> tuple[str, int]:
        """(sha256 hex, size) of the content."""
        return hash_file(path)


PLAIN_FILES = PlainFiles()


def make_manifest(directory: Path, name: str, version: str, created: str | None = None,
                  files_reader: PlainFiles = PLAIN_FILES) -> dict[str, Any]:
    """Describe a Hugging Face-format checkpoint directory: config and every file's sha256.

    Args:
        created: ISO-8601 UTC time to record; now if None.
        files_reader: how to read the files (sealed ones are hashed over their plaintext).

    Raises:
        KernelError: ENOENT/EINVAL for a missing directory or an unreadable ``config.json``;
            what ``files_reader`` raises for a file it cannot read.
    """
    directory = Path(directory)
    paths = list_model_files(directory)
    if "config.json" not in paths:
        raise KernelError("EINVAL", f"{directory} has no config.json; it is not a Hugging Face-format checkpoint")
    try:
        config = json.loads(files_reader.read(directory / "config.json", "config.json"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise KernelError("EINVAL", f"{directory / 'config.json'} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise KernelError("EINVAL", f"{directory / 'config.json'} must hold a JSON object")
    files = []
    for rel in paths:
        digest, size = files_reader.digest(directory / rel, rel)
        files.append({"path": rel, "bytes": size, "sha256": digest})
    if created is None:
        created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = {"format": MANIFEST_FORMAT, "name": name, "version": version, "created": created,
                "config": config, "files": files}
    canonical_json(manifest)  # refuse now (EINVAL) what could never be signed, e.g. NaN in config
    return manifest


def _check_rel_path(rel: Any) -> str:
    """A manifest path must stay inside the model directory: relative, no '..', not hidden."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
        raise KernelError("EINVAL", f"manifest file path {rel!r} is not a relative POSIX path")
    if any(part in ("", ".", "..") or part.startswith(".") for part in rel.split("/")):
        raise KernelError("EINVAL", f"manifest file path {rel!r} leaves the model directory or names a hidden file")
    return rel


def check_manifest(manifest: Any) -> dict[str, Any]:
    """Check a manifest's shape (from the wire or a file); EINVAL naming the first bad field."""
    if not isinstance(manifest, dict):
        raise KernelError("EINVAL", "a manifest must be a map")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise KernelError("EINVAL", f"manifest format {manifest.get('format')!r} is not {MANIFEST_FORMAT!r}")
    for field in ("name", "version", "created"):
        if not isinstance(manifest.get(field), str):
            raise KernelError("EINVAL", f"manifest field {field!r} must be a string")
    if not isinstance(manifest.get("config"), dict):
        raise KernelError("EINVAL", "manifest field 'config' must be a map")
    files = manifest.get("files")
    if not isinstance(files, list) or len(files) > MAX_FILES:
        raise KernelError("EINVAL", f"manifest field 'files' must be a list of at most {MAX_FILES} entries")
    seen: set[str] = set()
    for entry in files:
        if not isinstance(entry, dict) or set(entry) != {"path", "bytes", "sha256"}:
            raise KernelError("EINVAL", "each manifest file entry must be a map of path, bytes and sha256")
        rel = _check_rel_path(entry["path"])
        if rel in seen:
            raise KernelError("EINVAL", f"manifest lists {rel!r} twice")
        seen.add(rel)
        if type(entry["bytes"]) is not int or entry["bytes"] < 0:
            raise KernelError("EINVAL", f"manifest size of {rel!r} must be a non-negative integer")
        if not isinstance(entry["sha256"], str) or not _SHA256_HEX.fullmatch(entry["sha256"]):
            raise KernelError("EINVAL", f"manifest sha256 of {rel!r} must be 64 lowercase hex digits")
    return manifest


def verify_files(manifest: dict[str, Any], directory: Path, files_reader: PlainFiles = PLAIN_FILES) -> int:
    """Check ``directory`` against ``manifest``; return the number of files verified.

    Files are checked in manifest order (sorted by path); sizes first, so a truncated shard is
    caught without hashing it. Then any file the manifest does not list is refused.

    Raises:
        KernelError: EACCES naming the first file that is missing, changed or not listed.
    """
    directory = Path(directory)
    check_manifest(manifest)
    for entry in manifest["files"]:
        rel = entry["path"]
        path = directory / rel
        if not path.is_file():
            raise KernelError("EACCES", f"model file {rel} listed in the manifest is missing from {directory}")
        size = files_reader.size(path, rel)
        if size != entry["bytes"]:
            raise KernelError("EACCES", f"model file {rel} {files_reader.held} {size} bytes but the manifest says {entry['bytes']}: "
                                        "it was changed after signing")
        digest, _ = files_reader.digest(path, rel)
        if digest != entry["sha256"]:
            raise KernelError("EACCES", f"model file {rel} does not match its sha256 in the manifest: it was changed after signing")
    listed = {entry["path"] for entry in manifest["files"]}
    for rel in list_model_files(directory):
        if rel not in listed:
            raise KernelError("EACCES", f"model file {rel} in {directory} is not in the manifest; remove it or sign the directory again")
    return len(manifest["files"])


def total_bytes(manifest: dict[str, Any]) -> int:
    """Bytes a verification of ``manifest`` will hash."""
    return sum(entry["bytes"] for entry in manifest["files"])


# -- signatures ------------------------------------------------------------------------------

def sign_manifest(manifest: dict[str, Any], keys: KeyStore) -> dict[str, Any]:
    """Wrap ``manifest`` in an envelope signed by the local key."""
    signature = keys.sign(canonical_json(manifest))
    return {"manifest": manifest,
            "signature": {"alg": "ed25519", "key_id": keys.key_id, "sig": base64.b64encode(signature).decode()}}


def verify_envelope(envelope: Any, keys: KeyStore) -> tuple[dict[str, Any], str]:
    """Check an envelope's signature by a trusted key; return (manifest, key id).

    Raises:
        KernelError: EINVAL for a malformed envelope; EACCES "signed by an untrusted key ..."
            or for a signature that does not verify.
    """
    if not isinstance(envelope, dict) or set(envelope) != {"manifest", "signature"}:
        raise KernelError("EINVAL", "a signed manifest must be a map of 'manifest' and 'signature'")
    manifest = check_manifest(envelope["manifest"])
    signature = envelope["signature"]
    if not isinstance(signature, dict) or signature.get("alg") != "ed25519":
        raise KernelError("EINVAL", "the manifest signature must be a map with alg 'ed25519'")
    key_id, sig = signature.get("key_id"), signature.get("sig")
    if not isinstance(key_id, str) or not isinstance(sig, str):
        raise KernelError("EINVAL", "the manifest signature needs a string key_id and a base64 sig")
    try:
        raw = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise KernelError("EINVAL", "the manifest signature is not valid base64") from None
    if len(raw) != SIGNATURE_BYTES:
        raise KernelError("EACCES", f"the manifest signature has {len(raw)} bytes, not {SIGNATURE_BYTES}")
    keys.verify(canonical_json(manifest), raw, key_id, what=f"manifest {manifest['name']!r} version {manifest['version']!r}")
    return manifest, key_id


def write_envelope(path: Path, envelope: dict[str, Any]) -> None:
    """Store a signed manifest atomically (readable by all: it holds nothing secret)."""
    replace_file(Path(path), json.dumps(envelope, indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n", PUBLIC_FILE_MODE)


def read_envelope(directory: Path) -> Any:
    """The signed manifest stored in ``directory``; ENOENT if there is none."""
    path = Path(directory) / MANIFEST_FILE
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise KernelError("ENOENT", f"{directory} has no {MANIFEST_FILE}; sign it first (sign_manifest)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise KernelError("EINVAL", f"{path} is not valid JSON ({exc})") from None

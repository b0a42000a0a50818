"""Sealed model files: the on-disk form of an encrypted model store, and the reader loads go through.

An encrypted version in the model store (services/models.py, ``import --encrypt``) holds every
model file sealed with AES-256-GCM under that version's key (derived by the security service,
services/crypto.py ``model_store_key``). A sealed file is cut into chunks so that neither sealing
nor hashing needs the whole plaintext in memory::

    +------------+-----------------+------------------+----------------------------------+-----
    | "LLMOSMF1" | chunk_bytes u32 | plain_bytes u64  | nonce 12 | chunk 0 ct | tag 16   | chunk 1 ...
    +------------+-----------------+------------------+----------------------------------+-----
       header (20 bytes, big-endian)                    one record per chunk; at least one

Every chunk is ``chunk_bytes`` of plaintext but the last (``plain_bytes`` says how long that
one is; an empty file has one empty chunk). Each record's associated data is the header, the
file's path in the model directory and the chunk's index, so a changed byte anywhere, a
truncation, reordered chunks, or a sealed file copied over another file of the same version all
fail authentication. Nothing in a sealed file is plaintext but its length.

The reader, ``ModelFiles``, opens the files of a checkpoint directory either as they are (a plain
store, or a checkpoint outside the store) or, given the key, by decrypting them in memory; it
never writes what it decrypts. Loading a sealed version also checks each file's sha256 against the
signed manifest's, so what the driver computes with is exactly what was signed.

This module needs no torch: the models and security services seal and hash through it too (drivers
never import services, so the one format lives here, with its reader).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from llmos.kernel.errors import KernelError

MAGIC = b"LLMOSMF1"  # "LLMOS model file", format 1
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's natural nonce size; random per chunk
TAG_BYTES = 16
CHUNK_BYTES = 1 << 20  # plaintext per chunk: 1 MiB, as the manifest hashes in 1 MiB reads
MAX_CHUNK_BYTES = 64 << 20  # a header asking for larger chunks is damaged, not a file to trust
_HEADER = struct.Struct(">8sIQ")  # magic, chunk_bytes, plain_bytes
_AAD_PREFIX = b"llmos-model-file/1\x00"
_INDEX = struct.Struct(">Q")


def _aad(header: bytes, rel: str, index: int) -> bytes:
    return _AAD_PREFIX + header + rel.encode() + b"\x00" + _INDEX.pack(index)


def _num_chunks(plain_bytes: int, chunk_bytes: int) -> int:
    """Chunks of a sealed file: full ones, then the rest; one empty chunk for an empty file."""
    return max(1, -(-plain_bytes // chunk_bytes))


def _chunk_lengths(plain_bytes: int, chunk_bytes: int) -> Iterator[int]:
    """Plaintext length of each chunk (``_num_chunks`` of them)."""
    for index in range(_num_chunks(plain_bytes, chunk_bytes)):  # lazily: a damaged header may declare a vast size
        yield min(chunk_bytes, plain_bytes - index * chunk_bytes)


def check_key(key: object) -> bytes:
    """A model key: exactly ``KEY_BYTES`` bytes; EINVAL otherwise (never echoing the value)."""
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise KernelError("EINVAL", f"a model key must be {KEY_BYTES} bytes of binary data")
    return bytes(key)


def is_sealed(path: Path) -> bool:
    """Whether ``path`` starts like a sealed model file (its chunks are not checked)."""
    with open(path, "rb") as handle:
        return handle.read(len(MAGIC)) == MAGIC


def seal_file(source: Path, target: Path, key: bytes, rel: str, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Write ``source`` sealed under ``key`` to ``target`` (created 0600); return its plaintext size.

    Args:
        rel: the file's path inside the model directory; it is bound into every chunk, so the
            sealed file opens only under that name.
    """
    cipher = AESGCM(check_key(key))
    plain_bytes = os.stat(source).st_size
    header = _HEADER.pack(MAGIC, chunk_bytes, plain_bytes)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(source, "rb") as reader, os.fdopen(fd, "wb") as writer:
        writer.write(header)
        for index, length in enumerate(_chunk_lengths(plain_bytes, chunk_bytes)):
            chunk = reader.read(length)
            if len(chunk) != length:
                raise KernelError("EIO", f"{source} changed size while it was being sealed; import it again")
            nonce = os.urandom(NONCE_BYTES)
            writer.write(nonce + cipher.encrypt(nonce, chunk, _aad(header, rel, index)))
        if reader.read(1):
            raise KernelError("EIO", f"{source} grew while it was being sealed; import it again")
    return plain_bytes


def _refused(rel: str, path: Path, why: str) -> KernelError:
    return KernelError("EACCES", f"model file {rel} ({path}) {why}")


def _read_header(handle: BinaryIO, path: Path, rel: str) -> tuple[bytes, int, int]:
    header = handle.read(_HEADER.size)
    if len(header) != _HEADER.size or header[: len(MAGIC)] != MAGIC:
        raise _refused(rel, path, "is not a sealed model file, but its store is encrypted: it was replaced")
    _, chunk_bytes, plain_bytes = _HEADER.unpack(header)
    if not 1 <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise _refused(rel, path, f"declares {chunk_bytes}-byte chunks: its header was changed")
    return header, chunk_bytes, plain_bytes


def sealed_size(path: Path, rel: str) -> int:
    """The plaintext size a sealed file's header declares (checked when its chunks are opened)."""
    with open(path, "rb") as handle:
        return _read_header(handle, path, rel)[2]


def iter_unsealed(path: Path, key: bytes, rel: str) -> Iterator[bytes]:
    """The plaintext of a sealed file, one authenticated chunk at a time.

    Raises:
        KernelError: EACCES naming the file if it is not sealed, or a chunk fails authentication
            (a changed byte, a truncation, extra bytes, or a file sealed under another name or
            key); no chunk is yielded past the first that fails.
    """
    cipher = AESGCM(check_key(key))
    with open(path, "rb") as handle:
        header, chunk_bytes, plain_bytes = _read_header(handle, path, rel)
        for index, length in enumerate(_chunk_lengths(plain_bytes, chunk_bytes)):
            record = handle.read(NONCE_BYTES + length + TAG_BYTES)
            if len(record) != NONCE_BYTES + length + TAG_BYTES:
                raise _refused(rel, path, f"ends inside chunk {index}: it was truncated after it was sealed")
            try:
                yield cipher.decrypt(record[:NONCE_BYTES], record[NONCE_BYTES:], _aad(header, rel, index))
            except InvalidTag:
                raise _refused(rel, path, f"fails authentication (AES-GCM) at chunk {index}: it was changed after "
                                          "it was sealed, or sealed for another file or model version") from None
        if handle.read(1):
            raise _refused(rel, path, "has bytes after its last chunk: it was changed after it was sealed")


def unseal(path: Path, key: bytes, rel: str) -> bytes:
    """The whole plaintext of a sealed file, in memory; raises as ``iter_unsealed``."""
    return b"".join(iter_unsealed(path, key, rel))


def unseal_into_buffer(path: Path, key: bytes, rel: str) -> tuple[bytearray, str]:
    """The plaintext of a sealed file in one buffer, and its sha256 hex, in a single pass.

    For model weights: the plaintext is held once (no list of chunks, no joined copy), and the
    buffer can back tensors directly (``safetensors_buffer``). The header's size is checked
    against the file's before anything is allocated, so a damaged header cannot ask for more
    memory than the file could hold. Raises as ``iter_unsealed``.
    """
    with open(path, "rb") as handle:
        _, chunk_bytes, plain_bytes = _read_header(handle, path, rel)
        expected = _HEADER.size + plain_bytes + _num_chunks(plain_bytes, chunk_bytes) * (NONCE_BYTES + TAG_BYTES)
        actual = os.fstat(handle.fileno()).st_size
    if actual != expected:
        why = "was truncated after it was sealed" if actual < expected else "has bytes after its last chunk"
        raise _refused(rel, path, f"is {actual} bytes where its header implies {expected}: it {why}")
    buffer = bytearray(plain_bytes)
    digest = hashlib.sha256()
    offset = 0
    for chunk in iter_unsealed(path, key, rel):
        buffer[offset : offset + len(chunk)] = chunk
        digest.update(chunk)
        offset += len(chunk)
    return buffer, digest.hexdigest()


def unsealed_digest(path: Path, key: bytes, rel: str) -> tuple[str, int]:
    """(sha256 hex, size) of a sealed file's plaintext, decrypted chunk by chunk."""
    digest = hashlib.sha256()
    size = 0
    for chunk in iter_unsealed(path, key, rel):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


# -- the reader checkpoint loading goes through -------------------------------------------------

class ModelFiles:
    """The files of one checkpoint directory: read as they are, or unsealed in memory.

    Args:
        root: the directory.
        key: the version's key for a sealed (encrypted) version; None for plain files.
        sha256: for a sealed version, ``{path: sha256 hex}`` from its signed manifest; only the
            files listed there are read, and each must match.
    """

    def __init__(self, root: Path, key: bytes | None = None, sha256: Mapping[str, str] | None = None) -> None:
        self.root = Path(root)
        self._key = None if key is None else check_key(key)
        self._sha256 = dict(sha256 or {})

    @property
    def sealed(self) -> bool:
        """Whether files are decrypted (and checked against the manifest) as they are read."""
        return self._key is not None

    def __str__(self) -> str:  # error messages name the directory, as they did when given a path
        return str(self.root)

    def path(self, rel: str) -> Path:
        """Where ``rel`` lives on disk (sealed or not)."""
        return self.root / rel

    def is_file(self, rel: str) -> bool:
        """Whether the model has a file ``rel`` (for a sealed version: one its manifest lists)."""
        if self.sealed and rel not in self._sha256:
            return False
        return self.path(rel).is_file()

    def top_level(self, suffix: str) -> list[str]:
        """Sorted names of the files directly in the directory that end with ``suffix``."""
        if self.sealed:
            return sorted(rel for rel in self._sha256 if "/" not in rel and rel.endswith(suffix))
        return sorted(p.name for p in self.root.glob(f"*{suffix}") if p.is_file())

    def read_buffer(self, rel: str) -> bytearray:
        """``read_bytes`` of a sealed file as one writable buffer, decrypted and checked in a
        single pass: weights are held once, and tensors can be views of it. Raises as
        ``read_bytes``; for a plain file, the file's bytes in a buffer."""
        path = self.path(rel)
        if self._key is None:
            return bytearray(path.read_bytes())
        expected = self._sha256.get(rel)
        if expected is None:
            raise _refused(rel, path, "is not in the signed manifest of this encrypted version")
        buffer, digest = unseal_into_buffer(path, self._key, rel)
        if digest != expected:
            raise _refused(rel, path, "does not match its sha256 in the manifest: it was changed after signing")
        return buffer

    def read_bytes(self, rel: str) -> bytes:
        """The (plaintext) content of ``rel``.

        Raises:
            OSError: a plain file that cannot be read.
            KernelError: for a sealed version, EACCES naming the file if the manifest does not
                list it, it fails authentication, or its plaintext does not match the manifest.
        """
        if self._key is None:
            return self.path(rel).read_bytes()
        return bytes(self.read_buffer(rel))


def open_model_files(path: str | Path, sealed: Any = None) -> ModelFiles:
    """The reader for a driver's ``load_model`` grant: ``path``, and ``sealed`` for an encrypted store.

    ``sealed`` is ``{"key": 32 bytes, "sha256": {path: hex}}`` (services/models.py ``load``), or None.

    Raises:
        KernelError: EINVAL for a malformed ``sealed`` map.
    """
    if sealed is None:
        return ModelFiles(Path(path))
    if not isinstance(sealed, dict) or set(sealed) != {"key", "sha256"}:
        raise KernelError("EINVAL", "load_model: argument 'sealed' must be a map of 'key' and 'sha256'")
    table = sealed["sha256"]
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
        raise KernelError("EINVAL", "load_model: 'sealed.sha256' must map file paths to sha256 hex digests")
    return ModelFiles(Path(path), check_key(sealed["key"]), table)

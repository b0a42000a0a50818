"""Encryption at rest: AES-256-GCM under per-tenant keys derived from one master key.

The master key is 32 random bytes in ``LLMOS_HOME/keys/master.key`` (0600, made at first
boot). Each tenant's key is HKDF-SHA256(master, info="llmos tenant data key" + tenant), so
keys are never stored per tenant, and one tenant's key says nothing about another's. A version
of an encrypted model store has a key of its own, derived the same way (``model_store_key``).

A blob is ``nonce (12 random bytes) || ciphertext || tag (16 bytes)``. GCM authenticates the
ciphertext and the caller's associated data, so a flipped bit, a truncation, another tenant's
key or another context (aad) all fail the same way: EIO, and no plaintext comes out.

Random 96-bit nonces are safe for about 2**32 blobs per tenant key; far beyond what one
tenant's swap traffic between master-key rotations reaches.

``EncryptedSwapFile`` stores the KV blocks of one (tenant, handle) this way::

    +----------+-----------+----------------------+----------------------+-----
    | "LLMOSWP1"| count u32 | len u32 | header blob| len u32 | block 0 blob | ...
    +----------+-----------+----------------------+----------------------+-----

Record 0 is a JSON header (what each block is: bytes, a numpy array or a torch tensor, with
dtype and shape); records 1..count-1 are the blocks' raw bytes. Each record's aad binds the
tenant, the handle, its position and the count, so records cannot be reordered, dropped, or
moved to another file or tenant without failing authentication.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from llmos.kernel.errors import KernelError

from .securefiles import atomic_write, create_exclusive, ensure_private_dir, read_private

MASTER_KEY_BYTES = 32  # AES-256 and HMAC-SHA256 keys are derived from it
NONCE_BYTES = 12  # GCM's natural nonce size (96 bits)
TAG_BYTES = 16  # GCM authentication tag
MAX_TENANT_CHARS = 256
_HKDF_SALT = b"llmos/1"  # fixed: the master key is already uniformly random


def load_master_key(home: Path) -> tuple[bytes, bool]:
    """The master key in ``home/keys/master.key``, made at first boot; (key, created now).

    Raises:
        KernelError: EACCES if the file is accessible by group or others, or damaged.
    """
    path = ensure_private_dir(Path(home) / "keys") / "master.key"
    created = False
    if not path.exists():
        created = create_exclusive(path, os.urandom(MASTER_KEY_BYTES))
    key = read_private(path, "master key file")
    if len(key) != MASTER_KEY_BYTES:
        raise KernelError("EACCES", f"the master key file {path} holds {len(key)} bytes, not {MASTER_KEY_BYTES}: it is damaged")
    return key, created


def derive_key(master: bytes, info: bytes, length: int = 32) -> bytes:
    """A subkey of ``master`` for one purpose, named by ``info`` (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_HKDF_SALT, info=info).derive(master)


def model_store_key(master: bytes, name: str, version: str) -> bytes:
    """The AES-256 key that seals one version of an encrypted model store (HKDF-SHA256).

    The context is the model version, ``info = "llmos model store key" NUL name NUL version``,
    rather than one key for the whole store, because this key leaves the security service: the
    kernel hands it to the driver that loads the version (in its load grant). Derived per
    version, a key lent for one load opens that version only: no other model, no other version
    of this one, and (another ``info`` prefix) no tenant's data. Derived, it is never stored:
    the master key and the name re-make it. Name and version may not contain NUL, so the
    context is unambiguous.

    Raises:
        KernelError: EINVAL for an empty or NUL-containing name or version.
    """
    for what, value in (("name", name), ("version", version)):
        if not value or "\x00" in value:
            raise KernelError("EINVAL", f"a model {what} for a store key must be non-empty text without NUL")
    return derive_key(master, b"llmos model store key\x00" + name.encode() + b"\x00" + version.encode())


def check_tenant(tenant: object) -> str:
    """A tenant name: a non-empty string of at most ``MAX_TENANT_CHARS``; EINVAL otherwise."""
    if not isinstance(tenant, str) or not tenant or len(tenant) > MAX_TENANT_CHARS:
        raise KernelError("EINVAL", f"a tenant must be a name of 1..{MAX_TENANT_CHARS} characters, not {tenant!r}")
    return tenant


class TenantCipher:
    """Encrypts and decrypts blobs under per-tenant keys derived from the master key."""

    def __init__(self, master: bytes) -> None:
        if len(master) != MASTER_KEY_BYTES:
            raise ValueError(f"the master key must be {MASTER_KEY_BYTES} bytes")
        self._master = master
        self._ciphers: dict[str, AESGCM] = {}  # tenant -> its AES-GCM, derived once

    def _cipher(self, tenant: str) -> AESGCM:
        cipher = self._ciphers.get(tenant)
        if cipher is None:
            key = derive_key(self._master, b"llmos tenant data key\x00" + check_tenant(tenant).encode())
            cipher = self._ciphers[tenant] = AESGCM(key)
        return cipher

    def encrypt_blob(self, tenant: str, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt under ``tenant``'s key: a random nonce, then ciphertext and tag."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._cipher(tenant).encrypt(nonce, bytes(plaintext), bytes(aad) or None)

    def decrypt_blob(self, tenant: str, blob: bytes, aad: bytes = b"") -> bytes:
        """Decrypt a blob from ``encrypt_blob`` with the same tenant and aad.

        Raises:
            KernelError: EIO if the blob is too short or fails authentication.
        """
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise KernelError("EIO", f"an encrypted blob has at least {NONCE_BYTES + TAG_BYTES} bytes; this one has {len(blob)}: it was truncated")
        nonce, body = bytes(blob[:NONCE_BYTES]), bytes(blob[NONCE_BYTES:])
        try:
            return self._cipher(tenant).decrypt(nonce, body, bytes(aad) or None)
        except InvalidTag:
            raise KernelError(
                "EIO",
                f"the encrypted blob failed authentication for tenant {tenant!r}: it was altered, "
                "truncated, or sealed for another tenant or context",
            ) from None


# -- encrypted swap files --------------------------------------------------------------------

SWAP_MAGIC = b"LLMOSWP1"
MAX_SWAP_RECORDS = 1 << 20  # blocks in one swap file, plus the header
_U32 = struct.Struct(">I")
_HANDLE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def check_handle(handle: object) -> str:
    """A swap handle: an int >= 0 or a name of [A-Za-z0-9_.-] (no leading dot), as a str."""
    if type(handle) is int and handle >= 0:
        return str(handle)
    if isinstance(handle, str) and _HANDLE.fullmatch(handle):
        return handle
    raise KernelError("EINVAL", f"a swap handle must be a non-negative integer or a short name, not {handle!r}")


def _describe_block(block: Any) -> tuple[dict[str, Any], bytes]:
    """(header entry, raw bytes) of one block: bytes-like, a numpy array or a torch tensor."""
    module = type(block).__module__
    if module.startswith("torch"):
        import torch  # only when a caller hands us tensors; the service itself needs no torch

        flat = block.detach().cpu().contiguous().reshape(-1)
        return ({"kind": "torch", "dtype": str(flat.dtype).removeprefix("torch."), "shape": list(block.shape)},
                flat.view(torch.uint8).numpy().tobytes())
    if module.startswith("numpy"):
        import numpy as np

        if block.dtype.hasobject:
            raise KernelError("EINVAL", "a numpy block of Python objects cannot be swapped")
        return ({"kind": "numpy", "dtype": block.dtype.str, "shape": list(block.shape)},
                np.ascontiguousarray(block).tobytes())
    try:
        return {"kind": "bytes"}, bytes(memoryview(block))
    except TypeError:
        raise KernelError("EINVAL", f"a swap block must be bytes, a numpy array or a torch tensor, not {type(block).__name__}") from None


def _restore_block(entry: dict[str, Any], data: bytes) -> Any:
    kind = entry.get("kind")
    if kind == "bytes":
        return data
    if kind == "numpy":
        import numpy as np

        return np.frombuffer(data, dtype=np.dtype(entry["dtype"])).reshape(entry["shape"]).copy()
    if kind == "torch":
        import torch

        dtype = getattr(torch, entry["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise KernelError("EIO", f"swap header names an unknown torch dtype {entry['dtype']!r}")
        if not data:
            return torch.empty(entry["shape"], dtype=dtype)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(entry["shape"])
    raise KernelError("EIO", f"swap header names an unknown block kind {kind!r}")


class EncryptedSwapFile:
    """The swapped-out KV blocks of one (tenant, handle), encrypted on disk.

    Files live in ``directory/<sha256(tenant)[:32]>/<handle>.swap`` (mode 0600), so tenant
    names never appear in paths. A write replaces the whole file atomically.
    """

    def __init__(self, directory: Path, cipher: TenantCipher, tenant: str, handle: int | str) -> None:
        self.tenant = check_tenant(tenant)
        self.handle = check_handle(handle)
        self._cipher = cipher
        tenant_dir = hashlib.sha256(tenant.encode()).hexdigest()[:32]
        self.path = Path(directory) / tenant_dir / f"{self.handle}.swap"

    def _aad(self, index: int, count: int) -> bytes:
        return b"\x00".join([b"llmos-swap/1", self.tenant.encode(), self.handle.encode(), _U32.pack(index), _U32.pack(count)])

    def write(self, blocks: Sequence[Any]) -> int:
        """Encrypt and store ``blocks`` (replacing earlier ones); return the file's size."""
        described = [_describe_block(block) for block in blocks]
        count = len(described) + 1
        if count > MAX_SWAP_RECORDS:
            raise KernelError("E2BIG", f"a swap file holds at most {MAX_SWAP_RECORDS - 1} blocks")
        header = json.dumps({"tenant": self.tenant, "handle": self.handle, "blocks": [entry for entry, _ in described]}).encode()
        ensure_private_dir(self.path.parent)
        size = 0
        # Not durable: swapped KV blocks are worthless after a reboot, so skip the fsync.
        with atomic_write(self.path, durable=False) as handle:
            handle.write(SWAP_MAGIC + _U32.pack(count))
            for index, payload in enumerate([header] + [data for _, data in described]):
                blob = self._cipher.encrypt_blob(self.tenant, payload, self._aad(index, count))
                handle.write(_U32.pack(len(blob)) + blob)
            size = handle.tell()
        return size

    def read(self) -> list[Any]:
        """The blocks as written: bytes, numpy arrays or (CPU) torch tensors.

        Raises:
            KernelError: ENOENT if nothing was swapped out under this handle; EIO if the file
                was altered, truncated or written for another tenant or handle.
        """
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            raise KernelError("ENOENT", f"no swap file for tenant {self.tenant!r} handle {self.handle}") from None
        with handle:
            if handle.read(len(SWAP_MAGIC)) != SWAP_MAGIC:
                raise KernelError("EIO", f"{self.path} is not an llmos swap file")
            count = self._read_u32(handle)
            if not 1 <= count <= MAX_SWAP_RECORDS:
                raise KernelError("EIO", f"{self.path} declares {count} records: it is damaged")
            records = []
            for index in range(count):
                blob = handle.read(self._read_u32(handle))
                try:
                    records.append(self._cipher.decrypt_blob(self.tenant, blob, self._aad(index, count)))
                except KernelError:
                    raise KernelError(
                        "EIO",
                        f"swap file {self.path} failed authentication at record {index}: it was altered, "
                        f"truncated, or written for another tenant or handle; the blocks are lost",
                    ) from None
            if handle.read(1):
                raise KernelError("EIO", f"swap file {self.path} has bytes after its last record: it was altered")
        header = json.loads(records[0])
        entries = header["blocks"]
        if header.get("tenant") != self.tenant or header.get("handle") != self.handle or len(entries) != count - 1:
            raise KernelError("EIO", f"swap file {self.path} does not belong to tenant {self.tenant!r} handle {self.handle}")
        return [_restore_block(entry, data) for entry, data in zip(entries, records[1:], strict=True)]

    def _read_u32(self, handle: BinaryIO) -> int:
        raw = handle.read(_U32.size)
        if len(raw) != _U32.size:
            raise KernelError("EIO", f"swap file {self.path} ends early: it was truncated")
        return _U32.unpack(raw)[0]

    def discard(self) -> bool:
        """Delete the file (the process swapped back in or died); True if there was one."""
        try:
            self.path.unlink()
            return True
        except FileNotFoundError:
            return False

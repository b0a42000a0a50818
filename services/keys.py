"""Signing keys: the local Ed25519 key pair and the list of trusted public keys.

On disk, under ``LLMOS_HOME``::

    keys/                 0700
      local.key           0600  PKCS#8 PEM private key, made at first boot, never rewritten
      local.pub           0644  its public key (an export for other machines; derived, not read)
      trusted/            0700  one PEM public key per file; the file name is only a label

A key is named by its *key id*: the first 16 bytes of the sha256 of its raw 32-byte public
key, in hex. The id is always computed from the key itself, never taken from a file name, so
a misnamed file cannot pass one key off as another. The local key is always trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from llmos.kernel.errors import KernelError

from .securefiles import (
    PUBLIC_FILE_MODE,
    create_exclusive,
    ensure_private_dir,
    read_private,
    remove_stale_temps,
    replace_file,
)

log = logging.getLogger(__name__)

SIGNATURE_BYTES = 64  # an Ed25519 signature
MAX_PEM_BYTES = 4096  # a public key PEM is ~113 bytes; anything far larger is not one


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """The id of a public key: hex of the first 16 bytes of sha256(raw public key)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    """A public key as SubjectPublicKeyInfo PEM."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def parse_public_pem(pem: bytes) -> Ed25519PublicKey:
    """Parse a PEM public key; EINVAL unless it is a well-formed Ed25519 key."""
    if len(pem) > MAX_PEM_BYTES:
        raise KernelError("EINVAL", f"a public key PEM is at most {MAX_PEM_BYTES} bytes; this one has {len(pem)}")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise KernelError("EINVAL", f"not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KernelError("EINVAL", f"only Ed25519 keys can be trusted, not {type(key).__name__}")
    return key


class KeyStore:
    """The local signing key and the trusted keys, kept under ``home/keys``.

    Raises (from the constructor):
        KernelError: EACCES if the private key file is readable by group or others, or is
            not an Ed25519 key; the sentence says which file and what to do.
    """

    def __init__(self, home: Path) -> None:
        self.dir = ensure_private_dir(home / "keys")
        self.trusted_dir = ensure_private_dir(self.dir / "trusted")
        remove_stale_temps(self.dir)
        remove_stale_temps(self.trusted_dir)
        self.private_path = self.dir / "local.key"
        self.public_path = self.dir / "local.pub"
        self.created = False  # True if this instance made the key (first boot)
        self._private = self._load_or_create()
        self.public_key = self._private.public_key()
        self.key_id = key_id_of(self.public_key)
        self._export_public()

    def _load_or_create(self) -> Ed25519PrivateKey:
        if not self.private_path.exists():
            fresh = Ed25519PrivateKey.generate()
            pem = fresh.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            # Exclusive: if another instance made one first, use theirs, never overwrite it.
            self.created = create_exclusive(self.private_path, pem)
            if self.created:
                log.info("made signing key %s", key_id_of(fresh.public_key()))
                return fresh
        data = read_private(self.private_path, "private key file")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KernelError("EACCES", f"the private key file {self.private_path} cannot be read as a PEM key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KernelError("EACCES", f"the private key file {self.private_path} holds a {type(key).__name__}, not an Ed25519 key")
        return key

    def _export_public(self) -> None:
        # Derived data: rewritten whenever missing or stale (a crash after making the key).
        pem = public_pem(self.public_key)
        try:
            current = self.public_path.read_bytes()
        except OSError:
            current = b""
        if current != pem:
            replace_file(self.public_path, pem, PUBLIC_FILE_MODE)

    # -- signing ---------------------------------------------------------------------------

    def sign(self, data: bytes) -> bytes:
        """An Ed25519 signature of ``data`` by the local key."""
        return self._private.sign(data)

    def verify(self, data: bytes, signature: bytes, key_id: str, what: str = "data") -> None:
        """Check that ``signature`` over ``data`` was made by the trusted key ``key_id``.

        Raises:
            KernelError: EACCES "signed by an untrusted key ..." if ``key_id`` is not trusted,
                EACCES if the signature does not verify under it.
        """
        public_key = self.trusted_keys().get(key_id)
        if public_key is None:
            raise KernelError("EACCES", f"{what} is signed by an untrusted key {key_id}; trust it first (trust_key) if you know its owner")
        try:
            public_key.verify(signature, data)
        except InvalidSignature:
            raise KernelError("EACCES", f"the signature on {what} does not verify under key {key_id}: it was altered or signed by another key") from None

    # -- trust -----------------------------------------------------------------------------

    def trust(self, pem: bytes) -> tuple[str, bool]:
        """Add a public key to the trusted list; returns (key id, True if it was new)."""
        key = parse_public_pem(pem)
        key_id = key_id_of(key)
        if key_id in self.trusted_keys():
            return key_id, False
        replace_file(self.trusted_dir / f"{key_id}.pem", public_pem(key), PUBLIC_FILE_MODE)
        return key_id, True

    def trusted_keys(self) -> dict[str, Ed25519PublicKey]:
        """Every trusted key by id, the local one included; read from disk on each call.

        A file that is not an Ed25519 PEM, or that group or others may write (anyone could
        then add trust), is skipped with a warning rather than trusted.
        """
        keys = {self.key_id: self.public_key}
        for path in sorted(self.trusted_dir.glob("*.pem")):
            try:
                info = path.stat()
                if os.name == "posix" and info.st_mode & 0o022:
                    log.warning("ignoring trusted key %s: writable by group or others (mode %04o)", path, stat.S_IMODE(info.st_mode))
                    continue
                key = parse_public_pem(path.read_bytes())
            except (OSError, KernelError) as exc:
                log.warning("ignoring trusted key file %s: %s", path, exc)
                continue
            keys[key_id_of(key)] = key
        return keys

    def describe(self) -> list[dict[str, object]]:
        """One row per trusted key: key_id, local, public_pem."""
        return [
            {"key_id": key_id, "local": key_id == self.key_id, "public_pem": public_pem(key).decode()}
            for key_id, key in self.trusted_keys().items()
        ]

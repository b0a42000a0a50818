"""The security service: manifests, keys, capabilities, encryption at rest and the audit log.

A Minix-style server under the kernel's supervisor. Every handler copies in its arguments,
looks up what it needs, checks, acts and returns plain data or raises ``KernelError``.

All state lives under one ``LLMOS_HOME`` (see services/home.py) and is written before a reply
goes out, so an instance that is killed and restarted from ``lambda: SecurityServer(home)``
finds every key, revocation and audit entry again::

    keys/local.key, local.pub, master.key, trusted/   (keys.py, crypto.py)
    capabilities/epoch, revoked.jsonl                 (capabilities.py)
    audit/audit.jsonl, head.json                      (audit.py)

Handlers never await between two writes, so a kill (a cancellation) lands before a request
or after it, never half-way through one; crash-safe file operations cover a real crash.

Trust: the kernel is this server's only peer and fills in identity (pid, tenant) from the
caller's session; a user never talks to it directly. (The models service, started by the same
kernel, also calls it: to sign and verify manifests and for the keys of encrypted versions.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import trio

from llmos.kernel.args import Args
from llmos.kernel.errors import KernelError
from llmos.kernel.server import Server

from . import manifest as manifests
from . import sealed_manifest
from .audit import AuditLog
from .capabilities import CapabilityAuthority
from .crypto import TenantCipher, load_master_key, model_store_key
from .home import llmos_home
from .keys import KeyStore
from .securefiles import absolute_path_arg, os_errors

INLINE_HASH_BYTES = 8 << 20  # model directories smaller than this are hashed without a thread
MAX_TAIL = 1000  # entries one audit_tail may return
MAX_GRANTS = 16  # capabilities one mint_capabilities call may make
MAX_PATH_CHARS = 4096
MAX_BLOB_BYTES = 1 << 20  # encrypt/decrypt payloads; bulk data goes through swap files instead
CLIENT_EVENT_PREFIX_DENIED = "security."  # event types only this service may write

T = TypeVar("T")


# -- argument getters kernel/args.py lacks (bytes, maps, lists of strings) --------------------

def _binary(args: Args, name: str, required: bool = True, max_len: int = MAX_BLOB_BYTES) -> bytes:
    value = args.raw.get(name)
    if value is None and not required:
        return b""
    if not isinstance(value, (bytes, bytearray)):
        raise KernelError("EINVAL", f"{args.op}: argument {name!r} must be binary data (msgpack bin)")
    if len(value) > max_len:
        raise KernelError("E2BIG", f"{args.op}: argument {name!r} is longer than {max_len} bytes")
    return bytes(value)


def _mapping(args: Args, name: str, required: bool = True) -> dict[str, Any] | None:
    value = args.raw.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, dict):
        raise KernelError("EINVAL", f"{args.op}: argument {name!r} must be a map")
    return value


def _text_list(args: Args, name: str, max_len: int = 16) -> list[str]:
    value = args.raw.get(name)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise KernelError("EINVAL", f"{args.op}: argument {name!r} must be a list of strings")
    if len(value) > max_len:
        raise KernelError("E2BIG", f"{args.op}: argument {name!r} has {len(value)} items; the limit is {max_len}")
    return value


def _directory(args: Args) -> Path:
    return absolute_path_arg(args.op, args.text("path", max_len=MAX_PATH_CHARS))


async def _hash_work(op: str, func: Callable[[], T], num_bytes: int) -> T:
    """Run hashing inline when small, else in a worker thread so the event loop stays live."""
    with os_errors(op):
        if num_bytes <= INLINE_HASH_BYTES:
            return func()
        # Not abandoned on cancel: a kill waits for the thread, so two instances never overlap.
        return await trio.to_thread.run_sync(func)


def _dir_bytes(directory: Path) -> int:
    try:
        return sum((directory / rel).stat().st_size for rel in manifests.list_model_files(directory))
    except (KernelError, OSError):
        return 0  # the hashing itself reports the problem


class SecurityServer(Server):
    """The security service; its state lives in ``home`` (default: ``llmos_home()``).

    Args:
        clock: wall-clock seconds for audit entries (an audit trail is read against real
            dates, also in a simulation under virtual time).
    """

    name: ClassVar[str] = "security"
    blocking_ops: ClassVar[frozenset[str]] = frozenset({"sign_manifest", "verify_manifest"})

    def __init__(self, home: Path | None = None, clock: Callable[[], float] = time.time,
                 holder: str | None = None) -> None:
        self.home = llmos_home() if home is None else Path(home)
        self.broken: KernelError | None = None  # a setup error every request is answered with
        try:
            self.keys = KeyStore(self.home)
            master, master_created = load_master_key(self.home)
            self._master = master  # model store keys are derived from it (model_store_key)
            self.cipher = TenantCipher(master)
            # ``holder``: the kernel this server serves, whose pids the capabilities name.
            self.caps = CapabilityAuthority(self.home, master, holder)
            self.audit = AuditLog(self.home, self.keys, clock)
        except KernelError as error:
            # Answer every call with the reason (a key readable by others, ...) rather than
            # crash-looping under the supervisor, where the sentence would reach nobody.
            self.broken = error
            return
        if self.keys.created:
            self._record("security.key_created", key_id=self.keys.key_id)
        if master_created:
            self._record("security.master_key_created")
        if self.audit.recovered_bytes:
            self._record("security.audit_recovered", dropped_bytes=self.audit.recovered_bytes)
        self._record("security.started", key_id=self.keys.key_id, epoch=self.caps.epoch)

    def _record(self, event_type: str, /, **fields: Any) -> dict[str, Any]:
        return self.audit.append({"type": event_type, **fields})

    def _check_ready(self) -> None:
        if self.broken is not None:
            raise KernelError(self.broken.errno, f"the security service cannot start: {self.broken.message}")

    # -- manifests --------------------------------------------------------------------------

    async def do_sign_manifest(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Sign a checkpoint directory: {path, name, version, write=true, encrypted=false} -> {manifest, key_id, file}.

        ``encrypted``: the directory's files are sealed under the version's key (``model_key``);
        the manifest then lists their plaintext sizes and sha256, and says ``encrypted: true``.
        """
        args = Args("sign_manifest", raw, ("path", "name", "version", "write", "encrypted"))
        directory = _directory(args)
        name, version = args.text("name", max_len=256), args.text("version", max_len=64)
        write, encrypted = args.flag("write", True), args.flag("encrypted", False)
        self._check_ready()
        if encrypted:
            key = model_store_key(self._master, name, version)
            describe: Callable[[], dict[str, Any]] = partial(sealed_manifest.make_sealed_manifest, directory, name, version, key)
        else:
            describe = partial(manifests.make_manifest, directory, name, version)
        manifest = await _hash_work("sign_manifest", describe, _dir_bytes(directory))
        envelope = manifests.sign_manifest(manifest, self.keys)
        target = None
        if write:
            target = directory / manifests.MANIFEST_FILE
            with os_errors("sign_manifest"):
                manifests.write_envelope(target, envelope)
        self._record("security.manifest_signed", name=name, version=version, path=str(directory),
                     key_id=self.keys.key_id, files=len(manifest["files"]), bytes=manifests.total_bytes(manifest),
                     **({"encrypted": True} if encrypted else {}))
        return {"manifest": envelope, "key_id": self.keys.key_id, "file": None if target is None else str(target)}

    async def do_verify_manifest(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Verify a directory against a signed manifest (given, or its llmos-manifest.json).

        {path, manifest?} -> {name, version, key_id, files, bytes}; EACCES if the signer is not
        trusted, the signature fails, or a file is missing, changed or unlisted.
        """
        args = Args("verify_manifest", raw, ("path", "manifest"))
        directory = _directory(args)
        envelope = _mapping(args, "manifest", required=False)
        self._check_ready()
        try:
            if envelope is None:
                with os_errors("verify_manifest"):
                    envelope = manifests.read_envelope(directory)
            manifest, key_id = manifests.verify_envelope(envelope, self.keys)
            if sealed_manifest.is_encrypted(manifest):  # hashed over the plaintext, decrypted in memory
                key = model_store_key(self._master, manifest["name"], manifest["version"])
                check: Callable[[], int] = partial(sealed_manifest.verify_sealed_files, manifest, directory, key)
            else:
                check = partial(manifests.verify_files, manifest, directory)
            count = await _hash_work("verify_manifest", check, manifests.total_bytes(manifest))
        except KernelError as error:
            self._record("security.manifest_refused", path=str(directory), errno=error.errno, reason=error.message)
            raise
        result = {"name": manifest["name"], "version": manifest["version"], "key_id": key_id,
                  "files": count, "bytes": manifests.total_bytes(manifest)}
        self._record("security.manifest_verified", path=str(directory), **result)
        return result

    async def do_model_key(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The key that seals one version of an encrypted model store: {name, version} -> {key: bin}.

        The models service asks for it to seal files at import and to put it in a load grant,
        which the kernel passes on to the driver that decrypts in memory. Only those trusted
        peers reach this server (module docstring); the key opens that one version and nothing
        else (crypto.py ``model_store_key``). Each issue is audited, without the key.
        """
        args = Args("model_key", raw, ("name", "version"))
        name, version = args.text("name", max_len=256), args.text("version", max_len=64)
        self._check_ready()
        key = model_store_key(self._master, name, version)
        self._record("security.model_key_issued", name=name, version=version)
        return {"key": key}

    # -- keys -------------------------------------------------------------------------------

    async def do_trust_key(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Trust a public key: {pem} -> {key_id, new}."""
        args = Args("trust_key", raw, ("pem",))
        pem = args.text("pem", max_len=4096)
        self._check_ready()
        key_id, new = self.keys.trust(pem.encode())
        if new:
            self._record("security.key_trusted", key_id=key_id)
        return {"key_id": key_id, "new": new}

    async def do_list_keys(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The trusted keys: {} -> {local: key_id, keys: [{key_id, local, public_pem}]}."""
        Args("list_keys", raw, ())
        self._check_ready()
        return {"local": self.keys.key_id, "keys": self.keys.describe()}

    # -- capabilities -----------------------------------------------------------------------

    async def do_mint_capability(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Mint a handle: {pid, kind, name, rights: [str]} -> {handle, cap_id}."""
        args = Args("mint_capability", raw, ("pid", "kind", "name", "rights"))
        pid = args.integer("pid", lo=0)
        kind, name = args.text("kind", max_len=32), args.text("name", max_len=256)
        rights = _text_list(args, "rights")
        self._check_ready()
        try:
            handle, cap = self.caps.mint(pid, kind, name, rights)
        except KernelError as error:
            if error.errno == "EPERM":
                self._record("security.capability_refused", pid=pid, kind=kind, name=name, op="mint", reason=error.message)
            raise
        self._record("security.capability_minted", cap_id=cap.cap_id, pid=pid, kind=kind, name=name, rights=list(cap.rights))
        return {"handle": handle, "cap_id": cap.cap_id}

    async def do_mint_capabilities(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Mint several handles for one pid, audited as one event (a process's set at spawn):
        {pid, grants: [{kind, name, rights}]} -> {handles: [str], cap_ids: [str]}.

        One audit entry instead of one per handle: each entry is flushed to disk twice, and
        the kernel mints a set for every process it starts.
        """
        args = Args("mint_capabilities", raw, ("pid", "grants"))
        pid = args.integer("pid", lo=0)
        grants = raw.get("grants")
        if not isinstance(grants, list) or not 0 < len(grants) <= MAX_GRANTS:
            raise KernelError("EINVAL", f"mint_capabilities: 'grants' must be a list of 1..{MAX_GRANTS} maps")
        checked = []
        for grant in grants:
            if not isinstance(grant, dict):
                raise KernelError("EINVAL", "mint_capabilities: each grant must be a map of kind, name and rights")
            one = Args("mint_capabilities", grant, ("kind", "name", "rights"))
            checked.append((one.text("kind", max_len=32), one.text("name", max_len=256), _text_list(one, "rights")))
        self._check_ready()
        minted = []
        try:
            for kind, name, rights in checked:
                minted.append(self.caps.mint(pid, kind, name, rights))
        except KernelError as error:
            if error.errno == "EPERM":
                self._record("security.capability_refused", pid=pid, op="mint", reason=error.message)
            raise
        self._record("security.capabilities_minted", pid=pid, caps=[
            {"cap_id": cap.cap_id, "kind": cap.kind, "name": cap.name, "rights": list(cap.rights)} for _, cap in minted])
        return {"handles": [handle for handle, _ in minted], "cap_ids": [cap.cap_id for _, cap in minted]}

    async def do_check_capability(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Check a handle: {handle, pid, kind, name, right} -> {cap_id, pid, kind, name, rights}; EPERM if refused."""
        args = Args("check_capability", raw, ("handle", "pid", "kind", "name", "right"))
        handle = args.text("handle", max_len=4096)
        pid = args.integer("pid", lo=0)
        kind, name, right = args.text("kind", max_len=32), args.text("name", max_len=256), args.text("right", max_len=32)
        self._check_ready()
        try:
            cap = self.caps.check(handle, pid, kind, name, right)
        except KernelError as error:
            self._record("security.capability_refused", pid=pid, kind=kind, name=name, right=right, reason=error.message)
            raise
        return cap.to_wire()

    async def do_revoke_capability(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Revoke one handle, durably: {handle} -> {cap_id, pid}."""
        args = Args("revoke_capability", raw, ("handle",))
        handle = args.text("handle", max_len=4096)
        self._check_ready()
        cap = self.caps.open(handle)
        already = self.caps.is_revoked(cap)
        self.caps.revoke(handle)
        if not already:
            self._record("security.capability_revoked", cap_id=cap.cap_id, pid=cap.pid, kind=cap.kind, name=cap.name)
        return {"cap_id": cap.cap_id, "pid": cap.pid}

    async def do_revoke_pid(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Revoke every handle of a pid (it exited), durably: {pid} -> {pid, new}."""
        args = Args("revoke_pid", raw, ("pid",))
        pid = args.integer("pid", lo=0)
        self._check_ready()
        new = self.caps.revoke_pid(pid)
        if new:
            self._record("security.pid_revoked", pid=pid)
        return {"pid": pid, "new": new}

    async def do_new_epoch(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Invalidate every handle (the kernel calls this at boot): {} -> {epoch}."""
        Args("new_epoch", raw, ())
        self._check_ready()
        epoch = self.caps.new_epoch()
        self._record("security.epoch_started", epoch=epoch)
        return {"epoch": epoch}

    # -- audit log --------------------------------------------------------------------------

    async def do_audit_append(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Append an event: {event: {type, ...}} -> {index, hash}."""
        args = Args("audit_append", raw, ("event",))
        event = _mapping(args, "event")
        assert event is not None
        self._check_ready()
        kind = event.get("type")
        if isinstance(kind, str) and kind.startswith(CLIENT_EVENT_PREFIX_DENIED):
            raise KernelError("EPERM", f"audit_append: event types starting with {CLIENT_EVENT_PREFIX_DENIED!r} are written only by the security service")
        return self.audit.append(event)

    async def do_audit_verify(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Check the whole chain: {} -> {entries, head}; EIO naming the first bad entry."""
        Args("audit_verify", raw, ())
        self._check_ready()
        return self.audit.verify()

    async def do_audit_tail(self, raw: dict[str, Any]) -> list[dict[str, Any]]:
        """The last entries, oldest first: {count=20} -> [entry]."""
        args = Args("audit_tail", raw, ("count",))
        count = args.integer("count", 20, lo=1, hi=MAX_TAIL)
        self._check_ready()
        return self.audit.tail(count)

    # -- encryption at rest -----------------------------------------------------------------

    async def do_encrypt(self, raw: dict[str, Any]) -> bytes:
        """Encrypt under a tenant's key: {tenant, data: bin, aad?: bin} -> bin (nonce || ct || tag)."""
        args = Args("encrypt", raw, ("tenant", "data", "aad"))
        tenant = args.text("tenant", max_len=256)
        data, aad = _binary(args, "data"), _binary(args, "aad", required=False)
        self._check_ready()
        return self.cipher.encrypt_blob(tenant, data, aad)

    async def do_decrypt(self, raw: dict[str, Any]) -> bytes:
        """Decrypt a blob: {tenant, data: bin, aad?: bin} -> bin; EIO if it fails authentication."""
        args = Args("decrypt", raw, ("tenant", "data", "aad"))
        tenant = args.text("tenant", max_len=256)
        data, aad = _binary(args, "data"), _binary(args, "aad", required=False)
        self._check_ready()
        try:
            return self.cipher.decrypt_blob(tenant, data, aad)
        except KernelError as error:
            self._record("security.decrypt_refused", tenant=tenant, reason=error.message)
            raise

"""Unforgeable capabilities: HMAC-signed handles naming a pid, a resource and rights.

A handle is ``cap1.<body>.<mac>``, both parts base64url: the body is the canonical JSON of
``{"epoch", "id", "pid", "kind", "name", "rights"}`` and the mac is HMAC-SHA256 of it. Nobody
without the MAC key can make or alter one, so a handle proves that the kernel minted it.

The MAC key is *derived*, not stored: HKDF(master key, "llmos capability mac" + epoch). The
epoch is 16 random bytes in ``capabilities/epoch``, kept across service restarts, so a
restarted security service still verifies every handle minted before it died. The kernel
starts a new epoch at boot (``new_epoch``): pids restart from 2 on every boot, and a handle
of the last boot's pid 7 must not work for this boot's pid 7.

Revocations (one handle, or every handle of a pid) are appended to ``capabilities/revoked.jsonl``
and flushed before the call returns, so they survive a restart. Each line names its epoch;
lines of old epochs are ignored, and the file is emptied when a new epoch starts.

``check`` refuses with EPERM, naming the reason: a forged or damaged handle, an earlier epoch,
a revocation, another pid, another resource, or a right the handle does not grant.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos.kernel.errors import KernelError

from .crypto import derive_key
from .home import holder_alive
from .manifest import canonical_json
from .securefiles import (
    append_durably,
    create_exclusive,
    ensure_private_dir,
    read_private,
    remove_stale_temps,
    replace_file,
)

HANDLE_PREFIX = "cap1"
MAX_RIGHTS = 16  # rights in one capability
MAX_NAME_CHARS = 256  # resource names (model names, paths) in a capability
MAX_HANDLE_CHARS = 2048  # far above any handle mint makes; longer input is refused unparsed
_KIND = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
_RIGHT = re.compile(r"[a-z][a-z0-9_]{0,31}")
_HOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class Capability:
    """What a verified handle grants."""

    cap_id: str  # 128 random bits in hex; names the handle in revocations and the audit log
    pid: int
    kind: str  # resource kind: "model", "device", "file", ...
    name: str  # resource name within its kind
    rights: tuple[str, ...]  # sorted
    epoch: str

    def to_wire(self) -> dict[str, Any]:
        """Plain data for a reply."""
        return {"cap_id": self.cap_id, "pid": self.pid, "kind": self.kind, "name": self.name, "rights": list(self.rights)}


def check_resource(pid: Any, kind: Any, name: Any) -> None:
    """EINVAL unless pid is an int >= 0, kind a short lowercase name and name a short string."""
    if type(pid) is not int or pid < 0:
        raise KernelError("EINVAL", f"a capability pid must be a non-negative integer, not {pid!r}")
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise KernelError("EINVAL", f"a resource kind must match {_KIND.pattern}, not {kind!r}")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
        raise KernelError("EINVAL", f"a resource name must be 1..{MAX_NAME_CHARS} characters")


def check_rights(rights: Any) -> tuple[str, ...]:
    """A non-empty list of distinct right names, returned sorted; EINVAL otherwise."""
    if not isinstance(rights, (list, tuple)) or not 0 < len(rights) <= MAX_RIGHTS:
        raise KernelError("EINVAL", f"rights must be a list of 1..{MAX_RIGHTS} names")
    for right in rights:
        if not isinstance(right, str) or not _RIGHT.fullmatch(right):
            raise KernelError("EINVAL", f"a right must match {_RIGHT.pattern}, not {right!r}")
    if len(set(rights)) != len(rights):
        raise KernelError("EINVAL", "rights must not repeat")
    return tuple(sorted(rights))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CapabilityAuthority:
    """Mints, checks and revokes capabilities for one ``LLMOS_HOME``, or for one kernel in it.

    Several kernels may share a home; pids are each kernel's own, so each kernel (``holder``,
    from ``home.new_holder``) keeps its epoch and revocations in its own folder,
    ``capabilities/kernels/<holder>``; folders of kernels that are gone are removed. Without
    a holder the state is the home's (``capabilities/``), as tests and tools use it.
    """

    def __init__(self, home: Path, master: bytes, holder: str | None = None) -> None:
        if holder is None:
            self.dir = ensure_private_dir(Path(home) / "capabilities")
        else:
            if not _HOLDER.fullmatch(holder):
                raise ValueError(f"a capability holder must match {_HOLDER.pattern}, not {holder!r}")
            kernels = ensure_private_dir(ensure_private_dir(Path(home) / "capabilities") / "kernels")
            for entry in kernels.iterdir():
                if entry.name != holder and entry.is_dir() and not holder_alive(entry.name):
                    shutil.rmtree(entry, ignore_errors=True)  # a kernel that is gone: its handles died with it
            self.dir = ensure_private_dir(kernels / holder)
        remove_stale_temps(self.dir)
        self._master = master
        self._epoch_path = self.dir / "epoch"
        self._revoked_path = self.dir / "revoked.jsonl"
        if not self._epoch_path.exists():
            create_exclusive(self._epoch_path, os.urandom(16).hex().encode())
        self._load_epoch()

    def _load_epoch(self) -> None:
        self.epoch = read_private(self._epoch_path, "capability epoch file").decode("ascii", "replace").strip()
        if not re.fullmatch(r"[0-9a-f]{32}", self.epoch):
            raise KernelError("EACCES", f"the capability epoch file {self._epoch_path} is damaged")
        self._key = derive_key(self._master, b"llmos capability mac\x00" + bytes.fromhex(self.epoch))
        self._revoked_ids: set[str] = set()
        self._revoked_pids: set[int] = set()
        if self._revoked_path.exists():
            data = self._revoked_path.read_bytes()
            if data and not data.endswith(b"\n"):
                append_durably(self._revoked_path, b"\n")  # end a torn line, or the next one joins it
            for line in data.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line torn by a crash mid-append: that revocation never returned
                if isinstance(record, dict) and record.get("epoch") == self.epoch:
                    if isinstance(record.get("cap"), str):
                        self._revoked_ids.add(record["cap"])
                    if type(record.get("pid")) is int:
                        self._revoked_pids.add(record["pid"])

    def new_epoch(self) -> str:
        """Start a new epoch: every earlier handle stops working. Returns the new epoch."""
        replace_file(self._epoch_path, os.urandom(16).hex().encode())
        replace_file(self._revoked_path, b"")  # old revocations name old-epoch handles only
        self._load_epoch()
        return self.epoch

    # -- minting and checking ---------------------------------------------------------------

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, b"llmos-cap/1\x00" + body, hashlib.sha256).digest()

    def mint(self, pid: int, kind: str, name: str, rights: list[str] | tuple[str, ...]) -> tuple[str, Capability]:
        """A new handle for ``pid`` on ``kind``:``name`` with ``rights``; (handle, capability).

        Raises:
            KernelError: EINVAL for bad arguments; EPERM if ``pid``'s capabilities were revoked.
        """
        check_resource(pid, kind, name)
        granted = check_rights(rights)
        if pid in self._revoked_pids:
            raise KernelError("EPERM", f"pid {pid}'s capabilities were revoked; it can be given no new ones")
        cap = Capability(os.urandom(16).hex(), pid, kind, name, granted, self.epoch)
        body = canonical_json({"epoch": cap.epoch, "id": cap.cap_id, "pid": pid, "kind": kind, "name": name, "rights": list(granted)})
        return f"{HANDLE_PREFIX}.{_b64(body)}.{_b64(self._mac(body))}", cap

    def open(self, handle: Any) -> Capability:
        """The capability a handle names, if this authority minted it in this epoch.

        Raises:
            KernelError: EPERM if the handle is malformed, forged or damaged, or from an
                earlier epoch. Revocation is *not* checked here (see ``check``).
        """
        if not isinstance(handle, str) or len(handle) > MAX_HANDLE_CHARS or handle.count(".") != 2:
            raise KernelError("EPERM", "the capability handle is malformed: it was not minted by this kernel")
        prefix, body_text, mac_text = handle.split(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except (binascii.Error, ValueError):
            body = mac = b""
        if _b64(body) != body_text or _b64(mac) != mac_text or not body:
            # Only the one canonical spelling counts: base64's spare low bits must not give a
            # capability several handles.
            raise KernelError("EPERM", "the capability handle is malformed: it was not minted by this kernel")
        if prefix != HANDLE_PREFIX or not hmac.compare_digest(mac, self._mac(body)):
            try:
                fields = json.loads(body)
            except ValueError:
                fields = None
            if isinstance(fields, dict) and fields.get("epoch") != self.epoch:
                raise KernelError("EPERM", "the capability is from an earlier boot (epoch); its process no longer exists")
            raise KernelError("EPERM", "the capability is forged or damaged: its signature does not verify")
        fields = json.loads(body)  # authenticated: we wrote it
        return Capability(fields["id"], fields["pid"], fields["kind"], fields["name"], tuple(fields["rights"]), fields["epoch"])

    def check(self, handle: Any, pid: int, kind: str, name: str, right: str) -> Capability:
        """The capability, if ``handle`` lets ``pid`` use ``right`` on ``kind``:``name``.

        Raises:
            KernelError: EPERM naming why not: forged, earlier epoch, revoked, held by
                another pid, for another resource, or without ``right``.
        """
        cap = self.open(handle)
        if cap.cap_id in self._revoked_ids:
            raise KernelError("EPERM", f"capability {cap.cap_id} was revoked")
        if cap.pid in self._revoked_pids:
            raise KernelError("EPERM", f"capability {cap.cap_id} was revoked with every capability of pid {cap.pid}")
        if cap.pid != pid:
            raise KernelError("EPERM", f"capability {cap.cap_id} belongs to pid {cap.pid}, not pid {pid}; capabilities cannot be passed on")
        if (cap.kind, cap.name) != (kind, name):
            raise KernelError("EPERM", f"capability {cap.cap_id} grants {cap.kind} {cap.name!r}, not {kind} {name!r}")
        if right not in cap.rights:
            raise KernelError("EPERM", f"capability {cap.cap_id} does not grant {right!r} on {kind} {name!r} (it grants {', '.join(cap.rights)})")
        return cap

    # -- revocation -------------------------------------------------------------------------

    def revoke(self, handle: Any) -> Capability:
        """Revoke one handle, durably; revoking twice is harmless. EPERM for a forged handle."""
        cap = self.open(handle)
        if cap.cap_id not in self._revoked_ids:
            append_durably(self._revoked_path, canonical_json({"epoch": self.epoch, "cap": cap.cap_id}) + b"\n")
            self._revoked_ids.add(cap.cap_id)
        return cap

    def revoke_pid(self, pid: int) -> bool:
        """Revoke every handle of ``pid``, now and to come (its process exited); True if new."""
        if type(pid) is not int or pid < 0:
            raise KernelError("EINVAL", f"a pid must be a non-negative integer, not {pid!r}")
        if pid in self._revoked_pids:
            return False
        append_durably(self._revoked_path, canonical_json({"epoch": self.epoch, "pid": pid}) + b"\n")
        self._revoked_pids.add(pid)
        return True

    def is_revoked(self, cap: Capability) -> bool:
        """True if ``cap`` or its pid was revoked."""
        return cap.cap_id in self._revoked_ids or cap.pid in self._revoked_pids

"""The audit log: an append-only, hash-chained, signed record of security events.

On disk, under ``LLMOS_HOME/audit``::

    audit.jsonl   one entry per line, canonical JSON:
                  {"index": i, "time": unix s, "event": {...}, "prev": sha256 hex, "sig": b64}
    head.json     the signed head: {"index": i, "hash": sha256 of entry i, "key_id", "sig"}

Invariants, each checked by ``verify``:

- Entry i sits on line i and carries index i (a deletion, insertion or reordering shifts them).
- ``prev`` of entry i is the sha256 of entry i-1's canonical bytes (64 zeros for entry 0), so
  editing any entry breaks the link to the next one.
- ``sig`` is the local Ed25519 key's signature of the entry without ``sig``, so an entry cannot
  be edited or forged, even with the chain recomputed, without the private key.
- The signed head names the last entry. It is rewritten after each append, so after a crash it
  may lag the log by one entry, never more; a log that ends before the head was truncated.

``verify`` raises ``KernelError("EIO", ...)`` naming the first bad entry's index; tools that
want the index as data call ``find_problem``, which returns an ``AuditProblem`` or None.

At open the log is only checked at its tail (O(1), so restarts stay cheap): a torn last line
from a crash mid-append is cut off (it was never acknowledged), and a tail that disagrees with
the signed head means the log was tampered with: it is moved aside as evidence
(``audit.jsonl.tampered-N``) and a new chain starts with an event saying so.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature

from llmos.kernel.errors import KernelError

from .keys import KeyStore
from .manifest import canonical_json
from .securefiles import append_durably, ensure_private_dir, fsync, remove_stale_temps, replace_file

GENESIS_HASH = "0" * 64  # the prev of entry 0
MAX_EVENT_BYTES = 64 * 1024  # canonical size of one event
_ENTRY_DOMAIN = b"llmos-audit-entry/1\x00"  # signatures of entries and heads can't be swapped
_HEAD_DOMAIN = b"llmos-audit-head/1\x00"


@dataclass(frozen=True)
class AuditProblem:
    """The first thing wrong with a log: the entry index it concerns and why."""

    index: int
    reason: str


def entry_hash(entry: dict[str, Any]) -> str:
    """The sha256 hex of an entry's canonical bytes (signature included)."""
    return hashlib.sha256(canonical_json(entry)).hexdigest()


def check_event(event: Any) -> dict[str, Any]:
    """An event is a JSON-able map with a string ``type``, at most ``MAX_EVENT_BYTES``."""
    if not isinstance(event, dict) or not isinstance(event.get("type"), str) or not event["type"]:
        raise KernelError("EINVAL", "an audit event must be a map with a non-empty string 'type'")
    size = len(canonical_json(event))
    if size > MAX_EVENT_BYTES:
        raise KernelError("E2BIG", f"an audit event is at most {MAX_EVENT_BYTES} bytes as JSON; this one has {size}")
    return event


def _read_last_lines(path: Path, count: int, chunk: int = 64 * 1024) -> list[bytes]:
    """The last ``count`` newline-terminated lines of ``path`` (fewer if it is shorter)."""
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        data = b""
        position = end
        while position > 0 and data.count(b"\n") <= count:
            step = min(chunk, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    lines = data.split(b"\n")[:-1]  # the last element is what follows the final newline
    if position > 0:
        lines = lines[1:]  # the first one may be cut
    return lines[-count:] if count else []


class AuditLog:
    """The audit log of one ``LLMOS_HOME``, signed with the local key."""

    def __init__(self, home: Path, keys: KeyStore, clock: Callable[[], float] = time.time) -> None:
        self.dir = ensure_private_dir(Path(home) / "audit")
        remove_stale_temps(self.dir)
        self.path = self.dir / "audit.jsonl"
        self.head_path = self.dir / "head.json"
        self._keys = keys
        self._clock = clock  # wall-clock time: an audit trail is read against real dates
        self.recovered_bytes = self._cut_torn_tail()
        self._last_index, self._last_hash = -1, GENESIS_HASH
        problem = self._open_tail()
        if problem is not None:
            preserved = self._quarantine()
            self.append({"type": "security.audit_tampered", "problem": problem, "preserved_as": preserved})

    # -- opening ----------------------------------------------------------------------------

    def _cut_torn_tail(self) -> int:
        """Drop a last line without its newline (a crash mid-append); return bytes dropped."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0
        with open(self.path, "rb+") as handle:
            keep = size
            while keep > 0:  # search backwards for the last newline, a chunk at a time
                start = max(0, keep - 65536)
                handle.seek(start)
                newline = handle.read(keep - start).rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                keep = start
            if keep == size:
                return 0
            handle.truncate(keep)
            fsync(handle.fileno())
            return size - keep

    def _open_tail(self) -> str | None:
        """Load the last entry and check it against the signed head; a problem, or None."""
        last = None
        if self.path.exists():
            lines = _read_last_lines(self.path, 1)
            if lines:
                last = self._parse(lines[0])
                if last is None or not self._entry_signed(last):
                    return "the last entry is malformed or not signed by the audit key"
        head = self._read_head()
        if isinstance(head, str):
            return head
        head_index = -1 if head is None else head["index"]
        if last is None:
            return None if head is None else f"the log is empty but the signed head names entry {head_index}"
        if head_index > last["index"]:
            return f"entries {last['index'] + 1}..{head_index} were deleted from the end"
        if last["index"] - head_index > 1:
            return f"entries after {head_index} were added without the signed head"
        if head is not None and last["index"] == head_index and entry_hash(last) != head["hash"]:
            return f"entry {head_index} differs from the signed head"
        if head is not None and last["index"] == head_index + 1 and last["prev"] != head["hash"]:
            return f"entry {last['index']} does not chain to the signed head"
        self._last_index, self._last_hash = last["index"], entry_hash(last)
        if head_index != self._last_index:
            self._write_head()  # a crash between appending and re-signing the head
        return None

    def _quarantine(self) -> str:
        """Move the tampered log and head aside, keeping them as evidence; start a new chain."""
        number = 1
        while (self.dir / f"audit.jsonl.tampered-{number}").exists():
            number += 1
        preserved = f"audit.jsonl.tampered-{number}"
        if self.path.exists():
            os.replace(self.path, self.dir / preserved)
        if self.head_path.exists():
            os.replace(self.head_path, self.dir / f"head.json.tampered-{number}")
        self._last_index, self._last_hash = -1, GENESIS_HASH
        return preserved

    # -- writing ----------------------------------------------------------------------------

    def append(self, event: dict[str, Any]) -> dict[str, Any]:
        """Append one event; return its ``{"index", "hash"}`` once it is on disk.

        The line is flushed to disk before the head is re-signed, so a crash in between
        leaves a head that lags by one entry, which the next open repairs.
        """
        check_event(event)
        entry: dict[str, Any] = {"index": self._last_index + 1, "time": self._clock(), "event": event, "prev": self._last_hash}
        entry["sig"] = base64.b64encode(self._keys.sign(_ENTRY_DOMAIN + canonical_json(entry))).decode()
        append_durably(self.path, canonical_json(entry) + b"\n")
        self._last_index, self._last_hash = entry["index"], entry_hash(entry)
        self._write_head()
        return {"index": self._last_index, "hash": self._last_hash}

    def _write_head(self) -> None:
        body = {"index": self._last_index, "hash": self._last_hash}
        sig = base64.b64encode(self._keys.sign(_HEAD_DOMAIN + canonical_json(body))).decode()
        replace_file(self.head_path, canonical_json({**body, "key_id": self._keys.key_id, "sig": sig}))

    # -- reading ----------------------------------------------------------------------------

    @property
    def num_entries(self) -> int:
        return self._last_index + 1

    @property
    def head_hash(self) -> str:
        return self._last_hash

    def tail(self, count: int) -> list[dict[str, Any]]:
        """The last ``count`` entries, oldest first."""
        if count <= 0 or not self.path.exists():
            return []
        return [entry for line in _read_last_lines(self.path, count) if (entry := self._parse(line)) is not None]

    def entries(self) -> Iterator[bytes]:
        """Every line of the log, in order, without its newline."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            for line in handle:
                yield line.rstrip(b"\n")

    def find_problem(self) -> AuditProblem | None:
        """Walk the whole chain; the first problem found, or None if the log is intact."""
        head = self._read_head()
        head_index = head["index"] if isinstance(head, dict) else -1
        hash_at_head: str | None = None
        prev = GENESIS_HASH
        position = -1
        for position, line in enumerate(self.entries()):
            entry = self._parse(line)
            if entry is None:
                return AuditProblem(position, f"entry {position} is not a well-formed audit entry")
            if entry["index"] != position:
                return AuditProblem(position, f"line {position} holds entry {entry['index']}: entries were deleted, inserted or reordered at {position}")
            if entry["prev"] != prev:
                return AuditProblem(position, f"entry {position} does not chain to entry {position - 1}: an entry was edited, deleted or inserted")
            if not self._entry_signed(entry):
                return AuditProblem(position, f"entry {position} was edited or forged: its signature does not verify under the audit key")
            prev = entry_hash(entry)
            if position == head_index:
                hash_at_head = prev
        if isinstance(head, str):
            return AuditProblem(max(position, 0), head)
        if head_index > position:
            return AuditProblem(position + 1, f"entries {position + 1}..{head_index} were deleted from the end")
        if position - head_index > 1:  # only a crash between append and head leaves a lag, of one
            reason = "the signed head is missing" if head is None else f"entries after {head_index} were appended without the signed head"
            return AuditProblem(head_index + 1, reason)
        if head is not None and hash_at_head != head["hash"]:
            return AuditProblem(head_index, f"entry {head_index} differs from the signed head")
        return None

    def verify(self) -> dict[str, Any]:
        """Check the whole log; ``{"entries", "head"}`` if intact.

        Raises:
            KernelError: EIO naming the first edited, deleted, reordered or inserted entry.
        """
        problem = self.find_problem()
        if problem is not None:
            raise KernelError("EIO", f"audit log {self.path} fails verification at entry {problem.index}: {problem.reason}")
        return {"entries": self.num_entries, "head": self.head_hash}

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _parse(line: bytes) -> dict[str, Any] | None:
        try:
            entry = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return None
        if (not isinstance(entry, dict) or set(entry) != {"index", "time", "event", "prev", "sig"}
                or type(entry["index"]) is not int or not isinstance(entry["prev"], str)
                or not isinstance(entry["sig"], str)):
            return None
        return entry

    def _entry_signed(self, entry: dict[str, Any]) -> bool:
        body = {key: value for key, value in entry.items() if key != "sig"}
        return self._signed(_ENTRY_DOMAIN + canonical_json(body), entry["sig"])

    def _signed(self, data: bytes, sig: str) -> bool:
        try:
            self._keys.public_key.verify(base64.b64decode(sig, validate=True), data)
            return True
        except (InvalidSignature, binascii.Error, ValueError):
            return False

    def _read_head(self) -> dict[str, Any] | str | None:
        """The signed head, None if there is none, or a sentence saying what is wrong with it."""
        try:
            head = json.loads(self.head_path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            return "the signed head is not valid JSON"
        if not isinstance(head, dict) or type(head.get("index")) is not int or not isinstance(head.get("hash"), str) or not isinstance(head.get("sig"), str):
            return "the signed head is malformed"
        if not self._signed(_HEAD_DOMAIN + canonical_json({"index": head["index"], "hash": head["hash"]}), head["sig"]):
            return "the signed head was altered: its signature does not verify"
        return head

"""Small, crash-safe file operations for secrets and state under ``LLMOS_HOME``.

Two invariants every caller relies on:

- A secret is never readable by group or others, not even for an instant: it is created with
  ``O_CREAT | O_EXCL`` and mode 0600 (the umask can only remove bits), never chmod-ed after.
- A reader never sees half a file: content goes to a temporary file in the same directory,
  is flushed to disk, and only then is linked or renamed into place. A crash leaves either the
  old file, the new one, or a stray ``.*.tmp`` file that ``remove_stale_temps`` clears.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from llmos.kernel.errors import KernelError

PRIVATE_FILE_MODE = 0o600  # owner read/write only
PRIVATE_DIR_MODE = 0o700  # owner only
PUBLIC_FILE_MODE = 0o644  # public keys and other files anyone may read
TEMP_SUFFIX = ".tmp"
_CHECK_MODES = os.name == "posix"  # Windows has no group/other mode bits to check

# Flush to disk before a write counts as done. LLMOS_SYNC=0 turns it off for throwaway homes
# (simulations, tests), where ~3 ms per fsync dominates and a power cut loses nothing of value;
# the ordering of writes, and so crash safety short of a power cut, stays the same.
SYNC = os.environ.get("LLMOS_SYNC", "1") != "0"


def fsync(fd: int) -> None:
    """``os.fsync`` unless ``SYNC`` is off."""
    if SYNC:
        os.fsync(fd)


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if missing; the leaf is made owner-only (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    return path


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


@contextmanager
def atomic_write(path: Path, mode: int = PRIVATE_FILE_MODE, durable: bool = True) -> Iterator[BinaryIO]:
    """Write a file through a handle; ``path`` gets the content only if the block succeeds.

    Args:
        durable: flush to disk before the rename (and the rename after it); off for data
            that is worthless after a reboot anyway, such as swapped KV blocks.
    """
    temp = _temp_path(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if durable:
        _sync_dir(path.parent)


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to a fresh temporary file next to ``path``, flushed to disk."""
    temp = _temp_path(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _sync_dir(path: Path) -> None:
    """Make a rename or link in ``path`` durable (a no-op where directories cannot be opened)."""
    if not SYNC:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def create_exclusive(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> bool:
    """Create ``path`` holding ``data`` unless it exists; True if this call created it.

    The file appears whole or not at all (a hard link of a finished temporary file), and if two
    first boots race, exactly one wins and the other reads the winner's file.
    """
    temp = _write_temp(path, data, mode)
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        temp.unlink(missing_ok=True)
    _sync_dir(path.parent)
    return True


def replace_file(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically: readers see the old or the new content."""
    with atomic_write(path, mode, durable) as handle:
        handle.write(data)


def read_private(path: Path, what: str) -> bytes:
    """Read a secret, refusing it if group or others may access it (EACCES).

    The mode is checked on the open descriptor, so the file cannot be swapped between the
    check and the read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise KernelError("EACCES", f"the {what} {path} is not a regular file; refusing to use it")
        if _CHECK_MODES and info.st_mode & 0o077:
            raise KernelError(
                "EACCES",
                f"the {what} {path} is accessible by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"refusing to use it: run 'chmod 600 {path}' if it was never exposed, else replace it",
            )
        return handle.read()


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (created 0600 if missing) and flush it to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), PRIVATE_FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(directory: Path, min_age_s: float = 60.0) -> int:
    """Delete temporary files a crash left in ``directory``; return how many.

    Only files older than ``min_age_s`` go, so a writer that is still busy (another instance
    sharing the directory) never loses its temporary file between write and rename.
    """
    removed = 0
    now = time.time()
    for entry in directory.glob(f".*{TEMP_SUFFIX}"):
        try:
            if now - entry.stat().st_mtime >= min_age_s:
                entry.unlink()
                removed += 1
        except OSError:
            pass
    return removed


@contextmanager
def os_errors(op: str) -> Iterator[None]:
    """Turn a file system error into an errno reply: a bad path must not crash a server."""
    try:
        yield
    except OSError as exc:
        errno = {PermissionError: "EACCES", FileNotFoundError: "ENOENT", NotADirectoryError: "ENOENT",
                 FileExistsError: "EEXIST", IsADirectoryError: "EINVAL"}.get(type(exc), "EIO")
        where = f" ({exc.filename})" if exc.filename else ""
        raise KernelError(errno, f"{op}: {exc.strerror or exc}{where}") from None


def absolute_path_arg(op: str, value: str) -> Path:
    """A request's ``path`` argument, which must be absolute (a server has no useful cwd)."""
    path = Path(value)
    if not path.is_absolute():
        raise KernelError("EINVAL", f"{op}: argument 'path' must be an absolute path, not {str(path)!r}")
    return path

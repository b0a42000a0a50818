"""KV blocks swapped out to disk, encrypted per tenant: the ``EncryptedDiskSwap`` swap store.

When the system runs with a home directory (``--home``), userland/system.py gives every torch
driver (cpu, npu, cuda) one of these in place of host memory (drivers/swap_store.py has the
contract). Layout::

    LLMOS_HOME/swap/                     0700
      <device>/                          0700  e.g. cpu0; a run-time model's cpu0/tiny@1 is cpu0%2Ftiny@1
        <pid>/                           0700  the process (the kernel) whose driver owns the store
          <sha256(tenant)[:32]>/         0700  crypto.EncryptedSwapFile: no tenant name in a path
            <handle>.swap                0600  AES-256-GCM records under the tenant's key

The keys are the security service's: HKDF of the home's master key per tenant
(crypto.TenantCipher), and every record's associated data binds tenant, handle and position,
so a file another tenant's key opens, or one edited on disk, is EIO, never wrong blocks. The
plaintext never touches the disk: blocks are encrypted in memory and only ciphertext is
written (to a temporary file renamed into place). Nothing is flushed to disk: swapped blocks
are worthless after a reboot.

A swap file lives only while its process is swapped out: ``take`` and ``drop`` delete it,
``clear`` deletes them all. A store starts empty: opening one deletes what an earlier driver of
that device in this process left (the supervisor restarted it), and the folders of processes
that are gone (an earlier boot that crashed). Folders of processes still running are kept, so
two kernels may share a home; two kernels in one process should not share a home and device name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

from llmos.kernel.errors import KernelError

from .crypto import EncryptedSwapFile, TenantCipher, load_master_key
from .securefiles import ensure_private_dir, os_errors

SWAP_DIR = "swap"  # under LLMOS_HOME


def device_dir_name(device: str) -> str:
    """A device name as one safe path component (``/`` and other specials percent-encoded)."""
    if not device:
        raise ValueError("a swap store needs a device name")
    name = quote(device, safe="@+")
    return "%2E" + name[1:] if name.startswith(".") else name  # never "." or ".." or hidden


def _process_gone(pid: int) -> bool:
    """Whether no process ``pid`` exists (False where that cannot be told)."""
    if os.name != "posix":
        return False  # os.kill would terminate it on Windows, not probe it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False  # PermissionError: it exists under another user
    return False


def remove_dead_instances(device_dir: Path) -> int:
    """Delete the swap folders in ``device_dir`` of processes that are gone; return how many."""
    removed = 0
    for entry in device_dir.iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and _process_gone(int(entry.name)):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


class EncryptedDiskSwap:
    """A torch driver's swap store in encrypted files, one file per swapped-out process.

    Use ``open(home, device)``; the constructor takes the folder and cipher directly (tests).
    The driver calls it from its compute thread only, one call at a time.
    """

    def __init__(self, directory: Path, cipher: TenantCipher) -> None:
        self.directory = Path(directory)
        self._cipher = cipher
        self._files: dict[int, tuple[EncryptedSwapFile, int]] = {}  # handle -> its file, its block count
        self.clear()  # a new instance owns no handle: whatever is here is stale

    @classmethod
    def open(cls, home: Path, device: str) -> EncryptedDiskSwap:
        """A fresh store for ``device`` under ``home``, keyed by the home's master key.

        Raises:
            KernelError: EACCES if the master key file is exposed or damaged.
            ValueError: for an empty device name.
        """
        master, _ = load_master_key(home)  # made here only if no security service made it first
        device_dir = ensure_private_dir(ensure_private_dir(Path(home) / SWAP_DIR) / device_dir_name(device))
        remove_dead_instances(device_dir)
        return cls(device_dir / str(os.getpid()), TenantCipher(master))

    def __len__(self) -> int:
        return len(self._files)

    def put(self, handle: int, tenant: str, tensors: list[Any]) -> int:
        """Encrypt ``tensors`` under ``tenant``'s key into ``handle``'s file; the KV bytes moved.

        Raises:
            KernelError: EEXIST if ``handle`` is in use; EINVAL for a bad tenant name; EIO
                (or EACCES) if the file cannot be written, e.g. the disk is full.
        """
        if handle in self._files:
            raise KernelError("EEXIST", f"swap handle {handle} already holds swapped-out blocks")
        file = EncryptedSwapFile(self.directory, self._cipher, tenant, handle)
        with os_errors(f"writing the swap file of handle {handle}"):
            ensure_private_dir(self.directory)
            file.write(tensors)
        self._files[handle] = (file, len(tensors))
        return sum(t.numel() * t.element_size() for t in tensors)

    def count(self, handle: int) -> int:
        """How many blocks ``handle`` holds; ENOENT if none."""
        return self._entry(handle)[1]

    def take(self, handle: int) -> list[Any]:
        """Decrypt ``handle``'s blocks (CPU tensors, bit-exact) and delete its file.

        The handle is consumed even when the file fails to decrypt: its blocks are lost then.

        Raises:
            KernelError: ENOENT for an unknown handle; EIO if the file was altered, truncated,
                replaced by another tenant's or removed behind the store's back.
        """
        file, _ = self._entry(handle)
        del self._files[handle]
        try:
            with os_errors(f"reading the swap file of handle {handle}"):
                return file.read()
        except KernelError as error:
            if error.errno != "ENOENT":
                raise
            raise KernelError("EIO", f"the swap file of handle {handle} ({file.path}) was removed: its blocks "
                                     "are lost") from None
        finally:
            with contextlib.suppress(OSError):
                file.discard()

    def drop(self, handle: int) -> None:
        """Delete ``handle``'s file; ENOENT if none."""
        file, _ = self._entry(handle)
        del self._files[handle]
        with contextlib.suppress(OSError):
            file.discard()

    def clear(self) -> None:
        """Delete every swap file of this store (a new KV pool, or a fresh driver instance)."""
        self._files.clear()
        shutil.rmtree(self.directory, ignore_errors=True)
        ensure_private_dir(self.directory)

    def _entry(self, handle: int) -> tuple[EncryptedSwapFile, int]:
        entry = self._files.get(handle)
        if entry is None:
            raise KernelError("ENOENT", f"no swapped-out blocks with handle {handle} (never swapped out, or already "
                                        "swapped in or freed)")
        return entry

"""Where a torch driver keeps the KV blocks it swaps out: the ``SwapStore`` contract.

The scheduler preempts a process with ``swap_out``, and later redeems the handle it got with
``swap_in`` or gives it up with ``swap_free``. The driver copies the blocks off the device (one
CPU tensor per block) and hands them to its store, which owns them until they are taken back
or dropped::

    swap_out  -> store.put(handle, tenant, tensors)   bytes moved
    swap_in   -> store.count(handle), store.take(handle)   (consumed)
    swap_free -> store.drop(handle)
    init_kv   -> store.clear()   (a new pool: every swapped copy belongs to the old one)

Two stores exist:

- ``HostMemorySwap`` (here; the default) keeps the tensors in host memory.
- ``EncryptedDiskSwap`` (services/swap_disk.py) writes them under ``LLMOS_HOME/swap``,
  AES-GCM encrypted under the process's tenant key. userland/system.py hands one to every
  torch driver when the system runs with a home directory. It lives in services/, next to
  the keys; drivers never import it, they only receive a store.

The driver calls its store only from its compute thread, one call at a time, so a store needs
no lock, and a store that blocks (disk) never stalls the kernel's event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from llmos.kernel.errors import KernelError

if TYPE_CHECKING:
    import torch


class SwapStore(Protocol):
    """What a torch driver needs from the keeper of its swapped-out KV blocks.

    Every method that names a handle raises ``KernelError("ENOENT", ...)`` for a handle that
    was never put, or was already taken or dropped.
    """

    def put(self, handle: int, tenant: str, tensors: list[torch.Tensor]) -> int:
        """Keep ``tensors`` (the blocks of one swap-out, owned by ``tenant``) under ``handle``.

        Returns:
            The KV bytes moved off the device (the tensors' bytes, whatever the store adds).

        Raises:
            KernelError: EEXIST if ``handle`` is in use; EINVAL for a tenant the store cannot
                use; EIO if the blocks cannot be stored.
        """
        ...

    def count(self, handle: int) -> int:
        """How many blocks ``handle`` holds, without consuming them."""
        ...

    def take(self, handle: int) -> list[torch.Tensor]:
        """The tensors put under ``handle``, bit-exact, same dtype and shape; the handle is consumed."""
        ...

    def drop(self, handle: int) -> None:
        """Forget ``handle``'s blocks (their process ended while swapped out)."""
        ...

    def clear(self) -> None:
        """Forget every handle (a new KV pool, or a fresh driver instance)."""
        ...


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    """The bytes of ``tensors``' elements: what a swap moves, as the kernel accounts it."""
    return sum(t.numel() * t.element_size() for t in tensors)


def unknown_handle(handle: int) -> KernelError:
    """The ENOENT every store raises for a handle it does not hold."""
    return KernelError("ENOENT", f"no swapped-out blocks with handle {handle} (never swapped out, or already "
                                 "swapped in or freed)")


class HostMemorySwap:
    """Swapped-out blocks kept as tensors in host memory (DESIGN.md's swap space)."""

    def __init__(self) -> None:
        self._swapped: dict[int, list[torch.Tensor]] = {}  # handle -> one CPU tensor per block

    def __len__(self) -> int:
        return len(self._swapped)

    def put(self, handle: int, tenant: str, tensors: list[torch.Tensor]) -> int:
        """Keep the tensors themselves (the tenant needs no protection inside this process)."""
        if handle in self._swapped:
            raise KernelError("EEXIST", f"swap handle {handle} already holds swapped-out blocks")
        self._swapped[handle] = list(tensors)
        return tensor_bytes(tensors)

    def count(self, handle: int) -> int:
        """How many blocks ``handle`` holds; ENOENT if none."""
        if handle not in self._swapped:
            raise unknown_handle(handle)
        return len(self._swapped[handle])

    def take(self, handle: int) -> list[torch.Tensor]:
        """The tensors put under ``handle``; ENOENT if none. The handle is consumed."""
        tensors = self._swapped.pop(handle, None)
        if tensors is None:
            raise unknown_handle(handle)
        return tensors

    def drop(self, handle: int) -> None:
        """Forget ``handle``'s tensors; ENOENT if none."""
        if self._swapped.pop(handle, None) is None:
            raise unknown_handle(handle)

    def clear(self) -> None:
        """Forget every handle."""
        self._swapped.clear()

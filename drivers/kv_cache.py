"""Physical KV storage of one device: the frames behind the kernel's block tables.

The kernel's KV-cache manager owns *which* block holds what (allocation, refcounts, hashes);
this module owns the bytes. Per layer there is one K and one V tensor::

    k[layer]: (num_blocks, block_size, nkv, hs)
               block b, slot s  <->  flat slot b * block_size + s

so block ``b`` of a sequence's block table is a contiguous (block_size, nkv, hs) frame, and the
attention kernel can view the pool as (num_blocks * block_size, nkv, hs) and address tokens by
flat slot. Swapping moves whole blocks between this pool and host memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llmos.kernel.errors import KernelError


class PagedKVCache:
    """K and V block pools for every layer of one model.

    Args:
        num_layers, num_kv_heads, head_dim: from the model config.
        num_blocks, block_size: the pool's geometry, as passed to the driver's ``init_kv``.
        device, dtype: where and how the frames are stored.

    Raises:
        KernelError: EINVAL for a non-positive size, ENOMEM if the pool cannot be allocated.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise KernelError(
                "EINVAL",
                f"init_kv: num_blocks={num_blocks} and block_size={block_size} must be > 0",
            )
        self.num_blocks, self.block_size = num_blocks, block_size
        self.device, self.dtype = device, dtype
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        try:
            # Zeroed, not empty: padding slots are read (then masked) by batched decode attention,
            # and uninitialised memory could hold NaN, which a mask does not cancel in a matmul.
            self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
            self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        except torch.OutOfMemoryError as exc:
            raise KernelError(
                "ENOMEM",
                f"init_kv: cannot allocate {self.nbytes_for(shape, num_layers, dtype)} bytes",
            ) from exc

    @staticmethod
    def nbytes_for(shape: tuple[int, ...], num_layers: int, dtype: torch.dtype) -> int:
        """Bytes of K and V pools of ``shape`` over ``num_layers`` layers."""
        n = 1
        for d in shape:
            n *= d
        return 2 * num_layers * n * torch.empty((), dtype=dtype).element_size()

    @property
    def nbytes(self) -> int:
        """Bytes held by all pools."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    @property
    def bytes_per_block(self) -> int:
        """Bytes one block occupies across all layers, K and V (the unit of swap traffic)."""
        return self.nbytes // self.num_blocks

    def flat(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of one layer's pools addressed by flat slot: (num_blocks * block_size, nkv, hs)."""
        k, v = self.k[layer], self.v[layer]
        return k.view(-1, *k.shape[2:]), v.view(-1, *v.shape[2:])

    def _ids(self, block_ids: Sequence[int], op: str) -> torch.Tensor:
        for b in block_ids:
            if not isinstance(b, int) or not 0 <= b < self.num_blocks:
                raise KernelError("EINVAL", f"{op}: block id {b!r} outside [0, {self.num_blocks})")
        return torch.tensor(list(block_ids), dtype=torch.long, device=self.device)

    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy block ``src`` onto block ``dst`` for every (src, dst) pair, in every layer.

        This is copy-on-write's copy: a forked sequence gets its own copy of a shared last block.
        All sources are read before any destination is written, so pairs may chain.
        """
        if not pairs:
            return
        if any(len(p) != 2 for p in pairs):
            raise KernelError("EINVAL", "copy_blocks: each pair must be [src, dst]")
        src = self._ids([p[0] for p in pairs], "copy_blocks")
        dst = self._ids([p[1] for p in pairs], "copy_blocks")
        if len(set(dst.tolist())) != len(pairs):
            raise KernelError("EINVAL", "copy_blocks: a destination block appears twice")
        for pool in self.k + self.v:
            pool.index_copy_(0, dst, pool.index_select(0, src))

    def zero_blocks(self, block_ids: Sequence[int]) -> None:
        """Fill blocks with zeros in every layer (a freed block must not leak a tenant's data)."""
        if not block_ids:
            return
        ids = self._ids(block_ids, "zero_blocks")
        for pool in self.k + self.v:
            pool.index_fill_(0, ids, 0)

    def swap_out(self, block_ids: Sequence[int]) -> list[torch.Tensor]:
        """Copy blocks to host memory; one tensor per block, shaped (2, num_layers, bs, nkv, hs).

        The device blocks are left as they are: the kernel frees (and may zero) them afterwards.
        """
        if not block_ids:
            return []
        ids = self._ids(block_ids, "swap_out")
        k = torch.stack(
            [pool.index_select(0, ids) for pool in self.k], dim=1
        )  # (n, L, bs, nkv, hs)
        v = torch.stack([pool.index_select(0, ids) for pool in self.v], dim=1)
        host = torch.stack([k, v], dim=1).to("cpu")  # (n, 2, L, bs, nkv, hs)
        return list(host.unbind(0))

    def swap_in(self, block_ids: Sequence[int], tensors: Sequence[torch.Tensor]) -> None:
        """Write host copies made by ``swap_out`` into (possibly different) device blocks."""
        if len(block_ids) != len(tensors):
            raise KernelError(
                "EINVAL", f"swap_in: {len(block_ids)} block ids but {len(tensors)} tensors"
            )
        if not block_ids:
            return
        ids = self._ids(block_ids, "swap_in")
        want = (2, len(self.k), *self.k[0].shape[1:])
        for t in tensors:
            if tuple(t.shape) != want:
                raise KernelError(
                    "EINVAL",
                    f"swap_in: block tensor has shape {list(t.shape)}, expected {list(want)}",
                )
        data = torch.stack(list(tensors)).to(device=self.device, dtype=self.dtype)  # (n, 2, L, ...)
        for layer in range(len(self.k)):
            self.k[layer].index_copy_(0, ids, data[:, 0, layer])
            self.v[layer].index_copy_(0, ids, data[:, 1, layer])

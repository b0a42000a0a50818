"""KV-cache block accounting for one device: the kernel's page allocator (first form).

The kernel owns the metadata (which block belongs to which process); the driver owns the
storage. Each process has a block table, as a page table: block i holds its positions
[i * block_size, (i + 1) * block_size).

Running out of blocks is a return value (False), never an exception: the planner decides
whom to preempt.
"""

from __future__ import annotations

from collections import deque


class BlockPool:
    """Fixed-size blocks of one device, handed out to processes' block tables."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._tables: dict[int, list[int]] = {}
        # Invariant: the free queue and all tables partition range(num_blocks).

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def table(self, pid: int) -> list[int]:
        """The block table of ``pid`` (empty if it holds none)."""
        return self._tables.get(pid, [])

    def ensure(self, pid: int, num_tokens: int) -> bool:
        """Grow ``pid``'s table to hold ``num_tokens`` tokens.

        Returns False, changing nothing, if there are not enough free blocks.
        """
        table = self._tables.setdefault(pid, [])
        missing = self.blocks_for(num_tokens) - len(table)
        if missing <= 0:
            return True
        if missing > len(self._free):
            if not table:
                del self._tables[pid]
            return False
        table.extend(self._free.popleft() for _ in range(missing))
        return True

    def release(self, pid: int) -> int:
        """Return all of ``pid``'s blocks to the free queue; returns how many."""
        table = self._tables.pop(pid, [])
        self._free.extend(table)
        return len(table)

    def holders(self) -> list[int]:
        """Pids that hold blocks."""
        return list(self._tables)

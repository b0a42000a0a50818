"""The KV-cache manager of one device: block tables, prefix cache, copy-on-write, swap.

The scheduler talks only to ``KVCacheManager``; the manager keeps each process's block table
(its page table) over a ``BlockPool`` (kv_blocks.py) and returns the driver work the caller
must do (zero, copy, swap) as plain lists. It never touches KV storage itself::

    block table of pid 7, block_size 4, 10 tokens:

        positions   0..3    4..7    8..9
        table     [  5   ,   2   ,   9   ]     physical block ids in the pool
                    full    full   partial     (2 of 4 slots hold tokens)
                    h0      h1     no hash     (only full, computed blocks are cached)

    fork(7, [8, 9]): the children's tables point at the same blocks

        pid 7 [5, 2, 9]       ref(5) = ref(2) = ref(9) = 3
        pid 8 [5, 2, 9]
        pid 9 [5, 2, 9]

    pid 8 writes position 10, in shared block 9: prepare_write copies it first

        pid 7 [5, 2, 9]       ref(9) = 2, ref(11) = 1
        pid 8 [5, 2, 11]      driver: copy_blocks [(9, 11)]
        pid 9 [5, 2, 9]

Invariants (``check_invariants``): every block's reference count equals the number of table
entries holding it; a swapped-out process holds no device block and owns its swap slots alone;
a process's ``hashes`` are the hash chain of its committed (full, computed, offered to the
cache) blocks: all of them, unless it is its family's lazy chain (below), then a prefix of them.

Hashing on demand: hashing every full block of every prompt was the largest single cost of a
long simulation, yet a hash only matters when two sequences can hold the same prefix, and those
begin with the same first block. So the cache is indexed by the first block (``PrefixFamily``
in kv_blocks.py). A sequence alone in its family caches its blocks without hashes
(``cache_lazily``); they are hashed (``_hash_chain``) when
- a second sequence commits into the family (``commit_full_blocks``, ``swap_in``),
- a lookup begins with the family's first block (``allocate``, ``cached_prefix``),
- the sequence forks or swaps out (its blocks get more holders, or come back under new ids),
- or someone asks for the whole hash map (``cached_items``).
A lazy chain's cached blocks are its own: blocks it shares (a fork before any commit) are
hashed at once. Which blocks are cached, shared and evicted is exactly what hashing every block
at once gives; tests/kernel/test_kv_manager_stateful.py checks that step by step against a
manager whose blocks are all hashed after every call. The price is memory: a lazy chain keeps
its process's token lists (and its block list) until its family is hashed or its last cached
block is evicted, even after the process ended: at most one chain per cached block.

Rules the caller relies on:
- Zeroing: a fresh block from ``allocate`` is listed in ``blocks_to_zero`` iff its last owner
  was another tenant (salt). Never-owned blocks hold the driver's initial zeros; a tenant may
  see its own stale KV (attention masks it); COW and swap-in destinations are overwritten whole.
- Shared blocks and swap: ``swap_out`` copies every block of the table, shared ones included,
  and drops only the swapped process's reference; the other holders keep the device block.
- Watermark: ``allocate(..., reserve=N)`` and ``swap_in(..., reserve=N)`` fail unless N blocks
  stay free afterwards, so admissions cannot eat the blocks running processes grow into.

Driver work must be issued in the order the manager returned it (swap-out copies before the
blocks they read are reused, COW copies before their source is freed and zeroed), and all of it
before the next step that reads those blocks.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .kv_blocks import BlockPool, PrefixFamily, SwapSpace
from .kv_hash import BlockHash, hash_blocks, iter_block_hashes

FamilyKey = bytes  # the tenant's salt and the first block's tokens, packed: names a PrefixFamily


@dataclass(slots=True)  # made at every table growth; not frozen, as a frozen __init__ costs several times more (treat as a value)
class Allocation:
    """What ``allocate`` did to a process's table."""

    new_blocks: list[int]  # fresh blocks appended to the table, in table order
    blocks_to_zero: list[int]  # the subset of new_blocks to zero before the next step: their
    # last owner was another tenant (see BlockPool.allocate for the rule)
    num_cached_tokens: int  # leading tokens whose KV came from the prefix cache: no compute;
    # nonzero only on a first allocation (empty table), a multiple of block_size
    cached_blocks: list[int]  # the shared prefix-cache blocks at the head of the table


@dataclass(eq=False)
class _Seq:
    """One process's KV state. Resident iff ``slots`` is None.

    Its first ``num_committed`` blocks are full, computed and were offered to the prefix cache;
    ``hashes`` chains all of them, unless it is the lazy chain of its family: then a prefix of
    them, and ``tokens`` keeps its sequence for hashing the rest later, even after it ended.
    """

    salt: bytes  # its tenant's salt: hashes and the zeroing rule use it
    blocks: list[int] = field(default_factory=list)  # the block table; empty while swapped
    slots: list[int] | None = None  # swap slots in table order while swapped out, else None
    num_tokens: int = 0  # positions the table must hold (for fragmentation figures)
    hashes: list[BlockHash] = field(default_factory=list)  # chain of its committed blocks, so far
    num_committed: int = 0  # leading blocks offered to the prefix cache (each once)
    family_key: FamilyKey | None = None  # set at its first commit or prefix hit
    tokens: Sequence[int] = ()  # its sequence, while it is a lazy chain; () otherwise


class KVCacheManager:
    """Per-process block tables over one device's block pool and host swap space."""

    def __init__(
        self, num_blocks: int, block_size: int, num_swap_blocks: int = 0, enable_prefix_cache: bool = True
    ) -> None:
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.block_size = block_size
        self.enable_prefix_cache = enable_prefix_cache
        self.pool = BlockPool(num_blocks)
        self.swap = SwapSpace(num_swap_blocks)
        self._seqs: dict[int, _Seq] = {}
        # Counters since creation, reported by meminfo.
        self.num_query_tokens = 0  # tokens looked up in the prefix cache (first allocations)
        self.num_hit_tokens = 0  # of those, tokens found cached
        self.num_cow_copies = 0  # blocks copied by prepare_write
        self.num_zeroed = 0  # blocks handed out with a zeroing order
        self.num_swapped_out = 0  # blocks copied to swap
        self.num_swapped_in = 0  # blocks copied back

    # -- queries ---------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        """Blocks in the device pool."""
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can get now (empty plus evictable cached ones)."""
        return self.pool.num_free

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    def can_allocate(self, num_blocks: int, reserve: int = 0) -> bool:
        """Whether ``num_blocks`` fresh blocks are available with ``reserve`` left over."""
        return self.pool.can_allocate(num_blocks, reserve)

    def table(self, pid: int) -> list[int]:
        """A copy of ``pid``'s block table (empty if unknown or swapped out)."""
        seq = self._seqs.get(pid)
        return list(seq.blocks) if seq else []

    def can_write_in_place(self, pid: int, position: int) -> bool:
        """Whether ``pid``'s table already holds ``position`` in a block no other table shares.

        The planner's fast path for a decode step: then neither ``allocate`` nor
        ``prepare_write`` has anything to do.
        """
        seq = self._seqs.get(pid)
        if seq is None:
            return False
        index = position // self.block_size
        return index < len(seq.blocks) and self.pool.ref_count(seq.blocks[index]) == 1

    def num_copies_to_write(self, pid: int, start: int, end: int) -> int:
        """Blocks ``prepare_write(pid, start, end)`` would copy now: the shared ones (ref > 1)
        of ``pid``'s table that overlap [start, end). Each takes a fresh block."""
        seq = self._seqs.get(pid)
        if seq is None or seq.slots is not None or end <= start:
            return 0
        size, blocks, ref_count = self.block_size, seq.blocks, self.pool.ref_count
        last = min((end - 1) // size, len(blocks) - 1)
        return sum(1 for i in range(start // size, last + 1) if ref_count(blocks[i]) > 1)

    def table_len(self, pid: int) -> int:
        """Blocks in ``pid``'s table (0 if unknown or swapped out), without copying it."""
        seq = self._seqs.get(pid)
        return len(seq.blocks) if seq else 0

    def tenant_blocks(self, salt: bytes) -> int:
        """Device blocks in use by the tenant with ``salt``, shared ones (fork, prefix) once."""
        return self.pool.used_by(salt)

    def holders(self) -> list[int]:
        """Resident pids that hold at least one block."""
        return [pid for pid, seq in self._seqs.items() if seq.blocks]

    def swapped(self) -> list[int]:
        """Pids whose blocks are in swap."""
        return [pid for pid, seq in self._seqs.items() if seq.slots is not None]

    def swap_slots(self, pid: int) -> list[int]:
        """A copy of ``pid``'s swap slots in table order (empty unless swapped out)."""
        seq = self._seqs.get(pid)
        return list(seq.slots) if seq and seq.slots is not None else []

    def cached_prefix(self, token_ids: Sequence[int], salt: bytes) -> int:
        """Tokens a first allocation of ``token_ids`` would find cached now (what is cached does
        not change; it may hash a family's lazily cached blocks).

        The planner uses it to size the chunk: compute starts after the cached tokens.
        """
        return len(self._match_prefix(token_ids, salt)[0]) * self.block_size

    def cached_items(self) -> dict[BlockHash, int]:
        """The prefix cache as a hash -> block map, lazily cached blocks hashed first.

        For tests and inspection: it costs a hash per lazily cached block, and which blocks
        are cached does not change.
        """
        for family in self.pool.lazy_families():
            self._hash_chain(family)
        return self.pool.cached_items()

    def _match_prefix(self, token_ids: Sequence[int], salt: bytes) -> tuple[list[int], list[BlockHash]]:
        """The cached blocks (and their hashes) of the longest cached prefix of ``token_ids``.

        The last token is never matched: the step must compute it to get logits to sample from.
        """
        if not self.enable_prefix_cache or len(token_ids) <= self.block_size:
            return [], []
        family = self.pool.family(self._family_key(token_ids, salt))
        if family is None:
            return [], []  # no cached block begins with this one: nothing to hash
        self._hash_family(family)
        blocks: list[int] = []
        hashes: list[BlockHash] = []
        stop = (len(token_ids) - 1) // self.block_size
        for block_hash in iter_block_hashes(token_ids, self.block_size, salt, stop=stop):
            block = self.pool.lookup(block_hash)
            if block is None:
                break
            blocks.append(block)
            hashes.append(block_hash)
        return blocks, hashes

    def _family_key(self, token_ids: Sequence[int], salt: bytes) -> FamilyKey:
        # Bytes, not a tuple: a bytes object keeps its hash, and a sequence's key is looked up
        # at every block it fills. Length-prefixed, so no two (salt, tokens) pairs share a key.
        return b"".join((len(salt).to_bytes(2, "little"), salt, array("q", token_ids[: self.block_size]).tobytes()))

    def _hash_chain(self, family: PrefixFamily) -> None:
        """Compute the hashes of ``family``'s lazy chain: its lazily cached blocks become
        ordinary cached blocks, and the family caches eagerly from now on."""
        seq = family.chain
        assert isinstance(seq, _Seq)
        size, first, stop = self.block_size, len(seq.hashes), seq.num_committed
        hashes = hash_blocks(seq.hashes[-1] if seq.hashes else None, seq.tokens[first * size : stop * size], size, seq.salt)
        seq.hashes += hashes
        seq.tokens = ()
        # Its committed blocks are those it held when it committed them: a lazy chain's blocks
        # are its own (cache_lazily takes no shared block, and a fork or a prefix hit hashes
        # first), so never copied on write, and a swap-out hashes first.
        self.pool.hash_family(family, seq.blocks[first:stop], hashes)

    def _hash_family(self, family: PrefixFamily | None) -> None:
        """Hash ``family``'s lazy chain, if it has one: someone is about to look into the family
        or cache into it by hash."""
        if family is not None and family.chain is not None:
            self._hash_chain(family)

    def _hash_own_family(self, seq: _Seq) -> None:
        """Make sure ``seq``'s hashes are complete (it may be its family's lazy chain)."""
        if seq.family_key is not None:
            family = self.pool.family(seq.family_key)
            if family is not None and family.chain is seq:
                self._hash_chain(family)

    def _resident(self, pid: int) -> _Seq:
        seq = self._seqs.get(pid)
        if seq is None or seq.slots is not None:
            raise ValueError(f"pid {pid} has no resident block table")
        return seq

    # -- allocation --------------------------------------------------------------------------

    def allocate(
        self, pid: int, token_ids: Sequence[int], num_tokens: int, salt: bytes, *, reserve: int = 0
    ) -> Allocation | None:
        """Grow ``pid``'s table to cover positions [0, num_tokens) of the sequence ``token_ids``.

        On a first allocation (``pid`` unknown or with an empty table) the full blocks of
        ``token_ids`` already in the prefix cache under ``salt`` are shared instead of
        allocated; the table then covers at least those cached tokens, even past num_tokens.

        Args:
            pid: the process.
            token_ids: its whole sequence so far (prompt and output); read for prefix lookup.
            num_tokens: positions the table must cover; at most len(token_ids).
            salt: its tenant's salt; must not change over the process's life.
            reserve: watermark: fail unless this many blocks stay free afterwards. Admission
                passes a reserve so newcomers cannot starve running processes; growth of
                running processes passes 0.

        Returns:
            The Allocation, or None if too few blocks are free: nothing changed and no counter
            moved (the lookup may have hashed a lazy family, which changes no decision).
            Raises ValueError if ``pid`` is swapped out or the arguments disagree.
        """
        if not 0 <= num_tokens <= len(token_ids):
            raise ValueError(f"num_tokens {num_tokens} outside [0, {len(token_ids)}]")
        seq = self._seqs.get(pid)
        if seq is not None:
            if seq.slots is not None:
                raise ValueError(f"pid {pid} has no resident block table")
            if seq.salt != salt:
                raise ValueError(f"pid {pid} changed salt")
            if seq.blocks:
                return self._grow(seq, num_tokens, salt, reserve)
        # A first allocation: share the cached prefix, then take fresh blocks.
        hit_blocks, hit_hashes = self._match_prefix(token_ids, salt)
        covered = max(num_tokens, len(hit_blocks) * self.block_size)
        num_new = max(0, self.blocks_for(covered) - len(hit_blocks))
        num_revived = sum(1 for b in hit_blocks if self.pool.ref_count(b) == 0)
        if not self.pool.can_allocate(num_new + num_revived, reserve):
            return None
        # Commit. Share hits before allocating, so eviction cannot take a block we just hit.
        for block in hit_blocks:
            self.pool.share(block)
        taken = self.pool.allocate(num_new, salt)
        assert taken is not None  # checked above
        new_blocks, to_zero = taken
        if seq is None:
            seq = self._seqs[pid] = _Seq(salt)
        seq.blocks += hit_blocks + new_blocks
        seq.hashes = hit_hashes
        seq.num_committed = len(hit_hashes)
        if hit_hashes:
            seq.family_key = self._family_key(token_ids, salt)
        if self.enable_prefix_cache:
            self.num_query_tokens += len(token_ids)
            self.num_hit_tokens += len(hit_blocks) * self.block_size
        seq.num_tokens = max(seq.num_tokens, covered)
        self.num_zeroed += len(to_zero)
        return Allocation(new_blocks, to_zero, len(hit_blocks) * self.block_size, hit_blocks)

    def _grow(self, seq: _Seq, num_tokens: int, salt: bytes, reserve: int) -> Allocation | None:
        """``allocate`` for a table that has blocks: no prefix lookup, fresh blocks only (the
        planner grows a decoding table by one block every block_size steps)."""
        num_new = max(0, -(-num_tokens // self.block_size) - len(seq.blocks))
        if not self.pool.can_allocate(num_new, reserve):
            return None
        new_blocks: list[int] = []
        to_zero: list[int] = []
        if num_new:
            taken = self.pool.allocate(num_new, salt)
            assert taken is not None  # checked above
            new_blocks, to_zero = taken
            seq.blocks += new_blocks
            self.num_zeroed += len(to_zero)
        seq.num_tokens = max(seq.num_tokens, num_tokens)
        return Allocation(new_blocks, to_zero, 0, [])

    def commit_full_blocks(self, pid: int, token_ids: Sequence[int], num_computed: int) -> int:
        """Cache ``pid``'s blocks that are full and computed, so later processes can hit them.

        Call after a step computed KV for positions [0, num_computed). Each block is committed
        once. Alone in its family, a block is cached without hashing (see the module docstring)
        and ``token_ids`` is kept to hash it later: the committed tokens must never change
        (a process's prompt and sampled tokens do not).

        Returns:
            How many blocks were newly cached (a block whose hash another block already holds
            is not cached twice).

        Raises:
            ValueError, changing nothing: ``pid`` is not resident, or a block is cached under
                a hash of other tokens.
        """
        seq = self._resident(pid)
        if not self.enable_prefix_cache:
            return 0
        size = self.block_size
        num_full = min(num_computed, len(token_ids), len(seq.blocks) * size) // size
        first = seq.num_committed
        if first >= num_full:
            return 0
        key = seq.family_key or self._family_key(token_ids, seq.salt)
        family = self.pool.family(key)
        blocks = seq.blocks[first:num_full]
        if family is None or family.chain is seq:
            # Alone in its family: the common case (prompts that share no prefix).
            num_cached = self.pool.cache_lazily(blocks, key, seq)
            if num_cached is not None:
                seq.family_key, seq.num_committed, seq.tokens = key, num_full, token_ids
                return num_cached
            # Shared blocks (a fork before any commit): cached by hash, like a family's second
            # sequence, so that a copy-on-write of one cannot lose it.
        self._hash_family(family)  # another chain's blocks, or its own earlier ones: hashed on from here
        assert len(seq.hashes) == first, "a sequence hashes on from its last hashed block"
        tokens = token_ids[first * size : num_full * size]  # one slice: token_ids may be a view
        hashes = hash_blocks(seq.hashes[-1] if seq.hashes else None, tokens, size, seq.salt)
        num_cached = self.pool.cache_hashed(blocks, hashes, key)
        seq.family_key, seq.num_committed = key, num_full
        seq.hashes += hashes
        return num_cached

    def fork(self, parent_pid: int, child_pids: list[int]) -> None:
        """Give each child a table sharing all of the parent's blocks (copy-on-write).

        Children inherit the salt, the token count and the committed hashes. Needs no free
        block, so it cannot fail for lack of memory. Raises ValueError if the parent is not
        resident or a child already has KV state.
        """
        parent = self._resident(parent_pid)
        if len(set(child_pids)) != len(child_pids) or any(c in self._seqs for c in child_pids):
            raise ValueError("fork: a child pid already has KV state or is repeated")
        self._hash_own_family(parent)  # its family gets more sequences
        for child in child_pids:
            self._seqs[child] = _Seq(parent.salt, list(parent.blocks), num_tokens=parent.num_tokens,
                                     hashes=list(parent.hashes), num_committed=parent.num_committed,
                                     family_key=parent.family_key)
            for block in parent.blocks:
                self.pool.share(block)

    def prepare_write(self, pid: int, start: int, end: int) -> list[tuple[int, int]] | None:
        """Make positions [start, end) of ``pid``'s table writable: copy shared blocks first.

        Every block overlapping the range that another table also holds (ref > 1) is replaced
        in ``pid``'s table by a fresh copy; the last holder writes in place. The copy overwrites
        every slot, so copies are never zeroed. Call after ``allocate`` covered ``end``.

        Returns:
            (src, dst) pairs for the driver's copy_blocks (empty if nothing is shared), or
            None, changing nothing, if too few blocks are free (the table's growth by an
            earlier ``allocate`` stays; calling again after freeing memory is safe).
        """
        seq = self._resident(pid)
        if end > len(seq.blocks) * self.block_size or start < 0:
            raise ValueError(f"positions [{start}, {end}) outside pid {pid}'s table")
        if end <= start:
            return []
        indices = range(start // self.block_size, (end - 1) // self.block_size + 1)
        shared = [i for i in indices if self.pool.ref_count(seq.blocks[i]) > 1]
        if not shared:
            return []  # the common case, every step of every decode: nothing to copy
        taken = self.pool.allocate(len(shared), seq.salt)
        if taken is None:
            return None
        pairs = []
        for i, dst in zip(shared, taken[0], strict=True):
            src = seq.blocks[i]
            seq.blocks[i] = dst
            self.pool.release([src])  # others still hold it: ref stays >= 1
            pairs.append((src, dst))
        self.num_cow_copies += len(pairs)
        return pairs

    def prepare_append(self, pid: int, position: int) -> list[tuple[int, int]] | None:
        """``prepare_write`` for the single position a decode step writes."""
        return self.prepare_write(pid, position, position + 1)

    def free(self, pid: int) -> int:
        """Release ``pid``'s blocks and swap slots and forget it (unknown pids: no-op).

        Blocks go back last-first, so a freed sequence's tail is evicted before its head (the
        head is the part other prompts are likeliest to share).

        Returns:
            How many blocks became free (blocks other tables still hold do not count).
        """
        seq = self._seqs.pop(pid, None)
        if seq is None:
            return 0
        # seq.blocks stays as it is: if seq is a lazy chain, hashing its family later reads it.
        before = self.pool.num_free
        self.pool.release(reversed(seq.blocks))
        if seq.slots is not None:
            self.swap.release(seq.slots)
        return self.pool.num_free - before

    # -- swap ------------------------------------------------------------------------------

    def swap_out(self, pid: int) -> list[tuple[int, int]] | None:
        """Move ``pid``'s KV to host swap slots, one slot per table entry.

        Every block is copied, shared ones too: a shared block (ref > 1) stays on the device for
        its other holders, who may write it in place once they are its last holder, so the
        swapped process needs its own copy. ``pid`` drops its reference to every block; freed
        cached blocks stay evictable (a later prefix hit may still use them).

        Returns:
            (device_block, swap_slot) pairs in table order for the driver's swap_out, which
            must run before any of those blocks is reused; or None, changing nothing, if the
            swap space has too few free slots.
        """
        seq = self._resident(pid)
        slots = self.swap.allocate(len(seq.blocks))
        if slots is None:
            return None
        self._hash_own_family(seq)  # swap_in re-caches its blocks by hash
        pairs = list(zip(seq.blocks, slots, strict=True))
        self.pool.release(reversed(seq.blocks))
        seq.blocks, seq.slots = [], slots
        self.num_swapped_out += len(pairs)
        return pairs

    def swap_in(self, pid: int, *, reserve: int = 0) -> list[tuple[int, int]] | None:
        """Bring swapped-out ``pid`` back into fresh device blocks.

        The copy overwrites whole blocks, so nothing is zeroed. Blocks whose hash (from before
        the swap) is no longer cached are cached again: they hold the same KV once the driver's
        swap_in ran, which must happen before the next step.

        Returns:
            (swap_slot, device_block) pairs in table order for the driver's swap_in, or None,
            changing nothing, if fewer than len(slots) + reserve blocks are free.
        """
        seq = self._seqs.get(pid)
        if seq is None or seq.slots is None:
            raise ValueError(f"pid {pid} is not swapped out")
        if not self.pool.can_allocate(len(seq.slots), reserve):
            return None
        taken = self.pool.allocate(len(seq.slots), seq.salt)
        assert taken is not None  # checked above
        pairs = list(zip(seq.slots, taken[0], strict=True))
        self.swap.release(seq.slots)
        seq.blocks, seq.slots = taken[0], None
        if self.enable_prefix_cache and seq.hashes:
            assert seq.family_key is not None  # it had a full block to hash
            self._hash_family(self.pool.family(seq.family_key))
            self.pool.cache_hashed(seq.blocks[: len(seq.hashes)], seq.hashes, seq.family_key)
        self.num_swapped_in += len(pairs)
        return pairs

    def lose(self, pid: int) -> int:
        """``pid``'s KV contents are lost (a swap-in failed): uncache and free its blocks.

        Its blocks were cached again by ``swap_in`` on the promise of the copy; left cached,
        a later prompt with the same prefix would read garbage. Returns blocks freed.
        """
        seq = self._seqs.get(pid)
        if seq is not None:
            for block in seq.blocks:
                if self.pool.ref_count(block) == 1:  # shared blocks were never swapped: they are sound
                    self.pool.uncache(block)
        return self.free(pid)

    def reset(self) -> None:
        """The driver restarted: every block's contents are gone. Forget all tables and swap.

        Swap contents lived in the dead driver too (it keeps host copies), so swapped-out
        processes must recompute like everyone else. Counters are kept.
        """
        self.pool.reset()
        self.swap = SwapSpace(self.swap.num_slots)
        self._seqs.clear()

    # -- figures and checks ------------------------------------------------------------------

    def table_fill(self) -> tuple[int, int]:
        """(token slots of all resident block tables, tokens they hold), in O(processes).

        A cheap utilization figure for frequent sampling; a block shared by several tables
        counts once per table (``meminfo``'s fragmentation counts it once, at O(blocks) cost).
        """
        slots = tokens = 0
        for seq in self._seqs.values():
            capacity = len(seq.blocks) * self.block_size
            slots += capacity
            tokens += min(seq.num_tokens, capacity)
        return slots, tokens

    def meminfo(self) -> dict[str, Any]:
        """Memory figures of this device, like /proc/meminfo.

        Keys: blocks_total, blocks_used (held by a table), blocks_cached (free but holding a
        cached block), blocks_free (empty), blocks_shared (ref > 1), swap_used, swap_total,
        utilization (used / total), fragmentation (fraction of the used blocks' token slots
        holding no token, a shared block counted once), prefix_query_tokens,
        prefix_hit_tokens, prefix_hit_rate (hits / queries, in tokens; 0.0 before any query),
        evictions, cow_copies, zeroed_blocks, swapped_out_blocks, swapped_in_blocks.
        """
        pool = self.pool
        fill: dict[int, int] = {}  # used block -> tokens it holds, per its fullest holder
        for seq in self._seqs.values():
            for i, block in enumerate(seq.blocks):
                held = min(self.block_size, max(0, seq.num_tokens - i * self.block_size))
                fill[block] = max(fill.get(block, 0), held)
        slots = pool.num_used * self.block_size
        return {
            "blocks_total": pool.num_blocks,
            "blocks_used": pool.num_used,
            "blocks_cached": pool.num_evictable,
            "blocks_free": pool.num_free - pool.num_evictable,
            "blocks_shared": sum(1 for b in fill if pool.ref_count(b) > 1),
            "swap_used": self.swap.num_used,
            "swap_total": self.swap.num_slots,
            "utilization": pool.num_used / pool.num_blocks,
            "fragmentation": 1 - sum(fill.values()) / slots if slots else 0.0,
            "prefix_query_tokens": self.num_query_tokens,
            "prefix_hit_tokens": self.num_hit_tokens,
            "prefix_hit_rate": self.num_hit_tokens / self.num_query_tokens if self.num_query_tokens else 0.0,
            "evictions": pool.num_evictions,
            "cow_copies": self.num_cow_copies,
            "zeroed_blocks": self.num_zeroed,
            "swapped_out_blocks": self.num_swapped_out,
            "swapped_in_blocks": self.num_swapped_in,
        }

    def check_invariants(self) -> None:
        """Raise AssertionError unless the tables, the pool and the swap space agree."""
        self.pool.check_invariants()
        self.swap.check_invariants()
        refs = [0] * self.pool.num_blocks
        slots: list[int] = []
        for pid, seq in self._seqs.items():
            assert len(set(seq.blocks)) == len(seq.blocks), f"pid {pid} holds a block twice"
            assert seq.slots is None or not seq.blocks, f"swapped pid {pid} holds device blocks"
            assert len(seq.hashes) <= seq.num_committed <= len(seq.blocks or seq.slots or []), f"pid {pid}: stray hashes"
            for block in seq.blocks:
                refs[block] += 1
            slots += seq.slots or []
        for block, count in enumerate(refs):
            assert self.pool.ref_count(block) == count, f"block {block}: ref != holders"
        assert len(slots) == len(set(slots)), "a swap slot is owned twice"
        for pid, seq in self._seqs.items():
            family = self.pool.family(seq.family_key) if seq.family_key is not None else None
            if family is None or family.chain is not seq:  # not a lazy chain: hashed as far as committed
                assert len(seq.hashes) == seq.num_committed and not seq.tokens, f"pid {pid}: unhashed blocks"
        for family in self.pool.lazy_families():
            # A lazy chain's cached blocks are its own, at the table positions it committed.
            seq = family.chain
            assert isinstance(seq, _Seq) and seq.family_key == family.key, "a lazy family's chain"
            own = set(seq.blocks[len(seq.hashes) : seq.num_committed])
            for block in self.pool.family_blocks(family):
                assert block in own and self.pool.ref_count(block) <= 1, f"block {block}: not its chain's alone"
        assert set(slots) == self.swap.used_slots(), "swap slots and owners disagree"

"""The KV block pool of one device (reference counts, prefix-cache map, LRU eviction) and the
host swap space.

Every block is in exactly one of three sets::

    used       ref >= 1                 in some block table; never handed out again
    evictable  ref == 0, cached         freed, but still holds a full cached block that a later
                                        prefix hit may revive; LRU order, least recent first
    empty      ref == 0, not cached     holds nothing anyone can find; FIFO order

``allocate`` takes empty blocks first and only then evicts the least recently freed cached
block, so a cached block survives until its slot is really needed. ``num_free`` counts both
empty and evictable blocks: that is what an allocation can get.

The pool knows nothing of processes: the KVCacheManager (kv_manager.py) owns the tables and
calls ``allocate``/``share``/``release``. Running out of blocks is a return value (None).

Cached blocks are grouped in families (``PrefixFamily``): those whose sequences begin with the
same first block of the same tenant. Only blocks of one family can hold the same prefix, so a
family that only one sequence ever cached into (most of them, unless prompts share prefixes)
needs no hashes at all: its blocks are cached *lazily*, under the family and without a hash,
until the manager hashes them (``hash_family``; kv_manager.py says when). Eviction, reuse and
the LRU order are the same for lazily and eagerly cached blocks, so hashing late changes no
decision.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Hashable, Iterable

from .kv_hash import BlockHash


class PrefixFamily:
    """The cached blocks whose sequences share one first block of one tenant (see the module
    docstring). A family exists while it has a cached block."""

    __slots__ = ("key", "num_cached", "chain")

    def __init__(self, key: Hashable, chain: object | None) -> None:
        self.key = key  # the manager's name for (tenant, first block's tokens)
        self.num_cached = 0  # its blocks that are cached (used or evictable)
        # The one sequence whose blocks it caches without hashes (lazily), or None once every
        # cached block of the family is hashed. Opaque to the pool: the manager's state.
        self.chain = chain


class BlockPool:
    """Reference-counted fixed-size blocks of one device, with a hash -> block cache map."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError("num_blocks must be positive")
        self.num_blocks = num_blocks
        self.reset()

    def reset(self) -> None:
        """Forget everything: every block empty and never owned (the driver restarted with
        fresh, zeroed storage)."""
        n = self.num_blocks
        self._ref = [0] * n  # holders (block-table entries) of each block
        self._block_family: list[PrefixFamily | None] = [None] * n  # set iff the block is cached
        self._hash: list[BlockHash | None] = [None] * n  # set iff it is cached and hashed
        # The salt of the tenant whose KV the block may still hold; None if it never held any
        # since the driver allocated (zeroed) its storage. Drives the zeroing rule.
        self._owner: list[bytes | None] = [None] * n
        self._empty: deque[int] = deque(range(n))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # first = least recently freed
        self._cached: dict[BlockHash, int] = {}
        self._family_by_key: dict[Hashable, PrefixFamily] = {}  # key -> the family, while it caches a block
        # Invariant: _cached[h] == b  <=>  _hash[b] == h  (a bijection; duplicates never cached)
        # Invariant: _hash[b] set  =>  _family[b] set; lazily cached blocks have a family, no hash
        # Invariant: _empty, _evictable and {b : _ref[b] > 0} partition range(num_blocks).
        self.num_evictions = 0  # cached blocks dropped to make room, since creation
        # Used blocks (ref > 0) per owner: a tenant's distinct blocks, shared ones once (quotas).
        self._used_by: Counter[bytes | None] = Counter()

    # -- queries ---------------------------------------------------------------------------

    def used_by(self, owner: bytes) -> int:
        """Blocks in use whose owner is ``owner`` (a tenant's salt), each counted once."""
        return self._used_by[owner]

    @property
    def num_free(self) -> int:
        """Blocks an allocation can get: empty plus evictable."""
        return len(self._empty) + len(self._evictable)

    @property
    def num_evictable(self) -> int:
        """Freed blocks that still hold a cached full block."""
        return len(self._evictable)

    @property
    def num_used(self) -> int:
        """Blocks held by at least one table."""
        return self.num_blocks - self.num_free

    def ref_count(self, block: int) -> int:
        """How many block-table entries hold ``block``."""
        return self._ref[block]

    def block_hash(self, block: int) -> BlockHash | None:
        """The hash ``block`` is cached under, or None (not cached, or cached lazily)."""
        return self._hash[block]

    def is_cached(self, block: int) -> bool:
        """Whether ``block`` holds a cached full block (hashed or lazily)."""
        return self._block_family[block] is not None

    def family(self, key: Hashable) -> PrefixFamily | None:
        """The family named ``key``, or None if none of its blocks is cached."""
        return self._family_by_key.get(key)

    def lazy_families(self) -> list[PrefixFamily]:
        """The families whose blocks are cached without hashes."""
        return [f for f in self._family_by_key.values() if f.chain is not None]

    def family_blocks(self, family: PrefixFamily) -> list[int]:
        """The cached blocks of ``family`` (O(blocks): for checks)."""
        return [b for b, f in enumerate(self._block_family) if f is family]

    def owner(self, block: int) -> bytes | None:
        """The salt of the last tenant that held ``block`` (None: never held since reset)."""
        return self._owner[block]

    def lookup(self, block_hash: BlockHash) -> int | None:
        """The cached block holding ``block_hash``, used or evictable; None on a miss."""
        return self._cached.get(block_hash)

    def empty_blocks(self) -> list[int]:
        """Empty blocks in the order ``allocate`` takes them."""
        return list(self._empty)

    def evictable_blocks(self) -> list[int]:
        """Evictable blocks in eviction order (least recently freed first)."""
        return list(self._evictable)

    def cached_items(self) -> dict[BlockHash, int]:
        """A copy of the hash -> block map (lazily cached blocks are not in it)."""
        return dict(self._cached)

    def can_allocate(self, num_blocks: int, reserve: int = 0) -> bool:
        """Whether ``num_blocks`` can be taken and still leave ``reserve`` free afterwards."""
        return num_blocks + reserve <= self.num_free

    # -- mutation --------------------------------------------------------------------------

    def allocate(self, num_blocks: int, owner: bytes) -> tuple[list[int], list[int]] | None:
        """Take ``num_blocks`` blocks (ref 1) for tenant ``owner``, evicting LRU cached ones.

        Returns:
            (blocks, blocks_to_zero), or None (nothing changed) if too few are free.
            ``blocks_to_zero`` lists the taken blocks whose last owner was another tenant: they
            may still hold that tenant's KV. A never-owned block holds zeros (the driver
            allocates its cache zeroed) and a block last owned by ``owner`` holds only that
            tenant's data, so neither is listed.
        """
        empty, evictable = self._empty, self._evictable
        if num_blocks > len(empty) + len(evictable):
            return None
        # Every block of every sequence passes here: whole runs of work per call, no per-block calls.
        blocks = [empty.popleft() for _ in range(min(num_blocks, len(empty)))]
        num_evicted = num_blocks - len(blocks)
        if num_evicted:
            # Drop the least recently freed cached blocks from the cache (``_forget``, inlined:
            # on a full device nearly every block handed out is an evicted one).
            popitem, block_family, hashes = evictable.popitem, self._block_family, self._hash
            cached, family_by_key = self._cached, self._family_by_key
            for _ in range(num_evicted):
                block = popitem(last=False)[0]
                family = block_family[block]  # Invariant: evictable blocks are cached
                block_family[block] = None
                if hashes[block] is not None:
                    del cached[hashes[block]]
                    hashes[block] = None
                family.num_cached -= 1
                if not family.num_cached:
                    del family_by_key[family.key]
                blocks.append(block)
            self.num_evictions += num_evicted
        owners, ref = self._owner, self._ref
        to_zero = [b for b in blocks if owners[b] is not None and owners[b] != owner]
        for block in blocks:
            owners[block] = owner
            ref[block] = 1
        self._used_by[owner] += num_blocks
        return blocks, to_zero

    def share(self, block: int) -> None:
        """Add a holder to ``block``: a used block, or an evictable one a prefix hit revives."""
        if self._ref[block] == 0:
            if block not in self._evictable:
                raise ValueError(f"block {block} is empty: only used or cached blocks can be shared")
            del self._evictable[block]
            self._used_by[self._owner[block]] += 1
        self._ref[block] += 1

    def release(self, blocks: Iterable[int]) -> None:
        """Drop one holder of each block, in order; a block left with none becomes free.

        A freed cached block joins the evictable queue's tail (most recently used), so blocks
        released later are evicted later; a freed uncached one joins the empty queue's tail.
        """
        ref, used_by, owner, block_family = self._ref, self._used_by, self._owner, self._block_family  # every freed block passes here
        for block in blocks:
            count = ref[block]
            if count <= 0:
                raise ValueError(f"block {block} is not in use")
            ref[block] = count - 1
            if count == 1:
                used_by[owner[block]] -= 1
                if block_family[block] is not None:
                    self._evictable[block] = None
                else:
                    self._empty.append(block)

    def cache_hashed(self, blocks: list[int], block_hashes: list[BlockHash], key: Hashable) -> int:
        """Cache used blocks under their hashes, in order, in family ``key``; returns how many
        were newly cached (already cached blocks and duplicates are skipped).

        If another block already holds a hash (two processes computed the same prefix), the
        first stays cached and this one is not: the map stays a bijection.

        Raises:
            ValueError, changing nothing: a block is free, or cached under another prefix (the
                caller passed tokens that differ from those the block was computed from), or
                the family caches lazily (``hash_family`` first).
        """
        ref, hashes, cached, block_family = self._ref, self._hash, self._cached, self._block_family
        family = self._family_by_key.get(key)
        if family is None:
            family = PrefixFamily(key, None)
        elif family.chain is not None:
            raise ValueError("the family caches lazily: hash its blocks first")
        for block, block_hash in zip(blocks, block_hashes, strict=True):  # check all, then change
            if ref[block] == 0:
                raise ValueError(f"block {block} is free")
            if block_family[block] is not None and hashes[block] != block_hash:
                raise ValueError(f"block {block} is cached under another prefix")
        num_cached = 0
        for block, block_hash in zip(blocks, block_hashes, strict=True):
            if block_family[block] is not None or block_hash in cached:
                continue  # cached already, or a duplicate of another cached block
            hashes[block] = block_hash
            cached[block_hash] = block
            block_family[block] = family
            num_cached += 1
        if num_cached:
            family.num_cached += num_cached
            self._family_by_key[key] = family
        return num_cached

    def cache_lazily(self, blocks: list[int], key: Hashable, chain: object) -> int | None:
        """Cache blocks of ``chain``, the one sequence of family ``key``, without hashes;
        returns how many (all of them), or None, changing nothing, if a block is shared (a
        lazily cached block must be its chain's alone: the chain finds it by table position
        when it hashes, and a shared block could be copied away from there on write). The
        family is made if it has no cached block.

        Raises:
            ValueError, changing nothing: a block is free or cached, or another sequence caches
                into the family.
        """
        family = self._family_by_key.get(key)
        if family is not None and family.chain is not chain:
            raise ValueError("another sequence caches into this family")
        ref, block_family = self._ref, self._block_family
        for block in blocks:  # check all, then change
            if ref[block] == 0:
                raise ValueError(f"block {block} is free")
            if block_family[block] is not None:
                raise ValueError(f"block {block} is cached under another prefix")
            if ref[block] > 1:
                return None
        if family is None:
            family = self._family_by_key[key] = PrefixFamily(key, chain)
        for block in blocks:
            block_family[block] = family
        family.num_cached += len(blocks)
        return len(blocks)

    def hash_family(self, family: PrefixFamily, blocks: Iterable[int], block_hashes: Iterable[BlockHash]) -> None:
        """Give a lazy family its hashes: each of ``blocks`` (its chain's committed blocks, in
        order) that is still lazily cached in ``family`` is cached under its hash from now on,
        and the family caches by hash."""
        hashes, cached, block_family = self._hash, self._cached, self._block_family
        for block, block_hash in zip(blocks, block_hashes, strict=True):
            if block_family[block] is family and hashes[block] is None:
                # Only this chain cached into the family, and its prefixes all differ in length.
                assert block_hash not in cached, "a lazily cached block duplicates a hashed one"
                hashes[block] = block_hash
                cached[block_hash] = block
        family.chain = None

    def _forget(self, block: int) -> None:
        """Take ``block`` out of the cache (it is cached). ``allocate`` has an inlined copy for
        evictions: change both together."""
        family = self._block_family[block]
        self._block_family[block] = None
        block_hash = self._hash[block]
        if block_hash is not None:
            del self._cached[block_hash]
            self._hash[block] = None
        family.num_cached -= 1
        if not family.num_cached:
            del self._family_by_key[family.key]

    def uncache(self, block: int) -> None:
        """Take ``block`` out of the prefix cache: its contents cannot be trusted (no-op if uncached)."""
        if self._block_family[block] is None:
            return
        self._forget(block)
        if self._ref[block] == 0:  # evictable: now merely empty
            del self._evictable[block]
            self._empty.append(block)

    def check_invariants(self) -> None:
        """Raise AssertionError unless the partition and the cache bijection hold."""
        empty, evictable = set(self._empty), set(self._evictable)
        used = {b for b in range(self.num_blocks) if self._ref[b] > 0}
        assert len(empty) == len(self._empty), "a block is twice in the empty queue"
        assert not (empty & evictable) and not (used & (empty | evictable)), "sets overlap"
        assert len(empty | evictable | used) == self.num_blocks, "a block is lost"
        assert all(r >= 0 for r in self._ref), "negative reference count"
        assert all(self._block_family[b] is None for b in empty), "an empty block is cached"
        assert all(self._block_family[b] is not None for b in evictable), "an evictable block is uncached"
        for block_hash, block in self._cached.items():
            assert self._hash[block] == block_hash, f"map and block {block} disagree"
        assert sum(h is not None for h in self._hash) == len(self._cached), "stray block hash"
        assert all(f is not None for f, h in zip(self._block_family, self._hash, strict=True) if h is not None), "hashed, no family"
        members = Counter(id(f) for f in self._block_family if f is not None)
        for key, family in self._family_by_key.items():
            assert family.key == key and members.pop(id(family), 0) == family.num_cached > 0, "family count"
        assert not members, "a cached block's family is unknown"
        for block, family in enumerate(self._block_family):
            if family is not None:
                assert (self._hash[block] is None) == (family.chain is not None), f"block {block}: lazy iff unhashed"
        used_by = Counter(self._owner[b] for b in used)
        assert +self._used_by == used_by, f"per-owner use {dict(self._used_by)} != {dict(used_by)}"


class SwapSpace:
    """A fixed number of host-memory slots, each holding one swapped-out block."""

    def __init__(self, num_slots: int) -> None:
        if num_slots < 0:
            raise ValueError("num_slots must be >= 0")
        self.num_slots = num_slots
        self._free: deque[int] = deque(range(num_slots))
        self._used: set[int] = set()
        # Invariant: _free and _used partition range(num_slots).

    @property
    def num_free(self) -> int:
        """Slots not holding a block."""
        return len(self._free)

    @property
    def num_used(self) -> int:
        """Slots holding a block."""
        return len(self._used)

    def allocate(self, num_slots: int) -> list[int] | None:
        """Take ``num_slots`` slots, or return None (no change) if too few are free."""
        if num_slots > len(self._free):
            return None
        slots = [self._free.popleft() for _ in range(num_slots)]
        self._used.update(slots)
        return slots

    def release(self, slots: Iterable[int]) -> None:
        """Return slots to the free queue."""
        for slot in slots:
            self._used.remove(slot)  # KeyError on a double free: a manager bug
            self._free.append(slot)

    def used_slots(self) -> set[int]:
        """A copy of the set of used slots."""
        return set(self._used)

    def check_invariants(self) -> None:
        """Raise AssertionError unless free and used slots partition the space."""
        free = set(self._free)
        assert len(free) == len(self._free), "a slot is twice in the free queue"
        assert not (free & self._used), "a slot is free and used"
        assert free | self._used == set(range(self.num_slots)), "a slot is lost"

"""The KV-cache manager under random workloads, against a fake driver that stores contents.

Each device block and swap slot of the fake driver holds, per token slot, the (salt, token) the
kernel asked it to write. Besides the manager's own invariants, after every rule:
- every block's ref count equals the number of tables holding it; free and used blocks, and
  free and used swap slots, partition their spaces; the hash map agrees with the pool;
- every computed position of every resident process reads back its own token (prefix hits,
  COW copies and swap round trips moved the right data);
- no resident block holds another tenant's data (the zeroing rule is sufficient);
- the manager as the kernel runs it, which hashes a block only once another sequence may share
  it, decides exactly as the same manager made to hash every cached block after every call
  (``LazyAndEager``). Both sides are today's code: what this compares is hashing late against
  hashing at once, not this code against the eager manager it replaced (a differential fuzzer
  did that once, over some 20,000 random call sequences).
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from llmos.kernel.kv_hash import hash_blocks
from llmos.kernel.kv_manager import KVCacheManager

BLOCK_SIZE = 4
NUM_BLOCKS = 12
NUM_SWAP = 6
SALTS = [b"tenant-a", b"tenant-b"]
Slot = tuple[bytes, int] | None  # what one token slot of the fake storage holds


class FakeDriver:
    """Storage for KV 'contents': the kernel's driver calls, applied in the order issued."""

    def __init__(self) -> None:
        self.blocks: list[list[Slot]] = [[None] * BLOCK_SIZE for _ in range(NUM_BLOCKS)]
        self.swap: list[list[Slot]] = [[None] * BLOCK_SIZE for _ in range(NUM_SWAP)]

    def zero(self, blocks: list[int]) -> None:
        for b in blocks:
            self.blocks[b] = [None] * BLOCK_SIZE

    def copy(self, pairs: list[tuple[int, int]]) -> None:
        for src, dst in pairs:
            self.blocks[dst] = list(self.blocks[src])

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        for block, slot in pairs:
            self.swap[slot] = list(self.blocks[block])

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        for slot, block in pairs:
            self.blocks[block] = list(self.swap[slot])


class LazyAndEager:
    """Two managers driven alike: ``lazy`` as the kernel runs it, and ``eager``, whose cached
    blocks are all hashed after every call, as if each block were hashed when committed. Every
    method call goes to both and must return the same; attributes (``pool``) are the lazy one's."""

    def __init__(self) -> None:
        self.lazy = KVCacheManager(NUM_BLOCKS, BLOCK_SIZE, num_swap_blocks=NUM_SWAP)
        self.eager = KVCacheManager(NUM_BLOCKS, BLOCK_SIZE, num_swap_blocks=NUM_SWAP)

    def __getattr__(self, name: str):
        attribute = getattr(self.lazy, name)
        if not callable(attribute):
            return attribute

        def both(*args, **kwargs):
            result = attribute(*args, **kwargs)
            expected = getattr(self.eager, name)(*args, **kwargs)
            self.eager.cached_items()  # hashes every lazily cached block
            assert result == expected, f"{name}: lazy {result!r} != eager {expected!r}"
            return result

        return both


class KVMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.kv = LazyAndEager()
        self.driver = FakeDriver()
        self.tokens: dict[int, list[int]] = {}  # live pid -> its sequence
        self.computed: dict[int, int] = {}  # live pid -> positions whose KV is written
        self.salt: dict[int, bytes] = {}
        self.next_pid = 1

    # -- helpers ---------------------------------------------------------------------------

    def _compute(self, pid: int, end: int) -> bool:
        """Allocate, copy-on-write and 'run a step' writing positions [computed, end)."""
        tokens, salt = self.tokens[pid], self.salt[pid]
        alloc = self.kv.allocate(pid, tokens, end, salt)
        if alloc is None:
            return False
        self.driver.zero(alloc.blocks_to_zero)
        start = self.computed[pid]
        pairs = self.kv.prepare_write(pid, start, end)
        if pairs is None:
            return False
        self.driver.copy(pairs)
        table = self.kv.table(pid)
        for pos in range(start, end):
            self.driver.blocks[table[pos // BLOCK_SIZE]][pos % BLOCK_SIZE] = (salt, tokens[pos])
        self.computed[pid] = end
        self.kv.commit_full_blocks(pid, tokens, end)
        return True

    def _resident(self) -> list[int]:
        return [p for p in self.tokens if p not in self.kv.swapped()]

    # -- rules -----------------------------------------------------------------------------

    @rule(tenant=st.integers(0, 1), prompt=st.lists(st.integers(0, 2), min_size=1, max_size=14))
    def spawn(self, tenant: int, prompt: list[int]) -> None:
        """Admit a process (small alphabet: prompts often share prefixes)."""
        pid, salt = self.next_pid, SALTS[tenant]
        self.next_pid += 1
        alloc = self.kv.allocate(pid, prompt, len(prompt), salt, reserve=1)
        if alloc is None:
            assert self.kv.table(pid) == []
            return
        assert alloc.num_cached_tokens < len(prompt)
        self.driver.zero(alloc.blocks_to_zero)
        self.tokens[pid], self.salt[pid], self.computed[pid] = list(prompt), salt, alloc.num_cached_tokens
        if not self._compute(pid, len(prompt)):
            self.kv.free(pid)  # cannot run: the planner would preempt it
            self._forget(pid)

    @precondition(lambda self: self._resident())
    @rule(data=st.data(), num=st.integers(1, 6))
    def append(self, data: st.DataObject, num: int) -> None:
        """Decode (or continue a prefill chunk): compute ``num`` more positions."""
        pid = data.draw(st.sampled_from(self._resident()))
        tokens = self.tokens[pid]
        while len(tokens) < self.computed[pid] + num:
            tokens.append(data.draw(st.integers(0, 2)))
        self._compute(pid, self.computed[pid] + num)  # may fail: memory is short

    @precondition(lambda self: self._resident())
    @rule(data=st.data(), num=st.integers(1, 3))
    def fork(self, data: st.DataObject, num: int) -> None:
        parent = data.draw(st.sampled_from(self._resident()))
        children = list(range(self.next_pid, self.next_pid + num))
        self.next_pid += num
        self.kv.fork(parent, children)
        for child in children:
            self.tokens[child] = list(self.tokens[parent])
            self.computed[child] = self.computed[parent]
            self.salt[child] = self.salt[parent]

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), lost=st.booleans())
    def free(self, data: st.DataObject, lost: bool) -> None:
        """A process ends, or its KV is lost (a failed swap-in: its blocks are uncached too)."""
        pid = data.draw(st.sampled_from(sorted(self.tokens)))
        (self.kv.lose if lost else self.kv.free)(pid)
        self._forget(pid)

    @precondition(lambda self: self._resident())
    @rule(data=st.data())
    def swap_out(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from(self._resident()))
        before = self.kv.meminfo()
        pairs = self.kv.swap_out(pid)
        if pairs is None:
            assert self.kv.meminfo() == before
        else:
            self.driver.swap_out(pairs)

    @precondition(lambda self: self.kv.swapped())
    @rule(data=st.data())
    def swap_in(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from(self.kv.swapped()))
        pairs = self.kv.swap_in(pid)
        if pairs is None:
            assert pid in self.kv.swapped()
        else:
            self.driver.swap_in(pairs)

    @rule(tenant=st.integers(0, 1), prompt=st.lists(st.integers(0, 2), min_size=1, max_size=14))
    def look_up(self, tenant: int, prompt: list[int]) -> None:
        """Ask what a prompt would find cached (it may hash a lazy family; it decides nothing)."""
        assert self.kv.cached_prefix(prompt, SALTS[tenant]) < len(prompt)

    @rule()
    def driver_restart(self) -> None:
        """The driver restarted: storage zeroed, every table and swap slot forgotten."""
        self.kv.reset()
        self.driver = FakeDriver()
        for pid in list(self.tokens):
            self._forget(pid)

    def _forget(self, pid: int) -> None:
        del self.tokens[pid], self.computed[pid], self.salt[pid]

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def manager_invariants_hold(self) -> None:
        self.kv.check_invariants()

    @invariant()
    def hashing_late_decides_as_hashing_at_once(self) -> None:
        lazy, eager = self.kv.lazy.pool, self.kv.eager.pool
        assert lazy.empty_blocks() == eager.empty_blocks()
        assert lazy.evictable_blocks() == eager.evictable_blocks()
        for block in range(NUM_BLOCKS):
            assert lazy.is_cached(block) == eager.is_cached(block)
            assert lazy.block_hash(block) in (None, eager.block_hash(block))
            assert eager.is_cached(block) == (eager.block_hash(block) is not None)
        for pid in self.tokens:
            assert self.kv.lazy.table(pid) == self.kv.eager.table(pid)

    def teardown(self) -> None:
        if hasattr(self, "kv"):
            assert self.kv.lazy.cached_items() == self.kv.eager.cached_items()

    @invariant()
    def refs_partition_and_hash_map_agree(self) -> None:
        kv, pool = self.kv.eager, self.kv.eager.pool
        holders = [0] * NUM_BLOCKS
        for pid in self.tokens:
            for block in kv.table(pid):
                holders[block] += 1
        assert [pool.ref_count(b) for b in range(NUM_BLOCKS)] == holders
        used = [b for b in range(NUM_BLOCKS) if holders[b]]
        free = pool.empty_blocks() + pool.evictable_blocks()
        assert sorted(used + free) == list(range(NUM_BLOCKS))
        for block_hash, block in pool.cached_items().items():
            assert pool.block_hash(block) == block_hash
        slots = [s for pid in self.tokens for s in kv.swap_slots(pid)]
        assert len(slots) == len(set(slots)) == kv.swap.num_used
        assert set(kv.holders()) | set(kv.swapped()) <= set(self.tokens)

    @invariant()
    def contents_are_right_and_never_another_tenants(self) -> None:
        for pid in self._resident():
            table, salt = self.kv.table(pid), self.salt[pid]
            for pos in range(self.computed[pid]):
                assert self.driver.blocks[table[pos // BLOCK_SIZE]][pos % BLOCK_SIZE] == (salt, self.tokens[pid][pos])
            for block in table:
                assert all(s is None or s[0] == salt for s in self.driver.blocks[block])

    @invariant()
    def cached_blocks_hold_what_their_hash_names(self) -> None:
        # A cached block is full and computed: every slot holds a token of one tenant, and its
        # hash names the prefix its table position says.
        for block in range(NUM_BLOCKS):
            if self.kv.pool.is_cached(block):
                assert all(s is not None for s in self.driver.blocks[block])
        eager = self.kv.eager
        for pid in self._resident():
            table = eager.table(pid)
            full = self.computed[pid] // BLOCK_SIZE
            chain = hash_blocks(None, self.tokens[pid][: full * BLOCK_SIZE], BLOCK_SIZE, self.salt[pid])
            for block, block_hash in zip(table, chain, strict=False):
                assert eager.pool.block_hash(block) in (None, block_hash)


TestKVMachine = KVMachine.TestCase
TestKVMachine.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

"""The KV-cache manager on tiny pools: exact block ids, eviction order, COW, swap, zeroing."""

from __future__ import annotations

import pytest

from llmos.kernel.kv_hash import TenantSalts, hash_block, hash_blocks, iter_block_hashes
from llmos.kernel.kv_manager import KVCacheManager

A = b"tenant-a"
B = b"tenant-b"


def snapshot(kv: KVCacheManager) -> tuple:
    """Everything observable about the manager's state."""
    pids = range(0, 20)
    return (
        {pid: kv.table(pid) for pid in pids},
        {pid: kv.swap_slots(pid) for pid in pids},
        [kv.pool.ref_count(b) for b in range(kv.num_blocks)],
        kv.pool.empty_blocks(),
        kv.pool.evictable_blocks(),
        kv.cached_items(),
        kv.meminfo(),
    )


def computed(kv: KVCacheManager, pid: int, tokens: list[int], salt: bytes = A) -> None:
    """Give ``pid`` the blocks for all of ``tokens`` and commit them, as a prefill step does."""
    assert kv.allocate(pid, tokens, len(tokens), salt) is not None
    kv.commit_full_blocks(pid, tokens, len(tokens))


# -- hashing -------------------------------------------------------------------------------


def test_block_hash_is_deterministic_and_depends_on_every_input():
    h = hash_block(None, [1, 2, 3, 4], A)
    assert h == hash_block(None, (1, 2, 3, 4), A)
    # Pinned: the digest is the same in every run and on every machine (no Python hash()).
    assert h.hex() == "130b6325cf9cd2bf68f31bc1b7eab54a09ca490ff4b2f7b046e07a31a3e64ea6"
    assert h != hash_block(None, [1, 2, 3, 4], B)
    assert h != hash_block(h, [1, 2, 3, 4], A)
    assert h != hash_block(None, [1, 2, 3, 5], A)
    assert hash_block(None, [1], b"") != hash_block(None, [], b"\x01")  # length-prefixed


def test_hash_blocks_equals_hash_block_chained():
    tokens = [7, 0, 31999, 2**40, 5, 5, 5, 5, 1, 2, 3, 4]
    parent = hash_block(None, [9, 9, 9, 9], A)
    chained, expected = parent, []
    for i in range(0, len(tokens), 4):
        chained = hash_block(chained, tokens[i : i + 4], A)
        expected.append(chained)
    assert hash_blocks(parent, tokens, 4, A) == expected
    assert hash_blocks(None, tokens[:4], 4, A) == [hash_block(None, tokens[:4], A)]
    assert hash_blocks(parent, [], 4, A) == []


def test_iter_block_hashes_chains_and_skips_the_partial_block():
    tokens = list(range(10))
    hashes = list(iter_block_hashes(tokens, 4, A))
    assert len(hashes) == 2  # tokens 8, 9 are a partial block
    assert hashes[0] == hash_block(None, tokens[0:4], A)
    assert hashes[1] == hash_block(hashes[0], tokens[4:8], A)
    assert list(iter_block_hashes(tokens, 4, A, parent=hashes[0], start=1)) == hashes[1:]


def test_tenant_salts_are_stable_and_distinct():
    salts = TenantSalts(secret=b"boot")
    assert salts.salt("alice") == salts.salt("alice") == TenantSalts(b"boot").salt("alice")
    assert salts.salt("alice") != salts.salt("bob")
    assert TenantSalts().salt("alice") != TenantSalts().salt("alice")  # a new secret per boot


# -- allocation ----------------------------------------------------------------------------


def test_allocate_hands_out_blocks_in_order_and_grows_tables():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = kv.allocate(1, list(range(10)), 5, A)
    assert a is not None and a.new_blocks == [0, 1] and a.blocks_to_zero == [] and a.num_cached_tokens == 0
    assert kv.allocate(2, [7] * 4, 4, A).new_blocks == [2]
    assert kv.allocate(1, list(range(10)), 8, A).new_blocks == []  # still fits in 2 blocks
    assert kv.allocate(1, list(range(10)), 10, A).new_blocks == [3]
    assert kv.table(1) == [0, 1, 3] and kv.holders() == [1, 2]
    kv.check_invariants()


def test_allocate_returns_none_and_changes_nothing_when_full():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    kv.allocate(1, list(range(12)), 12, A)
    kv.commit_full_blocks(1, list(range(12)), 12)
    kv.allocate(2, list(range(50, 70)), 20, A)
    kv.free(1)  # 3 cached-evictable blocks, 0 empty
    before = snapshot(kv)
    # 13 tokens whose first two blocks hit: 2 revived + 2 new = 4 blocks, only 3 free.
    assert kv.allocate(3, list(range(12)) + [99, 98, 97, 96, 95], 17, A) is None
    assert kv.allocate(4, [5] * 20, 20, B) is None  # 5 blocks, 3 free
    assert snapshot(kv) == before
    kv.check_invariants()


def test_reserve_keeps_a_watermark_for_running_processes():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    assert kv.allocate(1, [1] * 20, 20, A, reserve=3) is not None  # 5 taken, 3 left
    assert kv.allocate(2, [2] * 4, 4, A, reserve=3) is None  # would leave 2
    assert kv.table(2) == []
    assert kv.can_allocate(1, reserve=2) and not kv.can_allocate(2, reserve=2)
    assert kv.allocate(2, [2] * 4, 4, A, reserve=2).new_blocks == [5]
    assert kv.num_free_blocks == 2


# -- prefix cache --------------------------------------------------------------------------


def test_prefix_hits_within_a_tenant_share_blocks():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    prompt = list(range(100, 113))  # 13 tokens: 3 full blocks and 1 token
    assert kv.allocate(1, prompt, 13, A).new_blocks == [0, 1, 2, 3]
    assert kv.commit_full_blocks(1, prompt, 13) == 3
    assert kv.commit_full_blocks(1, prompt, 13) == 0  # idempotent
    a = kv.allocate(2, prompt, 13, A)
    assert (a.cached_blocks, a.num_cached_tokens, a.new_blocks) == ([0, 1, 2], 12, [4])
    assert [kv.pool.ref_count(b) for b in range(5)] == [2, 2, 2, 1, 1]
    # A 12-token prompt: its last token must be computed for logits, so block 2 is not hit.
    a = kv.allocate(3, prompt[:12], 12, A)
    assert (a.cached_blocks, a.num_cached_tokens, a.new_blocks) == ([0, 1], 8, [5])
    assert kv.cached_prefix(prompt, A) == 12
    info = kv.meminfo()
    assert (info["prefix_query_tokens"], info["prefix_hit_tokens"]) == (38, 20)
    kv.check_invariants()


def test_no_prefix_hits_across_tenants_even_for_identical_tokens():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    prompt = list(range(9))
    kv.allocate(1, prompt, 9, A)
    kv.commit_full_blocks(1, prompt, 9)
    assert kv.cached_prefix(prompt, B) == 0
    a = kv.allocate(2, prompt, 9, B)
    assert (a.num_cached_tokens, a.new_blocks) == (0, [3, 4, 5])
    assert kv.commit_full_blocks(2, prompt, 9) == 2  # cached separately, under B's hashes
    assert len(kv.cached_items()) == 4


def test_duplicate_prefix_computed_twice_is_cached_once():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    prompt = list(range(5))
    kv.allocate(1, prompt, 5, A)
    kv.allocate(2, prompt, 5, A)  # nothing committed yet: no hit, computes its own copy
    assert kv.commit_full_blocks(1, prompt, 5) == 1
    assert kv.commit_full_blocks(2, prompt, 5) == 0
    assert kv.cached_items() == {hash_block(None, prompt[:4], A): 0}


def test_a_sequence_alone_in_its_family_caches_without_hashing_until_another_may_share():
    kv = KVCacheManager(num_blocks=12, block_size=4)
    prompt = list(range(13))
    kv.allocate(1, prompt, 13, A)
    assert kv.commit_full_blocks(1, prompt, 13) == 3
    # Cached, but no blake2b yet: nobody else begins with block 0's tokens.
    assert [kv.pool.is_cached(b) for b in range(4)] == [True, True, True, False]
    assert [kv.pool.block_hash(b) for b in range(3)] == [None, None, None]
    computed(kv, 2, [99] * 9)  # another family: still nothing hashed
    assert kv.pool.block_hash(0) is None and len(kv.pool.lazy_families()) == 2
    # Tenant B's identical tokens are another family: they hash nothing either.
    assert kv.cached_prefix(prompt, B) == 0 and kv.pool.block_hash(0) is None
    # A lookup that begins with the same block hashes the chain, then hits as ever.
    assert kv.cached_prefix(prompt[:10], A) == 8
    assert [kv.pool.block_hash(b) for b in range(3)] == hash_blocks(None, prompt[:12], 4, A)
    assert len(kv.pool.lazy_families()) == 1
    kv.check_invariants()


def test_a_second_sequence_committing_the_same_prefix_hashes_the_first():
    kv = KVCacheManager(num_blocks=12, block_size=4)
    prompt, other = list(range(9)), list(range(4)) + [50, 51, 52, 53, 54]
    kv.allocate(2, other, 9, A)  # nothing cached yet: computes its own copy of block 0
    computed(kv, 1, prompt)
    assert kv.pool.block_hash(4) is None
    # Pid 2 shares block 0's tokens: pid 1's blocks are hashed, pid 2's block 0 is a duplicate
    # (not cached) and its block 1, a different prefix, is cached under its hash.
    assert kv.commit_full_blocks(2, other, 9) == 1
    assert kv.pool.block_hash(3) == hash_block(None, prompt[:4], A)
    assert kv.pool.block_hash(4) == hash_blocks(None, prompt[:8], 4, A)[1]
    assert not kv.pool.is_cached(0) and kv.pool.block_hash(1) is not None
    assert kv.pool.lazy_families() == []
    kv.check_invariants()


def test_a_family_ends_with_its_last_cached_block():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    prompt = list(range(12))
    computed(kv, 1, prompt)
    kv.free(1)  # three cached blocks, evictable: the family and its tokens stay
    assert len(kv.pool.lazy_families()) == 1
    kv.allocate(2, [7] * 16, 16, A)  # evicts all three
    assert kv.pool.lazy_families() == [] and kv.cached_prefix(prompt, A) == 0
    kv.check_invariants()


def test_blocks_shared_by_a_fork_before_any_commit_are_cached_by_hash():
    # The child commits blocks it shares with its parent; a copy-on-write of one must not lose
    # the cached original (a lazily cached block is found by its table position).
    kv = KVCacheManager(num_blocks=8, block_size=2)
    tokens = [1, 2, 3, 4, 5]
    kv.allocate(1, tokens, 5, A)
    kv.fork(1, [2])
    assert kv.commit_full_blocks(2, tokens, 4) == 2
    assert kv.pool.block_hash(0) == hash_block(None, [1, 2], A)
    assert kv.prepare_write(2, 0, 2) == [(0, 3)]
    assert kv.cached_prefix(tokens, A) == 4
    a = kv.allocate(3, tokens, 5, A)
    assert (a.cached_blocks, a.new_blocks) == ([0, 1], [4])
    kv.check_invariants()


def test_a_commit_that_contradicts_the_cache_raises_and_changes_nothing():
    kv = KVCacheManager(num_blocks=6, block_size=2)
    kv.allocate(1, [1, 1, 5, 5, 7], 5, A)
    kv.fork(1, [2])
    kv.commit_full_blocks(1, [1, 1, 5, 5, 7], 2)
    before = snapshot(kv)
    with pytest.raises(ValueError, match="cached under another prefix"):
        kv.commit_full_blocks(2, [2, 2, 6, 6, 7], 4)  # other tokens than its blocks hold
    assert snapshot(kv) == before
    kv.check_invariants()
    assert kv.commit_full_blocks(2, [1, 1, 5, 5, 7], 4) == 1  # its true tokens still commit
    kv.check_invariants()


def test_cached_blocks_are_evicted_lru_tail_of_a_sequence_first():
    kv = KVCacheManager(num_blocks=6, block_size=4)
    p1, p2, p3 = list(range(8)), list(range(10, 18)), list(range(20, 32))
    for pid, prompt in ((1, p1), (2, p2)):
        kv.allocate(pid, prompt, 8, A)
        kv.commit_full_blocks(pid, prompt, 8)
    assert kv.table(1) == [0, 1] and kv.table(2) == [2, 3]
    kv.free(1)
    kv.free(2)
    assert kv.pool.evictable_blocks() == [1, 0, 3, 2]  # each table released last block first
    assert kv.pool.empty_blocks() == [4, 5]
    # Empty blocks go first; then the least recently freed cached block (p1's tail) is evicted.
    assert kv.allocate(3, p3, 12, A).new_blocks == [4, 5, 1]
    assert kv.pool.evictable_blocks() == [0, 3, 2] and kv.meminfo()["evictions"] == 1
    # p1's head survives: a hit revives block 0; two more blocks evict 3 then 2.
    a = kv.allocate(4, p1 + [9], 9, A)
    assert (a.cached_blocks, a.new_blocks) == ([0], [3, 2])
    assert kv.pool.evictable_blocks() == [] and kv.meminfo()["evictions"] == 3
    assert kv.cached_prefix(p2 + [0], A) == 0  # p2 is gone from the cache
    kv.check_invariants()


def test_a_revived_block_becomes_most_recently_used():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    for pid, start in ((1, 0), (2, 10)):
        prompt = list(range(start, start + 4))
        kv.allocate(pid, prompt, 4, A)
        kv.commit_full_blocks(pid, prompt, 4)
        kv.free(pid)
    assert kv.pool.evictable_blocks() == [0, 1]
    kv.allocate(3, [0, 1, 2, 3, 4], 5, A)  # hits block 0, takes empty block 2
    kv.free(3)
    assert kv.pool.evictable_blocks() == [1, 0]


# -- zeroing -------------------------------------------------------------------------------


def test_zeroing_rule_only_for_blocks_last_owned_by_another_tenant():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    assert kv.allocate(1, [1] * 8, 8, A).blocks_to_zero == []  # never owned: driver zeroed it
    kv.free(1)
    assert kv.pool.empty_blocks() == [2, 3, 1, 0]
    a = kv.allocate(2, [2] * 16, 16, B)
    assert (a.new_blocks, a.blocks_to_zero) == ([2, 3, 1, 0], [1, 0])
    kv.free(2)
    assert kv.allocate(3, [3] * 4, 4, B).blocks_to_zero == []  # block 0: B's own data
    a = kv.allocate(4, [4] * 6, 6, A)
    assert (a.new_blocks, a.blocks_to_zero) == ([1, 3], [1, 3])
    # A copy-on-write destination is overwritten whole by the copy: never zeroed.
    kv.fork(4, [5])
    assert kv.prepare_append(5, 6) == [(3, 2)]
    assert kv.pool.owner(2) == A and kv.meminfo()["zeroed_blocks"] == 4


# -- fork and copy-on-write ----------------------------------------------------------------


def test_fork_shares_blocks_and_writers_copy_until_the_last_holder():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    prompt = list(range(10))
    kv.allocate(1, prompt, 10, A)
    kv.commit_full_blocks(1, prompt, 10)
    kv.fork(1, [2, 3])
    assert kv.table(2) == kv.table(3) == [0, 1, 2]
    assert [kv.pool.ref_count(b) for b in range(3)] == [3, 3, 3]
    assert kv.prepare_append(2, 10) == [(2, 3)] and kv.table(2) == [0, 1, 3]
    assert kv.prepare_append(3, 10) == [(2, 4)] and kv.table(3) == [0, 1, 4]
    assert kv.prepare_append(1, 10) == []  # the last holder writes in place
    assert kv.prepare_append(2, 11) == []  # its own copy now
    assert kv.allocate(2, prompt + [7, 7, 7], 13, A).new_blocks == [5]
    assert kv.meminfo()["blocks_shared"] == 2 and kv.meminfo()["cow_copies"] == 2
    with pytest.raises(ValueError):
        kv.fork(1, [2])  # 2 already has a table
    assert kv.free(1) == 1  # blocks 0 and 1 are still held by 2 and 3
    assert [kv.pool.ref_count(b) for b in range(3)] == [2, 2, 0]
    assert kv.pool.empty_blocks()[-1] == 2  # uncached partial block: straight to empty
    kv.check_invariants()


def test_prepare_write_returns_none_and_changes_nothing_without_a_free_block():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    kv.allocate(1, list(range(6)), 6, A)
    kv.fork(1, [2])
    kv.allocate(3, [9] * 8, 8, A)
    before = snapshot(kv)
    assert kv.prepare_append(2, 6) is None
    assert snapshot(kv) == before
    kv.free(3)
    assert kv.prepare_write(2, 4, 8) == [(1, 3)]
    with pytest.raises(ValueError):
        kv.prepare_append(2, 8)  # outside the table: allocate first


@pytest.mark.parametrize("prompt_len", [512, 510])
def test_fork_of_eight_children_shares_the_prompt(prompt_len):
    kv = KVCacheManager(num_blocks=128, block_size=16)
    prompt = [i % 251 for i in range(prompt_len)]
    kv.allocate(1, prompt, prompt_len, A)
    kv.commit_full_blocks(1, prompt, prompt_len)
    prompt_blocks = kv.blocks_for(prompt_len)
    children = list(range(2, 10))
    kv.fork(1, children)
    own = 0  # blocks the children got for themselves: growth and COW copies
    for child in children:
        tokens = list(prompt)
        for step in range(20):
            position = len(tokens)
            tokens.append(child * 100 + step)
            own += len(kv.allocate(child, tokens, position + 1, A).new_blocks)
            own += len(kv.prepare_append(child, position))
            kv.commit_full_blocks(child, tokens, position + 1)
    used = kv.meminfo()["blocks_used"]
    assert used == prompt_blocks + own
    assert used <= 1.2 * prompt_blocks + own
    assert own == 8 * (2 if prompt_len == 512 else 3)
    kv.check_invariants()


# -- swap ----------------------------------------------------------------------------------


def test_swap_out_keeps_shared_blocks_resident_for_the_other_holders():
    kv = KVCacheManager(num_blocks=8, block_size=4, num_swap_blocks=4)
    prompt = list(range(8))
    kv.allocate(1, prompt, 8, A)
    kv.commit_full_blocks(1, prompt, 8)
    kv.fork(1, [2])
    assert kv.allocate(2, prompt + [5, 5], 10, A).new_blocks == [2]
    assert kv.swap_out(2) == [(0, 0), (1, 1), (2, 2)]  # shared blocks copied too
    assert kv.table(2) == [] and kv.swapped() == [2] and kv.swap_slots(2) == [0, 1, 2]
    assert kv.table(1) == [0, 1] and kv.pool.ref_count(0) == 1 and kv.pool.ref_count(2) == 0
    before = snapshot(kv)
    assert kv.swap_out(1) is None  # 2 slots needed, 1 free
    assert snapshot(kv) == before
    assert kv.swap_in(2) == [(0, 3), (1, 4), (2, 5)]
    assert kv.table(2) == [3, 4, 5] and kv.swapped() == [] and kv.meminfo()["swap_used"] == 0
    assert kv.cached_items()[hash_block(None, prompt[:4], A)] == 0  # first copy stays cached
    kv.check_invariants()


def test_swap_round_trip_under_pressure_recaches_evicted_blocks():
    kv = KVCacheManager(num_blocks=4, block_size=4, num_swap_blocks=4)
    prompt = list(range(8))
    kv.allocate(1, prompt, 8, A)
    kv.commit_full_blocks(1, prompt, 8)
    assert kv.swap_out(1) == [(0, 0), (1, 1)]
    assert kv.pool.evictable_blocks() == [1, 0]  # still cached while nobody needs them
    a = kv.allocate(2, [9] * 16, 16, B)
    assert (a.new_blocks, a.blocks_to_zero) == ([2, 3, 1, 0], [1, 0])
    before = snapshot(kv)
    assert kv.swap_in(1) is None
    assert snapshot(kv) == before
    kv.free(2)
    assert kv.swap_in(1, reserve=2) == [(0, 0), (1, 1)]
    assert kv.cached_prefix(prompt + [0], A) == 8  # cached again
    kv.free(1)
    assert kv.meminfo()["swap_used"] == 0 and kv.swapped() == []
    kv.check_invariants()


def test_losing_a_swapped_in_process_uncaches_its_blocks():
    # swap_in re-caches blocks on the promise of the driver's copy; when the copy fails they
    # hold garbage and must not be served to a later prompt with the same prefix.
    kv = KVCacheManager(num_blocks=4, block_size=4, num_swap_blocks=4)
    prompt = list(range(8))
    kv.allocate(1, prompt, 8, A)
    kv.commit_full_blocks(1, prompt, 8)
    kv.swap_out(1)
    kv.allocate(2, [9] * 16, 16, B)  # evicts the cached copies
    kv.free(2)
    kv.swap_in(1)
    assert kv.cached_prefix(prompt + [0], A) == 8
    assert kv.lose(1) == 2
    assert kv.cached_prefix(prompt + [0], A) == 0 and kv.table(1) == []
    kv.check_invariants()


def test_free_of_a_swapped_process_releases_its_slots():
    kv = KVCacheManager(num_blocks=4, block_size=4, num_swap_blocks=2)
    kv.allocate(1, [1] * 5, 5, A)
    kv.swap_out(1)
    assert kv.free(1) == 0 and kv.swap.num_free == 2
    with pytest.raises(ValueError):
        kv.swap_in(1)


# -- figures -------------------------------------------------------------------------------


def test_meminfo_figures():
    kv = KVCacheManager(num_blocks=8, block_size=4, num_swap_blocks=2)
    kv.allocate(1, list(range(6)), 6, A)  # 2 blocks, 6 of 8 slots hold tokens
    kv.commit_full_blocks(1, list(range(6)), 6)
    p2 = [50, 51, 52, 53]
    kv.allocate(2, p2, 4, A)
    kv.commit_full_blocks(2, p2, 4)
    kv.free(2)
    info = kv.meminfo()
    assert info == {
        "blocks_total": 8, "blocks_used": 2, "blocks_cached": 1, "blocks_free": 5,
        "blocks_shared": 0, "swap_used": 0, "swap_total": 2, "utilization": 0.25,
        "fragmentation": 0.25, "prefix_query_tokens": 10, "prefix_hit_tokens": 0,
        "prefix_hit_rate": 0.0, "evictions": 0, "cow_copies": 0, "zeroed_blocks": 0,
        "swapped_out_blocks": 0, "swapped_in_blocks": 0,
    }
    assert kv.allocate(3, p2 + [1], 5, A).num_cached_tokens == 4
    info = kv.meminfo()
    assert info["prefix_hit_rate"] == 4 / 15 and info["blocks_cached"] == 0
    assert info["fragmentation"] == 1 - (6 + 5) / 16  # 4 used blocks, 11 tokens


def test_reset_forgets_everything_and_owners():
    kv = KVCacheManager(num_blocks=4, block_size=4, num_swap_blocks=2)
    kv.allocate(1, [1] * 8, 8, A)
    kv.commit_full_blocks(1, [1] * 8, 8)
    kv.reset()
    assert kv.holders() == [] and kv.num_free_blocks == 4 and kv.cached_items() == {}
    assert kv.allocate(2, [2] * 16, 16, B).blocks_to_zero == []  # fresh driver storage
    kv.check_invariants()

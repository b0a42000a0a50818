"""The block pool: tables, free queue, and the partition invariant."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llmos.kernel.memory import BlockPool


def test_ensure_grows_tables_and_release_returns_blocks():
    pool = BlockPool(num_blocks=8, block_size=4)
    assert pool.ensure(pid=1, num_tokens=5)
    assert pool.table(1) == [0, 1]
    assert pool.ensure(pid=2, num_tokens=4)
    assert pool.table(2) == [2]
    assert pool.ensure(pid=1, num_tokens=8)  # still fits in 2 blocks
    assert pool.table(1) == [0, 1]
    assert not pool.ensure(pid=3, num_tokens=21)  # 6 blocks, only 5 free: no change
    assert pool.table(3) == [] and pool.num_free == 5
    assert pool.release(1) == 2
    assert pool.num_free == 7


@given(st.lists(st.tuples(st.integers(1, 5), st.integers(0, 40), st.booleans()), max_size=60))
def test_free_queue_and_tables_partition_the_pool(ops):
    pool = BlockPool(num_blocks=16, block_size=4)
    for pid, num_tokens, release in ops:
        if release:
            pool.release(pid)
        else:
            before = list(pool.table(pid))
            ok = pool.ensure(pid, num_tokens)
            assert pool.table(pid)[: len(before)] == before  # tables only grow at the end
            if ok:
                assert len(pool.table(pid)) >= pool.blocks_for(num_tokens)
        held = [b for pid in pool.holders() for b in pool.table(pid)]
        assert len(held) == len(set(held))
        assert len(held) + pool.num_free == pool.num_blocks

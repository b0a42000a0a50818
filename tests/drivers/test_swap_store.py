"""The swap store contract: ``HostMemorySwap`` on its own, and the torch driver delegating its
``swap_out``/``swap_in``/``swap_free`` to whatever store it was given."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
from model_fixtures import write_checkpoint

from llmos.drivers.cpu import TorchDriver
from llmos.drivers.swap_store import HostMemorySwap
from llmos.kernel.errors import KernelError


def blocks(n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 4, generator=gen) for _ in range(n)]


# -- HostMemorySwap ----------------------------------------------------------------------------

def test_put_returns_the_bytes_and_take_gives_the_tensors_back_once():
    store = HostMemorySwap()
    tensors = blocks(3)
    assert store.put(7, "alice", tensors) == 3 * 24 * 4
    assert store.count(7) == 3 and len(store) == 1
    taken = store.take(7)
    assert all(a is b for a, b in zip(taken, tensors, strict=True))
    assert len(store) == 0
    with pytest.raises(KernelError) as err:
        store.take(7)
    assert err.value.errno == "ENOENT" and "handle 7" in err.value.message


@pytest.mark.parametrize("op", ["count", "take", "drop"])
def test_an_unknown_handle_is_enoent(op):
    store = HostMemorySwap()
    store.put(1, "alice", blocks(1))
    with pytest.raises(KernelError) as err:
        getattr(store, op)(2)
    assert err.value.errno == "ENOENT"
    assert store.count(1) == 1  # the other handle is untouched


def test_a_handle_in_use_is_eexist_and_keeps_its_blocks():
    store = HostMemorySwap()
    first = blocks(2)
    store.put(1, "alice", first)
    with pytest.raises(KernelError) as err:
        store.put(1, "bob", blocks(1, seed=1))
    assert err.value.errno == "EEXIST"
    assert store.take(1) == first


def test_drop_and_clear_forget_handles():
    store = HostMemorySwap()
    for handle in (1, 2, 3):
        store.put(handle, "alice", blocks(1))
    store.drop(2)
    assert len(store) == 2
    with pytest.raises(KernelError):
        store.drop(2)
    store.clear()
    assert len(store) == 0
    with pytest.raises(KernelError):
        store.take(1)


# -- the driver delegates to its store -----------------------------------------------------------

class RecordingStore(HostMemorySwap):
    """A host store that notes each call the driver makes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, object]] = []

    def put(self, handle: int, tenant: str, tensors: list[torch.Tensor]) -> int:
        self.calls.append(("put", (handle, tenant, len(tensors))))
        return super().put(handle, tenant, tensors)

    def take(self, handle: int) -> list[torch.Tensor]:
        self.calls.append(("take", handle))
        return super().take(handle)

    def drop(self, handle: int) -> None:
        self.calls.append(("drop", handle))
        super().drop(handle)

    def clear(self) -> None:
        self.calls.append(("clear", None))
        super().clear()


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[TorchDriver]:
    write_checkpoint(tmp_path / "tiny")
    driver = TorchDriver("cpu", swap_store=RecordingStore())
    try:
        await driver.do_load_model({"path": str(tmp_path / "tiny")})
        await driver.do_init_kv({"num_blocks": 8, "block_size": 4})
        torch.manual_seed(0)
        kv = driver.engine.kv
        assert kv is not None
        for pool in kv.k + kv.v:
            pool.copy_(torch.randn(pool.shape))  # distinct content in every block
        yield driver
    finally:
        driver.compute.close()


def test_the_default_store_is_host_memory():
    driver = TorchDriver("cpu")
    try:
        assert isinstance(driver.swap_store, HostMemorySwap)
    finally:
        driver.compute.close()


async def test_swap_out_puts_the_blocks_with_their_tenant_and_swap_in_restores_them(driver):
    store = driver.swap_store
    before = driver.engine.swap_out([1, 2])
    reply = await driver.do_swap_out({"blocks": [1, 2], "tenant": "alice"})
    assert store.calls == [("clear", None), ("put", (reply["handle"], "alice", 2))]
    assert reply["bytes"] == sum(t.numel() * t.element_size() for t in before)
    await driver.do_zero_blocks({"blocks": [1, 2]})
    await driver.do_swap_in({"blocks": [5, 6], "handle": reply["handle"]})
    after = driver.engine.swap_out([5, 6])
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert len(store) == 0


async def test_swap_in_of_the_wrong_size_is_einval_and_leaves_the_handle_redeemable(driver):
    reply = await driver.do_swap_out({"blocks": [1, 2], "tenant": "alice"})
    with pytest.raises(KernelError) as err:
        await driver.do_swap_in({"blocks": [5], "handle": reply["handle"]})
    assert err.value.errno == "EINVAL" and "holds 2 blocks" in err.value.message
    await driver.do_swap_in({"blocks": [5, 6], "handle": reply["handle"]})


async def test_unknown_handles_are_enoent_on_swap_in_and_swap_free(driver):
    with pytest.raises(KernelError) as err:
        await driver.do_swap_in({"blocks": [1], "handle": 99})
    assert err.value.errno == "ENOENT"
    with pytest.raises(KernelError) as err:
        await driver.do_swap_free({"handle": 99})
    assert err.value.errno == "ENOENT"


async def test_swap_free_drops_and_init_kv_clears_the_store(driver):
    store = driver.swap_store
    first = (await driver.do_swap_out({"blocks": [0], "tenant": "alice"}))["handle"]
    await driver.do_swap_out({"blocks": [1], "tenant": "bob"})
    await driver.do_swap_free({"handle": first})
    assert ("drop", first) in store.calls and len(store) == 1
    await driver.do_init_kv({"num_blocks": 8, "block_size": 4})
    assert store.calls[-1] == ("clear", None) and len(store) == 0


async def test_swap_out_needs_a_tenant_name(driver):
    with pytest.raises(KernelError) as err:
        await driver.do_swap_out({"blocks": [0], "tenant": 3})
    assert err.value.errno == "EINVAL"

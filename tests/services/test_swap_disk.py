"""KV blocks swapped to disk, encrypted per tenant: a swap file holds no plaintext of the KV
blocks and restores them exactly; with a home directory the system's torch drivers swap there."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from llmos.drivers.swap_store import HostMemorySwap
from llmos.kernel.errors import KernelError
from llmos.kernel.kernel import open_kernel
from llmos.services import swap_disk
from llmos.services.crypto import EncryptedSwapFile, TenantCipher, load_master_key
from llmos.services.swap_disk import EncryptedDiskSwap, device_dir_name
from llmos.userland import libllm
from llmos.userland.system import SystemOptions, build_config, model_device

WINDOW = 32  # bytes: a plaintext run this long found in a file counts as a leak
KV_SHAPE = (2, 2, 4, 2, 8)  # (k/v, layers, block_size, kv heads, head dim), as the engine swaps


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """A tiny model gains nothing from intra-op threads on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def raw_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def leaked_windows(tensors: list[torch.Tensor], data: bytes) -> int:
    """How many WINDOW-byte runs of the tensors' bytes appear anywhere in ``data``."""
    present = {data[i:i + WINDOW] for i in range(len(data) - WINDOW + 1)}
    return sum(raw[i:i + WINDOW] in present for raw in map(raw_bytes, tensors) for i in range(len(raw) - WINDOW + 1))


def swap_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def kv_blocks(n: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(KV_SHAPE, generator=gen).to(dtype) for _ in range(n)]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the store on its own ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_swap_file_holds_no_plaintext_and_restores_the_blocks_exactly(home, dtype):
    store = EncryptedDiskSwap.open(home, "cpu0")
    tensors = kv_blocks(3, dtype)
    assert store.put(1, "alice", tensors) == sum(t.numel() * t.element_size() for t in tensors)
    [path] = swap_files(home / "swap")
    assert path.suffix == ".swap" and "alice" not in str(path)
    assert leaked_windows(tensors, path.read_bytes()) == 0
    restored = store.take(1)
    assert [(t.dtype, t.shape) for t in restored] == [(t.dtype, t.shape) for t in tensors]
    assert all(torch.equal(a, b) for a, b in zip(restored, tensors, strict=True))
    assert swap_files(home / "swap") == []  # taken: the file is gone


@pytest.mark.skipif(os.name != "posix", reason="mode bits")
def test_swap_files_are_0600_in_0700_folders(home):
    store = EncryptedDiskSwap.open(home, "cpu0")
    store.put(1, "alice", kv_blocks(1))
    [path] = swap_files(home / "swap")
    assert mode(path) == 0o600
    folder = path.parent
    while folder != home:
        assert mode(folder) == 0o700, folder
        folder = folder.parent


def test_a_file_edited_on_disk_is_eio_and_the_handle_is_gone(home):
    store = EncryptedDiskSwap.open(home, "cpu0")
    store.put(4, "alice", kv_blocks(2))
    [path] = swap_files(home / "swap")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(KernelError) as err:
        store.take(4)
    assert err.value.errno == "EIO" and "failed authentication" in err.value.message
    assert swap_files(home / "swap") == []
    with pytest.raises(KernelError) as err:
        store.take(4)
    assert err.value.errno == "ENOENT"


def test_another_tenants_key_cannot_read_a_swap_file(home):
    store = EncryptedDiskSwap.open(home, "cpu0")
    store.put(5, "alice", kv_blocks(1))
    cipher = TenantCipher(load_master_key(home)[0])
    alice = EncryptedSwapFile(store.directory, cipher, "alice", 5)
    bob = EncryptedSwapFile(store.directory, cipher, "bob", 5)
    bob.path.parent.mkdir(parents=True)
    bob.path.write_bytes(alice.path.read_bytes())  # bob's file name, alice's ciphertext
    with pytest.raises(KernelError) as err:
        bob.read()
    assert err.value.errno == "EIO"
    assert len(alice.read()) == 1  # the right key still reads it


def test_another_homes_master_key_cannot_read_a_swap_file(home, tmp_path):
    store = EncryptedDiskSwap.open(home, "cpu0")
    store.put(6, "alice", kv_blocks(1))
    stranger = TenantCipher(load_master_key(tmp_path / "other-home")[0])
    with pytest.raises(KernelError) as err:
        EncryptedSwapFile(store.directory, stranger, "alice", 6).read()
    assert err.value.errno == "EIO"


def test_unknown_handles_are_enoent_and_a_used_one_is_eexist(home):
    store = EncryptedDiskSwap.open(home, "cpu0")
    for op in (store.count, store.take, store.drop):
        with pytest.raises(KernelError) as err:
            op(9)
        assert err.value.errno == "ENOENT"
    store.put(1, "alice", kv_blocks(1))
    with pytest.raises(KernelError) as err:
        store.put(1, "alice", kv_blocks(1))
    assert err.value.errno == "EEXIST"
    with pytest.raises(KernelError) as err:
        store.put(2, "", kv_blocks(1))
    assert err.value.errno == "EINVAL"


def test_a_file_removed_behind_the_stores_back_is_eio(home):
    store = EncryptedDiskSwap.open(home, "cpu0")
    store.put(1, "alice", kv_blocks(1))
    swap_files(home / "swap")[0].unlink()
    with pytest.raises(KernelError) as err:
        store.take(1)
    assert err.value.errno == "EIO" and "removed" in err.value.message


def test_drop_and_clear_delete_the_files(home):
    store = EncryptedDiskSwap.open(home, "cpu0")
    for handle, tenant in [(1, "alice"), (2, "bob"), (3, "alice")]:
        store.put(handle, tenant, kv_blocks(1, seed=handle))
    store.drop(2)
    assert len(swap_files(home / "swap")) == 2 and store.count(1) == 1
    store.clear()
    assert swap_files(home / "swap") == [] and len(store) == 0


def test_a_new_instance_starts_empty_and_sweeps_folders_of_gone_processes(home):
    first = EncryptedDiskSwap.open(home, "cpu0")
    first.put(1, "alice", kv_blocks(1))
    device_dir = home / "swap" / "cpu0"
    gone = device_dir / "4194305"  # above Linux's largest pid: no such process
    alive = device_dir / "1"  # init: always there
    for folder in (gone, alive):
        (folder / "t").mkdir(parents=True)
        (folder / "t" / "1.swap").write_bytes(b"old")
    second = EncryptedDiskSwap.open(home, "cpu0")  # the supervisor's restart, same process
    assert len(second) == 0 and swap_files(second.directory) == []
    assert not gone.exists()
    assert alive.exists() == (os.name == "posix")  # another live process's swap is not ours
    with pytest.raises(KernelError):
        second.take(1)


def test_device_names_become_one_safe_folder_name():
    assert device_dir_name("cpu0") == "cpu0"
    assert device_dir_name("cpu0/tiny@2") == "cpu0%2Ftiny@2"
    assert device_dir_name("..") == "%2E."
    with pytest.raises(ValueError):
        device_dir_name("")


# -- wired into the system ---------------------------------------------------------------------

def test_with_a_home_torch_drivers_swap_to_encrypted_disk_and_without_one_to_host_memory(home):
    with_home = build_config(SystemOptions(devices=["cpu", "npu", "sim"], npu="tiny", home=str(home)))
    without = build_config(SystemOptions(devices=["cpu", "npu"], npu="tiny"))
    stores = {}
    for config in (with_home, without):
        for device in config.devices:
            driver = device.driver()
            stores[(config is with_home, device.name)] = type(getattr(driver, "swap_store", None))
            if hasattr(driver, "compute"):
                driver.compute.close()
    assert stores == {
        (True, "cpu0"): EncryptedDiskSwap, (True, "npu0"): EncryptedDiskSwap, (True, "sim0"): type(None),
        (False, "cpu0"): HostMemorySwap, (False, "npu0"): HostMemorySwap,
    }
    assert (home / "swap" / "cpu0").is_dir() and (home / "swap" / "npu0").is_dir()
    loaded = model_device(SystemOptions(), "cpu", "cpu0/tiny@1", "tiny@1", str(home), home=home)
    driver = loaded.driver()
    driver.compute.close()
    assert isinstance(driver.swap_store, EncryptedDiskSwap)
    assert driver.swap_store.directory.parent == home / "swap" / "cpu0%2Ftiny@1"


@pytest.mark.skipif(os.name != "posix", reason="mode bits")
def test_an_exposed_master_key_leaves_swap_in_host_memory(home, caplog):
    load_master_key(home)
    (home / "keys" / "master.key").chmod(0o644)
    driver = build_config(SystemOptions(device="cpu", home=str(home))).devices[0].driver()
    driver.compute.close()
    assert isinstance(driver.swap_store, HostMemorySwap)  # off the disk altogether, never in plaintext
    assert "swaps to host memory" in caplog.text and "accessible by group or others" in caplog.text


class CheckingDiskSwap(EncryptedDiskSwap):
    """The encrypted store, also checking each swap file the moment it is written."""

    puts: list[dict[str, Any]] = []  # one row per put, across instances (the system makes them)

    def put(self, handle: int, tenant: str, tensors: list[Any]) -> int:
        moved = super().put(handle, tenant, tensors)
        path = self._files[handle][0].path
        self.puts.append({"tenant": tenant, "blocks": len(tensors), "mode": mode(path),
                          "leaks": leaked_windows(tensors, path.read_bytes())})
        return moved


PROMPTS = [[(7 * i + j) % 4000 + 3 for j in range(5 + 3 * i)] for i in range(6)]


async def run(options: SystemOptions) -> tuple[list[list[int]], dict[str, Any]]:
    async with open_kernel(build_config(options)) as kernel, libllm.open_client(kernel, tenant="alice") as llm:
        pids = [await llm.spawn(prompt_ids=p, max_tokens=12, temperature=0) for p in PROMPTS]
        outputs = [(await llm.wait(pid)).output_ids for pid in pids]
        return outputs, (await llm.call("meminfo"))["devices"][0]


async def test_a_system_with_a_home_swaps_encrypted_and_changes_no_output(home, monkeypatch):
    monkeypatch.setattr(swap_disk, "EncryptedDiskSwap", CheckingDiskSwap)  # what system.py opens
    monkeypatch.setattr(CheckingDiskSwap, "puts", [])
    common = {"model": "default", "block_size": 4, "max_seqs": 8, "max_batch_tokens": 32, "preemption": "swap"}
    roomy, roomy_info = await run(SystemOptions(kv_blocks=256, **common))
    tight, info = await run(SystemOptions(kv_blocks=10, home=str(home), **common))  # 40 slots for ~150 tokens
    assert roomy_info["swaps"] == 0
    assert info["swaps"] > 0 and info["swap_bytes"] > 0
    assert tight == roomy
    puts = CheckingDiskSwap.puts
    assert len(puts) == info["swaps"]
    assert all(p["tenant"] == "alice" and p["leaks"] == 0 for p in puts), puts
    if os.name == "posix":
        assert {p["mode"] for p in puts} == {0o600}
    assert not list((home / "swap").rglob("*.swap"))  # every process swapped back in and finished


class FullDisk(EncryptedDiskSwap):
    """A swap disk with no space left: every swap-out fails."""

    def put(self, handle: int, tenant: str, tensors: list[Any]) -> int:
        raise KernelError("EIO", "writing the swap file: No space left on device")


class RottingDisk(EncryptedDiskSwap):
    """Swap files damaged at rest: every swap-in fails authentication."""

    def take(self, handle: int) -> list[Any]:
        self.drop(handle)
        raise KernelError("EIO", f"swap file of handle {handle} was altered")


@pytest.mark.parametrize("store", [FullDisk, RottingDisk])
async def test_a_failing_swap_costs_its_process_a_recompute_and_no_output(home, monkeypatch, store):
    monkeypatch.setattr(swap_disk, "EncryptedDiskSwap", store)
    common = {"model": "default", "block_size": 4, "max_seqs": 8, "max_batch_tokens": 32, "preemption": "swap"}
    roomy, _ = await run(SystemOptions(kv_blocks=256, **common))
    tight, info = await run(SystemOptions(kv_blocks=10, home=str(home), **common))
    assert info["preemptions"] > 0
    assert tight == roomy  # nobody ended with EIO; the lost KV was recomputed

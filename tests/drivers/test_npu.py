"""The emulated npu: int8 numerics close to the cpu's, its memory capacity enforced with ENOMEM,
modeled step time apart from the host's wall time, and "emulated" wherever a user looks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import trio

from llmos.drivers.cpu import DEFAULT_MODEL_DIR
from llmos.drivers.npu import PRESETS, Int8Engine, NpuDriver
from llmos.kernel.batch import SamplingParams, SeqChunk, StepBatch
from llmos.kernel.errors import KernelError
from llmos.kernel.kernel import open_kernel
from llmos.userland import libllm
from llmos.userland.system import SystemOptions, build_config

# Python snippets in the default model's domain, chosen before measuring agreement.
PROMPTS = [
    "import os\nimport sys\n\n\ndef main():\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "for i in range(10):\n    print(",
    "        raise ValueError(",
    "from collections import defaultdict\n\n",
]
NUM_NEW = 24


@pytest.fixture(scope="module")
def tiny_engine() -> Int8Engine:
    engine = Int8Engine(PRESETS["tiny"])
    engine.load_model(DEFAULT_MODEL_DIR)
    return engine


def test_weights_that_do_not_fit_are_enomem_and_say_how_much():
    engine = Int8Engine(dataclasses.replace(PRESETS["tiny"], memory_bytes=1 << 20))
    with pytest.raises(KernelError) as err:
        engine.load_model(DEFAULT_MODEL_DIR)
    assert err.value.errno == "ENOMEM"
    assert "need 3.75 MiB" in err.value.message and "has 1.00 MiB" in err.value.message
    assert engine.model is None  # nothing half-loaded


def test_a_kv_pool_that_does_not_fit_is_enomem_and_a_small_one_fits(tiny_engine):
    with pytest.raises(KernelError) as err:
        tiny_engine.init_kv(4096, 16)
    assert err.value.errno == "ENOMEM"
    assert "4096 KV blocks of 16 tokens need 128.00 MiB" in err.value.message
    assert "at most 72 blocks fit" in err.value.message
    assert tiny_engine.init_kv(72, 16)["num_blocks"] == 72
    assert tiny_engine.memory_used() <= PRESETS["tiny"].memory_bytes


async def test_step_reports_modeled_time_apart_from_wall_time():
    driver = NpuDriver("phone")
    try:
        loaded = await driver.do_load_model({"path": str(DEFAULT_MODEL_DIR)})
        await driver.do_init_kv({"num_blocks": 8, "block_size": 16})
        batch = StepBatch([SeqChunk(1, list(range(3, 43)), 0, [0, 1, 2], True, SamplingParams(0.0))], 16)
        reply = await driver.do_step(batch.to_wire())
    finally:
        driver.compute.close()
    assert loaded["modeled_time"] is True  # the kernel lets elapsed_s pass, as for the sim driver
    elapsed, wall = reply["elapsed_s"], reply["wall_s"]
    assert elapsed == pytest.approx(driver.engine.modeled_s(batch))
    assert wall > 0 and elapsed != wall
    # One 40-token prefill on the phone preset is memory-bound: the int8 weights once, the KV
    # read and written, over 60 GB/s, plus the fixed overhead.
    spec, moved = PRESETS["phone"], loaded["weight_bytes"] + 2 * 40 * loaded["kv_bytes_per_token"]
    assert elapsed == pytest.approx(moved / spec.bandwidth_bytes_per_s + spec.step_overhead_s)


async def test_info_and_load_model_say_emulated_int8():
    driver = NpuDriver("tiny")
    try:
        loaded = await driver.do_load_model({"path": str(DEFAULT_MODEL_DIR)})
        info = await driver.do_info({})
    finally:
        driver.compute.close()
    assert loaded["emulated"] is True and loaded["kind"] == "npu" and loaded["spec"] == "tiny"
    assert loaded["weight_bytes"] < loaded["num_params"] * 1.1  # about a byte per weight
    assert info["emulated"] is True and "emulated" in info["device"] and "int8" in info["quantization"]
    assert info["memory_bytes"] == PRESETS["tiny"].memory_bytes


async def test_a_kernel_whose_npu_pool_does_not_fit_fails_to_boot_with_enomem():
    config = build_config(SystemOptions(device="npu", npu="tiny", kv_blocks=4096, block_size=16))
    with trio.fail_after(60), pytest.raises(KernelError) as err:
        async with open_kernel(config):
            pass
    assert err.value.errno == "ENOMEM" and "device npu0" in err.value.message


async def test_greedy_tokens_on_the_npu_agree_with_the_cpu_in_one_kernel():
    config = build_config(SystemOptions(devices=["cpu", "npu"], kv_blocks=64, block_size=16))
    async with open_kernel(config) as kernel, libllm.open_client(kernel) as llm:
        args = {"max_tokens": NUM_NEW, "temperature": 0, "ignore_eos": True}
        cpu = [await llm.spawn(p, device="cpu0", **args) for p in PROMPTS]
        npu = [await llm.spawn(p, model="default-int8", **args) for p in PROMPTS]
        outputs = {pid: (await llm.wait(pid)).output_ids for pid in cpu + npu}
        devices = {d["name"]: d for d in await llm.lsdev()}
        uname = {d["name"]: d for d in (await llm.uname())["devices"]}
    same = sum(a == b for c, n in zip(cpu, npu, strict=True) for a, b in zip(outputs[c], outputs[n], strict=True))
    assert same / (len(PROMPTS) * NUM_NEW) >= 0.95
    assert devices["npu0"]["emulated"] and devices["npu0"]["kind"] == "npu" and devices["npu0"]["spec"] == "phone"
    assert not devices["cpu0"]["emulated"] and devices["cpu0"]["model"] == "default"
    assert devices["npu0"]["memory_bytes"] == PRESETS["phone"].memory_bytes
    assert devices["npu0"]["weight_bytes"] < devices["cpu0"]["weight_bytes"] / 3
    assert uname["npu0"]["emulated"] and not uname["cpu0"]["emulated"]
    assert 0 < devices["npu0"]["busy_s"] and math.isfinite(devices["npu0"]["utilization"])
    # The npu's busy time is modeled (~0.3 ms a step on the phone preset), the cpu's measured.
    assert devices["npu0"]["busy_s"] < devices["cpu0"]["busy_s"]

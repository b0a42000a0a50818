"""The cuda driver: its numerics against the cpu's, where a GPU exists; a clear error where not.

Tolerance, and why: the cuda driver runs in bfloat16, whose 8-bit mantissa rounds each value to
a relative error of up to 2^-8 (0.4%). A 4-layer model accumulates that rounding through each
matmul and norm, so its logits differ from float32 ones by a few percent of their spread. We
require max |cuda - cpu| <= 0.05 * (max - min of the cpu logits) per position, and the greedy
token to agree wherever the cpu's top two logits are further apart than that bound.
"""

from __future__ import annotations

import pytest
import torch

from llmos.drivers.cpu import DEFAULT_MODEL_DIR
from llmos.drivers.cuda import CudaDriver, cuda_available
from llmos.drivers.engine import TorchEngine
from llmos.kernel.errors import KernelError

needs_gpu = pytest.mark.skipif(not cuda_available(), reason="no CUDA device on this machine")
RELATIVE_TOLERANCE = 0.05


def logits_of(device: str, dtype: torch.dtype, ids: list[int]) -> torch.Tensor:
    engine = TorchEngine(device, dtype)
    engine.load_model(str(DEFAULT_MODEL_DIR))
    return engine.forward_dense(ids).float().cpu()  # (T, vocab)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_logits_match_the_cpu_within_half_precision_tolerance(dtype):
    ids = list(range(3, 200, 3))
    cpu = logits_of("cpu", torch.float32, ids)
    gpu = logits_of("cuda", dtype, ids)
    spread = cpu.max(dim=-1).values - cpu.min(dim=-1).values
    error = (gpu - cpu).abs().max(dim=-1).values
    assert (error <= RELATIVE_TOLERANCE * spread).all(), float((error / spread).max())
    top2 = cpu.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * error
    assert (gpu.argmax(-1)[clear] == cpu.argmax(-1)[clear]).all()


async def test_without_a_gpu_the_driver_says_so():
    if cuda_available():
        pytest.skip("this machine has a GPU")
    driver = CudaDriver()
    with pytest.raises(KernelError) as info:
        await driver.do_load_model({})
    assert info.value.errno == "ENOENT" and "no CUDA device" in info.value.message


@needs_gpu
async def test_greedy_continuations_on_cuda_agree_with_the_cpu():
    from llmos.kernel.kernel import open_kernel
    from llmos.userland import libllm
    from llmos.userland.system import SystemOptions, build_config

    prompts = [list(range(5, 40)), list(range(100, 180, 2)), [7] * 30]
    outputs = {}
    for device in ("cpu", "cuda"):
        async with open_kernel(build_config(SystemOptions(device=device, kv_blocks=256))) as kernel, \
                libllm.open_client(kernel) as llm:
            pids = [await llm.spawn(prompt_ids=p, max_tokens=32, temperature=0.0, ignore_eos=True) for p in prompts]
            outputs[device] = [(await llm.wait(pid)).output_ids for pid in pids]
    same = sum(a == b for x, y in zip(outputs["cpu"], outputs["cuda"], strict=True) for a, b in zip(x, y, strict=True))
    assert same >= 0.95 * sum(len(x) for x in outputs["cpu"])

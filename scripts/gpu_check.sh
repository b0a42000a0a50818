#!/bin/sh
# The CUDA checks, for a machine with an NVIDIA GPU: under ten minutes.
#   sh scripts/gpu_check.sh            (after the README's install line)
# Runs the cuda driver's tests (logits within bf16/fp16 tolerance of the cpu's, greedy agreement
# through the kernel) and times the default model on cuda against cpu through the kernel.
set -eu
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
python3 -m pytest -q tests/drivers/test_cuda.py
python3 - <<'PY'
import time, trio
from llmos.kernel.kernel import open_kernel
from llmos.userland import libllm
from llmos.userland.system import SystemOptions, build_config

async def run(device):
    async with open_kernel(build_config(SystemOptions(device=device, kv_blocks=2048))) as kernel, \
            libllm.open_client(kernel) as llm:
        start = time.perf_counter()
        pids = [await llm.spawn(prompt_ids=list(range(3, 3 + 64 + i)), max_tokens=128, ignore_eos=True, seed=i)
                for i in range(64)]
        tokens = sum(len((await llm.wait(pid)).output_ids) for pid in pids)
        return tokens / (time.perf_counter() - start)

cpu, cuda = trio.run(run, "cpu"), trio.run(run, "cuda")
print(f"64 processes x 128 tokens: cpu {cpu:.0f} tok/s, cuda {cuda:.0f} tok/s ({cuda / cpu:.1f}x)")
PY

"""The cuda driver: the cpu driver's executor on a torch CUDA device, in bfloat16 or float16.

Everything but the device string and the default dtype is the cpu driver's (``TorchDriver``):
the same engine, paged attention, sampling and swap. The engine synchronizes the device before
it stops a step's clock, so ``elapsed_s`` covers the kernels, not just their launch. Sampling
runs on the host in float64 (drivers/sampling.py), so equal logits give equal tokens on every
device; logits themselves differ from the cpu's by bf16 rounding (tests/drivers/test_cuda.py).
"""

from __future__ import annotations

from typing import Any

import torch

from llmos.kernel.errors import KernelError

from .cpu import TorchDriver


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (False on CPU-only builds and machines)."""
    return torch.cuda.is_available()


class CudaDriver(TorchDriver):
    """A CUDA GPU. ``index`` picks the GPU; ``dtype`` is bfloat16 (default) or float16."""

    name = "cuda"
    kind = "cuda"

    def __init__(self, dtype: str = "bfloat16", index: int = 0) -> None:
        super().__init__(f"cuda:{index}", dtype)
        self.index = index

    async def do_load_model(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The cpu driver's load, once it is clear there is a GPU to load onto."""
        if not cuda_available():
            raise KernelError("ENOENT", "load_model: no CUDA device here (torch.cuda.is_available() is False); "
                                        "use --device cpu, or a machine with an NVIDIA GPU and a CUDA build of torch")
        if self.index >= torch.cuda.device_count():
            raise KernelError("ENOENT", f"load_model: no CUDA device {self.index}; this machine has {torch.cuda.device_count()}")
        reply = await super().do_load_model(raw)
        reply["device_name"] = torch.cuda.get_device_name(self.index)
        return reply

"""Device specs: the peak rates and capacity of an accelerator, for the roofline cost model.

A ``DeviceSpec`` is a model of a device, never a measurement: peak memory bandwidth and peak
dense FLOP/s from the vendor's data sheet, scaled by efficiency factors that say how much of the
peak a real inference engine reaches. ``llmos sim calibrate`` measures a real device instead and
produces a profile (``profile.py``), which replaces the roofline altogether.

Where the default efficiencies come from (rules of thumb, not measurements of this code):

- ``mem_efficiency`` 0.8: memory-bound decode kernels (weight-streaming GEMVs, paged attention)
  typically sustain 70-85% of peak HBM bandwidth on A100/H100 class GPUs.
- ``compute_efficiency`` 0.6: large prefill GEMMs reach 70-80% of peak tensor-core FLOP/s, but a
  whole step also runs attention, norms, activations and the sampler, which pulls the average down.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SimError, dataclass_from_dict, read_json_object

KINDS = ("gpu", "npu", "cpu")
GIB = 1 << 30


@dataclass(frozen=True)
class DeviceSpec:
    """What the roofline needs to know about one device.

    Raises:
        SimError: EINVAL for an unknown kind, a non-positive rate or size, or an efficiency
            outside (0, 1].
    """

    name: str  # preset name or the spec file's name
    kind: str  # one of KINDS
    memory_bytes: int  # device memory for weights + KV cache (bytes; shared with the OS on a phone)
    mem_bandwidth: float  # peak memory bandwidth (bytes/s)
    flops: float  # peak dense FLOP/s at the device's working dtype: fp16/bf16, fp32 on a cpu
    int8_ops: float = 0.0  # peak dense int8 ops/s; 0 means no int8 path (``flops`` is used)
    mem_efficiency: float = 0.8  # fraction of mem_bandwidth reached (module docstring)
    compute_efficiency: float = 0.6  # fraction of flops / int8_ops reached (module docstring)
    step_overhead_s: float = 0.0  # fixed cost of every step: launches, host sync (seconds)
    emulated: bool = False  # True when the device itself is emulated here (the NPU)

    def __post_init__(self) -> None:
        where = f"device {self.name!r}"
        if self.kind not in KINDS:
            raise SimError(
                "EINVAL", f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)}"
            )
        if min(self.memory_bytes, self.mem_bandwidth, self.flops) <= 0:
            raise SimError("EINVAL", f"{where}: memory_bytes, mem_bandwidth and flops must be > 0")
        if self.int8_ops < 0 or self.step_overhead_s < 0:
            raise SimError("EINVAL", f"{where}: int8_ops and step_overhead_s must be >= 0")
        for key in ("mem_efficiency", "compute_efficiency"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise SimError(
                    "EINVAL", f"{where}: {key} must be in (0, 1], got {getattr(self, key)}"
                )
        # Rates as floats whatever the JSON said, so every cost model does float arithmetic.
        for key in (
            "mem_bandwidth",
            "flops",
            "int8_ops",
            "mem_efficiency",
            "compute_efficiency",
            "step_overhead_s",
        ):
            object.__setattr__(self, key, float(getattr(self, key)))

    def peak_ops(self, dtype_bytes: int) -> float:
        """Peak ops/s for weights of ``dtype_bytes``: the int8 rate for 1-byte weights if any."""
        return self.int8_ops if dtype_bytes == 1 and self.int8_ops > 0 else self.flops

    def to_dict(self) -> dict[str, Any]:
        """The fields as a msgpack-friendly dict (``from_dict`` reads it back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> DeviceSpec:
        """A spec from plain data, checked field by field.

        Raises:
            SimError: EINVAL naming a missing, unknown or mistyped field.
        """
        name = data.get("name", "?") if isinstance(data, dict) else "?"
        return dataclass_from_dict(cls, data, f"device spec {name!r}")


# Data-sheet peaks. A GPU step costs ~0.1 ms beyond its kernels (launches replayed from a CUDA
# graph, one host sync), small next to a 7B decode step (~8 ms on an A100).
PRESETS: dict[str, DeviceSpec] = {
    d.name: d
    for d in (
        # NVIDIA A100 SXM4 80GB: HBM2e 2.039 TB/s, 312 TFLOP/s bf16 dense, 624 TOPS int8.
        DeviceSpec("a100", "gpu", 80 * GIB, 2.039e12, 312e12, 624e12, step_overhead_s=1e-4),
        # NVIDIA H100 SXM5 80GB: HBM3 3.35 TB/s, 989 TFLOP/s bf16 dense, 1979 TOPS int8.
        DeviceSpec("h100", "gpu", 80 * GIB, 3.35e12, 989e12, 1979e12, step_overhead_s=1e-4),
        # NVIDIA H200 SXM 141GB: HBM3e 4.8 TB/s, same compute as the H100.
        DeviceSpec("h200", "gpu", 141 * 10**9, 4.8e12, 989e12, 1979e12, step_overhead_s=1e-4),
        # A phone-class NPU (e.g. a flagship SoC's 45 TOPS int8 engine) on LPDDR5X shared with
        # the OS: ~60 GB/s, 8 GB usable by the model; fp16 at half the int8 rate, and ~1 ms per
        # step to dispatch a graph through the NPU runtime. Emulated on the host by llmos.
        DeviceSpec(
            "npu-phone", "npu", 8 * GIB, 60e9, 22.5e12, 45e12, step_overhead_s=1e-3, emulated=True
        ),
        # A 2-core x86 host (the reference machine): ~20 GB/s DRAM, ~1e11 FLOP/s fp32 with AVX2
        # FMA, ~1 ms of Python and torch dispatch per step. Rough: `llmos sim calibrate` measures
        # the real cpu driver and gives real numbers.
        DeviceSpec("cpu", "cpu", 8 * GIB, 20e9, 1e11, 2e11, step_overhead_s=1e-3),
    )
}


def load_device(name_or_path: str | Path) -> DeviceSpec:
    """A device spec by preset name, or from a JSON file of ``DeviceSpec`` fields.

    A file may leave ``name`` out (its stem is used); the other fields without defaults (kind,
    memory_bytes, mem_bandwidth, flops) are required.

    Raises:
        SimError: ENOENT for a name that is neither a preset nor a file; EINVAL for a file that
            is not JSON or has a missing, unknown or bad field.
    """
    text = str(name_or_path)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if not path.is_file():
        raise SimError(
            "ENOENT",
            f"unknown device {text!r}: not a preset ({', '.join(PRESETS)}) "
            "nor a device spec JSON file",
        )
    data = read_json_object(path, "device spec")
    return DeviceSpec.from_dict({"name": path.stem, **data})

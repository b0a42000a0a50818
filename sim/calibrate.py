"""``llmos sim calibrate``: time the real engine over a grid of batch shapes and fit a profile.

The engine (``llmos.drivers.engine.TorchEngine``, what the cpu and cuda drivers run) is driven
directly with hand-built ``StepBatch``es, without a kernel: each shape is a list of
``(start_pos, num_new)`` chunks, one per sequence, e.g.::

    [(255, 1)] * 8              8 sequences decoding their 257th token (context 256 after)
    [(0, 128)]                  a 128-token prefill chunk at the start of a prompt
    [(255, 1)] * 8 + [(0, 128)] the two together: a mixed step of continuous batching

Each shape runs once to warm up, then ``repeats`` times (in rounds over the grid); the median
time (or the mean, with ``statistic="mean"``) becomes a ``Sample``,
and ``fit_profile`` fits the samples. The KV pool holds zeros: attention's cost does not depend
on what the keys are, only on how many.
"""

from __future__ import annotations

import datetime
import platform
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import SimError
from .models import PRESETS, default_model_dir, load_model_shape
from .profile import ProfileCost, Sample, fit_profile

__all__ = ["DEFAULT_GRID", "BLOCK_SIZE", "STATISTICS", "Shape", "calibrate", "fit_profile", "sample_of", "Sample"]

Shape = Sequence[tuple[int, int]]  # one (start_pos, num_new) chunk per sequence
BLOCK_SIZE = 16  # tokens per KV block in the calibration pool (block size barely moves the time)
# How a shape's repeats become its time. The median is the typical step; the mean also counts the
# machine's hiccups (other work on shared cores), which a long real run pays in proportion.
STATISTICS = {"median": statistics.median, "mean": statistics.mean}


def _default_grid() -> list[list[tuple[int, int]]]:
    """About 30 shapes, < 60 s on 2 cores for the default model: decode, prefill, mixed."""
    grid: list[list[tuple[int, int]]] = []
    for num_seqs in (1, 2, 4, 8, 16, 32):  # decode batches at three context lengths
        for context in (16, 256, 768):
            grid.append([(context - 1, 1)] * num_seqs)
    for chunk in (16, 64, 128, 256, 512):  # prefill from the start of a prompt
        grid.append([(0, chunk)])
    # Later chunks of a long prompt: attention pairs grow apart from tokens (q*s, not just q^2).
    grid += [[(256, 128)], [(512, 256)], [(768, 64)]]
    grid.append([(0, 64)] * 4)  # several prompts at once: num_seqs apart from decode
    # Mixed steps: decodes with a prefill chunk riding along (chunked prefill).
    grid.append([(255, 1)] * 8 + [(0, 128)])
    grid.append([(511, 1)] * 16 + [(256, 256)])
    grid.append([(63, 1)] * 4 + [(0, 64), (64, 64)])
    return grid


DEFAULT_GRID: list[list[tuple[int, int]]] = _default_grid()


def sample_of(shape: Shape, seconds: float) -> Sample:
    """The ``Sample`` of one shape: its batch figures and a measured time."""
    return Sample(
        num_seqs=len(shape),
        num_tokens=sum(q for _, q in shape),
        context_tokens=sum(s + q for s, q in shape),
        attention_pairs=sum(q * s + q * (q + 1) // 2 for s, q in shape),
        seconds=seconds,
    )


def _check_shapes(shapes: Sequence[Shape]) -> None:
    if not shapes:
        raise SimError("EINVAL", "calibrate: no shapes to measure")
    for shape in shapes:
        if not shape or any(s < 0 or q < 1 for s, q in shape):
            raise SimError(
                "EINVAL",
                f"calibrate: bad shape {list(shape)!r}: need one or more "
                "(start_pos >= 0, num_new >= 1) chunks",
            )


def _checkpoint_dir(model: str) -> Path:
    if model == "default":
        return default_model_dir()
    if model in PRESETS:
        raise SimError(
            "ENOENT",
            f"calibrate: {model!r} is a shape preset without weights; "
            "give a checkpoint directory, or 'default'",
        )
    path = Path(model)
    if not path.is_dir():
        raise SimError("ENOENT", f"calibrate: {model!r} is not a checkpoint directory")
    return path


def _batches(shapes: Sequence[Shape], vocab_size: int, seed: int) -> tuple[list[Any], int]:
    """One ``StepBatch`` per shape, and the KV blocks the largest needs."""
    from llmos.kernel.batch import SamplingParams, SeqChunk, StepBatch

    rng = random.Random(seed)
    batches, most = [], 0
    for shape in shapes:
        chunks, next_block = [], 0
        for i, (start, num_new) in enumerate(shape):
            num_blocks = -(-(start + num_new) // BLOCK_SIZE)
            table = list(range(next_block, next_block + num_blocks))  # disjoint per sequence
            next_block += num_blocks
            tokens = [rng.randrange(vocab_size) for _ in range(num_new)]
            chunks.append(SeqChunk(i, tokens, start, table, True, SamplingParams(seed=seed + i)))
        batches.append(StepBatch(chunks, BLOCK_SIZE))
        most = max(most, next_block)
    return batches, most


def calibrate(
    model: str = "default",
    dtype: str = "float32",
    shapes: Sequence[Shape] | None = None,
    repeats: int = 3,
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
    statistic: str = "median",
) -> ProfileCost:
    """Measure the real engine over ``shapes`` and fit a ``ProfileCost``.

    Args:
        model: ``"default"`` (the embedded model) or a checkpoint directory.
        dtype: the engine's dtype, as the cpu driver spells it ("float32", "bfloat16", ...).
        shapes: batch shapes to time; ``DEFAULT_GRID`` if None.
        repeats: timed runs per shape after one warm-up; the median is kept.
        seed: seeds the token ids and sampling, so a rerun measures the same work.
        device: a torch device string ("cpu", "cuda").
        threads: torch intra-op threads while measuring, restored after; None keeps torch's
            current setting, which is what a driver in this process would use.
        statistic: how a shape's timed runs become its time: "median" or "mean".

    Returns:
        The fitted profile; its metadata names the device, model, dtype, date and residuals.

    Raises:
        SimError: ENOENT for a model without weights; EINVAL for a bad dtype, shape or repeats.
        KernelError: from the engine, for a checkpoint it cannot load.
    """
    import torch

    from llmos.drivers.cpu import resolve_dtype
    from llmos.drivers.engine import TorchEngine

    if repeats < 1:
        raise SimError("EINVAL", f"calibrate: repeats must be >= 1, got {repeats}")
    if statistic not in STATISTICS:
        raise SimError("EINVAL", f"calibrate: statistic must be one of {', '.join(STATISTICS)}, not {statistic!r}")
    grid = DEFAULT_GRID if shapes is None else [list(s) for s in shapes]
    _check_shapes(grid)
    try:
        torch_dtype = resolve_dtype(dtype)
    except ValueError as exc:
        raise SimError("EINVAL", f"calibrate: {exc}") from None
    path = _checkpoint_dir(model)
    started = time.perf_counter()
    engine = TorchEngine(device, torch_dtype)
    info = engine.load_model(path)
    batches, num_blocks = _batches(grid, info["vocab_size"], seed)
    engine.init_kv(num_blocks, BLOCK_SIZE)
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for batch in batches:
            engine.step(batch)  # warm-up: first-touch allocations, lazy initialisation
        # Rounds over the whole grid rather than all repeats of one shape in a row: a burst of
        # other work on a shared machine then spoils one run of many shapes, which the median
        # drops, instead of every run of one shape.
        times: list[list[float]] = [[] for _ in batches]
        for _ in range(repeats):
            for batch, shape_times in zip(batches, times, strict=True):
                t0 = time.perf_counter()
                engine.step(batch)  # synchronises a cuda device before it returns
                shape_times.append(time.perf_counter() - t0)
        samples = [
            sample_of(shape, STATISTICS[statistic](t)) for shape, t in zip(grid, times, strict=True)
        ]
        num_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads_before)
    element = torch.empty((), dtype=torch_dtype).element_size()
    shape_dict = {**load_model_shape(str(path)).to_dict(), "dtype_bytes": element}
    if model == "default":
        shape_dict["name"] = "default"
    metadata = {
        "device": {
            "kind": torch.device(device).type,
            "name": device,
            "torch_threads": num_threads,
            "machine": platform.machine(),
            "processor": platform.processor(),
            "torch": torch.__version__,
        },
        "model": model,
        "model_shape": shape_dict,
        "dtype": dtype,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "repeats": repeats,
        "statistic": statistic,
        "seed": seed,
        "block_size": BLOCK_SIZE,
        "num_shapes": len(grid),
        "calibrate_s": round(time.perf_counter() - started, 3),
    }
    return fit_profile(samples, metadata)

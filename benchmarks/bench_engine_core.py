"""Step time of TorchEngine on a small random Llama: decode at several batch sizes, and prefill.

Run: ``python benchmarks/bench_engine_core.py [--threads N] [--device cpu|cuda]``.
Prints one line per case: tokens per step, median step seconds, tokens per second. The model is
random (timing does not depend on the weights' values) and written to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from llmos.drivers.checkpoint import expected_shapes, parse_config
from llmos.drivers.engine import TorchEngine
from llmos.kernel.batch import SamplingParams, SeqChunk, StepBatch

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 2048,
    "max_position_embeddings": 2048,
}
BLOCK_SIZE = 16


def write_model(path: Path) -> None:
    """A random checkpoint of CONFIG in ``path``."""
    shapes = expected_shapes(parse_config(CONFIG, path / "config.json"))
    save_file(
        {n: torch.randn(s) * 0.05 for n, s in shapes.items()}, str(path / "model.safetensors")
    )
    (path / "config.json").write_text(json.dumps(CONFIG))


def decode_batch(batch_size: int, context: int) -> StepBatch:
    """``batch_size`` sequences each decoding one token at position ``context - 1``."""
    blocks = -(-context // BLOCK_SIZE)
    seqs = [
        SeqChunk(i, [i % 100], context - 1, list(range(i * blocks, (i + 1) * blocks)), True,
                 SamplingParams(temperature=0.0))
        for i in range(batch_size)
    ]  # fmt: skip
    return StepBatch(seqs, BLOCK_SIZE)


def time_step(engine: TorchEngine, batch: StepBatch, repeats: int) -> float:
    """Median seconds of ``engine.step(batch)`` after two warm-up steps."""
    for _ in range(2):
        engine.step(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.step(batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    """Run the cases and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        write_model(Path(tmp))
        engine = TorchEngine(device=args.device)
        info = engine.load_model(tmp)
        blocks_per_seq = -(-args.context // BLOCK_SIZE)
        engine.init_kv(64 * blocks_per_seq, BLOCK_SIZE)
        print(
            f"model: {info['num_params'] / 1e6:.1f}M params, device {args.device}, threads {args.threads}"
        )
        for batch_size in (1, 8, 32, 64):
            s = time_step(engine, decode_batch(batch_size, args.context), args.repeats)
            print(f"decode  batch {batch_size:3d} ctx {args.context}: {s * 1e3:8.2f} ms/step "
                  f"{batch_size / s:9.0f} tok/s")  # fmt: skip
        prompt = [i % 100 for i in range(args.context)]
        table = list(range(blocks_per_seq))
        prefill = StepBatch([SeqChunk(0, prompt, 0, table, True, SamplingParams(0.0))], BLOCK_SIZE)
        s = time_step(engine, prefill, args.repeats)
        print(
            f"prefill {args.context} tokens:        {s * 1e3:8.2f} ms/step {args.context / s:9.0f} tok/s"
        )


if __name__ == "__main__":
    main()

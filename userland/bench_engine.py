"""``llmos bench engine``: llmos against Hugging Face transformers on the same weights, fp32 CPU.

Two figures, each measured on both sides in the same process with the same thread count:

- throughput: N requests whose prompt and output lengths are drawn (scaled down) from a real
  trace. llmos spawns them all at once as processes and lets the scheduler batch them
  (continuous batching); transformers runs ``generate`` over batches of the requests, left-padded
  as it does, greedy, each batch generating its longest request's length. Only each request's
  own output tokens count as useful, so both sides count the same number of tokens::

      tokens/s = sum(output lengths) / wall time from the first spawn (first generate) to the end

- batch-1 decode latency: one request (16-token prompt, 64 new tokens), seconds per decode token.
  transformers: (t(generate 64) - t(generate 1)) / 63, medians over repeats; also the floor of a
  bare forward loop with ``past_key_values``. llmos: one process through the kernel, from its
  own accounting, (finished_at - first_token_at) / 63.

Targets (the issue's): llmos >= 2x transformers' throughput; batch-1 latency <= 1.2x.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import trio

from llmos.kernel.kernel import open_kernel

from . import libllm
from .system import SystemOptions, build_config
from .trace import DEFAULT_TRACE, TraceError, load_arrivals

NUM_THREADS = 2  # torch intra-op threads, both sides; the reference machine has 2 cores
TARGET_THROUGHPUT_RATIO = 2.0  # llmos tokens/s over transformers tokens/s, at least
TARGET_LATENCY_RATIO = 1.2  # llmos seconds per decode token over transformers', at most
# Architectures llmos loads, and the Hugging Face model_type of each (for config.json files that
# name only the architecture).
MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}


class BenchError(Exception):
    """A usage problem the command reports as ``llmos bench engine: ERRNO: message``."""

    def __init__(self, errno: str, message: str) -> None:
        super().__init__(f"{errno}: {message}")
        self.errno = errno


@dataclass(frozen=True)
class Scale:
    """How trace lengths become benchmark lengths: divide, then clip."""

    prompt_div: int = 8
    output_div: int = 4
    prompt_min: int = 4
    prompt_max: int = 256
    output_min: int = 4
    output_max: int = 128

    def describe(self) -> str:
        return (f"prompt = clip(prefill / {self.prompt_div}, {self.prompt_min}, {self.prompt_max}), "
                f"output = clip(decode / {self.output_div}, {self.output_min}, {self.output_max})")

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Request:
    """One benchmark request: prompt token ids and the number of tokens to generate."""

    prompt_ids: list[int]
    num_output: int


# ---------------------------------------------------------------------------------------------
# Workload


def load_trace(path: Path) -> list[tuple[int, int]]:
    """(prompt length, output length) of each row of an arrivals trace; BenchError if unusable."""
    try:
        return [(prompt, output) for _, prompt, output in load_arrivals(path)]
    except TraceError as exc:
        raise BenchError(exc.errno, exc.message) from None


def draw_requests(rows: list[tuple[int, int]], num: int, vocab_size: int, seed: int, scale: Scale = Scale()) -> list[Request]:
    """A seeded sample of ``num`` rows, scaled down, with random prompt ids in the vocabulary."""
    rng = random.Random(seed)
    picked = rng.sample(rows, num) if num <= len(rows) else [rng.choice(rows) for _ in range(num)]
    clip = lambda x, lo, hi: max(lo, min(hi, x))  # noqa: E731
    requests = []
    for prefill, decode in picked:
        prompt_len = clip(prefill // scale.prompt_div, scale.prompt_min, scale.prompt_max)
        num_output = clip(decode // scale.output_div, scale.output_min, scale.output_max)
        requests.append(Request([rng.randrange(vocab_size) for _ in range(prompt_len)], num_output))
    return requests


def checkpoint_vocab_size(path: Path) -> int:
    return int(json.loads((path / "config.json").read_text())["vocab_size"])


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers side


def load_hf_model(path: Path) -> Any:
    """The checkpoint as a transformers model, fp32, eval mode, never stopping at EOS.

    A config.json without ``model_type`` (llmos accepts those) gets it from its architecture.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight-loading bar would interleave with our table

    raw = json.loads((path / "config.json").read_text())
    model_type = raw.pop("model_type", None) or MODEL_TYPES.get((raw.get("architectures") or [""])[0])
    if model_type is None:
        raise BenchError("EINVAL", f"{path}/config.json: names neither model_type nor a known architecture")
    config = AutoConfig.for_model(model_type, **raw)
    model = AutoModelForCausalLM.from_pretrained(str(path), config=config, dtype=torch.float32)
    model.eval()
    # Greedy, fixed lengths: EOS must not end a row early (llmos spawns with ignore_eos).
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    model.generation_config.do_sample = False
    for name in ("temperature", "top_p", "top_k"):
        setattr(model.generation_config, name, None)
    return model


def hf_generate(model: Any, prompts: list[list[int]], num_new: int) -> torch.Tensor:
    """Greedy ``generate`` of exactly ``num_new`` tokens per row, left-padded; (B, num_new) ids."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=num_new,
                             min_new_tokens=num_new, do_sample=False, pad_token_id=0)
    return out[:, width:]


def hf_throughput(model: Any, requests: list[Request], batch_size: int) -> dict[str, Any]:
    """Run every request through ``generate`` in batches of ``batch_size``, in order."""
    outputs: list[list[int]] = []
    num_generated = 0  # including tokens past a request's own length (its batch's longest)
    start = time.perf_counter()
    for first in range(0, len(requests), batch_size):
        batch = requests[first:first + batch_size]
        num_new = max(r.num_output for r in batch)
        new = hf_generate(model, [r.prompt_ids for r in batch], num_new)
        num_generated += new.numel()
        outputs += [new[i, : r.num_output].tolist() for i, r in enumerate(batch)]
    wall = time.perf_counter() - start
    useful = sum(len(o) for o in outputs)
    return {"wall_s": wall, "num_tokens": useful, "num_generated": num_generated, "tokens_per_s": useful / wall,
            "batch_size": batch_size, "outputs": outputs}


def hf_latency(model: Any, prompt: list[int], num_new: int, repeats: int = 3) -> dict[str, Any]:
    """Seconds per decode token at batch 1, by ``generate`` and by a bare forward loop."""
    gen_n, gen_1 = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        hf_generate(model, [prompt], num_new)
        t1 = time.perf_counter()
        hf_generate(model, [prompt], 1)
        gen_n.append(t1 - t0)
        gen_1.append(time.perf_counter() - t1)
    per_token_generate = (statistics.median(gen_n) - statistics.median(gen_1)) / (num_new - 1)
    steps = []
    # transformers 5 renamed past_key_values to cache; 4.x knows only the old name.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt]), use_cache=True)
        cache, token = getattr(out, cache_arg), out.logits[:, -1:].argmax(-1)
        for _ in range(num_new - 1):
            t0 = time.perf_counter()
            out = model(input_ids=token, use_cache=True, **{cache_arg: cache})
            cache, token = getattr(out, cache_arg), out.logits[:, -1:].argmax(-1)
            steps.append(time.perf_counter() - t0)
    return {"per_token_s": per_token_generate, "forward_loop_median_s": statistics.median(steps)}


def run_hf(path: Path, requests: list[Request], latency_prompt: list[int], latency_new: int,
           batch_size: int) -> dict[str, Any]:
    """The transformers side: warm-up, throughput, batch-1 latency."""
    model = load_hf_model(path)
    hf_throughput(model, requests[: min(4, len(requests))], batch_size)  # warm-up
    result = hf_throughput(model, requests, batch_size)
    result["latency"] = hf_latency(model, latency_prompt, latency_new)
    return result


# ---------------------------------------------------------------------------------------------
# llmos side


async def _spawn_and_wait(llm: libllm.Client, requests: list[Request]) -> list[libllm.WaitResult]:
    pids = [await llm.spawn(prompt_ids=r.prompt_ids, max_tokens=r.num_output, temperature=0, ignore_eos=True)
            for r in requests]
    results = []
    for pid in pids:
        result = await llm.wait(pid)
        assert result is not None
        if result.finish_reason != "length":
            raise BenchError(result.exit.get("errno") or "EIO", f"process {pid} ended early: {result.exit}")
        results.append(result)
    return results


async def _llmos_main(options: SystemOptions, requests: list[Request], latency_prompt: list[int],
                      latency_new: int) -> dict[str, Any]:
    async with open_kernel(build_config(options)) as kernel, libllm.open_client(kernel) as llm:
        await _spawn_and_wait(llm, requests[: min(4, len(requests))])  # warm-up
        device = kernel.devices[next(iter(kernel.devices))]
        steps_before, busy_before = device.scheduler.stats.num_steps, device.scheduler.stats.busy_s
        start = time.perf_counter()
        results = await _spawn_and_wait(llm, requests)
        wall = time.perf_counter() - start
        stats = device.scheduler.stats
        num_steps, busy = stats.num_steps - steps_before, stats.busy_s - busy_before
        outputs = [r.output_ids for r in results]
        useful = sum(len(o) for o in outputs)
        per_token = []
        for _ in range(3):
            (one,) = await _spawn_and_wait(llm, [Request(latency_prompt, latency_new)])
            per_token.append((one.stat["finished_at"] - one.stat["first_token_at"]) / (latency_new - 1))
        return {
            "wall_s": wall, "num_tokens": useful, "tokens_per_s": useful / wall, "outputs": outputs,
            "num_steps": num_steps, "engine_busy_s": busy,
            "max_batch_tokens": options.max_batch_tokens, "max_seqs": options.max_seqs,
            "latency": {"per_token_s": statistics.median(per_token), "repeats_s": per_token},
        }


def run_llmos(path: Path, requests: list[Request], latency_prompt: list[int], latency_new: int,
              options: SystemOptions | None = None) -> dict[str, Any]:
    """The llmos side: boot a kernel on the cpu device, warm-up, throughput, batch-1 latency."""
    options = options or SystemOptions()
    options.device, options.model, options.dtype = "cpu", str(path), "float32"
    return trio.run(_llmos_main, options, requests, latency_prompt, latency_new)


# ---------------------------------------------------------------------------------------------
# The command


def resolve_model(model: str | None) -> Path:
    """The checkpoint directory named by --model; BenchError ENOENT if it has no config.json."""
    from llmos.drivers.cpu import DEFAULT_MODEL_DIR

    path = DEFAULT_MODEL_DIR if model in (None, "default") else Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise BenchError("ENOENT", f"no checkpoint at {path} (config.json missing); pass --model PATH")
    return path


def run_benchmark(path: Path, trace: Path, num_requests: int = 32, seed: int = 0, hf_batch_size: int = 8,
                  latency_prompt_len: int = 16, latency_new: int = 64, scale: Scale = Scale(),
                  options: SystemOptions | None = None, threads: int = NUM_THREADS) -> dict[str, Any]:
    """Both sides on ``path``; one dict with every figure (the JSON the command prints)."""
    vocab_size = checkpoint_vocab_size(path)
    requests = draw_requests(load_trace(trace), num_requests, vocab_size, seed, scale)
    latency_prompt = [random.Random(seed + 1).randrange(vocab_size) for _ in range(latency_prompt_len)]
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        hf = run_hf(path, requests, latency_prompt, latency_new, hf_batch_size)
        llmos = run_llmos(path, requests, latency_prompt, latency_new, options)
    finally:
        torch.set_num_threads(threads_before)
    matching = sum(a == b for a, b in zip(hf.pop("outputs"), llmos.pop("outputs"), strict=True))
    throughput_ratio = llmos["tokens_per_s"] / hf["tokens_per_s"]
    latency_ratio = llmos["latency"]["per_token_s"] / hf["latency"]["per_token_s"]
    return {
        "model": str(path),
        "trace": str(trace),
        "seed": seed,
        "num_requests": num_requests,
        "scale": scale.to_dict(),
        "prompt_tokens": sum(len(r.prompt_ids) for r in requests),
        "output_tokens": sum(r.num_output for r in requests),
        "threads": threads,
        "dtype": "float32",
        "hf": hf,
        "llmos": llmos,
        "outputs_identical": matching,
        "throughput_ratio": throughput_ratio,
        "latency_ratio": latency_ratio,
        "latency_ratio_vs_forward_loop": llmos["latency"]["per_token_s"] / hf["latency"]["forward_loop_median_s"],
        "latency_request": {"prompt_tokens": latency_prompt_len, "new_tokens": latency_new},
        "targets": {"throughput_ratio_min": TARGET_THROUGHPUT_RATIO, "latency_ratio_max": TARGET_LATENCY_RATIO},
        "meets_targets": {"throughput": throughput_ratio >= TARGET_THROUGHPUT_RATIO,
                          "latency": latency_ratio <= TARGET_LATENCY_RATIO},
    }


def print_table(r: dict[str, Any]) -> None:
    hf, ll = r["hf"], r["llmos"]
    ok = lambda met: "meets target" if met else "BELOW TARGET"  # noqa: E731
    print(f"model {r['model']}   fp32, {r['threads']} threads, seed {r['seed']}")
    print(f"{r['num_requests']} requests from {r['trace']}: {r['prompt_tokens']} prompt tokens, {r['output_tokens']} output tokens")
    print(f"scaling: {Scale(**r['scale']).describe()}")
    print()
    print(f"{'':28s}{'transformers':>14s}{'llmos':>14s}{'llmos/HF':>10s}")
    print(f"{'throughput (tokens/s)':28s}{hf['tokens_per_s']:14.1f}{ll['tokens_per_s']:14.1f}{r['throughput_ratio']:9.2f}x"
          f"   target >= {r['targets']['throughput_ratio_min']}x: {ok(r['meets_targets']['throughput'])}")
    print(f"{'  wall (s)':28s}{hf['wall_s']:14.2f}{ll['wall_s']:14.2f}")
    lat = r["latency_request"]
    print(f"{'batch-1 decode (ms/token)':28s}{hf['latency']['per_token_s'] * 1e3:14.2f}{ll['latency']['per_token_s'] * 1e3:14.2f}"
          f"{r['latency_ratio']:9.2f}x   target <= {r['targets']['latency_ratio_max']}x: {ok(r['meets_targets']['latency'])}")
    print(f"{'  HF bare forward loop':28s}{hf['latency']['forward_loop_median_s'] * 1e3:14.2f}{'':14s}"
          f"{r['latency_ratio_vs_forward_loop']:9.2f}x")
    print()
    print(f"transformers: generate in batches of {hf['batch_size']}, left-padded; {hf['num_generated']} tokens generated, "
          f"{hf['num_tokens']} useful")
    print(f"llmos: {ll['num_steps']} steps, engine busy {ll['engine_busy_s']:.2f} s of {ll['wall_s']:.2f} s "
          f"(max_batch_tokens {ll['max_batch_tokens']}, max_seqs {ll['max_seqs']})")
    print(f"batch-1: {lat['prompt_tokens']}-token prompt, {lat['new_tokens']} new tokens; "
          f"greedy outputs identical for {r['outputs_identical']}/{r['num_requests']} requests")


def run_bench_engine(args: argparse.Namespace) -> int:
    """Entry point of ``llmos bench engine``."""
    try:
        if args.requests <= 0 or args.hf_batch_size <= 0 or args.threads <= 0:
            raise BenchError("EINVAL", "--requests, --hf-batch-size and --threads must be positive")
        path = resolve_model(args.model)
        trace = Path(args.trace).expanduser() if args.trace else DEFAULT_TRACE
        if not trace.is_file():
            raise BenchError("ENOENT", f"no trace at {trace} (expected shared/traces/ beside the repository; pass --trace PATH)")
        if not args.json:
            print(f"scaling: {Scale().describe()}; {args.requests} rows drawn with seed {args.seed}", flush=True)
        result = run_benchmark(path, trace, args.requests, args.seed, args.hf_batch_size, threads=args.threads)
    except BenchError as error:
        print(f"llmos bench engine: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0

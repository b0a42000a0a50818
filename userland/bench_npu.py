"""``llmos bench npu``: what int8 weights cost in quality, and the emulated npu's step time.

Quality is measured on held-out text, chosen exactly as the default model's training held it
out (scripts/train_default_model.py; drivers/default_model/metadata.json): the interpreter's
standard-library ``*.py`` files whose ``sha256(relative path)`` falls in the held-out 5%,
as one ``<|bos|> file <|eos|>`` stream, cut into evenly spaced windows of 256 + 1 tokens.
With the training interpreter the stream has the metadata's ``held_out_tokens`` tokens, and
the report says whether it does. On those windows it reports, for the cpu (float32) and the
npu (int8 weights) engines:

- perplexity: exp(mean next-token cross-entropy), every position of every window;
- top-1 agreement: positions where both engines' argmax is the same (teacher-forced);
- greedy agreement: prompts (the first 32 tokens of some windows) continued greedily by each
  engine alone; the share of continuation positions where the tokens are equal. One early
  divergence makes a whole continuation differ, so this figure swings with the prompts; the
  report gives, for each divergence, the cpu's logit margin between its top two tokens there
  (a near tie that int8 rounding can flip).

Then one prefill step and one batched decode step on the npu engine: modeled device time
(the roofline of ``drivers/npu.py``) beside the host's wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llmos.drivers.cpu import DEFAULT_MODEL_DIR
from llmos.drivers.engine import TorchEngine
from llmos.drivers.npu import Int8Engine, resolve_spec
from llmos.kernel.batch import SamplingParams, SeqChunk, StepBatch
from llmos.kernel.errors import KernelError

from .command import EXIT_FAILURE, EXIT_USAGE
from .corpus import collect_corpus, is_held_out, stdlib_root

WINDOW = 256  # tokens of context per window, as the training evaluation used
PROMPT_TOKENS = 32


def held_out_texts(root: Path) -> list[str]:
    """The held-out files' texts, in the training script's order (userland/corpus.py)."""
    return [doc.text for doc in collect_corpus(root) if is_held_out(doc.rel_path)]


def held_out_windows(tokenizer_path: str, num_windows: int) -> tuple[torch.Tensor, int]:
    """(N, WINDOW + 1) evenly spaced, non-overlapping windows, and the stream's length."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_path)
    bos, eos = tokenizer.token_to_id("<|bos|>"), tokenizer.token_to_id("<|eos|>")
    if bos is None or eos is None:
        raise ValueError(f"{tokenizer_path} has no <|bos|> and <|eos|> tokens; the held-out stream needs both")
    stream: list[int] = []
    for enc in tokenizer.encode_batch(held_out_texts(stdlib_root())):
        stream += [bos, *enc.ids, eos]
    ids = torch.tensor(stream, dtype=torch.long)
    num_fit = (ids.numel() - 1) // (WINDOW + 1)
    num = min(num_windows, num_fit)
    if num < 1:
        raise ValueError(f"the held-out text has {ids.numel()} tokens, too few for one window of {WINDOW + 1}")
    starts = torch.arange(num) * (num_fit // num) * (WINDOW + 1)
    return ids[starts[:, None] + torch.arange(WINDOW + 1)[None, :]], ids.numel()


def greedy(engine: TorchEngine, prompt: list[int], num_new: int) -> list[int]:
    """``num_new`` greedy tokens after ``prompt``, by the engine's cache-free forward."""
    ids = list(prompt)
    for _ in range(num_new):
        ids.append(int(engine.forward_dense(ids)[-1].argmax()))
    return ids[len(prompt):]


def compare_quality(cpu: TorchEngine, npu: Int8Engine, windows: torch.Tensor, num_prompts: int,
                    num_new: int) -> dict[str, Any]:
    """Perplexity of each engine, teacher-forced top-1 agreement and greedy agreement."""
    losses = {"cpu": 0.0, "npu": 0.0}
    same_top1 = 0
    for window in windows:
        inputs, targets = window[:-1].tolist(), window[1:]
        logits = {"cpu": cpu.forward_dense(inputs), "npu": npu.forward_dense(inputs)}  # (T, V) each
        for name, value in logits.items():
            losses[name] += F.cross_entropy(value.float(), targets, reduction="sum").item()
        same_top1 += int((logits["cpu"].argmax(-1) == logits["npu"].argmax(-1)).sum())
    num_positions = windows.size(0) * WINDOW
    same_greedy, identical = 0, 0
    gaps = []  # where a continuation diverges: the cpu's logit margin of its top token over the next
    step = max(1, windows.size(0) // max(1, num_prompts))
    prompts = [windows[i, :PROMPT_TOKENS].tolist() for i in range(0, windows.size(0), step)][:num_prompts]
    for prompt in prompts:
        a, b = greedy(cpu, prompt, num_new), greedy(npu, prompt, num_new)
        same_greedy += sum(x == y for x, y in zip(a, b, strict=True))
        identical += a == b
        if a != b:
            k = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
            top2 = cpu.forward_dense(prompt + a[:k])[-1].topk(2).values
            gaps.append(round(float(top2[0] - top2[1]), 4))
    return {
        "perplexity_cpu": math.exp(losses["cpu"] / num_positions),
        "perplexity_npu": math.exp(losses["npu"] / num_positions),
        "top1_agreement": same_top1 / num_positions,
        "greedy_agreement": same_greedy / (len(prompts) * num_new) if prompts else None,
        "greedy_identical_continuations": f"{identical}/{len(prompts)}",
        "greedy_divergence_logit_margins": sorted(gaps),
        "positions": num_positions,
    }


def time_steps(npu: Int8Engine, windows: torch.Tensor, batch_size: int = 8) -> dict[str, Any]:
    """Modeled and host time of a prefill step (one window) and of a decode step of a batch."""
    blocks_per_seq = -(-(WINDOW + 1) // 16)
    npu.init_kv(batch_size * blocks_per_seq, 16)
    greedy_params = SamplingParams(temperature=0.0)
    seqs = [SeqChunk(i, windows[i % windows.size(0), :WINDOW].tolist(), 0,
                     list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)), True, greedy_params)
            for i in range(batch_size)]
    figures: dict[str, Any] = {}
    prefill = StepBatch(seqs[:1], 16)
    result = npu.step(prefill)
    figures["prefill_tokens"] = WINDOW
    figures["prefill_modeled_s"], figures["prefill_wall_s"] = npu.modeled_s(prefill), result.wall_s
    npu.step(StepBatch(seqs[1:], 16))  # fill the others' caches
    decode = StepBatch([SeqChunk(s.seq_id, [1], WINDOW, s.block_table, True, greedy_params) for s in seqs], 16)
    result = npu.step(decode)
    figures["decode_batch"] = batch_size
    figures["decode_modeled_s"], figures["decode_wall_s"] = npu.modeled_s(decode), result.wall_s
    return figures


def run_bench_npu(args: argparse.Namespace) -> int:
    """Entry point of ``llmos bench npu``."""
    if args.windows < 1 or args.prompts < 0 or args.new_tokens < 1:
        print("llmos bench npu: --windows and --new-tokens must be positive (EINVAL)", file=sys.stderr)
        return EXIT_USAGE
    torch.set_num_threads(args.threads)
    path = DEFAULT_MODEL_DIR if args.model == "default" else Path(args.model).expanduser()
    wall = time.perf_counter()
    try:
        spec = resolve_spec(args.spec)
        cpu, npu = TorchEngine(), Int8Engine(spec)
        cpu_info, npu_info = cpu.load_model(path), npu.load_model(path)
    except (ValueError, KernelError) as exc:
        print(f"llmos bench npu: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not cpu_info.get("tokenizer"):
        print(f"llmos bench npu: {path} has no tokenizer.json to encode held-out text (ENOENT)", file=sys.stderr)
        return EXIT_FAILURE
    try:
        windows, stream_tokens = held_out_windows(cpu_info["tokenizer"], args.windows)
    except ValueError as exc:
        print(f"llmos bench npu: {exc} (EINVAL)", file=sys.stderr)
        return EXIT_FAILURE
    figures: dict[str, Any] = {"model": str(path), "spec": spec.name, "held_out_tokens": stream_tokens}
    metadata = path / "metadata.json"
    if metadata.is_file():
        expected = json.loads(metadata.read_text()).get("tokenizer", {}).get("held_out_tokens")
        figures["matches_training_split"] = expected == stream_tokens
    figures.update(windows=int(windows.size(0)), window_tokens=WINDOW,
                   weight_bytes_cpu=cpu_info["weight_bytes"], weight_bytes_npu=npu_info["weight_bytes"])
    figures.update(compare_quality(cpu, npu, windows, args.prompts, args.new_tokens))
    figures.update(time_steps(npu, windows))
    figures["wall_s"] = round(time.perf_counter() - wall, 1)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:32s} {value:.6g}" if isinstance(value, float) else f"{key:32s} {value}")
    return 0

"""Train the embedded default model shipped in ``llmos/drivers/default_model/``.

The default model is a tiny Llama (grouped-query attention, tied embeddings) trained on
text every machine already has: the ``*.py`` sources of the running interpreter's standard
library. Nothing is downloaded. The script is deterministic for a given interpreter, seed
and torch build, and writes:

    <out>/config.json              LlamaConfig (+ legacy top-level rope_theta/torch_dtype keys)
    <out>/model.safetensors        weights, stored in --dtype (float16 by default)
    <out>/tokenizer.json           byte-level BPE, loadable with tokenizers.Tokenizer.from_file
    <out>/generation_config.json   bos/eos/pad ids for transformers' generate()
    <out>/metadata.json            corpus, hyperparameters, losses, samples, timings

Training layout (the runtime must match it): each source file becomes one document
``<|bos|> text <|eos|>``; documents are concatenated into one token stream and training
windows of ``--seq-len`` tokens are cropped from it at random offsets. Prompts should
therefore start with <|bos|>. The tokenizer adds no special tokens by itself.

transformers is used here only (a dev/train dependency); the runtime never imports it.
Long runs checkpoint to --ckpt-dir every --ckpt-every steps; pass --resume to continue.

Usage (the defaults are the run that produced the shipped model):

    python scripts/train_default_model.py
    python scripts/train_default_model.py --steps 20 --out /tmp/smoke   # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llmos.userland.corpus import (
    HELD_OUT_PERCENT,
    MAX_CORPUS_BYTES,
    MAX_FILE_BYTES,
    SKIPPED_DIRS,
    Document,
    collect_corpus,
    is_held_out,
    stdlib_root,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "drivers" / "default_model"

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]  # ids 0, 1, 2 in this order


ROUND_TRIP_SNIPPET = (
    "class Foo:\n"
    "    def __init__(self, x=1):\n"
    "        self.x = x  # comment\n"
    "\n"
    "\tif x:\n"
    "\t\treturn {'a': [1, 2.5]}\n"
)

SAMPLE_PROMPTS = ["def ", "import os\n", "class Foo:\n    def __init__(self"]


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    p.add_argument("--ckpt-dir", type=Path, default=Path("/tmp/llmos_default_model_ckpt"))
    p.add_argument("--ckpt-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from --ckpt-dir/ckpt.pt")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    # corpus
    p.add_argument("--max-file-bytes", type=int, default=MAX_FILE_BYTES, help="skip larger files")
    p.add_argument("--max-corpus-bytes", type=int, default=MAX_CORPUS_BYTES, help="corpus cap")
    p.add_argument("--held-out-percent", type=int, default=HELD_OUT_PERCENT, help="percent of files held out")
    # tokenizer
    p.add_argument("--vocab-size", type=int, default=4096, help="incl. specials and 256 bytes")
    # model
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--intermediate-size", type=int, default=688)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=8)
    p.add_argument("--num-kv-heads", type=int, default=2, help="< num-heads: exercises GQA")
    p.add_argument("--max-positions", type=int, default=1024)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    # optimisation
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=24, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor / peak")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument(
        "--autocast-bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bf16 autocast for matmuls (fp32 master weights); fast on AMX CPUs",
    )
    # logging / evaluation
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=200, help="quick held-out check")
    p.add_argument("--eval-sequences", type=int, default=256, help="final held-out windows")
    p.add_argument(
        "--dtype",
        choices=["float16", "bfloat16", "float32"],
        default="float16",
        help="dtype of the stored weights",
    )
    return p.parse_args(argv)


# --------------------------------------------------------------------------- corpus


# The corpus (which files, their order, the held-out rule) is llmos.userland.corpus, shared
# with `llmos bench npu`, which measures perplexity on the held-out files.


def describe_corpus(docs: list[Document], held_out: list[Document]) -> dict:
    num_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
    return {
        "source": "Python standard library *.py files of the training interpreter",
        "stdlib_root": str(stdlib_root()),
        "python_version": platform.python_version(),
        "skipped_dirs": sorted(SKIPPED_DIRS),
        "num_files": len(docs),
        "num_bytes": num_bytes,
        "num_held_out_files": len(held_out),
        "num_held_out_bytes": sum(len(d.text.encode("utf-8")) for d in held_out),
        "held_out_rule": "int.from_bytes(sha256(rel_path)[:8], 'big') % 100 < held_out_percent",
        "document_format": f"{BOS_TOKEN} file text {EOS_TOKEN}, concatenated into one stream",
    }


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE: every byte is representable, so decode(encode(s)) == s for any s."""
    tokenizer = Tokenizer(models.BPE())
    # GPT-2 style split; runs of spaces stay together, so indentation becomes few tokens.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    for i, tok in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(tok) == i, f"{tok} must have id {i}"
    return tokenizer


def check_round_trip(tokenizer: Tokenizer, snippet: str = ROUND_TRIP_SNIPPET) -> int:
    ids = tokenizer.encode(snippet).ids
    decoded = tokenizer.decode(ids)
    if decoded != snippet:
        raise AssertionError(f"tokenizer round trip failed:\n{snippet!r}\n{decoded!r}")
    return len(ids)


def encode_stream(tokenizer: Tokenizer, docs: list[Document]) -> torch.Tensor:
    """One int32 stream: <|bos|> doc0 <|eos|> <|bos|> doc1 <|eos|> ..."""
    bos, eos = tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(EOS_TOKEN)
    stream: list[int] = []
    for enc in tokenizer.encode_batch([d.text for d in docs]):
        stream.append(bos)
        stream.extend(enc.ids)
        stream.append(eos)
    return torch.tensor(stream, dtype=torch.int32)


# --------------------------------------------------------------------------- model


def build_config(args: argparse.Namespace, tokenizer: Tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        max_position_embeddings=args.max_positions,
        rope_theta=args.rope_theta,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
        bos_token_id=tokenizer.token_to_id(BOS_TOKEN),
        eos_token_id=tokenizer.token_to_id(EOS_TOKEN),
        pad_token_id=tokenizer.token_to_id(PAD_TOKEN),
    )


def build_model(config):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(config)
    model.config.architectures = ["LlamaForCausalLM"]
    return model


def lm_loss(model, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of (B, T+1) windows."""
    inputs, targets = windows[:, :-1], windows[:, 1:]  # (B, T) each
    logits = model(input_ids=inputs, use_cache=False).logits  # (B, T, V)
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))


def make_optimizer(model, args: argparse.Namespace) -> torch.optim.AdamW:
    # No weight decay on norms (1-D); the tied embedding is decayed like other matrices.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warmup, then cosine decay from lr to lr * min_lr_ratio at the last step."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return args.lr * (args.min_lr_ratio + (1.0 - args.min_lr_ratio) * cosine)


# --------------------------------------------------------------------------- data


def sample_batch(
    stream: torch.Tensor, args: argparse.Namespace, gen: torch.Generator
) -> torch.Tensor:
    starts = torch.randint(0, stream.numel() - args.seq_len - 1, (args.batch_size,), generator=gen)
    offsets = torch.arange(args.seq_len + 1)
    return stream[starts[:, None] + offsets[None, :]].long()  # (B, T+1)


def eval_windows(stream: torch.Tensor, seq_len: int, num_sequences: int) -> torch.Tensor:
    """Fixed, evenly spaced, non-overlapping (N, T+1) windows over a stream."""
    num_fit = (stream.numel() - 1) // (seq_len + 1)
    num = min(num_sequences, num_fit)
    stride = num_fit // num
    starts = torch.arange(num) * stride * (seq_len + 1)
    return stream[starts[:, None] + torch.arange(seq_len + 1)[None, :]].long()


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, autocast: bool, batch_size: int = 32) -> float:
    """Mean token cross-entropy (nats) over all windows."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, windows.size(0), batch_size):
        chunk = windows[i : i + batch_size]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = lm_loss(model, chunk)
        n = chunk.size(0) * (chunk.size(1) - 1)
        total += loss.item() * n
        count += n
    model.train()
    return total / count


# --------------------------------------------------------------------------- training


def save_checkpoint(path: Path, model, optimizer, gen: torch.Generator, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": gen.get_state(),
            "state": state,
        },
        tmp,
    )
    os.replace(tmp, path)  # atomic: a crash mid-save never corrupts the last checkpoint


def train(model, train_stream, held_out_windows, args) -> dict:
    """Run (or resume) the training loop; returns the loop state (history, wall time...)."""
    optimizer = make_optimizer(model, args)
    gen = torch.Generator().manual_seed(args.seed + 1)
    ckpt_path = args.ckpt_dir / "ckpt.pt"
    state = {"step": 0, "train_wall_s": 0.0, "history": [], "eval_history": []}
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"])
        state = ckpt["state"]
        print(f"resumed from {ckpt_path} at step {state['step']}", flush=True)
    model.train()
    t_last, running = time.perf_counter(), []
    while state["step"] < args.steps:
        step = state["step"]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        batch = sample_batch(train_stream, args, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast_bf16):
            loss = lm_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        running.append(loss.item())
        state["step"] = step + 1
        now = time.perf_counter()
        state["train_wall_s"] += now - t_last
        t_last = now
        if state["step"] % args.log_every == 0 or state["step"] == args.steps:
            mean = sum(running) / len(running)
            state["history"].append((state["step"], mean))
            running = []
            print(
                f"step {state['step']:5d}/{args.steps} loss {mean:.4f} lr {lr_at(step, args):.2e} "
                f"train_wall {state['train_wall_s']:7.1f}s "
                f"({state['train_wall_s'] / state['step']:.2f} s/step)",
                flush=True,
            )
        if args.eval_every and state["step"] % args.eval_every == 0:
            held = evaluate(model, held_out_windows[:32], args.autocast_bf16)
            state["eval_history"].append((state["step"], held))
            print(f"  held-out (32 seqs) loss {held:.4f} ppl {math.exp(held):.2f}", flush=True)
            t_last = time.perf_counter()  # evaluation time is not training time
        if state["step"] % args.ckpt_every == 0 or state["step"] == args.steps:
            save_checkpoint(ckpt_path, model, optimizer, gen, state)
            t_last = time.perf_counter()
    return state


# --------------------------------------------------------------------------- samples & export


@torch.no_grad()
def generate_samples(
    model, tokenizer: Tokenizer, seed: int, max_new_tokens: int = 96
) -> list[dict]:
    model.eval()
    bos = tokenizer.token_to_id(BOS_TOKEN)
    samples = []
    for prompt in SAMPLE_PROMPTS:
        ids = torch.tensor([[bos] + tokenizer.encode(prompt).ids])
        for mode in ("greedy", "temperature=0.8"):
            torch.manual_seed(seed + len(samples))  # a distinct, fixed seed per sample
            kwargs = (
                {"do_sample": False}
                if mode == "greedy"
                else {"do_sample": True, "temperature": 0.8, "top_k": 0, "top_p": 1.0}
            )
            out = model.generate(ids, max_new_tokens=max_new_tokens, **kwargs)
            text = tokenizer.decode(out[0, ids.size(1) :].tolist(), skip_special_tokens=False)
            samples.append(
                {
                    "prompt": prompt,
                    "mode": mode,
                    "max_new_tokens": max_new_tokens,
                    "completion": text,
                }
            )
            print(f"--- {mode} | prompt {prompt!r}\n{prompt}{text}\n", flush=True)
    return samples


def export(model, tokenizer: Tokenizer, out: Path, dtype_name: str) -> None:
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, dtype_name)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    model.to(torch.float32)
    tokenizer.save(str(out / "tokenizer.json"))
    GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
    ).save_pretrained(out)
    # transformers 5 writes "dtype" and nests rope_theta under "rope_parameters"; add the
    # classic top-level keys too so that plain readers (our loader) need not know both forms.
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    config["torch_dtype"] = dtype_name
    config["dtype"] = dtype_name
    config["rope_theta"] = float(model.config.rope_parameters["rope_theta"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def verify_export(out: Path, held_out_windows: torch.Tensor) -> float:
    """Reload what was written (as the stored dtype, upcast to fp32) and re-measure the loss."""
    from transformers import LlamaForCausalLM

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    check_round_trip(tok)
    model = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32)
    return evaluate(model, held_out_windows, autocast=False)


# --------------------------------------------------------------------------- main


@dataclass
class PreparedData:
    corpus_info: dict
    tokenizer: Tokenizer
    train_stream: torch.Tensor  # (N_train,) int32 token ids
    held_stream: torch.Tensor  # (N_held,) int32 token ids
    train_windows: torch.Tensor  # (eval_sequences, seq_len + 1) for the final train loss
    held_windows: torch.Tensor  # (eval_sequences, seq_len + 1) for the held-out loss
    snippet_tokens: int  # tokens in ROUND_TRIP_SNIPPET (a compression sanity figure)


def prepare_data(args: argparse.Namespace) -> PreparedData:
    t0 = time.perf_counter()
    docs = collect_corpus(stdlib_root(), args.max_file_bytes, args.max_corpus_bytes)
    held_out = [d for d in docs if is_held_out(d.rel_path, args.held_out_percent)]
    train_docs = [d for d in docs if not is_held_out(d.rel_path, args.held_out_percent)]
    corpus_info = describe_corpus(docs, held_out)
    print(
        f"corpus: {corpus_info['num_files']} files, {corpus_info['num_bytes'] / 1e6:.1f} MB; "
        f"held out {len(held_out)} files",
        flush=True,
    )

    # The tokenizer never sees held-out files, so held-out perplexity is honest.
    tokenizer = train_tokenizer([d.text for d in train_docs], args.vocab_size)
    train_stream = encode_stream(tokenizer, train_docs)
    held_stream = encode_stream(tokenizer, held_out)
    data = PreparedData(
        corpus_info=corpus_info,
        tokenizer=tokenizer,
        train_stream=train_stream,
        held_stream=held_stream,
        train_windows=eval_windows(train_stream, args.seq_len, args.eval_sequences),
        held_windows=eval_windows(held_stream, args.seq_len, args.eval_sequences),
        snippet_tokens=check_round_trip(tokenizer),
    )
    num_tokens = train_stream.numel() + held_stream.numel()
    print(
        f"tokenizer: vocab {tokenizer.get_vocab_size()}, train {train_stream.numel():,} tokens "
        f"({corpus_info['num_bytes'] / num_tokens:.2f} bytes/token), held out "
        f"{held_stream.numel():,} tokens, {data.held_windows.size(0)} eval windows; "
        f"setup {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    return data


def build_metadata(
    args,
    argv,
    data: PreparedData,
    config,
    num_params: int,
    state: dict,
    losses: dict[str, float],
    samples: list[dict],
    process_wall_s: float,
) -> dict:
    tok = data.tokenizer
    model_keys = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    )
    history = state["history"]
    return {
        "description": "LLMOS embedded default model: a tiny Llama trained on the Python "
        "standard library sources of the training interpreter",
        "command": " ".join(
            ["python", "scripts/train_default_model.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "corpus": data.corpus_info,
        "tokenizer": {
            "type": "byte-level BPE (tokenizers), GPT-2 pre-tokenizer regex, no prefix space",
            "vocab_size": tok.get_vocab_size(),
            "special_tokens": {t: tok.token_to_id(t) for t in SPECIAL_TOKENS},
            "adds_special_tokens": False,
            "train_tokens": data.train_stream.numel(),
            "held_out_tokens": data.held_stream.numel(),
            "round_trip_snippet": ROUND_TRIP_SNIPPET,
            "round_trip_snippet_tokens": data.snippet_tokens,
        },
        "model": {
            "architecture": "LlamaForCausalLM",
            "num_parameters": num_params,
            "stored_dtype": args.dtype,
            "rope_theta": args.rope_theta,
            **{k: getattr(config, k) for k in model_keys},
        },
        "training": {
            k: v
            for k, v in vars(args).items()
            if k not in ("out", "ckpt_dir", "resume", "ckpt_every")
        },
        "results": {
            "steps": state["step"],
            "tokens_seen": state["step"] * args.batch_size * args.seq_len,
            "last_logged_train_loss": history[-1][1],
            **{k: round(v, 4) for k, v in losses.items()},
            "held_out_eval": f"{data.held_windows.size(0)} fixed windows x {args.seq_len} tokens; "
            "perplexity = exp(mean token cross-entropy)",
            "train_wall_time_s": round(state["train_wall_s"], 1),
            # train_wall_time_s spans resumes; this one covers only the last process
            # (corpus, tokenizer, final evaluation, samples, export).
            "process_wall_time_s": round(process_wall_s, 1),
            "loss_history": history[:: max(1, len(history) // 40)],
            "held_out_history": state["eval_history"],
        },
        "samples": samples,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "transformers": __import__("transformers").__version__,
            "tokenizers": __import__("tokenizers").__version__,
            "machine": platform.machine(),
            "threads": args.threads,
        },
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    data = prepare_data(args)

    config = build_config(args, data.tokenizer)
    model = build_model(config)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"model: {num_params:,} parameters", flush=True)
    state = train(model, data.train_stream, data.held_windows, args)

    # Final figures in fp32, no autocast; then again on the exported (rounded) weights.
    train_loss = evaluate(model, data.train_windows, autocast=False)
    held_loss = evaluate(model, data.held_windows, autocast=False)
    samples = generate_samples(model, data.tokenizer, args.seed)
    export(model, data.tokenizer, args.out, args.dtype)
    stored_loss = verify_export(args.out, data.held_windows)
    losses = {
        "train_loss": train_loss,
        "train_perplexity": math.exp(train_loss),
        "held_out_loss": held_loss,
        "held_out_perplexity": math.exp(held_loss),
        "held_out_loss_stored_weights": stored_loss,
        "held_out_perplexity_stored_weights": math.exp(stored_loss),
    }
    metadata = build_metadata(
        args, argv, data, config, num_params, state, losses, samples, time.perf_counter() - t0
    )
    (args.out / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")

    print(f"final: train loss {train_loss:.4f} (ppl {math.exp(train_loss):.2f})")
    print(
        f"final: held-out loss {held_loss:.4f} (ppl {math.exp(held_loss):.2f}) over "
        f"{data.held_windows.size(0)} x {args.seq_len} tokens; stored {args.dtype} weights: "
        f"loss {stored_loss:.4f} (ppl {math.exp(stored_loss):.2f})"
    )
    print(
        f"train wall time {state['train_wall_s']:.1f}s (all runs), "
        f"this process {time.perf_counter() - t0:.1f}s"
    )
    for f in sorted(args.out.iterdir()):
        print(f"wrote {f} ({f.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()

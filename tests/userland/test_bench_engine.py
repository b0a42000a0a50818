"""``llmos bench engine`` end to end on a tiny random checkpoint: both sides run, the JSON has
every figure, and both count the same tokens. No timing assertions (STYLE.md: figures live in
benchmarks, never in timed tests)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from model_fixtures import write_checkpoint

from llmos.userland.bench_engine import (
    Scale,
    draw_requests,
    load_trace,
    run_bench_engine,
    run_benchmark,
)

pytest.importorskip("transformers")  # bench_engine imports it lazily, on the HF side only

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

TRACE = "arrived_at,num_prefill_tokens,num_decode_tokens\n" + "".join(
    f"{i * 0.5},{40 + 13 * i},{12 + 5 * i}\n" for i in range(10)
)


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(TRACE)
    return path


def test_both_sides_run_and_count_the_same_tokens(tmp_path, trace):
    write_checkpoint(tmp_path / "tiny", max_position_embeddings=512)
    result = run_benchmark(tmp_path / "tiny", trace, num_requests=4, seed=3, hf_batch_size=2,
                           latency_prompt_len=8, latency_new=6, threads=1)
    json.dumps(result)  # what --json prints must be plain data
    for key in ("model", "scale", "hf", "llmos", "throughput_ratio", "latency_ratio", "targets", "meets_targets",
                "outputs_identical", "latency_ratio_vs_forward_loop"):
        assert key in result
    for side in ("hf", "llmos"):
        assert {"wall_s", "num_tokens", "tokens_per_s", "latency"} <= result[side].keys()
        assert result[side]["latency"]["per_token_s"] > 0
    assert result["hf"]["num_tokens"] == result["llmos"]["num_tokens"] == result["output_tokens"]
    assert result["hf"]["num_generated"] >= result["hf"]["num_tokens"]


def test_requests_are_scaled_clipped_and_seeded(trace):
    rows = load_trace(trace)
    scale = Scale()
    first = draw_requests(rows, 4, vocab_size=128, seed=7, scale=scale)
    assert first == draw_requests(rows, 4, vocab_size=128, seed=7, scale=scale)
    for r in first:
        assert scale.prompt_min <= len(r.prompt_ids) <= scale.prompt_max
        assert scale.output_min <= r.num_output <= scale.output_max
        assert all(0 <= t < 128 for t in r.prompt_ids)


def test_missing_trace_is_enoent(tmp_path, capsys):
    write_checkpoint(tmp_path / "tiny")
    args = argparse.Namespace(model=str(tmp_path / "tiny"), trace=str(tmp_path / "nope.csv"), requests=4, seed=0,
                              hf_batch_size=8, threads=1, json=True)
    assert run_bench_engine(args) == 1
    assert "ENOENT" in capsys.readouterr().err

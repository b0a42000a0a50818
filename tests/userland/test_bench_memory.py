"""``llmos bench memory`` on a small synthetic trace: the figures are there and sensible."""

from __future__ import annotations

import json

from llmos.userland.cli import main


def test_bench_memory_reports_utilization_and_preemptions(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    rows = ["arrived_at,num_prefill_tokens,num_decode_tokens"]
    rows += [f"{i * 0.001:.3f},{40 + 13 * (i % 7)},{30 + 3 * (i % 5)}" for i in range(30)]
    trace.write_text("\n".join(rows) + "\n")
    status = main(["bench", "memory", "--trace", str(trace), "--requests", "30", "--kv-blocks", "40",
                   "--block-size", "8", "--json"])
    figures = json.loads(capsys.readouterr().out)
    assert status == 0
    assert figures["requests"] == 30 and figures["samples"] > 0
    assert 0.8 < figures["utilization"] <= 1.0
    assert figures["preemptions"] > 0  # 40 blocks of 8 cannot hold 30 prompts of ~80 tokens
    assert figures["preemptions"] == figures["swaps"] + figures["recomputes"]


def test_bench_memory_without_a_trace_says_enoent(tmp_path, capsys):
    assert main(["bench", "memory", "--trace", str(tmp_path / "none.csv")]) == 1
    assert "ENOENT" in capsys.readouterr().err

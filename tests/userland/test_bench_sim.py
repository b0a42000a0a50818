"""``llmos bench sim`` on a small trace: both runs agree and the figures are there."""

from __future__ import annotations

import json

from llmos.userland.cli import main


def _trace(tmp_path):
    trace = tmp_path / "trace.csv"
    rows = ["arrived_at,num_prefill_tokens,num_decode_tokens"]
    rows += [f"{i * 0.05:.3f},{40 + 13 * (i % 7)},{30 + 3 * (i % 5)}" for i in range(40)]
    trace.write_text("\n".join(rows) + "\n")
    return trace


def test_bench_sim_runs_both_loops_and_finds_them_identical(tmp_path, capsys):
    status = main(["bench", "sim", "--trace", str(_trace(tmp_path)), "--requests", "40", "--rounds", "2", "--json"])
    figures = json.loads(capsys.readouterr().out)
    assert status == 0
    assert figures["identical"] is True and figures["requests"] == 40 and figures["rounds"] == 2
    one, multi = figures["one_step"], figures["multi_step"]
    assert one["steps"] == multi["steps"] == one["driver_calls"]  # the peer plans every step
    assert multi["driver_calls"] < one["driver_calls"]
    assert figures["speedup"] == one["wall_s"] / multi["wall_s"]


def test_bench_sim_refuses_bad_arguments_with_an_errno(tmp_path, capsys):
    assert main(["bench", "sim", "--requests", "0"]) == 1
    assert "EINVAL" in capsys.readouterr().err
    assert main(["bench", "sim", "--trace", str(tmp_path / "none.csv")]) == 1
    assert "ENOENT" in capsys.readouterr().err

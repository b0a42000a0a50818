"""``llmos bench policies`` on a small synthetic trace: every policy runs and is compared to fcfs."""

from __future__ import annotations

import json

from llmos.userland.cli import main


def test_bench_policies_reports_each_policy_against_fcfs(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    rows = ["arrived_at,num_prefill_tokens,num_decode_tokens"]
    rows += [f"{i * 0.01:.2f},{20 + 30 * (i % 4)},{5 + 40 * (i % 3)}" for i in range(24)]
    trace.write_text("\n".join(rows) + "\n")
    assert main(["bench", "policies", "--trace", str(trace), "--requests", "24", "--max-seqs", "4", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["fcfs"]["e2e_mean_vs_fcfs"] == 1.0
    for policy in ("mlfq", "srpt"):
        assert figures[policy]["e2e_mean_s"] > 0 and figures[policy]["ttft_mean_s"] <= figures[policy]["e2e_mean_s"]
    # With the true lengths, shortest-remaining-first cannot lose to FCFS on mean latency here.
    assert figures["srpt"]["e2e_mean_vs_fcfs"] < 1.0

"""``llmos bench npu`` at its smallest: the figures are there and sensible."""

from __future__ import annotations

import json

from llmos.userland.cli import main


def test_bench_npu_reports_agreement_perplexity_and_modeled_time(capsys):
    status = main(["bench", "npu", "--windows", "2", "--prompts", "1", "--new-tokens", "4", "--json"])
    figures = json.loads(capsys.readouterr().out)
    assert status == 0
    assert figures["windows"] == 2 and figures["positions"] == 2 * 256
    assert figures["weight_bytes_npu"] < figures["weight_bytes_cpu"] / 3
    assert 1.0 < figures["perplexity_cpu"] < 100 and abs(figures["perplexity_npu"] / figures["perplexity_cpu"] - 1) < 0.05
    assert figures["top1_agreement"] > 0.9 and 0.0 <= figures["greedy_agreement"] <= 1.0
    # Modeled device time of the phone preset is far below what the host takes to emulate it.
    assert 0 < figures["decode_modeled_s"] < figures["decode_wall_s"]
    assert 0 < figures["prefill_modeled_s"] < figures["prefill_wall_s"]


def test_bench_npu_with_a_bad_preset_fails_cleanly(capsys):
    assert main(["bench", "npu", "--spec", "watch"]) == 1
    assert "unknown npu preset 'watch'" in capsys.readouterr().err

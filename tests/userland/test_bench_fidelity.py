"""``llmos bench fidelity``: a tiny real-vs-simulated run reports finite errors; the pieces alone."""

from __future__ import annotations

import json
import math

import pytest

from llmos.sim.profile import ProfileCost, Sample
from llmos.sim.records import Request
from llmos.userland import bench_fidelity as bf
from llmos.userland.cli import main

TINY = ["bench", "fidelity", "--json", "--requests", "12", "--rate", "40", "--prompt-len", "uniform:8:48",
        "--output-len", "uniform:4:12", "--max-seqs", "4", "--kv-blocks", "64", "--repeats", "1",
        "--grid-limit", "8", "--trials", "1", "--pilot-requests", "4", "--pilot-shapes", "4"]


def test_tiny_fidelity_run_reports_every_field_with_finite_errors(capsys, tmp_path):
    saved = tmp_path / "profile.json"
    assert main([*TINY, "--save-profile", str(saved)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["requests"] == 12 and report["trials"] == 1
    for side in ("real", "sim"):
        for metric in ("e2e_s", "ttft_s", "tpot_s"):
            for stat in ("mean", "p90"):
                assert report[side][metric][stat] > 0
        assert report[side]["queue_s"]["mean"] >= 0
    for metric in ("e2e_s", "ttft_s", "tpot_s"):
        for stat in ("mean", "p90"):
            assert math.isfinite(report["error"][metric][stat])
            assert math.isfinite(report["error_oracle"][metric][stat])
    targets = report["targets"]
    assert targets["mean_e2e"] == 0.05 and targets["p90_e2e"] == 0.10
    assert targets["met"] == (targets["mean_e2e_met"] and targets["p90_e2e_met"])
    assert report["calibration"]["fit"]["rel_rms"] >= 0
    assert report["calibration"]["torch_threads"] == 1
    (trial,) = report["trial_runs"]
    assert trial["real_run_check"]["steps"] == trial["real"]["steps"] > 0
    assert report["pilot"]["steps"] > 0 and report["pilot"]["gap_s"] == report["host_overhead_s"] >= 0
    assert report["calibration"]["pilot_shapes"] == 4
    assert trial["drift"] > 0  # calibrated before and after the real run
    assert json.loads(saved.read_text())["metadata"]["host_overhead_s"] == report["host_overhead_s"]


def test_tiny_fidelity_table(capsys):
    assert main([a for a in TINY if a != "--json"] + ["--no-bracket", "--pilot-requests", "0"]) == 0
    out = capsys.readouterr().out
    assert "e2e mean" in out and "targets: mean E2E within 5%" in out


def test_bad_options_are_usage_errors(capsys):
    assert main(["bench", "fidelity", "--requests", "0"]) == 2
    assert "--requests must be >= 1" in capsys.readouterr().err
    assert main(["bench", "fidelity", "--rate", "-1"]) == 2


def test_workload_grid_covers_the_workload():
    requests = [Request(i, 0.0, p, o) for i, (p, o) in enumerate([(32, 16), (256, 96), (100, 50)])]
    grid = bf.workload_grid(requests, max_seqs=8, max_batch_tokens=512)
    decodes = [shape for shape in grid if all(q == 1 for _, q in shape)]
    assert {len(shape) for shape in decodes} == set(range(1, 9))
    assert max(s + q for shape in decodes for s, q in shape) == 256 + 96
    assert [(0, 256)] in grid and [(0, 32)] in grid
    assert any(len(shape) == 8 and shape[-1][1] > 1 for shape in grid)  # 7 decodes + a prompt chunk
    assert all(sum(q for _, q in shape) <= 512 for shape in grid)


def test_bracket_averages_two_calibrations_and_keeps_the_drift():
    shapes = [(n, t, c, p) for n, t, c, p in
              [(1, 1, 10, 10), (2, 2, 40, 40), (4, 4, 100, 100), (1, 64, 64, 2080), (8, 8, 800, 800), (1, 128, 128, 8256)]]
    truth = ProfileCost({"step_s": 0.002, "token_s": 1e-4, "context_token_s": 1e-6, "seq_s": 5e-4})
    before = [Sample(*s, truth.step_seconds(*s)) for s in shapes]
    after = [Sample(*s, 1.2 * truth.step_seconds(*s)) for s in shapes]
    profile = bf.bracket(ProfileCost(truth.coefficients, {}, before), ProfileCost(truth.coefficients, {}, after))
    assert profile.metadata["drift"] == pytest.approx(1.2)
    for term, value in truth.coefficients.items():
        assert profile.coefficients[term] == pytest.approx(1.1 * value, rel=1e-6, abs=1e-12)
    with_overhead = bf.with_host_overhead(profile, 0.001)
    assert with_overhead.coefficients["step_s"] == pytest.approx(profile.coefficients["step_s"] + 0.001)


def test_relative_errors_and_targets():
    real = {m: {"mean": 1.0, "p90": 2.0} for m in bf.METRICS}
    sim = {m: {"mean": 1.04, "p90": 1.7} for m in bf.METRICS}
    errors = bf.relative_errors(real, sim)
    assert errors["e2e_s"]["mean"] == pytest.approx(0.04)
    assert errors["e2e_s"]["p90"] == pytest.approx(-0.15)
    targets = bf._targets(errors)
    assert targets["mean_e2e_met"] and not targets["p90_e2e_met"] and not targets["met"]


def test_simulate_runs_on_the_kernel_configuration_it_is_given():
    import dataclasses

    import trio
    import trio.testing

    from llmos.sim.runner import SimConfig, kernel_config, run_simulation, simulate
    from llmos.sim.workloads import WorkloadSpec, make_workload

    config = SimConfig(workload=WorkloadSpec(rate=50.0, num_requests=20, prompt_len="uniform:16:64",
                                             output_len="uniform:4:16"), model="default", device="cpu", kv_blocks=64)
    requests = make_workload(config.workload, config.seed)
    default = run_simulation(config, requests)
    given = kernel_config(config, len(requests))
    renamed = dataclasses.replace(given, devices=[dataclasses.replace(given.devices[0], name="other0")])
    result = trio.run(simulate, config, requests, renamed, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [r.output_tokens for r in result.records] == [r.output_tokens for r in default.records]
    assert result.num_steps == default.num_steps

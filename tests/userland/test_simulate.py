"""``llmos sim`` from the command line: summary, files, errors."""

from __future__ import annotations

import json

from llmos.userland.cli import main

ARGS = ["sim", "--arrivals", "poisson", "--rate", "20", "--num-requests", "40",
        "--prompt-len", "uniform:20:200", "--output-len", "uniform:5:50"]


def test_sim_prints_a_json_summary(capsys):
    assert main([*ARGS, "--json", "--slo-ttft", "0.5", "--slo-tpot", "0.05"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["requests"]["completed"] == 40
    assert summary["time"]["steps"] > 0 and summary["time"]["wall_s"] > 0
    assert summary["slo"]["goodput_requests_per_s"] is not None


def test_sim_writes_its_files_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*ARGS, "--out", str(out), "--plots"]) == 0
    for name in ("requests.csv", "token_times.csv", "timeline.csv", "summary.json", "config.json",
                 "latency_cdf.png", "kv_utilization.png", "gantt.png"):
        assert (out / name).stat().st_size > 0, name
    assert "steps/s" in capsys.readouterr().out
    assert len((out / "requests.csv").read_text().splitlines()) == 41


def test_sim_errors_name_their_errno(capsys):
    assert main([*ARGS, "--device", "no-such-device"]) == 1
    assert "(ENOENT)" in capsys.readouterr().err
    assert main([*ARGS, "--trace", "/no/such/trace.csv"]) == 1
    assert "(ENOENT)" in capsys.readouterr().err
    assert main([*ARGS, "--plots"]) == 1
    assert "(EINVAL)" in capsys.readouterr().err


def test_sim_sweep_runs_a_grid(tmp_path, capsys):
    config = tmp_path / "sweep.toml"
    config.write_text(
        '[base]\nmodel = "llama-2-7b"\ndevice = "a100"\n'
        '[base.workload]\narrivals = "poisson"\nrate = 20.0\nnum_requests = 30\n'
        'prompt_len = "uniform:20:200"\noutput_len = "uniform:5:50"\n'
        '[grid]\npolicy = ["fcfs", "srpt"]\n"workload.rate_scale" = [1.0, 2.0]\n')
    out = tmp_path / "out"
    assert main(["sim", "sweep", str(config), "--out", str(out), "--jobs", "2", "--no-progress"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert (out / "throughput_latency.png").exists()

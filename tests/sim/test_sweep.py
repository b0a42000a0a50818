"""Sweep files expand into points; run_sweep runs them in worker processes and survives failures.

The runs here use ``fake_run``, a deterministic stand-in for the runner that builds a SimResult
from the config alone; it is a module-level function so that spawned workers can import it.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from llmos.sim import sweep as sweep_module
from llmos.sim.errors import SimError
from llmos.sim.records import RequestRecord, SimResult, TimelineSample
from llmos.sim.sweep import load_sweep, load_sweep_file, print_results_table, run_sweep


def fake_run(config: dict) -> SimResult:
    """A SimResult that depends only on the config; policy 'boom' fails like a bad config."""
    if config.get("policy") == "boom":
        raise SimError("EINVAL", "no policy named 'boom'")
    speed = {"fcfs": 1.0, "srpt": 2.0}.get(config.get("policy", "fcfs"), 1.5)
    scale = config.get("workload", {}).get("rate_scale", 1.0)
    records = []
    for i in range(6):
        start = 0.5 * i / scale
        tokens = [start + 0.1 + 0.05 * k / speed for k in range(3 + config.get("seed", 0))]
        records.append(RequestRecord(
            request_id=i, pid=i + 1, tenant="ab"[i % 2], nice=0, prompt_tokens=16,
            output_tokens=len(tokens), arrival_s=start, first_scheduled_s=start + 0.05,
            first_token_s=tokens[0], completion_s=tokens[-1], token_times_s=tokens,
            exit_reason="length"))
    timeline = [TimelineSample(time_s=0.5 * t, running=2, waiting=1, batch_seqs=2,
                               batch_tokens=4, kv_blocks_used=t, kv_blocks_total=8,
                               kv_utilization=0.8) for t in range(6)]
    return SimResult(config=config, records=records, timeline=timeline,
                     simulated_s=records[-1].completion_s, num_steps=30, num_driver_calls=30,
                     wall_s=0.01)


def write_sweep(tmp_path: Path, text: str) -> Path:
    """A sweep file in tmp/configs/, next to a trace in tmp/traces/."""
    (tmp_path / "traces").mkdir(exist_ok=True)
    (tmp_path / "traces" / "t.csv").write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n")
    (tmp_path / "configs").mkdir(exist_ok=True)
    path = tmp_path / "configs" / "sweep.toml"
    path.write_text(text)
    return path


GRID = """
[base]
model = "llama-2-7b"
device = "a100"
[base.workload]
trace = "../traces/t.csv"
num_requests = 2000
[grid]
policy = ["fcfs", "mlfq", "srpt"]
"workload.rate_scale" = [1.0, 1.5]
seed = [0, 1]
kv_blocks = [2048, 4096]
[slo]
ttft_s = 0.5
"""


def test_grid_expands_to_the_cartesian_product(tmp_path):
    sweep = load_sweep_file(write_sweep(tmp_path, GRID))
    assert len(sweep.points) == 24 and sweep.slo_ttft_s == 0.5 and sweep.slo_tpot_s is None
    trace = str((tmp_path / "traces" / "t.csv").resolve())
    assert sweep.points[0] == {"model": "llama-2-7b", "device": "a100", "policy": "fcfs",
                               "seed": 0, "kv_blocks": 2048,
                               "workload": {"trace": trace, "num_requests": 2000,
                                            "rate_scale": 1.0}}
    assert sweep.points[1]["kv_blocks"] == 4096  # the last grid key varies fastest
    assert sweep.points[-1]["policy"] == "srpt"
    assert sweep.points[-1]["workload"]["rate_scale"] == 1.5
    assert sweep.points[0]["workload"] is not sweep.points[1]["workload"]


def test_unquoted_workload_keys_and_whole_workloads(tmp_path):
    points = load_sweep(write_sweep(tmp_path, """
[grid]
workload.rate_scale = [1.0, 2.0]
"""))
    assert [p["workload"] for p in points] == [{"rate_scale": 1.0}, {"rate_scale": 2.0}]
    points = load_sweep(write_sweep(tmp_path, """
[base.workload]
num_requests = 10
[grid]
workload = [{arrivals = "poisson"}, {trace = "../traces/t.csv"}]
"""))
    assert points[0]["workload"] == {"num_requests": 10, "arrivals": "poisson"}
    assert points[1]["workload"]["trace"] == str((tmp_path / "traces" / "t.csv").resolve())


def test_no_grid_is_one_point(tmp_path):
    assert load_sweep(write_sweep(tmp_path, '[base]\npolicy = "fcfs"\n')) == [{"policy": "fcfs"}]


@pytest.mark.parametrize("text, errno, words", [
    ('[base]\npolcy = "fcfs"\n', "EINVAL", ["'polcy'", "allowed:", "policy"]),
    ('[grid]\npolcy = ["fcfs"]\n', "EINVAL", ["'polcy'", "allowed:"]),
    ('[grid]\n"workload.rat" = [1]\n', "EINVAL", ["point 0", "'rat'", "rate_scale"]),
    ('[base.workload]\nrat = 1\n', "EINVAL", ["'rat'"]),
    ('[grid]\npolicy = ["fcfs", "nope"]\n', "EINVAL", ["point 1", "'nope'"]),
    ('[base]\nkv_blocks = 0\n', "EINVAL", ["point 0", "kv_blocks"]),
    ('[sweeep]\nx = 1\n', "EINVAL", ["'sweeep'", "base, grid, slo"]),
    ('[grid]\npolicy = "fcfs"\n', "EINVAL", ["non-empty list"]),
    ('[grid]\npolicy = []\n', "EINVAL", ["non-empty list"]),
    ('[slo]\nttft_s = -1\n', "EINVAL", ["positive"]),
    ('[slo]\nttf_s = 1\n', "EINVAL", ["'ttf_s'"]),
    ('base = 3\n', "EINVAL", ["[base] must be a table"]),
    ('[base\n', "EINVAL", ["not valid TOML"]),
    ('[base.workload]\ntrace = "../traces/missing.csv"\n', "ENOENT", ["missing.csv"]),
])
def test_bad_sweep_files(tmp_path, text, errno, words):
    with pytest.raises(SimError) as info:
        load_sweep(write_sweep(tmp_path, text))
    assert info.value.errno == errno
    for word in words:
        assert word in info.value.message


def test_without_the_runner_keys_are_still_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "_sim_config_class", lambda: None)
    text = '[base]\npolicy = "nope"\n[grid]\n"workload.anything" = [1, 2]\n'
    assert len(load_sweep(write_sweep(tmp_path, text))) == 2  # values are the runner's to check
    with pytest.raises(SimError) as info:
        load_sweep(write_sweep(tmp_path, "[base]\npolcy = 1\n"))
    assert "'polcy'" in info.value.message and "sample_interval_s" in info.value.message


def test_missing_file_and_missing_parser(tmp_path, monkeypatch):
    with pytest.raises(SimError) as info:
        load_sweep(tmp_path / "nope.toml")
    assert info.value.errno == "ENOENT"
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(SimError) as info:
        load_sweep(write_sweep(tmp_path, ""))
    assert info.value.errno == "ENOSYS" and "tomli" in info.value.message


def test_run_sweep_writes_results_and_survives_a_failing_point(tmp_path, capsys):
    configs = [{"policy": policy, "seed": 0, "workload": {"rate_scale": scale}}
               for policy in ("fcfs", "boom", "srpt") for scale in (1.0, 2.0)]
    out = tmp_path / "out"
    rows = run_sweep(configs, out, jobs=2, run=fake_run, progress=False, slo_ttft_s=0.2)
    assert [r["point"] for r in rows] == list(range(6))
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error", "ok", "ok"]
    failed = rows[2]
    assert failed["errno"] == "EINVAL" and "boom" in failed["error"]
    assert failed["throughput.requests_per_s"] is None
    assert rows[0]["policy"] == "fcfs" and rows[0]["workload.rate_scale"] == 1.0
    assert rows[0]["requests.completed"] == 6 and rows[0]["slo.goodput_requests_per_s"] > 0
    assert "seed" in rows[0]  # always shown, even when it does not vary
    for i in (0, 1, 4, 5):
        folder = out / f"point-00{i}"
        assert sorted(p.name for p in folder.iterdir()) == [
            "config.json", "requests.csv", "summary.json", "timeline.csv"]
        assert json.loads((folder / "config.json").read_text()) == configs[i]
    assert sorted(p.name for p in (out / "point-002").iterdir()) == ["config.json", "error.txt"]
    assert "no policy named 'boom'" in (out / "point-002" / "error.txt").read_text()
    with open(out / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 6 and table[2]["status"] == "error" and table[2]["errno"] == "EINVAL"
    assert json.loads((out / "results.json").read_text()) == rows
    pngs = sorted(p.name for p in out.glob("*.png"))
    # One CDF per value of the other swept keys (the load here), seeds pooled, policies as lines.
    assert pngs == ["gantt.png", "kv_utilization_fcfs.png", "kv_utilization_srpt.png",
                    "latency_cdf_e2e__workload.rate_scale=1.0.png",
                    "latency_cdf_e2e__workload.rate_scale=2.0.png",
                    "latency_cdf_ttft__workload.rate_scale=1.0.png",
                    "latency_cdf_ttft__workload.rate_scale=2.0.png", "throughput_latency.png"]
    print_results_table(rows)
    printed = capsys.readouterr().out
    assert "EINVAL" in printed and "srpt" in printed


def test_run_sweep_from_a_file(tmp_path):
    path = write_sweep(tmp_path, """
[base.workload]
trace = "../traces/t.csv"
[grid]
policy = ["fcfs", "srpt"]
kv_blocks = [8, 16]
[slo]
tpot_s = 1.0
""")
    rows = run_sweep(path, tmp_path / "out", jobs=1, run=fake_run, progress=False, plots=False,
                     token_times=True)
    assert [(r["policy"], r["kv_blocks"]) for r in rows] == [
        ("fcfs", 8), ("fcfs", 16), ("srpt", 8), ("srpt", 16)]
    assert all(r["slo.goodput_requests_per_s"] is not None for r in rows)  # the file's [slo]
    summary = json.loads((tmp_path / "out" / "point-003" / "summary.json").read_text())
    assert summary["slo"]["tpot_s"] == 1.0
    assert (tmp_path / "out" / "point-000" / "token_times.csv").is_file()
    assert not list((tmp_path / "out").glob("*.png"))


def test_run_sweep_bad_arguments(tmp_path):
    with pytest.raises(SimError) as info:
        run_sweep([{"policy": "fcfs"}], tmp_path, run=lambda c: fake_run(c), progress=False)
    assert info.value.errno == "EINVAL" and "module-level" in info.value.message
    for bad in (0, -2, 1.5, True):
        with pytest.raises(SimError):
            run_sweep([{}], tmp_path, jobs=bad, run=fake_run, progress=False)
    with pytest.raises(SimError):
        run_sweep([1, 2], tmp_path, run=fake_run, progress=False)  # type: ignore[list-item]


def test_run_sweep_with_the_real_runner(tmp_path):
    pytest.importorskip("llmos.sim.runner")
    configs = [{"workload": {"num_requests": 4, "rate": 20.0}, "kv_blocks": 512, "policy": policy}
               for policy in ("fcfs", "srpt")]
    rows = run_sweep(configs, tmp_path, jobs=1, progress=False, plots=False)
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    assert rows[0]["requests.completed"] == 4
    config = json.loads((tmp_path / "point-001" / "config.json").read_text())
    assert config["policy"] == "srpt" and config["workload"]["num_requests"] == 4
    assert "max_seqs" in config  # the runner's defaults, filled in


def test_the_example_sweep_in_the_repository_loads():
    points = load_sweep(Path(__file__).resolve().parents[2] / "examples" / "sweep.toml")
    assert len(points) == 6
    assert {p["policy"] for p in points} == {"fcfs", "mlfq", "srpt"}

"""Plots write non-empty PNGs, also from empty data, and refuse bad input with an errno."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from llmos.sim.errors import SimError  # noqa: E402  (after the skip: plots need matplotlib)
from llmos.sim.plots import (  # noqa: E402
    plot_gantt,
    plot_kv_utilization,
    plot_latency_cdf,
    plot_sweep,
    plot_throughput_latency,
)
from llmos.sim.records import RequestRecord, TimelineSample  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def records(n: int = 12, offset: float = 0.0) -> list[RequestRecord]:
    """n requests, one still queued, one failed."""
    out = []
    for i in range(n):
        arrival = 0.3 * i
        start = None if i == n - 1 else arrival + 0.1 + offset
        tokens = [] if start is None else [start + 0.2 + 0.05 * k for k in range(4)]
        out.append(RequestRecord(
            request_id=i, pid=10 + i, tenant="t", nice=0, prompt_tokens=8,
            output_tokens=len(tokens), arrival_s=arrival, first_scheduled_s=start,
            first_token_s=tokens[0] if tokens else None,
            completion_s=tokens[-1] if tokens else None, token_times_s=tokens,
            exit_reason="error" if i == 3 else "length", errno="ENOMEM" if i == 3 else None))
    return out


def timeline() -> list[TimelineSample]:
    """A few samples of a filling cache."""
    return [TimelineSample(time_s=0.5 * i, running=i % 4, waiting=3 - i % 4, batch_seqs=i % 4,
                           batch_tokens=8, kv_blocks_used=2 * i, kv_blocks_total=20,
                           kv_utilization=0.9) for i in range(10)]


def assert_png(path: Path) -> None:
    """The file exists and is a PNG with some content."""
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000


def test_latency_cdf(tmp_path):
    for metric in ("e2e", "ttft", "tpot", "gap", "normalized_latency_s"):
        path = plot_latency_cdf({"fcfs": records(), "srpt": records(offset=0.2)},
                                tmp_path / "cdf" / f"{metric}.png", metric=metric, log_x=True)
        assert_png(path)


def test_latency_cdf_without_completed_requests(tmp_path):
    assert_png(plot_latency_cdf({"fcfs": []}, tmp_path / "empty.png"))


def test_unknown_metric_is_einval(tmp_path):
    with pytest.raises(SimError) as info:
        plot_latency_cdf({"fcfs": records()}, tmp_path / "x.png", metric="latency")
    assert info.value.errno == "EINVAL" and "e2e" in info.value.message
    assert not (tmp_path / "x.png").exists()


def test_throughput_latency(tmp_path):
    points = [{"label": policy, "throughput": 10.0 * i + j, "p50_s": 0.1 * i, "p90_s": 0.2 * i}
              for j, policy in enumerate(["fcfs", "mlfq"]) for i in range(1, 4)]
    points.append({"label": "fcfs", "throughput": None, "p50_s": None, "p90_s": None})
    assert_png(plot_throughput_latency(points, tmp_path / "tl.png"))
    with pytest.raises(SimError) as info:
        plot_throughput_latency([{"label": "x", "throughput": 1.0}], tmp_path / "bad.png")
    assert info.value.errno == "EINVAL" and "p50_s" in info.value.message


def test_kv_utilization(tmp_path):
    assert_png(plot_kv_utilization(timeline(), tmp_path / "kv.png"))
    assert_png(plot_kv_utilization([], tmp_path / "kv_empty.png"))
    with pytest.raises(SimError):
        plot_kv_utilization(records(), tmp_path / "kv_bad.png")  # type: ignore[arg-type]


def test_gantt(tmp_path):
    assert_png(plot_gantt(records(), tmp_path / "gantt.png"))
    assert_png(plot_gantt(records(30), tmp_path / "gantt_cut.png", max_requests=5))
    assert_png(plot_gantt([], tmp_path / "gantt_empty.png"))
    with pytest.raises(SimError):
        plot_gantt(records(), tmp_path / "g.png", max_requests=0)


def test_plot_sweep_writes_every_figure(tmp_path):
    summary = {"throughput.output_tokens_per_s": 5.0, "latency.e2e_s.p50": 0.4,
               "latency.e2e_s.p90": 0.6}
    points = [{"index": i, "policy": policy, "group": [("kv_blocks", kv)], "curve": [],
               "summary": summary, "values": {"e2e_s": [0.1, 0.2, 0.3], "ttft_s": [0.05]},
               **({"timeline": timeline(), "records": records()} if i == 0 else {})}
              for i, (policy, kv) in enumerate([("fcfs", 8), ("srpt", 8), ("fcfs", 16)])]
    points[1]["timeline"] = timeline()
    written = plot_sweep(points, tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["gantt.png", "kv_utilization_fcfs.png", "kv_utilization_srpt.png",
                     "latency_cdf_e2e__kv_blocks=16.png", "latency_cdf_e2e__kv_blocks=8.png",
                     "latency_cdf_ttft__kv_blocks=16.png", "latency_cdf_ttft__kv_blocks=8.png",
                     "throughput_latency.png"]
    for path in written:
        assert_png(path)

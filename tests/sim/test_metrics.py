"""Metrics on hand-built records: exact percentiles, goodput, fairness, KV use, stable files."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from llmos.sim.errors import SimError
from llmos.sim.metrics import (
    LATENCY_METRICS,
    REQUEST_COLUMNS,
    distribution,
    flatten_summary,
    format_summary_table,
    gap_values,
    jain_index,
    latency_values,
    summarize,
    write_requests_csv,
    write_summary_json,
    write_timeline_csv,
    write_token_times_csv,
)
from llmos.sim.records import RequestRecord, SimResult, TimelineSample


def record(request_id: int, arrival: float = 0.0, first_token: float | None = 0.5,
           tokens: list[float] | None = None, tenant: str = "a", **kw) -> RequestRecord:
    """A record that completes at its last token time (or first token, with one token)."""
    times = tokens if tokens is not None else [first_token] if first_token is not None else []
    fields = dict(request_id=request_id, pid=100 + request_id, tenant=tenant, nice=0,
                  prompt_tokens=10, output_tokens=len(times), arrival_s=arrival,
                  first_scheduled_s=arrival, first_token_s=times[0] if times else None,
                  completion_s=times[-1] if times else None, token_times_s=times,
                  exit_reason="length")
    fields.update(kw)
    return RequestRecord(**fields)


def result(records: list[RequestRecord], simulated_s: float = 10.0,
           timeline: list[TimelineSample] | None = None) -> SimResult:
    """A SimResult around ``records``."""
    return SimResult(config={"policy": "fcfs"}, records=records, timeline=timeline or [],
                     simulated_s=simulated_s, num_steps=40, num_driver_calls=20, wall_s=2.0)


def sample(t: float, used: int, util: float, batch: int = 0, running: int = 0) -> TimelineSample:
    """A timeline sample with 10 blocks in all."""
    return TimelineSample(time_s=t, running=running, waiting=0, batch_seqs=batch,
                          batch_tokens=batch * 2, kv_blocks_used=used, kv_blocks_total=10,
                          kv_utilization=util)


def test_distribution_uses_numpy_linear_percentiles():
    stats = distribution([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stats == {"count": 5, "mean": 3.0, "p50": 3.0, "p90": 4.6, "p99": 4.96, "max": 5.0}
    assert distribution([])["p50"] is None


def test_gap_values_equal_latency_values_of_gaps():
    records = [record(1, tokens=[0.1, 0.35, 0.37, 1.9]), record(2, tokens=[2.0]),
               record(3, tokens=[0.3, 0.7], completion_s=None), record(4, tokens=[5.0, 5.25])]
    assert gap_values(records).tolist() == latency_values(records, "gap_s") == [0.35 - 0.1, 0.37 - 0.35, 1.9 - 0.37, 5.25 - 5.0]
    assert gap_values([]).size == 0


def test_latency_sections_cover_completed_requests_only():
    records = [record(i, arrival=0.0, tokens=[1.0 + i, 2.0 + i, 4.0 + i]) for i in range(5)]
    records.append(record(5, tokens=[0.1, 0.2], exit_reason="error", errno="ENOMEM"))
    records.append(record(6, tokens=[0.1], exit_reason="signal"))
    records.append(record(7, first_token=None))  # never ran: no completion
    summary = summarize(result(records))
    assert summary["requests"] == {"total": 8, "completed": 5, "errors": 1, "killed": 1,
                                   "unfinished": 1}
    e2e = summary["latency"]["e2e_s"]
    assert (e2e["p50"], e2e["p90"], e2e["p99"], e2e["max"]) == (6.0, 7.6, 7.96, 8.0)
    assert summary["latency"]["ttft_s"]["mean"] == 3.0
    assert summary["latency"]["tpot_s"]["p50"] == 1.5  # (4 - 1) / 2 for every request
    assert summary["latency"]["gap_s"] == {"count": 10, "mean": 1.5, "p50": 1.5, "p90": 2.0,
                                           "p99": 2.0, "max": 2.0}
    assert summary["latency"]["normalized_latency_s"]["p50"] == 2.0  # 6 s / 3 tokens
    assert summary["throughput"] == {"requests_per_s": 0.5, "output_tokens_per_s": 1.5,
                                     "total_tokens_per_s": 6.5}
    assert summary["time"]["steps_per_wall_s"] == 20.0
    assert list(summary["latency"]) == list(LATENCY_METRICS)


def test_goodput_counts_requests_meeting_every_slo():
    records = [
        record(0, tokens=[0.2, 0.3, 0.4]),  # ttft 0.2, tpot 0.1: meets both
        record(1, tokens=[0.4, 1.4]),  # ttft 0.4, tpot 1.0: misses tpot
        record(2, tokens=[0.6, 0.7]),  # ttft 0.6: misses ttft
        record(3, tokens=[0.3]),  # one token: no tpot, meets both
        record(4, tokens=[0.1, 0.2], exit_reason="error", errno="EIO"),  # errors meet nothing
    ]
    slo = summarize(result(records, simulated_s=4.0), slo_ttft_s=0.5, slo_tpot_s=0.5)["slo"]
    assert slo == {"ttft_s": 0.5, "tpot_s": 0.5, "goodput_requests_per_s": 0.5,
                   "met_ttft_fraction": 0.6, "met_tpot_fraction": 0.6, "met_both_fraction": 0.4}
    only_ttft = summarize(result(records, simulated_s=4.0), slo_ttft_s=0.5)["slo"]
    assert only_ttft["goodput_requests_per_s"] == 0.75 and only_ttft["met_tpot_fraction"] is None
    none = summarize(result(records))["slo"]
    assert none["goodput_requests_per_s"] is None


@pytest.mark.parametrize("bad", [0, -1.0, "1", True])
def test_bad_slo_is_einval(bad):
    with pytest.raises(SimError) as info:
        summarize(result([record(0)]), slo_ttft_s=bad)
    assert info.value.errno == "EINVAL" and "slo_ttft_s" in info.value.message


def test_jain_index_known_values():
    assert jain_index([5.0, 5.0]) == 1.0
    assert jain_index([3.0, 1.0]) == 0.8
    assert jain_index([7.0]) == 1.0
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == 0.25
    assert jain_index([]) is None


def test_fairness_over_tenants_output_tokens():
    equal = [record(0, tokens=[1.0, 2.0], tenant="a"), record(1, tokens=[1.0, 2.0], tenant="b")]
    assert summarize(result(equal))["fairness"]["jain_index"] == 1.0
    skewed = [record(0, tokens=[1.0, 2.0, 3.0], tenant="a"), record(1, tokens=[1.0], tenant="b")]
    fairness = summarize(result(skewed))["fairness"]
    assert fairness["jain_index"] == 0.8
    assert list(fairness["tenants"]) == ["a", "b"]
    assert fairness["tenants"]["a"] == {"requests": 1, "completed": 1, "prompt_tokens": 10,
                                        "output_tokens": 3, "output_tokens_per_s": 0.3,
                                        "mean_e2e_s": 3.0}
    assert summarize(result([record(0)]))["fairness"]["jain_index"] == 1.0


def test_deadlines():
    records = [record(0, tokens=[1.0], deadline_s=2.0), record(1, tokens=[3.0], deadline_s=2.0),
               record(2, tokens=[1.0])]
    assert summarize(result(records))["deadlines"] == {"requests": 2, "met_fraction": 0.5}
    assert summarize(result([record(0)]))["deadlines"] == {"requests": 0, "met_fraction": None}


def test_kv_and_batch_are_time_weighted_over_busy_samples():
    timeline = [sample(0.0, 2, 0.5, batch=2), sample(1.0, 6, 1.0, batch=4),
                sample(3.0, 0, 0.0, batch=0)]
    summary = summarize(result([record(0)], simulated_s=4.0, timeline=timeline))
    kv = summary["kv"]
    assert kv["utilization_mean"] == pytest.approx((0.5 * 1 + 1.0 * 2) / 3)
    assert kv["occupancy_mean"] == pytest.approx((0.2 * 1 + 0.6 * 2 + 0.0 * 1) / 4)
    assert (kv["peak_blocks_used"], kv["blocks_total"], kv["peak_fraction"]) == (6, 10, 0.6)
    assert summary["batch"] == {"seqs_mean": 3.0, "seqs_p50": 3.0, "seqs_max": 4,
                                "tokens_mean": 6.0}


def test_empty_result_has_the_same_keys():
    empty = summarize(result([], simulated_s=0.0))
    full = summarize(result([record(0, tokens=[1.0, 2.0])], timeline=[sample(0.0, 1, 1.0, 1)]))
    assert list(flatten_summary(empty)) != []
    assert [k for k in flatten_summary(empty) if not k.startswith("fairness.tenants")] == \
        [k for k in flatten_summary(full) if not k.startswith("fairness.tenants")]
    assert empty["throughput"]["requests_per_s"] is None
    assert empty["kv"]["utilization_mean"] is None


def test_requests_csv_is_byte_identical_and_exact(tmp_path):
    records = [record(0, arrival=0.1, tokens=[0.30000000000000004, 0.5, 1.0 / 3.0],
                      deadline_s=2.0, preemptions=1, swaps=1),
               record(1, first_token=None, exit_reason="error", errno="ENOMEM")]
    write_requests_csv(records, tmp_path / "a.csv")
    write_requests_csv(list(records), tmp_path / "sub" / "b.csv")
    first = (tmp_path / "a.csv").read_bytes()
    assert first == (tmp_path / "sub" / "b.csv").read_bytes()
    lines = first.decode().split("\n")
    assert lines[0] == ",".join(REQUEST_COLUMNS)
    assert lines[1] == ("0,100,a,0,10,3,0.1,0.1,0.3,0.333333333,0.2,0.016666667,0.233333333,"
                        "0.077777778,0.2,1,1,0,0,2.0,1,length,")
    assert lines[2] == "1,101,a,0,10,0,0.0,0.0,,,,,,,,0,0,0,0,,,error,ENOMEM"
    assert lines[3] == "" and len(lines) == 4


def test_token_times_csv_lists_every_gap(tmp_path):
    write_token_times_csv([record(3, tokens=[1.0, 1.5, 2.5]), record(4, tokens=[])],
                          tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == (
        "request_id,index,time_s,gap_s\n3,0,1.0,\n3,1,1.5,0.5\n3,2,2.5,1.0\n")


def test_timeline_csv(tmp_path):
    write_timeline_csv([sample(0.5, 3, 0.75, batch=2)], tmp_path / "tl.csv")
    assert (tmp_path / "tl.csv").read_text().splitlines() == [
        "time_s,running,waiting,batch_seqs,batch_tokens,kv_blocks_used,kv_blocks_total,"
        "kv_utilization", "0.5,0,0,2,4,3,10,0.75"]


@pytest.mark.parametrize("bad", ["records", [1, 2], None, {"a": 1}])
def test_bad_records_are_einval(tmp_path, bad):
    with pytest.raises(SimError) as info:
        write_requests_csv(bad, tmp_path / "x.csv")
    assert info.value.errno == "EINVAL" and "RequestRecord" in info.value.message


def test_summarize_needs_a_simresult():
    with pytest.raises(SimError) as info:
        summarize({"records": []})  # type: ignore[arg-type]
    assert info.value.errno == "EINVAL"


def test_unwritable_path_is_an_errno(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SimError) as info:
        write_requests_csv([record(0)], tmp_path / "file" / "x.csv")
    assert info.value.errno in {"EEXIST", "EIO", "ENOENT", "EACCES", "EINVAL"}
    assert "cannot write" in info.value.message


def test_summary_json_is_deterministic_and_ordered(tmp_path):
    summary = summarize(result([record(0, tokens=[1.0, 2.0])]), slo_ttft_s=1.5)
    write_summary_json(summary, tmp_path / "a.json")
    write_summary_json(summarize(result([record(0, tokens=[1.0, 2.0])]), slo_ttft_s=1.5),
                       tmp_path / "b.json")
    text = (tmp_path / "a.json").read_text()
    assert text == (tmp_path / "b.json").read_text() and text.endswith("}\n")
    assert list(json.loads(text)) == ["requests", "time", "throughput", "latency", "slo",
                                      "deadlines", "fairness", "kv", "batch", "preemption"]
    with pytest.raises(SimError):
        write_summary_json({"x": float("nan")}, tmp_path / "c.json")


def test_summary_table_renders():
    summary = summarize(result([record(0, tokens=[1.0, 2.0], tenant="x")]))
    console = Console(record=True, width=160)
    console.print(format_summary_table(summary))
    text = console.export_text()
    assert "latency.e2e_s" in text and "fairness.tenants.x" in text and "throughput" in text

"""Workloads: specs, determinism, trace and synthetic sources, labels, token ids, CLI and TOML."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.sim.errors import SimError
from llmos.sim.records import Request
from llmos.sim.traces import DEFAULT_TRACE
from llmos.sim.workloads import (
    DEFAULT_SYNTHETIC_REQUESTS,
    WorkloadSpec,
    add_workload_arguments,
    make_workload,
    prompt_token_array,
    prompt_token_ids,
    workload_spec_from_args,
    workload_spec_from_dict,
    workload_summary,
)

DATA = Path(__file__).parent / "data"
needs_trace = pytest.mark.skipif(not DEFAULT_TRACE.is_file(), reason="shared/traces/ is not beside the repository")


def gaps(requests: list[Request]) -> np.ndarray:
    return np.diff([r.arrival_s for r in requests])


def check_well_formed(requests: list[Request]) -> None:
    assert [r.request_id for r in requests] == list(range(len(requests)))
    assert all(np.diff([r.arrival_s for r in requests]) >= 0)
    assert all(r.prompt_len >= 1 and r.output_len >= 1 for r in requests)
    assert all(isinstance(r.prompt_len, int) and isinstance(r.arrival_s, float) for r in requests)


# ---------------------------------------------------------------------------------------------
# Trace workloads
# ---------------------------------------------------------------------------------------------

@needs_trace
def test_default_trace_workload_matches_the_readme():
    requests = make_workload(WorkloadSpec(trace="default"), seed=0)
    check_well_formed(requests)
    summary = workload_summary(requests)
    assert summary["count"] == 19_366
    assert round(summary["prompt_mean"]) == 1155 and summary["prompt_p50"] == 1020
    assert summary["prompt_p99"] == 4142
    assert round(summary["output_mean"]) == 211 and summary["output_p50"] == 129
    assert summary["output_p99"] == 601
    assert summary["mean_rate"] == pytest.approx(5.53, abs=0.005)
    assert summary["duration_s"] == pytest.approx(3501.72, abs=0.01)
    assert summary["tenants"] == {"default": 19_366}


@needs_trace
def test_rate_scale_halves_the_mean_gap():
    base = make_workload(WorkloadSpec(trace=str(DEFAULT_TRACE), num_requests=2000), seed=0)
    fast = make_workload(WorkloadSpec(trace=str(DEFAULT_TRACE), num_requests=2000, rate_scale=2.0), seed=0)
    assert gaps(fast).mean() == pytest.approx(gaps(base).mean() / 2, rel=1e-12)
    assert [r.prompt_len for r in fast] == [r.prompt_len for r in base]


def test_num_requests_and_duration_cut_a_trace():
    trace = str(DATA / "llmos_small.csv")
    assert len(make_workload(WorkloadSpec(trace=trace, num_requests=3), 0)) == 3
    # Arrivals 0, 4.31, 4.54, 4.71, 6.31, 7.25: a 4.6 s cap keeps three.
    assert len(make_workload(WorkloadSpec(trace=trace, duration_s=4.6), 0)) == 3
    # Scaled by 2, the same cap keeps everything up to 9.2 s of trace time.
    assert len(make_workload(WorkloadSpec(trace=trace, duration_s=4.6, rate_scale=2.0), 0)) == 6
    with pytest.raises(SimError) as info:
        make_workload(WorkloadSpec(trace=trace, num_requests=7), 0)
    assert info.value.errno == "EINVAL" and "num_requests" in info.value.message and "6 requests" in info.value.message


def test_trace_lengths_or_arrivals_can_be_overridden():
    trace = str(DATA / "llmos_small.csv")
    original = make_workload(WorkloadSpec(trace=trace), 0)
    fixed = make_workload(WorkloadSpec(trace=trace, prompt_len="fixed:512"), 0)
    assert [r.prompt_len for r in fixed] == [512] * 6
    assert [r.output_len for r in fixed] == [r.output_len for r in original]
    assert [r.arrival_s for r in fixed] == [r.arrival_s for r in original]
    poisson = make_workload(WorkloadSpec(trace=trace, arrivals="poisson", rate=100.0), 0)
    assert [r.prompt_len for r in poisson] == [r.prompt_len for r in original]
    assert poisson[-1].arrival_s < 1.0  # 6 requests at 100/s, not the trace's 7 s


def test_mooncake_workload_keeps_hash_ids():
    requests = make_workload(WorkloadSpec(trace=str(DATA / "mooncake_small.jsonl"), tenants="a,b"), 0)
    assert [r.hash_ids for r in requests][:2] == [(0, 1, 2), (0, 1, 3)]
    assert [r.tenant for r in requests] == ["a", "b", "a", "b", "a"]


def test_missing_trace_is_enoent(tmp_path):
    with pytest.raises(SimError) as info:
        make_workload(WorkloadSpec(trace=str(tmp_path / "gone.csv")), 0)
    assert info.value.errno == "ENOENT" and "gone.csv" in info.value.message


def test_bad_trace_is_einval_with_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,x,1\n")
    with pytest.raises(SimError) as info:
        make_workload(WorkloadSpec(trace=str(path)), 0)
    assert info.value.errno == "EINVAL" and f"{path}:3:" in info.value.message


def test_a_changed_trace_file_is_reloaded(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n")
    assert len(make_workload(WorkloadSpec(trace=str(path)), 0)) == 1
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,2,2\n")
    assert len(make_workload(WorkloadSpec(trace=str(path)), 0)) == 2


# ---------------------------------------------------------------------------------------------
# Synthetic workloads
# ---------------------------------------------------------------------------------------------

def test_synthetic_defaults():
    requests = make_workload(WorkloadSpec(), seed=1)
    check_well_formed(requests)
    assert len(requests) == DEFAULT_SYNTHETIC_REQUESTS
    assert requests[0].arrival_s == 0.0
    assert gaps(requests).mean() == pytest.approx(1.0, rel=0.1)  # rate 1/s
    summary = workload_summary(requests)
    assert summary["prompt_mean"] == pytest.approx(1155, rel=0.1)
    assert summary["output_mean"] == pytest.approx(211, rel=0.15)


def test_synthetic_gamma_cv_and_rate():
    spec = WorkloadSpec(arrivals="gamma", rate=8.0, cv=2.0, num_requests=20_000,
                        prompt_len="fixed:10", output_len="fixed:5")
    g = gaps(make_workload(spec, seed=3))
    assert g.std() / g.mean() == pytest.approx(2.0, rel=0.1)
    assert g.mean() == pytest.approx(1 / 8, rel=0.1)


def test_synthetic_until_duration():
    spec = WorkloadSpec(arrivals="onoff", rate=10.0, on_s=1.0, off_s=1.0, duration_s=100.0)
    requests = make_workload(spec, seed=0)
    check_well_formed(requests)
    assert requests[-1].arrival_s < 100.0
    assert len(requests) == pytest.approx(500, rel=0.15)  # 5/s on average
    scaled = make_workload(dataclasses.replace(spec, rate_scale=2.0), seed=0)
    assert scaled[-1].arrival_s < 100.0 and len(scaled) == pytest.approx(1000, rel=0.15)


def test_runaway_duration_is_einval():
    with pytest.raises(SimError, match="'duration_s'.*set num_requests"):
        make_workload(WorkloadSpec(rate=1000.0, duration_s=1e9), 0)


def test_same_seed_identical_different_seed_different():
    spec = WorkloadSpec(arrivals="gamma", cv=1.5, num_requests=300, tenants="a:1,b:2",
                        nice="-5:0.2,0:0.8", slo="scale:1:0.05")
    assert make_workload(spec, 7) == make_workload(spec, 7)
    other = make_workload(spec, 8)
    assert [r.arrival_s for r in other] != [r.arrival_s for r in make_workload(spec, 7)]
    assert [r.prompt_len for r in other] != [r.prompt_len for r in make_workload(spec, 7)]


def test_streams_are_independent():
    base = WorkloadSpec(num_requests=200)
    a = make_workload(base, 5)
    b = make_workload(dataclasses.replace(base, nice="-5:0.5,5:0.5", tenants="x:1,y:1"), 5)
    c = make_workload(dataclasses.replace(base, output_len="fixed:3"), 5)
    for other in (b, c):
        assert [r.arrival_s for r in other] == [r.arrival_s for r in a]
        assert [r.prompt_len for r in other] == [r.prompt_len for r in a]


def test_bad_seed():
    for seed in (-1, 1.5, True):
        with pytest.raises(SimError, match="seed"):
            make_workload(WorkloadSpec(num_requests=1), seed)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------

def test_tenants_nice_and_slo_assignment():
    spec = WorkloadSpec(num_requests=4000, tenants="a:3,b:1", nice="-5:0.1,0:0.9",
                        slo="scale:2:0.1")
    requests = make_workload(spec, 0)
    tenants = [r.tenant for r in requests]
    assert tenants.count("a") / len(tenants) == pytest.approx(0.75, abs=0.03)
    nices = [r.nice for r in requests]
    assert set(nices) == {-5, 0}
    assert nices.count(-5) / len(nices) == pytest.approx(0.1, abs=0.02)
    assert all(r.slo_s == pytest.approx(2 + 0.1 * r.output_len) for r in requests)

    plain = make_workload(WorkloadSpec(num_requests=5, tenants="x,y", slo="fixed:30", nice="3"), 0)
    assert [r.tenant for r in plain] == ["x", "y", "x", "y", "x"]
    assert [r.slo_s for r in plain] == [30.0] * 5 and [r.nice for r in plain] == [3] * 5
    assert all(r.slo_s is None for r in make_workload(WorkloadSpec(num_requests=5), 0))


# ---------------------------------------------------------------------------------------------
# Spec validation, command line, TOML
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, name", [
    ({"rate": 0}, "rate"), ({"rate": "fast"}, "rate"), ({"cv": -1.0}, "cv"),
    ({"off_s": -1.0}, "off_s"), ({"on_s": float("inf")}, "on_s"), ({"rate_scale": 0.0}, "rate_scale"),
    ({"num_requests": 0}, "num_requests"), ({"num_requests": 2.5}, "num_requests"),
    ({"duration_s": 0}, "duration_s"), ({"arrivals": "weibull"}, "arrivals"),
    ({"trace_format": "parquet"}, "trace_format"), ({"trace_model": "GPT-4"}, "trace_model"),
    ({"tenants": 3}, "tenants"), ({"prompt_len": 128}, "prompt_len"),
])
def test_bad_spec_fields_name_the_field(fields, name):
    with pytest.raises(SimError) as info:
        WorkloadSpec(**fields)
    assert info.value.errno == "EINVAL" and repr(name) in info.value.message


@pytest.mark.parametrize("fields, fragment", [
    ({"prompt_len": "fixed:0"}, "length spec 'fixed:0'"),
    ({"output_len": "normal:3"}, "unknown distribution"),
    ({"tenants": "a,a"}, "appears twice"), ({"nice": "0:0.5"}, "sum to 0.5"),
    ({"slo": "e2e:30"}, "slo spec"), ({"arrivals": "gamma", "cv": 0}, "'cv'"),
])
def test_bad_specs_fail_at_construction(fields, fragment):
    with pytest.raises(SimError) as info:
        WorkloadSpec(**fields)
    assert info.value.errno == "EINVAL" and fragment in info.value.message


def test_spec_accepts_a_path_and_an_int_nice():
    spec = WorkloadSpec(trace=DATA / "llmos_small.csv", nice=-3)  # type: ignore[arg-type]
    assert spec.trace == str(DATA / "llmos_small.csv") and spec.nice == "-3"
    assert WorkloadSpec(trace="default").trace_path() == DEFAULT_TRACE


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_workload_arguments(parser)
    return parser.parse_args(argv)


def test_command_line_defaults_are_the_spec_defaults():
    assert workload_spec_from_args(parse([])) == WorkloadSpec()


def test_command_line_round_trip():
    args = parse(["--trace", "t.csv", "--trace-format", "llmos", "--arrivals", "gamma", "--rate", "4",
                  "--cv", "2", "--requests", "50", "--prompt-len", "uniform:1:9", "--output-len",
                  "fixed:3", "--rate-scale", "1.5", "--tenants", "a:1,b:1", "--nice=-5:0.5,0:0.5",
                  "--slo", "fixed:9", "--duration", "60", "--on-s", "2", "--off-s", "3"])
    assert workload_spec_from_args(args) == WorkloadSpec(
        trace="t.csv", trace_format="llmos", arrivals="gamma", rate=4.0, cv=2.0, num_requests=50,
        prompt_len="uniform:1:9", output_len="fixed:3", rate_scale=1.5, tenants="a:1,b:1",
        nice="-5:0.5,0:0.5", slo="fixed:9", duration_s=60.0, on_s=2.0, off_s=3.0)
    assert parse(["--num-requests", "7"]).num_requests == 7


def test_command_line_bad_value_is_einval():
    with pytest.raises(SimError, match="'rate'"):
        workload_spec_from_args(parse(["--rate", "-2"]))


def test_from_dict():
    spec = workload_spec_from_dict({"trace": "t.csv", "rate-scale": 2, "requests": 10, "slo": "fixed:5"})
    assert spec == WorkloadSpec(trace="t.csv", rate_scale=2, num_requests=10, slo="fixed:5")
    assert workload_spec_from_dict({}) == WorkloadSpec()
    full = {f.name: getattr(spec, f.name) for f in dataclasses.fields(WorkloadSpec)}
    assert workload_spec_from_dict(full) == spec


def test_from_dict_errors():
    with pytest.raises(SimError) as info:
        workload_spec_from_dict({"rate": 2, "qps": 3, "seeds": [1]})
    assert info.value.errno == "EINVAL"
    assert "'qps', 'seeds'" in info.value.message and "rate_scale" in info.value.message
    with pytest.raises(SimError, match="repeats field 'rate_scale'"):
        workload_spec_from_dict({"rate_scale": 1, "rate-scale": 2})
    with pytest.raises(SimError, match="'num_requests'"):
        workload_spec_from_dict({"num_requests": "ten"})
    with pytest.raises(SimError, match="mapping"):
        workload_spec_from_dict(["rate"])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Token ids
# ---------------------------------------------------------------------------------------------

def req(request_id: int, prompt_len: int, hash_ids: tuple[int, ...] = ()) -> Request:
    return Request(request_id, 0.0, prompt_len, 1, hash_ids=hash_ids)


def test_prompt_tokens_are_deterministic_and_in_range():
    ids = prompt_token_ids(req(0, 1000), seed=0)
    assert len(ids) == 1000 and all(isinstance(t, int) for t in ids)
    assert min(ids) >= 3 and max(ids) < 32000
    assert len(set(ids)) > 900  # spread over the vocabulary
    assert prompt_token_ids(req(0, 1000), seed=0) == ids
    assert prompt_token_ids(req(1, 1000), seed=0) != ids
    assert prompt_token_ids(req(0, 1000), seed=1) != ids
    # A longer prompt of the same request extends the shorter one.
    assert prompt_token_ids(req(0, 1500), seed=0)[:1000] == ids
    assert prompt_token_array(req(0, 1000), seed=0).tolist() == ids


def test_shared_hash_ids_share_a_token_prefix():
    a = prompt_token_ids(req(0, 1100, (10, 11, 12)), seed=0)
    b = prompt_token_ids(req(1, 1300, (10, 11, 13)), seed=5)
    assert a[:1024] == b[:1024]  # blocks of hash ids 10 and 11, whatever the seed or request
    assert a[1024:1100] != b[1024:1100]
    # A block depends on its hash id alone, not on its index in the prompt.
    c = prompt_token_ids(req(2, 600, (11, 99)), seed=0)
    assert c[:512] == a[512:1024]


def test_hash_ids_shorter_than_the_prompt_fill_from_the_request():
    a = prompt_token_ids(req(0, 700, (10,)), seed=0, tokens_per_hash=512)
    b = prompt_token_ids(req(1, 700, (10,)), seed=0, tokens_per_hash=512)
    assert a[:512] == b[:512] and a[512:] != b[512:]
    small = prompt_token_ids(req(0, 10, (1, 2, 3)), seed=0, tokens_per_hash=4)
    assert small[:4] == prompt_token_ids(req(9, 4, (1,)), seed=3, tokens_per_hash=4)
    assert len(small) == 10


@settings(max_examples=100, deadline=None)
@given(vocab=st.integers(4, 200_000), n=st.integers(1, 3000), seed=st.integers(-2**70, 2**70),
       request_id=st.integers(0, 10**6), hash_ids=st.lists(st.integers(-2**63, 2**64 - 1), max_size=6),
       block=st.integers(1, 700))
def test_prompt_tokens_always_in_range(vocab, n, seed, request_id, hash_ids, block):
    ids = prompt_token_ids(req(request_id, n, tuple(hash_ids)), seed, vocab_size=vocab, tokens_per_hash=block)
    assert len(ids) == n and min(ids) >= 3 and max(ids) < vocab


def test_prompt_token_errors():
    for kwargs in ({"vocab_size": 3}, {"vocab_size": 2**33}, {"tokens_per_hash": 0}):
        with pytest.raises(SimError) as info:
            prompt_token_ids(req(0, 5), 0, **kwargs)
        assert info.value.errno == "EINVAL"
    with pytest.raises(SimError, match="seed"):
        prompt_token_ids(req(0, 5), "zero")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------

def test_summary_of_small_and_empty_workloads():
    requests = [Request(0, 0.0, 10, 2, tenant="a"), Request(1, 2.0, 30, 4, tenant="b"),
                Request(2, 4.0, 20, 6, tenant="a")]
    summary = workload_summary(requests)
    assert summary == {
        "count": 3, "duration_s": 4.0, "mean_rate": 0.5, "prompt_mean": 20.0, "prompt_p50": 20.0,
        "prompt_p99": pytest.approx(29.8), "output_mean": 4.0, "output_p50": 4.0,
        "output_p99": pytest.approx(5.96), "tenants": {"a": 2, "b": 1},
    }
    empty = workload_summary([])
    assert empty["count"] == 0 and empty["mean_rate"] == 0.0 and empty["prompt_mean"] is None

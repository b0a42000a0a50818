"""Length distributions, arrival processes and label assignments: parsing, round trips, shapes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.sim.distributions import (
    FixedLength,
    GammaArrivals,
    LognormalLength,
    NiceAssignment,
    OnOffArrivals,
    PoissonArrivals,
    SloAssignment,
    TenantAssignment,
    UniformLength,
    ZipfLength,
    make_arrivals,
    parse_arrivals,
    parse_length,
    parse_nice,
    parse_slo,
    parse_tenants,
)
from llmos.sim.errors import SimError


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------
# Lengths
# ---------------------------------------------------------------------------------------------

def test_parse_each_length_form():
    assert parse_length("fixed:128") == FixedLength(128)
    assert parse_length("uniform:16:64") == UniformLength(16, 64)
    assert parse_length("zipf:1.2:4096") == ZipfLength(1.2, 4096)
    assert parse_length("lognormal:1155:0.5") == LognormalLength(1155.0, 0.5, None)
    assert parse_length(" lognormal:211:1.0:2048 ") == LognormalLength(211.0, 1.0, 2048)


def test_fixed_and_uniform_samples():
    assert parse_length("fixed:7").sample(rng(), 5).tolist() == [7] * 5
    values = parse_length("uniform:3:5").sample(rng(), 3000)
    assert set(values.tolist()) == {3, 4, 5}  # both ends inclusive


def test_zipf_is_bounded_and_skewed():
    values = parse_length("zipf:1.0:100").sample(rng(), 50_000)
    assert values.min() == 1 and values.max() <= 100
    counts = np.bincount(values, minlength=101)
    # P(1) / P(2) = 2**s = 2 for s = 1.
    assert counts[1] / counts[2] == pytest.approx(2.0, rel=0.1)


def test_lognormal_has_the_requested_mean_and_clip():
    values = parse_length("lognormal:1155:0.5").sample(rng(), 20_000)
    assert values.mean() == pytest.approx(1155, rel=0.03)
    clipped = parse_length("lognormal:211:1.0:300").sample(rng(), 20_000)
    assert clipped.min() >= 1 and clipped.max() == 300


def test_lognormal_tiny_mean_never_yields_zero():
    values = parse_length("lognormal:0.1:2.0").sample(rng(), 10_000)
    assert values.min() >= 1


length_specs = st.one_of(
    st.integers(1, 10**6).map(lambda n: f"fixed:{n}"),
    st.tuples(st.integers(1, 5000), st.integers(0, 5000)).map(lambda t: f"uniform:{t[0]}:{t[0] + t[1]}"),
    st.tuples(st.floats(0.01, 4.0), st.integers(1, 20_000)).map(lambda t: f"zipf:{t[0]!r}:{t[1]}"),
    st.tuples(st.floats(0.01, 1e5), st.floats(0.01, 3.0), st.none() | st.integers(1, 10**5)).map(
        lambda t: f"lognormal:{t[0]!r}:{t[1]!r}" + (f":{t[2]}" if t[2] is not None else "")),
)


@settings(max_examples=150, deadline=None)
@given(spec=length_specs, seed=st.integers(0, 2**32))
def test_lengths_are_at_least_one_and_within_bounds(spec, seed):
    dist = parse_length(spec)
    values = dist.sample(rng(seed), 200)
    assert values.dtype == np.int64
    assert values.min() >= 1
    upper = getattr(dist, "max_len", None) or getattr(dist, "hi", None) or getattr(dist, "n", None)
    if upper is not None:
        assert values.max() <= upper


@settings(max_examples=150, deadline=None)
@given(spec=length_specs)
def test_length_specs_round_trip(spec):
    dist = parse_length(spec)
    assert parse_length(str(dist)) == dist


@pytest.mark.parametrize("spec", [
    "", "fixed", "fixed:0", "fixed:-3", "fixed:1.5", "fixed:1:2", "uniform:5:4", "uniform:0:4",
    "zipf:0:100", "zipf:1.1:0", "zipf:1:100000000", "lognormal:100", "lognormal:-1:0.5",
    "lognormal:100:0", "lognormal:100:nan", "lognormal:100:0.5:0", "gauss:1:2", "poisson:3",
])
def test_bad_length_specs_are_einval_listing_the_forms(spec):
    with pytest.raises(SimError) as info:
        parse_length(spec)
    assert info.value.errno == "EINVAL"
    assert repr(spec) in info.value.message
    assert "fixed:N" in info.value.message and "lognormal:MEAN:SIGMA" in info.value.message


def test_non_string_length_spec_is_einval():
    with pytest.raises(SimError, match="EINVAL"):
        parse_length(128)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Arrivals
# ---------------------------------------------------------------------------------------------

def test_parse_each_arrival_form():
    assert parse_arrivals("poisson:5") == PoissonArrivals(5.0)
    assert parse_arrivals("gamma:5:2") == GammaArrivals(5.0, 2.0)
    assert parse_arrivals("onoff:10:5:15") == OnOffArrivals(10.0, 5.0, 15.0)
    assert make_arrivals("gamma", 4.0, cv=0.5) == GammaArrivals(4.0, 0.5)
    assert make_arrivals("poisson", 4.0, cv=3.0) == PoissonArrivals(4.0)


@pytest.mark.parametrize("process", [PoissonArrivals(3.0), GammaArrivals(3.0, 2.5), OnOffArrivals(3.0, 2.0, 5.0)])
def test_arrivals_start_at_zero_and_are_sorted(process):
    times = process.sample(rng(), 5000)
    assert times[0] == 0.0
    assert np.all(np.diff(times) >= 0)
    assert len(process.sample(rng(), 0)) == 0


def test_poisson_mean_gap_is_one_over_rate():
    gaps = np.diff(PoissonArrivals(4.0).sample(rng(), 20_000))
    assert gaps.mean() == pytest.approx(0.25, rel=0.03)


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 3.0])
def test_gamma_gaps_have_the_requested_cv(cv):
    gaps = np.diff(GammaArrivals(5.0, cv).sample(rng(7), 20_000))
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.10)
    assert gaps.mean() == pytest.approx(0.2, rel=0.10)


def test_onoff_is_silent_between_bursts():
    process = OnOffArrivals(rate=20.0, on_s=2.0, off_s=3.0)
    times = process.sample(rng(), 10_000)
    phase = np.mod(times, 5.0)
    assert np.all(phase < 2.0)  # nothing in [2, 5) of each 5-second period
    assert process.mean_rate == pytest.approx(8.0)
    assert len(times) / times[-1] == pytest.approx(8.0, rel=0.05)


arrival_specs = st.one_of(
    st.floats(1e-3, 1e4).map(lambda r: f"poisson:{r!r}"),
    st.tuples(st.floats(1e-3, 1e4), st.floats(0.05, 10)).map(lambda t: f"gamma:{t[0]!r}:{t[1]!r}"),
    st.tuples(st.floats(1e-3, 1e4), st.floats(1e-3, 1e3), st.floats(0, 1e3)).map(
        lambda t: f"onoff:{t[0]!r}:{t[1]!r}:{t[2]!r}"),
)


@settings(max_examples=100, deadline=None)
@given(spec=arrival_specs)
def test_arrival_specs_round_trip(spec):
    process = parse_arrivals(spec)
    assert parse_arrivals(str(process)) == process


@pytest.mark.parametrize("spec", [
    "poisson", "poisson:0", "poisson:-1", "poisson:inf", "gamma:5", "gamma:5:0", "onoff:5:0:1",
    "onoff:5:1:-1", "onoff:5:1", "burst:5", "poisson:x",
])
def test_bad_arrival_specs_are_einval_listing_the_forms(spec):
    with pytest.raises(SimError) as info:
        parse_arrivals(spec)
    assert info.value.errno == "EINVAL"
    assert "gamma:RATE:CV" in info.value.message


def test_make_arrivals_rejects_unknown_kind():
    with pytest.raises(SimError, match="unknown arrival process 'weibull'"):
        make_arrivals("weibull", 1.0)


# ---------------------------------------------------------------------------------------------
# Tenants, nice, SLO
# ---------------------------------------------------------------------------------------------

def test_tenants_round_robin():
    assignment = parse_tenants("a, b ,c")
    assert assignment == TenantAssignment(("a", "b", "c"))
    assert assignment.assign(rng(), 7) == ["a", "b", "c", "a", "b", "c", "a"]
    assert str(assignment) == "a,b,c"


def test_tenants_weighted():
    assignment = parse_tenants("a:3,b:1")
    assert assignment == TenantAssignment(("a", "b"), (3.0, 1.0))
    picks = assignment.assign(rng(), 20_000)
    assert picks.count("a") / len(picks) == pytest.approx(0.75, abs=0.02)
    assert parse_tenants(str(assignment)) == assignment


@pytest.mark.parametrize("spec", ["", "a,,b", "a,a", "a:3,b", "a:0,b:1", "a:x", "has space"])
def test_bad_tenant_specs(spec):
    with pytest.raises(SimError) as info:
        parse_tenants(spec)
    assert info.value.errno == "EINVAL" and "round-robin" in info.value.message


def test_nice_single_and_mixed():
    assert parse_nice("0") == NiceAssignment((0,), (1.0,))
    assert parse_nice(5).assign(rng(), 3) == [5, 5, 5]
    mixed = parse_nice("-5:0.1,0:0.9")
    values = mixed.assign(rng(), 20_000)
    assert values.count(-5) / len(values) == pytest.approx(0.1, abs=0.01)
    assert set(values) == {-5, 0}
    assert parse_nice(str(mixed)) == mixed
    assert str(parse_nice("3")) == "3"


@pytest.mark.parametrize("spec", ["", "x", "20", "-21", "0:0.5", "0:0.5,0:0.5", "1:0.5,2", "1:0.5,2:0.6"])
def test_bad_nice_specs(spec):
    with pytest.raises(SimError) as info:
        parse_nice(spec)
    assert info.value.errno == "EINVAL" and "-20..19" in info.value.message


def test_slo_forms():
    assert parse_slo(None) is None
    assert parse_slo("none") is None
    assert parse_slo("fixed:30") == SloAssignment(30.0)
    assert parse_slo("fixed:30").slo_for(500) == 30.0
    scale = parse_slo("scale:2:0.05")
    assert scale.slo_for(100) == pytest.approx(7.0)
    assert parse_slo(str(scale)) == scale
    assert parse_slo(str(parse_slo("fixed:1.5"))) == SloAssignment(1.5)


@pytest.mark.parametrize("spec", ["fixed", "fixed:0", "fixed:-1", "scale:1", "scale:0:0", "e2e:30", "tpot:0.1"])
def test_bad_slo_specs(spec):
    with pytest.raises(SimError) as info:
        parse_slo(spec)
    assert info.value.errno == "EINVAL" and "scale:A:B" in info.value.message

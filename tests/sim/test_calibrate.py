"""Profiles: the fit on synthetic samples, save/load, and a tiny real calibration."""

from __future__ import annotations

import json
import random

import pytest

from llmos.sim.calibrate import DEFAULT_GRID, calibrate, sample_of
from llmos.sim.errors import SimError
from llmos.sim.profile import TERMS, ProfileCost, Sample, fit_profile, load_profile

TRUE = {
    "step_s": 3e-3,
    "token_s": 6e-5,
    "context_token_s": 1.2e-6,
    "attention_pair_s": 7e-8,
    "seq_s": 6e-4,
}


def synthetic(coefficients: dict[str, float], noise: float = 0.0, seed: int = 0) -> list[Sample]:
    """Samples of DEFAULT_GRID's shapes timed by a known profile, with multiplicative noise."""
    truth = ProfileCost(coefficients) if min(coefficients.values()) >= 0 else None
    rng = random.Random(seed)
    out = []
    for shape in DEFAULT_GRID:
        s = sample_of(shape, 0.0)
        if truth is not None:
            t = truth.step_seconds(s.num_seqs, s.num_tokens, s.context_tokens, s.attention_pairs)
        else:  # a "true" model with a negative term, which ProfileCost refuses
            t = sum(c * x for c, x in zip(coefficients.values(), s.features(), strict=True))
        out.append(sample_of(shape, t * (1 + rng.uniform(-noise, noise))))
    return out


def test_sample_of_counts_causal_pairs() -> None:
    decode = sample_of([(255, 1)] * 4, 0.1)
    assert (decode.num_seqs, decode.num_tokens, decode.context_tokens, decode.attention_pairs) == (
        4,
        4,
        1024,
        1024,
    )
    chunk = sample_of([(6, 3)], 0.1)  # positions 6, 7, 8 see 7, 8, 9 keys
    assert chunk.attention_pairs == 7 + 8 + 9 and chunk.context_tokens == 9


def test_fit_recovers_known_coefficients() -> None:
    profile = fit_profile(synthetic(TRUE))
    for term in TERMS:
        assert profile.coefficients[term] == pytest.approx(TRUE[term], rel=0.01)
    fit = profile.metadata["fit"]
    assert fit["num_samples"] == len(DEFAULT_GRID) and fit["rank"] == 5
    assert fit["rel_max_abs"] < 1e-9 and fit["zeroed_terms"] == []


def test_fit_recovers_known_coefficients_through_small_noise() -> None:
    profile = fit_profile(synthetic(TRUE, noise=1e-4, seed=1))
    for term in TERMS:
        assert profile.coefficients[term] == pytest.approx(TRUE[term], rel=0.01)
    assert profile.metadata["fit"]["rel_max_abs"] < 2e-4


def test_fit_keeps_every_coefficient_non_negative() -> None:
    # Time that *falls* with context: no non-negative model matches it, so the term is dropped
    # and the others refitted, rather than predicting negative times for long contexts.
    samples = synthetic({**TRUE, "context_token_s": -1e-7})
    profile = fit_profile(samples)
    assert all(c >= 0 for c in profile.coefficients.values())
    assert profile.metadata["fit"]["zeroed_terms"]
    assert profile.step_seconds(1, 1, 10**9, 10**9) > 0


def test_fit_refuses_too_few_or_bad_samples() -> None:
    with pytest.raises(SimError) as info:
        fit_profile(synthetic(TRUE)[:4])
    assert info.value.errno == "EINVAL"
    with pytest.raises(SimError) as info:
        fit_profile([*synthetic(TRUE)[:5], Sample(1, 1, 1, 1, 0.0)])
    assert info.value.errno == "EINVAL"


def test_profile_decode_steps_equal_step_loop_exactly() -> None:
    profile = fit_profile(synthetic(TRUE, noise=0.01))
    for n, ctx, steps in ((1, 1, 100), (32, 32 * 700, 64), (5, 12345, 17)):
        loop = [profile.step_seconds(n, n, ctx + i * n, ctx + i * n) for i in range(steps)]
        assert profile.decode_steps_seconds(n, ctx, steps) == loop


def test_save_and_load_round_trip(tmp_path) -> None:
    profile = fit_profile(
        synthetic(TRUE, noise=0.01), {"device": {"kind": "cpu"}, "model": "default"}
    )
    path = tmp_path / "cpu.json"
    profile.save(path)
    again = load_profile(path)
    assert again.coefficients == profile.coefficients
    assert again.metadata == profile.metadata
    assert again.samples == profile.samples
    assert json.loads(path.read_text())["format"] == "llmos-profile"


@pytest.mark.parametrize(
    ("content", "errno"),
    [
        (None, "ENOENT"),
        ("{", "EINVAL"),
        (json.dumps({"coefficients": TRUE}), "EINVAL"),  # no format marker
        (json.dumps({"format": "llmos-profile", "version": 99, "coefficients": TRUE}), "EINVAL"),
        (
            json.dumps(
                {"format": "llmos-profile", "version": 1, "coefficients": TRUE, "samples": [[1, 2]]}
            ),
            "EINVAL",
        ),
    ],
)
def test_load_profile_errors(tmp_path, content, errno: str) -> None:
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SimError) as info:
        load_profile(path)
    assert info.value.errno == errno


TINY = [
    [(0, 1)],
    [(15, 1)] * 2,
    [(31, 1)] * 4,
    [(0, 16)],
    [(0, 32)],
    [(16, 16)],
    [(7, 1)] * 3 + [(0, 8)],
]


def test_tiny_calibration_of_the_real_engine(tmp_path) -> None:
    profile = calibrate(shapes=TINY, repeats=1, threads=1)
    assert len(profile.samples) == len(TINY)
    assert all(s.seconds > 0 for s in profile.samples)
    assert all(c >= 0 for c in profile.coefficients.values())
    meta = profile.metadata
    assert meta["model"] == "default" and meta["dtype"] == "float32"
    assert meta["device"]["kind"] == "cpu" and meta["device"]["torch_threads"] == 1
    assert meta["model_shape"]["dtype_bytes"] == 4 and meta["model_shape"]["name"] == "default"
    assert meta["fit"]["num_samples"] == len(TINY) and "date" in meta
    assert meta["statistic"] == "median"
    profile.save(tmp_path / "cpu.json")
    assert load_profile(tmp_path / "cpu.json").coefficients == profile.coefficients


def test_calibration_with_the_mean_of_repeats() -> None:
    profile = calibrate(shapes=TINY, repeats=2, threads=1, statistic="mean")
    assert profile.metadata["statistic"] == "mean"
    assert all(s.seconds > 0 for s in profile.samples)


@pytest.mark.parametrize(
    ("kwargs", "errno"),
    [
        ({"model": "llama-2-7b"}, "ENOENT"),
        ({"model": "/nonexistent/checkpoint"}, "ENOENT"),
        ({"dtype": "float9"}, "EINVAL"),
        ({"shapes": []}, "EINVAL"),
        ({"shapes": [[(0, 0)]]}, "EINVAL"),
        ({"repeats": 0}, "EINVAL"),
        ({"statistic": "mode"}, "EINVAL"),
    ],
)
def test_calibrate_errors(kwargs, errno: str) -> None:
    with pytest.raises(SimError) as info:
        calibrate(**kwargs)
    assert info.value.errno == errno


@pytest.mark.slow
def test_full_default_calibration() -> None:
    profile = calibrate()
    assert len(profile.samples) == len(DEFAULT_GRID)
    assert profile.metadata["fit"]["rank"] == 5
    # Prefill must cost more per step than a batch-1 decode, whatever the machine.
    assert profile.step_seconds(1, 512, 512, 512 * 513 // 2) > profile.step_seconds(1, 1, 1, 1)

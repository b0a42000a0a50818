"""Sampling: greedy, temperature, top-k, top-p, and statelessness of the random draw."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.drivers.sampling import draw_seed, filtered_probs, sample_batch, sample_one
from llmos.kernel.batch import SamplingParams
from llmos.kernel.errors import KernelError


def logits_of(probs: list[float]) -> torch.Tensor:
    """Logits whose softmax is ``probs``."""
    return torch.tensor([math.log(p) for p in probs], dtype=torch.float32)


def test_temperature_zero_is_argmax_with_lowest_id_on_ties() -> None:
    logits = torch.tensor([0.1, 3.0, -1.0, 3.0])
    assert sample_one(logits, SamplingParams(temperature=0.0, seed=5)) == 1
    rows = torch.stack([logits, -logits])
    greedy = SamplingParams(temperature=0.0)
    assert sample_batch(rows, [greedy, greedy]) == [1, 2]


def test_same_seed_and_index_give_same_token_and_indices_vary() -> None:
    logits = torch.zeros(50)  # uniform: every draw is decided by the random number alone
    params = [SamplingParams(temperature=1.0, seed=9, sample_index=i) for i in range(40)]
    first = [sample_one(logits, p) for p in params]
    assert first == [sample_one(logits, p) for p in params]
    assert len(set(first)) > 20
    other_seed = [
        sample_one(logits, SamplingParams(temperature=1.0, seed=10, sample_index=i))
        for i in range(40)
    ]
    assert other_seed != first


def test_draw_seed_mixes_both_inputs() -> None:
    seeds = {draw_seed(s, i) for s in range(30) for i in range(30)}
    assert len(seeds) == 900
    assert all(0 <= s < 2**64 for s in seeds)


def test_batch_composition_does_not_change_a_row() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 40, generator=gen) * 2
    params = [
        SamplingParams(temperature=0.8, top_k=20, top_p=0.95, seed=i, sample_index=3)
        for i in range(6)
    ]
    params[2] = SamplingParams(temperature=0.0)
    together = sample_batch(logits, params)
    alone = [sample_batch(logits[i : i + 1], [params[i]])[0] for i in range(6)]
    reversed_ = sample_batch(logits.flip(0), params[::-1])[::-1]
    assert together == alone == reversed_


def test_top_k_one_is_greedy_at_any_temperature() -> None:
    logits = torch.tensor([0.5, 2.0, 1.9, -3.0])
    for i in range(20):
        assert (
            sample_one(logits, SamplingParams(temperature=5.0, top_k=1, seed=1, sample_index=i))
            == 1
        )


def test_top_k_and_top_p_restrict_support() -> None:
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    assert filtered_probs(logits, SamplingParams(top_p=0.75))[1].tolist() == [0, 1]
    assert filtered_probs(logits, SamplingParams(top_p=0.85))[1].tolist() == [0, 1, 2]
    assert filtered_probs(logits, SamplingParams(top_p=0.3))[1].tolist() == [0]
    assert filtered_probs(logits, SamplingParams(top_k=3))[1].tolist() == [0, 1, 2]
    seen = {
        sample_one(logits, SamplingParams(top_p=0.75, seed=4, sample_index=i)) for i in range(200)
    }
    assert seen == {0, 1}


def test_empirical_frequencies_follow_the_tempered_distribution() -> None:
    probs = [0.4, 0.3, 0.2, 0.1]
    n = 3000
    counts = [0] * 4
    for i in range(n):
        counts[
            sample_one(logits_of(probs), SamplingParams(temperature=1.0, seed=77, sample_index=i))
        ] += 1
    for p, c in zip(probs, counts, strict=True):
        assert abs(c / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    # Temperature 0.5 squares the odds: p_i ~ probs_i ** 2.
    hot = [p**2 for p in probs]
    hot = [p / sum(hot) for p in hot]
    assert torch.allclose(
        filtered_probs(logits_of(probs), SamplingParams(temperature=0.5))[0],
        torch.tensor(hot, dtype=torch.float64),
        atol=1e-6,
    )


@settings(max_examples=60, deadline=None)
@given(
    logits=st.lists(st.floats(-20, 20), min_size=1, max_size=30),
    temperature=st.floats(0.05, 4.0),
    top_k=st.integers(0, 40),
    top_p=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**63),
    index=st.integers(0, 10_000),
)
def test_token_is_always_in_the_filtered_support(
    logits: list[float], temperature: float, top_k: int, top_p: float, seed: int, index: int
) -> None:
    params = SamplingParams(temperature, top_k, top_p, seed, index)
    row = torch.tensor(logits)
    probs, ids = filtered_probs(row, params)
    token = sample_one(row, params)
    assert token in ids.tolist()
    assert token == sample_one(row, params)
    assert abs(float(probs.sum()) - 1.0) < 1e-9
    if top_k:
        assert len(ids) <= top_k


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=-0.1),
        SamplingParams(temperature=float("nan")),
        SamplingParams(top_k=-1),
        SamplingParams(top_p=0.0),
        SamplingParams(top_p=1.5),
        SamplingParams(sample_index=-1),
    ],
)
def test_invalid_parameters_are_einval(params: SamplingParams) -> None:
    with pytest.raises(KernelError) as info:
        sample_one(torch.zeros(4), params)
    assert info.value.errno == "EINVAL"


def test_row_count_must_match_params() -> None:
    with pytest.raises(KernelError) as info:
        sample_batch(torch.zeros(2, 4), [SamplingParams()])
    assert info.value.errno == "EINVAL"

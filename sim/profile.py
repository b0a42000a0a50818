"""Calibrated profiles: a step-time model fitted to measurements of a real driver.

A profile predicts one step as a linear function of the batch's shape::

    step_s = step_s                                  fixed: dispatch, norms, sampling setup
           + token_s          * num_tokens           linear layers per token computed
           + context_token_s  * context_tokens       KV entries read by attention
           + attention_pair_s * attention_pairs      attention math per causal query-key pair
           + seq_s            * num_seqs             per sequence: LM head, sampling, metadata

``fit_profile`` finds the five coefficients from ``Sample`` measurements by least squares on
relative error, with every coefficient held non-negative; ``calibrate.py`` takes the samples
from the real cpu engine. A profile is saved as JSON with its provenance (device, model, dtype,
date, sample count, residuals) so a simulation can say what its times were fitted to.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SimError, read_json_object

TERMS = ("step_s", "token_s", "context_token_s", "attention_pair_s", "seq_s")
FORMAT = "llmos-profile"  # the "format" key of a saved profile
VERSION = 1


@dataclass(frozen=True)
class Sample:
    """One measured step: the batch's shape and how long it took."""

    num_seqs: int  # sequences in the batch
    num_tokens: int  # tokens computed, over all sequences
    context_tokens: int  # sum of context lengths after the step (KV entries read)
    attention_pairs: int  # sum of q*s + q*(q+1)/2 (causal query-key pairs)
    seconds: float  # measured step time (median of repeats), seconds

    def features(self) -> list[float]:
        """The row of the design matrix, in ``TERMS`` order."""
        return [1.0, self.num_tokens, self.context_tokens, self.attention_pairs, self.num_seqs]


class ProfileCost:
    """A fitted (or hand-written) linear step-time model; a ``CostModel``.

    Args:
        coefficients: seconds per unit of each term in ``TERMS``; missing terms are 0.
        metadata: provenance for reports (device, model, dtype, date, residuals...).
        samples: the measurements it was fitted to, kept for plots; optional.

    Raises:
        SimError: EINVAL for an unknown term, or a coefficient that is not a finite number >= 0.
    """

    def __init__(
        self,
        coefficients: dict[str, float],
        metadata: dict[str, Any] | None = None,
        samples: Sequence[Sample] = (),
    ) -> None:
        if not isinstance(coefficients, dict):
            raise SimError("EINVAL", "profile coefficients must be a map of term to seconds")
        unknown = sorted(set(coefficients) - set(TERMS))
        if unknown:
            raise SimError(
                "EINVAL",
                f"profile: unknown coefficient(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(TERMS)}",
            )
        values = []
        for term in TERMS:
            value = coefficients.get(term, 0.0)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise SimError(
                    "EINVAL",
                    f"profile: coefficient {term!r} must be a finite number >= 0, not {value!r}",
                )
            values.append(float(value))
        self.coefficients = dict(zip(TERMS, values, strict=True))
        self.metadata = dict(metadata or {})
        self.samples = list(samples)
        self._a, self._b, self._c, self._d, self._e = values

    def step_seconds(
        self, num_seqs: int, num_tokens: int, context_tokens: int, attention_pairs: int
    ) -> float:
        """Predicted seconds of one step; see ``CostModel.step_seconds`` for the arguments."""
        return (
            self._a
            + self._b * num_tokens
            + self._c * context_tokens
            + self._d * attention_pairs
            + self._e * num_seqs
        )

    def decode_steps_seconds(
        self, num_seqs: int, context_tokens: int, num_steps: int
    ) -> list[float]:
        """Seconds of ``num_steps`` pure-decode steps; see ``CostModel.decode_steps_seconds``.

        Evaluates the same sum in the same left-to-right order as ``step_seconds`` (float
        addition is not associative), hoisting only the products that do not change.
        """
        c, d = self._c, self._d
        base = self._a + self._b * num_seqs
        per_seq = self._e * num_seqs
        out: list[float] = []
        append = out.append
        ctx = context_tokens
        for _ in range(num_steps):
            append(base + c * ctx + d * ctx + per_seq)
            ctx += num_seqs
        return out

    def describe(self) -> dict[str, Any]:
        """A spec ``make_cost_model`` accepts: the coefficients and the provenance."""
        return {
            "kind": "profile",
            "coefficients": dict(self.coefficients),
            "metadata": dict(self.metadata),
        }

    def save(self, path: str | Path) -> None:
        """Write the profile as JSON (``load_profile`` reads it back)."""
        data = {
            "format": FORMAT,
            "version": VERSION,
            "coefficients": self.coefficients,
            "metadata": self.metadata,
            "samples": [
                [s.num_seqs, s.num_tokens, s.context_tokens, s.attention_pairs, s.seconds]
                for s in self.samples
            ],
        }
        Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def is_profile_data(data: dict[str, Any]) -> bool:
    """Whether a parsed JSON object is a saved profile (and not, say, a device spec)."""
    return data.get("format") == FORMAT


def profile_from_data(data: dict[str, Any], where: str) -> ProfileCost:
    """A ``ProfileCost`` from a saved profile's parsed JSON; ``where`` names it in errors.

    Raises:
        SimError: EINVAL for another format or version, or bad coefficients or samples.
    """
    if not is_profile_data(data):
        raise SimError("EINVAL", f'{where}: not an llmos profile (no "format": "{FORMAT}")')
    if data.get("version") != VERSION:
        raise SimError(
            "EINVAL",
            f"{where}: profile version {data.get('version')!r}, this llmos reads version {VERSION}",
        )
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise SimError("EINVAL", f"{where}: metadata must be an object")
    try:
        samples = [
            Sample(int(a), int(b), int(c), int(d), float(e))
            for a, b, c, d, e in data.get("samples", [])
        ]
    except (TypeError, ValueError) as exc:
        raise SimError("EINVAL", f"{where}: samples must be rows of 5 numbers ({exc})") from exc
    return ProfileCost(data.get("coefficients"), metadata, samples)  # type: ignore[arg-type]


def load_profile(path: str | Path) -> ProfileCost:
    """Read a profile written by ``ProfileCost.save`` (``llmos sim calibrate``).

    Raises:
        SimError: ENOENT for a missing file; EINVAL for one that is not a valid profile.
    """
    path = Path(path)
    return profile_from_data(read_json_object(path, "profile"), str(path))


# ---------------------------------------------------------------------------------------------
# fitting


def _weighted_lstsq(
    X: np.ndarray, y: np.ndarray, cols: tuple[int, ...]
) -> tuple[np.ndarray, float]:
    """Least squares of relative error on the columns ``cols``; returns (coefficients, cost)."""
    coef = np.zeros(X.shape[1])
    if cols:
        A = X[:, cols] / y[:, None]  # rows scaled by 1/y: the residuals become relative errors
        scale = np.abs(A).max(axis=0)  # columns span 1 .. 1e6; scaling keeps the solve well-posed
        scale[scale == 0] = 1.0
        sol = np.linalg.lstsq(A / scale, np.ones(len(y)), rcond=None)[0] / scale
        coef[list(cols)] = sol
    rel = X @ coef / y - 1.0
    return coef, float(rel @ rel)


def _rank(A: np.ndarray) -> int:
    """Rank with each column scaled to max 1, so small-valued terms are not lost to tolerance."""
    scale = np.abs(A).max(axis=0)
    scale[scale == 0] = 1.0
    return int(np.linalg.matrix_rank(A / scale))


def fit_profile(samples: Sequence[Sample], metadata: dict[str, Any] | None = None) -> ProfileCost:
    """Fit the five coefficients to measured samples.

    The fit minimises the squared *relative* error, so a 2 ms decode step counts as much as a
    200 ms prefill (plain least squares would fit the big steps and ignore the small ones).

    Every coefficient is held at >= 0: a negative one would make a bigger batch predict a
    shorter step somewhere outside the measured grid (even a negative time), and a scheduler
    studied on such a model learns to exploit the artefact. Instead of clipping a plain fit
    (which leaves the other terms fitted around a term that is now gone), the fit tries every
    subset of terms and keeps the best one whose coefficients are all non-negative: exact
    non-negative least squares, cheap with five terms.

    Args:
        samples: at least as many as there are terms (5), with positive ``seconds``.
        metadata: provenance to keep in the profile; the fit adds its residual statistics.

    Raises:
        SimError: EINVAL for too few samples or a non-positive time.
    """
    if len(samples) < len(TERMS):
        raise SimError(
            "EINVAL", f"fit_profile: need at least {len(TERMS)} samples, got {len(samples)}"
        )
    if any(not s.seconds > 0 for s in samples):
        raise SimError("EINVAL", "fit_profile: every sample needs a positive time in seconds")
    X = np.array([s.features() for s in samples], dtype=np.float64)
    y = np.array([s.seconds for s in samples], dtype=np.float64)
    best: tuple[float, np.ndarray] | None = None
    for k in range(len(TERMS), 0, -1):
        for cols in itertools.combinations(range(len(TERMS)), k):
            coef, cost = _weighted_lstsq(X, y, cols)
            if (coef >= 0).all() and (best is None or cost < best[0]):
                best = (cost, coef)
    assert best is not None  # a single non-negative column always fits with a positive coefficient
    coef = best[1]
    pred = X @ coef
    rel = pred / y - 1.0
    fit = {
        "num_samples": len(samples),
        "rank": _rank(X / y[:, None]),  # < 5: some terms are confounded by the grid
        "rel_rms": float(np.sqrt(np.mean(rel**2))),
        "rel_mean_abs": float(np.mean(np.abs(rel))),
        "rel_max_abs": float(np.max(np.abs(rel))),
        "abs_rms_s": float(np.sqrt(np.mean((pred - y) ** 2))),
        "zeroed_terms": [t for t, c in zip(TERMS, coef, strict=True) if c == 0.0],
    }
    meta = {**(metadata or {}), "fit": fit}
    return ProfileCost(dict(zip(TERMS, coef.tolist(), strict=True)), meta, samples)

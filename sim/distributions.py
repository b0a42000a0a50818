"""Random shapes of a synthetic workload: token lengths, arrival processes, per-request labels.

Everything here is parsed from a short spec string (the form a command line or a sweep's TOML
takes) into a small frozen dataclass, and every dataclass prints back as its canonical spec, so
``parse_length(str(d)) == d``. Sampling always takes a ``numpy.random.Generator`` the caller
owns: the workload layer gives each concern (arrivals, prompts, outputs, tenants, ...) its own
stream, so changing one spec never reshuffles the others.

Spec forms (the error for a bad spec lists the same forms):

    lengths    fixed:N | uniform:LO:HI | zipf:S:MAX | lognormal:MEAN:SIGMA[:MAX]
    arrivals   poisson:RATE | gamma:RATE:CV | onoff:RATE:ON_S:OFF_S
    tenants    NAME[,NAME...] (round-robin) | NAME:WEIGHT[,NAME:WEIGHT...] (random, weighted)
    nice       N | N:P[,N:P...] (probabilities summing to 1)
    slo        fixed:SECONDS | scale:A:B (slo_s = A + B * output_len)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from llmos.sim.errors import SimError

LENGTH_FORMS = "fixed:N, uniform:LO:HI, zipf:S:MAX, lognormal:MEAN:SIGMA[:MAX]"
ARRIVAL_FORMS = "poisson:RATE, gamma:RATE:CV, onoff:RATE:ON_S:OFF_S"
TENANT_FORMS = "NAME[,NAME...] (round-robin) or NAME:WEIGHT[,NAME:WEIGHT...] (weighted)"
NICE_FORMS = "N or N:P[,N:P...] with N in -20..19 and probabilities summing to 1"
SLO_FORMS = "fixed:SECONDS or scale:A:B (slo_s = A + B * output_len)"

# A bounded Zipf keeps its whole CDF in memory (8 bytes a value); past this it is not a token
# length any model serves, and the table would cost real memory.
ZIPF_MAX_LIMIT = 10_000_000
NICE_MIN, NICE_MAX = -20, 19  # DESIGN.md, Processes


# ---------------------------------------------------------------------------------------------
# Number parsing shared by every spec
# ---------------------------------------------------------------------------------------------

def _bad(what: str, spec: str, forms: str, why: str) -> SimError:
    """The one EINVAL every parser raises: what, the spec, why, and the accepted forms."""
    return SimError("EINVAL", f"{what} spec {spec!r}: {why}; accepted forms: {forms}")


def _int(text: str, what: str, spec: str, forms: str, minimum: int | None = None) -> int:
    """An integer field of a spec, at least ``minimum``."""
    try:
        value = int(text)
    except ValueError:
        raise _bad(what, spec, forms, f"{text!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise _bad(what, spec, forms, f"{value} is below {minimum}")
    return value


def _float(text: str, what: str, spec: str, forms: str, positive: bool = True) -> float:
    """A finite float field of a spec, > 0 when ``positive`` (else >= 0)."""
    try:
        value = float(text)
    except ValueError:
        raise _bad(what, spec, forms, f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise _bad(what, spec, forms, f"{text!r} is not finite")
    if positive and value <= 0:
        raise _bad(what, spec, forms, f"{text} must be > 0")
    if not positive and value < 0:
        raise _bad(what, spec, forms, f"{text} must be >= 0")
    return value


def _fmt(value: float) -> str:
    """A float as its shortest round-tripping text (``repr``), so specs parse back exactly."""
    return repr(float(value))


# ---------------------------------------------------------------------------------------------
# Token lengths
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FixedLength:
    """Every request has the same length."""

    n: int  # tokens, >= 1

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` lengths (int64, all ``n``); ``rng`` is not consumed."""
        return np.full(size, self.n, dtype=np.int64)

    def __str__(self) -> str:
        return f"fixed:{self.n}"


@dataclass(frozen=True)
class UniformLength:
    """Lengths uniform over the integers ``lo..hi`` inclusive."""

    lo: int  # smallest length, tokens, >= 1
    hi: int  # largest length, tokens, >= lo

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` lengths (int64) in ``[lo, hi]``."""
        return rng.integers(self.lo, self.hi, size=size, endpoint=True, dtype=np.int64)

    def __str__(self) -> str:
        return f"uniform:{self.lo}:{self.hi}"


@lru_cache(maxsize=16)
def _zipf_cdf(s: float, max_len: int) -> np.ndarray:
    """The CDF of P(k) ~ k**-s over k = 1..max_len (cached: sweeps sample the same one often)."""
    weights = np.arange(1, max_len + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return cdf


@dataclass(frozen=True)
class ZipfLength:
    """A bounded Zipf over ``1..max_len``: P(k) proportional to k**-s.

    numpy's own ``zipf`` is unbounded and needs s > 1; bounding it by inverse-CDF lookup allows
    any s > 0 (s < 1 gives a heavy but finite tail) and never yields a length past ``max_len``.
    """

    s: float  # exponent, > 0; larger means more mass on short lengths
    max_len: int  # largest length, tokens, 1..ZIPF_MAX_LIMIT

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` lengths (int64) in ``[1, max_len]``."""
        cdf = _zipf_cdf(self.s, self.max_len)
        # side="right" maps u in [cdf[k-1], cdf[k]) to index k, i.e. length k + 1.
        index = np.searchsorted(cdf, rng.random(size), side="right")
        return np.minimum(index + 1, self.max_len).astype(np.int64)

    def __str__(self) -> str:
        return f"zipf:{_fmt(self.s)}:{self.max_len}"


@dataclass(frozen=True)
class LognormalLength:
    """Log-normal lengths with a chosen mean, rounded and clipped to ``[1, max_len]``.

    The underlying normal has standard deviation ``sigma`` and mean ``ln(mean) - sigma**2 / 2``,
    which makes the (unclipped) mean exactly ``mean``: a spec reads in the units a trace's
    summary reports. Production prompt and output lengths are close to log-normal.
    """

    mean: float  # desired mean length, tokens, > 0 (clipping at 1 and max_len shifts it a little)
    sigma: float  # standard deviation of the underlying normal, > 0 (0.5 narrow, 1.0 wide)
    max_len: int | None = None  # upper clip, tokens, or None for no upper bound

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` lengths (int64) in ``[1, max_len]``."""
        mu = math.log(self.mean) - self.sigma**2 / 2
        values = np.rint(rng.lognormal(mu, self.sigma, size))
        upper = float(self.max_len) if self.max_len is not None else float(np.iinfo(np.int64).max // 2)
        return np.clip(values, 1.0, upper).astype(np.int64)

    def __str__(self) -> str:
        tail = f":{self.max_len}" if self.max_len is not None else ""
        return f"lognormal:{_fmt(self.mean)}:{_fmt(self.sigma)}{tail}"


LengthDistribution = FixedLength | UniformLength | ZipfLength | LognormalLength


def parse_length(spec: str) -> LengthDistribution:
    """A length distribution from its spec string.

    Args:
        spec: ``fixed:N``, ``uniform:LO:HI``, ``zipf:S:MAX`` or ``lognormal:MEAN:SIGMA[:MAX]``.

    Returns:
        The distribution; ``str()`` of it gives the canonical spec back.

    Raises:
        SimError: EINVAL naming the spec, what is wrong with it, and the accepted forms.
    """
    what, forms = "length", LENGTH_FORMS
    if not isinstance(spec, str):
        raise _bad(what, repr(spec), forms, "a spec is a string")
    kind, *fields = spec.strip().split(":")
    counts = {"fixed": (1,), "uniform": (2,), "zipf": (2,), "lognormal": (2, 3)}
    if kind not in counts:
        raise _bad(what, spec, forms, f"unknown distribution {kind!r}")
    if len(fields) not in counts[kind]:
        raise _bad(what, spec, forms, f"{kind} takes {' or '.join(map(str, counts[kind]))} fields")
    if kind == "fixed":
        return FixedLength(_int(fields[0], what, spec, forms, minimum=1))
    if kind == "uniform":
        lo = _int(fields[0], what, spec, forms, minimum=1)
        hi = _int(fields[1], what, spec, forms, minimum=1)
        if hi < lo:
            raise _bad(what, spec, forms, f"HI {hi} is below LO {lo}")
        return UniformLength(lo, hi)
    if kind == "zipf":
        s = _float(fields[0], what, spec, forms)
        max_len = _int(fields[1], what, spec, forms, minimum=1)
        if max_len > ZIPF_MAX_LIMIT:
            raise _bad(what, spec, forms, f"MAX {max_len} is above {ZIPF_MAX_LIMIT}")
        return ZipfLength(s, max_len)
    mean = _float(fields[0], what, spec, forms)
    sigma = _float(fields[1], what, spec, forms)
    clip = _int(fields[2], what, spec, forms, minimum=1) if len(fields) == 3 else None
    if sigma > 10:
        raise _bad(what, spec, forms, f"SIGMA {sigma} is above 10 (exp(sigma**2) overflows)")
    return LognormalLength(mean, sigma, clip)


# ---------------------------------------------------------------------------------------------
# Arrival processes: each yields sorted arrival times with the first request at 0.0
# ---------------------------------------------------------------------------------------------

def _times_from_gaps(gaps: np.ndarray) -> np.ndarray:
    """Arrival times whose first is 0.0 and whose consecutive differences are ``gaps[:-1]``.

    Starting at 0 matches a replayed trace (its first request arrives at 0), so a simulation
    never idles before its first request; the mean gap is still 1 / rate.
    """
    times = np.empty(len(gaps), dtype=np.float64)
    if len(gaps):
        times[0] = 0.0
        np.cumsum(gaps[:-1], out=times[1:])
    return times


@dataclass(frozen=True)
class PoissonArrivals:
    """A Poisson process: exponential gaps, the memoryless baseline."""

    rate: float  # mean arrivals per second, > 0

    @property
    def mean_rate(self) -> float:
        """Long-run arrivals per second."""
        return self.rate

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` sorted arrival times in seconds, the first at 0.0."""
        return _times_from_gaps(rng.exponential(1.0 / self.rate, size))

    def __str__(self) -> str:
        return f"poisson:{_fmt(self.rate)}"


@dataclass(frozen=True)
class GammaArrivals:
    """A renewal process with gamma gaps: the rate of a Poisson process, burstier or smoother.

    The gaps' coefficient of variation (std / mean) is ``cv``: 1 is Poisson, above 1 bursty
    (clumps of requests then lulls), below 1 more regular. Shape = 1 / cv**2.
    """

    rate: float  # mean arrivals per second, > 0
    cv: float  # coefficient of variation of the gaps, > 0

    @property
    def mean_rate(self) -> float:
        """Long-run arrivals per second."""
        return self.rate

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` sorted arrival times in seconds, the first at 0.0."""
        shape = 1.0 / self.cv**2
        return _times_from_gaps(rng.gamma(shape, 1.0 / (self.rate * shape), size))

    def __str__(self) -> str:
        return f"gamma:{_fmt(self.rate)}:{_fmt(self.cv)}"


@dataclass(frozen=True)
class OnOffArrivals:
    """Bursts: Poisson at ``rate`` for ``on_s`` seconds, then silence for ``off_s``, repeating.

    Periods are fixed (not random) so a plot shows the bursts where the spec says they are;
    the long-run rate is ``rate * on_s / (on_s + off_s)``.
    """

    rate: float  # arrivals per second while on, > 0
    on_s: float  # length of each burst, seconds, > 0
    off_s: float  # length of each silence, seconds, >= 0

    @property
    def mean_rate(self) -> float:
        """Long-run arrivals per second."""
        return self.rate * self.on_s / (self.on_s + self.off_s)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` sorted arrival times in seconds, the first at 0.0."""
        # Sample a Poisson process in "on time" only, then stretch each completed burst by a
        # silence: on-time t lands in burst floor(t / on_s), which starts that many
        # (on_s + off_s) periods in. The map is monotone, so times stay sorted.
        on_time = _times_from_gaps(rng.exponential(1.0 / self.rate, size))
        return on_time + np.floor(on_time / self.on_s) * self.off_s

    def __str__(self) -> str:
        return f"onoff:{_fmt(self.rate)}:{_fmt(self.on_s)}:{_fmt(self.off_s)}"


ArrivalProcess = PoissonArrivals | GammaArrivals | OnOffArrivals
ARRIVAL_KINDS = ("poisson", "gamma", "onoff")


def parse_arrivals(spec: str) -> ArrivalProcess:
    """An arrival process from its spec string.

    Args:
        spec: ``poisson:RATE``, ``gamma:RATE:CV`` or ``onoff:RATE:ON_S:OFF_S``; rates in
            requests per second, times in seconds.

    Returns:
        The process; ``str()`` of it gives the canonical spec back.

    Raises:
        SimError: EINVAL naming the spec, what is wrong with it, and the accepted forms.
    """
    what, forms = "arrivals", ARRIVAL_FORMS
    if not isinstance(spec, str):
        raise _bad(what, repr(spec), forms, "a spec is a string")
    kind, *fields = spec.strip().split(":")
    counts = {"poisson": 1, "gamma": 2, "onoff": 3}
    if kind not in counts:
        raise _bad(what, spec, forms, f"unknown arrival process {kind!r}")
    if len(fields) != counts[kind]:
        raise _bad(what, spec, forms, f"{kind} takes {counts[kind]} field(s)")
    rate = _float(fields[0], what, spec, forms)
    if kind == "poisson":
        return PoissonArrivals(rate)
    if kind == "gamma":
        return GammaArrivals(rate, _float(fields[1], what, spec, forms))
    on_s = _float(fields[1], what, spec, forms)
    off_s = _float(fields[2], what, spec, forms, positive=False)
    return OnOffArrivals(rate, on_s, off_s)


def make_arrivals(kind: str, rate: float, cv: float = 1.0, on_s: float = 10.0,
                  off_s: float = 10.0) -> ArrivalProcess:
    """An arrival process from separate fields (the command line's --arrivals, --rate, --cv).

    Raises:
        SimError: EINVAL for an unknown kind or a value out of range, as ``parse_arrivals``.
    """
    if kind not in ARRIVAL_KINDS:
        raise _bad("arrivals", str(kind), ARRIVAL_FORMS,
                   f"unknown arrival process {kind!r}; one of {', '.join(ARRIVAL_KINDS)}")
    fields = {"poisson": [rate], "gamma": [rate, cv], "onoff": [rate, on_s, off_s]}[kind]
    return parse_arrivals(":".join([kind, *(_fmt(f) for f in fields)]))


# ---------------------------------------------------------------------------------------------
# Per-request labels: tenant, nice, SLO
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TenantAssignment:
    """Which tenant each request belongs to: round-robin, or random with weights."""

    names: tuple[str, ...]  # tenant names, distinct, in spec order
    weights: tuple[float, ...] | None = None  # relative weights (> 0), or None for round-robin

    def assign(self, rng: np.random.Generator, size: int) -> list[str]:
        """The tenant of requests ``0..size-1``; round-robin does not consume ``rng``."""
        if self.weights is None:
            return [self.names[i % len(self.names)] for i in range(size)]
        p = np.asarray(self.weights) / sum(self.weights)
        picks = rng.choice(len(self.names), size=size, p=p)
        return [self.names[i] for i in picks.tolist()]

    def __str__(self) -> str:
        if self.weights is None:
            return ",".join(self.names)
        return ",".join(f"{n}:{_fmt(w)}" for n, w in zip(self.names, self.weights, strict=True))


def parse_tenants(spec: str) -> TenantAssignment:
    """A tenant assignment: ``"a,b,c"`` round-robin or ``"a:3,b:1"`` weighted (random).

    Raises:
        SimError: EINVAL for empty or duplicate names, a bad weight, or mixed forms.
    """
    what, forms = "tenants", TENANT_FORMS
    if not isinstance(spec, str):
        raise _bad(what, repr(spec), forms, "a spec is a string")
    items = [item.strip() for item in spec.split(",")]
    weighted = [":" in item for item in items]
    if any(weighted) and not all(weighted):
        raise _bad(what, spec, forms, "give every tenant a weight, or none")
    names: list[str] = []
    weights: list[float] = []
    for item in items:
        name, _, weight = item.partition(":")
        name = name.strip()
        if not name or any(c.isspace() for c in name):
            raise _bad(what, spec, forms, f"tenant name {name!r} is empty or has spaces")
        if name in names:
            raise _bad(what, spec, forms, f"tenant {name!r} appears twice")
        names.append(name)
        if weight:
            weights.append(_float(weight, what, spec, forms))
    return TenantAssignment(tuple(names), tuple(weights) if any(weighted) else None)


@dataclass(frozen=True)
class NiceAssignment:
    """Each request's nice value, drawn from a discrete distribution."""

    values: tuple[int, ...]  # nice values, -20..19, distinct
    probabilities: tuple[float, ...]  # same length, summing to 1

    def assign(self, rng: np.random.Generator, size: int) -> list[int]:
        """The nice value of requests ``0..size-1``; one value does not consume ``rng``."""
        if len(self.values) == 1:
            return [self.values[0]] * size
        p = np.asarray(self.probabilities) / sum(self.probabilities)
        picks = rng.choice(len(self.values), size=size, p=p)
        return [self.values[i] for i in picks.tolist()]

    def __str__(self) -> str:
        if len(self.values) == 1:
            return str(self.values[0])
        return ",".join(f"{v}:{_fmt(p)}" for v, p in zip(self.values, self.probabilities, strict=True))


def parse_nice(spec: str | int) -> NiceAssignment:
    """A nice assignment: ``"0"`` for everyone, or ``"-5:0.1,0:0.9"`` (value:probability).

    Raises:
        SimError: EINVAL for a value outside -20..19, a repeated value, or probabilities that do
            not sum to 1.
    """
    what, forms = "nice", NICE_FORMS
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = str(spec)
    if not isinstance(spec, str):
        raise _bad(what, repr(spec), forms, "a spec is a string")
    items = [item.strip() for item in spec.split(",")]
    if len(items) == 1 and ":" not in items[0]:
        items = [items[0] + ":1"]
    values: list[int] = []
    probabilities: list[float] = []
    for item in items:
        value_text, sep, p_text = item.partition(":")
        if not sep:
            raise _bad(what, spec, forms, f"{item!r} has no probability")
        value = _int(value_text, what, spec, forms)
        if not NICE_MIN <= value <= NICE_MAX:
            raise _bad(what, spec, forms, f"nice {value} is outside {NICE_MIN}..{NICE_MAX}")
        if value in values:
            raise _bad(what, spec, forms, f"nice {value} appears twice")
        values.append(value)
        probabilities.append(_float(p_text, what, spec, forms))
    if abs(sum(probabilities) - 1.0) > 1e-6:
        raise _bad(what, spec, forms, f"probabilities sum to {sum(probabilities):g}, not 1")
    return NiceAssignment(tuple(values), tuple(probabilities))


@dataclass(frozen=True)
class SloAssignment:
    """Each request's end-to-end deadline: ``base_s + per_token_s * output_len`` seconds.

    ``fixed:S`` is ``base_s = S, per_token_s = 0``; ``scale:A:B`` gives longer requests
    proportionally more time, the way a service quotes a latency per generated token.
    """

    base_s: float  # seconds every request gets, >= 0
    per_token_s: float = 0.0  # extra seconds per output token, >= 0

    def slo_for(self, output_len: int) -> float:
        """The deadline (seconds after arrival) of a request generating ``output_len`` tokens."""
        return self.base_s + self.per_token_s * output_len

    def __str__(self) -> str:
        if self.per_token_s == 0.0:
            return f"fixed:{_fmt(self.base_s)}"
        return f"scale:{_fmt(self.base_s)}:{_fmt(self.per_token_s)}"


def parse_slo(spec: str | None) -> SloAssignment | None:
    """An SLO assignment from ``fixed:SECONDS`` or ``scale:A:B``; None or ``"none"`` is no SLO.

    Raises:
        SimError: EINVAL for an unknown form or a negative / zero deadline.
    """
    what, forms = "slo", SLO_FORMS
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise _bad(what, repr(spec), forms, "a spec is a string")
    if spec.strip().lower() == "none":
        return None
    kind, *fields = spec.strip().split(":")
    if kind == "fixed" and len(fields) == 1:
        return SloAssignment(_float(fields[0], what, spec, forms))
    if kind == "scale" and len(fields) == 2:
        base = _float(fields[0], what, spec, forms, positive=False)
        per_token = _float(fields[1], what, spec, forms, positive=False)
        if base == 0 and per_token == 0:
            raise _bad(what, spec, forms, "a deadline of 0 s can never be met")
        return SloAssignment(base, per_token)
    raise _bad(what, spec, forms, f"unknown form {kind!r} with {len(fields)} field(s)")

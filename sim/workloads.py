"""Workloads: what a simulation replays, as a list of ``Request`` sorted by arrival.

A ``WorkloadSpec`` says where requests come from, each part independently:

    arrival times   the trace's, or a synthetic process (poisson, gamma, onoff)
    lengths         the trace's, or a distribution spec (distributions.py)
    labels          tenant, nice and SLO, from small spec strings

so "the Azure trace's arrivals with fixed 512-token prompts" or "the trace's lengths at a
gamma arrival rate of 8/s" are one spec each. ``make_workload(spec, seed)`` is deterministic:
each concern draws from its own random stream derived from ``seed``, so changing the nice mix
never moves an arrival. Specs come from the command line (``add_workload_arguments``) or a sweep's
TOML table (``workload_spec_from_dict``).

``prompt_token_ids`` turns a request into token ids for a real kernel: requests that share
leading Mooncake ``hash_ids`` share the matching token prefix, so the prefix cache sees them.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from llmos.sim.distributions import (
    ARRIVAL_KINDS,
    ArrivalProcess,
    make_arrivals,
    parse_length,
    parse_nice,
    parse_slo,
    parse_tenants,
)
from llmos.sim.errors import SimError
from llmos.sim.records import Request
from llmos.sim.traces import DEFAULT_TRACE, FORMATS, load_trace

# Synthetic lengths when a spec gives none: log-normals with the Azure conversation trace's
# mean and median (prompt 1155 / 1020, output 211 / 129 tokens; shared/traces/README.md).
DEFAULT_PROMPT_LEN = "lognormal:1155:0.5:8192"
DEFAULT_OUTPUT_LEN = "lognormal:211:1.0:2048"
DEFAULT_SYNTHETIC_REQUESTS = 1000
# A synthetic workload sized by duration_s alone stops here: past it, the spec is a typo (a
# rate in requests per hour, a duration in ms) rather than a simulation anyone can run.
MAX_DURATION_REQUESTS = 10_000_000
# The value of ``trace`` (and --trace) that names the shared Azure trace.
DEFAULT_TRACE_NAME = "default"

# One random stream per concern (see the module docstring); the numbers are fixed forever,
# since changing one changes every workload of every seed.
_STREAM_ARRIVALS, _STREAM_PROMPT, _STREAM_OUTPUT, _STREAM_TENANT, _STREAM_NICE = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class WorkloadSpec:
    """Where a workload's requests, lengths and labels come from. Validated on construction.

    "None" fields mean "from the trace": with a trace, its arrival times and lengths are used
    unless ``arrivals`` / ``prompt_len`` / ``output_len`` override them; without one, they fall
    back to a Poisson process and the Azure-shaped ``DEFAULT_*_LEN`` distributions.
    """

    trace: str | None = None  # trace file, "default" for the shared Azure trace, None: synthetic
    trace_format: str = "auto"  # "auto" or one of traces.FORMATS
    trace_model: str | None = None  # BurstGPT only: keep this Model's rows ("ChatGPT", "GPT-4")
    arrivals: str | None = None  # "poisson" | "gamma" | "onoff"; None: the trace's, or poisson
    rate: float = 1.0  # synthetic arrivals per second (during bursts for onoff), > 0
    cv: float = 1.0  # gamma: coefficient of variation of the gaps (1 = poisson), > 0
    on_s: float = 10.0  # onoff: seconds of each burst, > 0
    off_s: float = 10.0  # onoff: seconds of silence between bursts, >= 0
    num_requests: int | None = None  # first N requests; None: all of a trace, or 1000 synthetic
    prompt_len: str | None = None  # length spec (distributions.py); None: the trace's, or default
    output_len: str | None = None  # length spec; None: the trace's, or DEFAULT_OUTPUT_LEN
    duration_s: float | None = None  # drop requests arriving at or after this (scaled) time, s
    rate_scale: float = 1.0  # speed-up: arrival times are divided by it (2.0 = twice the load)
    tenants: str = "default"  # "a,b,c" round-robin, or "a:3,b:1" weighted at random
    nice: str = "0"  # "0" for all, or "-5:0.1,0:0.9" (value:probability)
    slo: str | None = None  # None, "fixed:SECONDS" or "scale:A:B" (A + B * output_len seconds)

    def __post_init__(self) -> None:
        if isinstance(self.trace, os.PathLike):
            object.__setattr__(self, "trace", os.fspath(self.trace))
        _check_optional(self, "trace", str)
        _check_optional(self, "trace_model", str)
        _check_optional(self, "arrivals", str)
        _check_optional(self, "prompt_len", str)
        _check_optional(self, "output_len", str)
        _check_optional(self, "slo", str)
        _check_optional(self, "tenants", str, required=True)
        if isinstance(self.nice, int) and not isinstance(self.nice, bool):
            object.__setattr__(self, "nice", str(self.nice))
        _check_optional(self, "nice", str, required=True)
        if self.trace_format != "auto" and self.trace_format not in FORMATS:
            _fail("trace_format", f"{self.trace_format!r} is not auto, {', '.join(FORMATS)}")
        if self.trace_model is not None and self.trace is None:
            _fail("trace_model", "filters a BurstGPT trace, but no trace is given")
        if self.arrivals is not None and self.arrivals not in ARRIVAL_KINDS:
            _fail("arrivals", f"{self.arrivals!r} is not one of {', '.join(ARRIVAL_KINDS)}")
        for name in ("rate", "cv", "on_s", "rate_scale"):
            _check_number(self, name, positive=True)
        _check_number(self, "off_s", positive=False)
        if self.duration_s is not None:
            _check_number(self, "duration_s", positive=True)
        if self.num_requests is not None and (
                isinstance(self.num_requests, bool) or not isinstance(self.num_requests, int)
                or self.num_requests < 1):
            _fail("num_requests", f"{self.num_requests!r} is not an integer >= 1")
        # Parse every spec now, so a bad one fails where the spec is written, not mid-sweep.
        self.arrival_process()
        for name in ("prompt_len", "output_len"):
            if getattr(self, name) is not None:
                parse_length(getattr(self, name))
        parse_tenants(self.tenants)
        parse_nice(self.nice)
        parse_slo(self.slo)

    def arrival_process(self) -> ArrivalProcess | None:
        """The synthetic arrival process, or None when the trace's arrival times are used."""
        kind = self.arrivals or (None if self.trace is not None else "poisson")
        if kind is None:
            return None
        return make_arrivals(kind, self.rate, self.cv, self.on_s, self.off_s)

    def trace_path(self) -> Path | None:
        """The trace file (``"default"`` resolved to ``DEFAULT_TRACE``), or None if synthetic."""
        if self.trace is None:
            return None
        if self.trace == DEFAULT_TRACE_NAME:
            return DEFAULT_TRACE
        return Path(self.trace).expanduser()


def _fail(name: str, why: str) -> None:
    """Raise the EINVAL of a bad WorkloadSpec field."""
    raise SimError("EINVAL", f"workload field {name!r}: {why}")


def _check_optional(spec: WorkloadSpec, name: str, kind: type, required: bool = False) -> None:
    """A field that is ``kind`` (or None unless ``required``)."""
    value = getattr(spec, name)
    if value is None and not required:
        return
    if not isinstance(value, kind):
        _fail(name, f"{value!r} is a {type(value).__name__}, expected a {kind.__name__}")


def _check_number(spec: WorkloadSpec, name: str, positive: bool) -> None:
    """A finite number field, > 0 (``positive``) or >= 0."""
    value = getattr(spec, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(name, f"{value!r} is not a finite number")
    if value < 0 or (positive and value == 0):
        _fail(name, f"{value!r} must be {'> 0' if positive else '>= 0'}")


# ---------------------------------------------------------------------------------------------
# Making a workload
# ---------------------------------------------------------------------------------------------

@lru_cache(maxsize=4)
def _cached_trace(path: str, fmt: str, model: str | None, mtime_ns: int,
                  size: int) -> tuple[Request, ...]:
    """A loaded trace, kept while the file is unchanged: a sweep makes many workloads of one."""
    return tuple(load_trace(path, fmt, model=model))


def _load_spec_trace(spec: WorkloadSpec) -> tuple[Request, ...]:
    """The spec's trace requests (ENOENT / EINVAL from the loader)."""
    path = spec.trace_path()
    assert path is not None
    try:
        stat = path.stat()
    except OSError:
        raise SimError("ENOENT", f"no trace file at {path}") from None
    return _cached_trace(str(path), spec.trace_format, spec.trace_model, stat.st_mtime_ns, stat.st_size)


def _stream(seed: int, stream: int) -> np.random.Generator:
    """The random stream of one concern of one seed."""
    return np.random.default_rng([seed, stream])


def _synthetic_times(spec: WorkloadSpec, seed: int, count: int | None) -> np.ndarray:
    """Unscaled arrival times: ``count`` of them, or enough to pass the duration cap."""
    process = spec.arrival_process()
    assert process is not None  # the caller asks only when arrivals are synthetic
    if count is not None:
        return process.sample(_stream(seed, _STREAM_ARRIVALS), count)
    assert spec.duration_s is not None  # no count means "until the duration cap"
    # Until the cap: the cap is in scaled time, so in unscaled time it is duration * scale.
    # Guess generously, then double until the last arrival passes it; each try restarts the
    # stream, so the result depends only on the seed.
    horizon = spec.duration_s * spec.rate_scale
    expected = process.mean_rate * horizon
    if expected > MAX_DURATION_REQUESTS:
        raise SimError("EINVAL", f"workload field 'duration_s': {spec.duration_s} s at "
                                 f"{process.mean_rate * spec.rate_scale:g} requests/s is ~{expected:.3g} "
                                 f"requests, over {MAX_DURATION_REQUESTS}; set num_requests instead")
    size = int(expected * 1.25) + 64
    while True:
        times = process.sample(_stream(seed, _STREAM_ARRIVALS), size)
        if times[-1] >= horizon:
            return times
        size *= 2


def make_workload(spec: WorkloadSpec, seed: int) -> list[Request]:
    """The requests of a workload, sorted by arrival, ``request_id`` = index.

    Deterministic: the same spec and seed give an identical list (the trace file unchanged).

    Raises:
        SimError: ENOENT for a missing trace; EINVAL for a malformed one, a negative seed, or
            ``num_requests`` beyond the trace's length.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SimError("EINVAL", f"workload seed {seed!r} is not an integer >= 0")
    trace: tuple[Request, ...] = ()
    if spec.trace is not None:
        trace = _load_spec_trace(spec)
        if spec.num_requests is not None:
            if spec.num_requests > len(trace):
                raise SimError("EINVAL", f"workload field 'num_requests': {spec.num_requests} is more "
                                         f"than the {len(trace)} requests of {spec.trace_path()}")
            trace = trace[: spec.num_requests]
        count: int | None = len(trace)
    elif spec.num_requests is not None:
        count = spec.num_requests
    elif spec.duration_s is not None:
        count = None  # synthetic until the duration cap
    else:
        count = DEFAULT_SYNTHETIC_REQUESTS

    if spec.arrival_process() is not None:
        times = _synthetic_times(spec, seed, count)
    else:
        times = np.fromiter((r.arrival_s for r in trace), dtype=np.float64, count=len(trace))
    times = times / spec.rate_scale
    n = len(times)
    prompts = _lengths(spec.prompt_len, DEFAULT_PROMPT_LEN, trace, "prompt_len", seed, _STREAM_PROMPT, n)
    outputs = _lengths(spec.output_len, DEFAULT_OUTPUT_LEN, trace, "output_len", seed, _STREAM_OUTPUT, n)

    if spec.duration_s is not None:
        # Times are sorted, so the cap keeps a prefix.
        n = int(np.searchsorted(times, spec.duration_s, side="left"))
    tenants = parse_tenants(spec.tenants).assign(_stream(seed, _STREAM_TENANT), n)
    nices = parse_nice(spec.nice).assign(_stream(seed, _STREAM_NICE), n)
    slo = parse_slo(spec.slo)
    time_list = times[:n].tolist()
    prompt_list = prompts[:n].tolist()
    output_list = outputs[:n].tolist()
    slos = [None] * n if slo is None else [slo.slo_for(length) for length in output_list]
    hash_ids = [r.hash_ids for r in trace[:n]] if trace else [()] * n
    # Positional: (request_id, arrival_s, prompt_len, output_len, tenant, nice, slo_s, hash_ids);
    # keywords cost twice as much over ~20k requests.
    return [
        Request(i, time_list[i], prompt_list[i], output_list[i], tenants[i], nices[i], slos[i],
                hash_ids[i])
        for i in range(n)
    ]


def _lengths(dist_spec: str | None, default: str, trace: tuple[Request, ...], name: str,
             seed: int, stream: int, n: int) -> np.ndarray:
    """``n`` lengths: sampled from ``dist_spec``, else the trace's, else from ``default``."""
    if dist_spec is None and trace:
        return np.fromiter((getattr(r, name) for r in trace), dtype=np.int64, count=n)
    return parse_length(dist_spec or default).sample(_stream(seed, stream), n)


# ---------------------------------------------------------------------------------------------
# Command line and TOML
# ---------------------------------------------------------------------------------------------

def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the workload options (a "workload" group) to a command's parser.

    ``workload_spec_from_args`` reads them back; every default is ``WorkloadSpec``'s.
    """
    d = WorkloadSpec()
    g = parser.add_argument_group("workload")
    g.add_argument("--trace", default=None, metavar="PATH",
                   help="replay a trace file (llmos/Azure/BurstGPT CSV or Mooncake JSONL); "
                        f"'{DEFAULT_TRACE_NAME}' is the shared Azure trace; omit for a synthetic workload")
    g.add_argument("--trace-format", default=d.trace_format, choices=("auto", *FORMATS),
                   help="trace format (default: from the file's first line)")
    g.add_argument("--trace-model", default=None, metavar="MODEL",
                   help="BurstGPT: keep only this Model's rows (e.g. ChatGPT, GPT-4)")
    g.add_argument("--arrivals", default=None, choices=ARRIVAL_KINDS,
                   help="synthetic arrival process (default: the trace's times, or poisson)")
    g.add_argument("--rate", type=float, default=d.rate,
                   help="synthetic arrivals per second (default %(default)s)")
    g.add_argument("--cv", type=float, default=d.cv,
                   help="gamma: coefficient of variation of the gaps (default %(default)s)")
    g.add_argument("--on-s", type=float, default=d.on_s, help="onoff: burst seconds (default %(default)s)")
    g.add_argument("--off-s", type=float, default=d.off_s, help="onoff: silent seconds (default %(default)s)")
    g.add_argument("--num-requests", "--requests", dest="num_requests", type=int, default=None,
                   metavar="N", help=f"first N requests (default: all of a trace, {DEFAULT_SYNTHETIC_REQUESTS} synthetic)")
    g.add_argument("--prompt-len", default=None, metavar="SPEC",
                   help=f"prompt lengths: fixed:N, uniform:LO:HI, zipf:S:MAX, lognormal:MEAN:SIGMA[:MAX] "
                        f"(default: the trace's, or {DEFAULT_PROMPT_LEN})")
    g.add_argument("--output-len", default=None, metavar="SPEC",
                   help=f"output lengths, same forms (default: the trace's, or {DEFAULT_OUTPUT_LEN})")
    g.add_argument("--duration", dest="duration_s", type=float, default=None, metavar="SECONDS",
                   help="drop requests arriving after this many (scaled) seconds")
    g.add_argument("--rate-scale", type=float, default=d.rate_scale,
                   help="multiply the arrival rate (divide arrival times) by this (default %(default)s)")
    g.add_argument("--tenants", default=d.tenants,
                   help="'a,b,c' round-robin or 'a:3,b:1' weighted (default %(default)s)")
    g.add_argument("--nice", default=d.nice, help="'0' or value:probability pairs like '-5:0.1,0:0.9' (with a leading minus, write "
                        "--nice=-5:0.1,0:0.9 so it is not read as an option)")
    g.add_argument("--slo", default=None, metavar="SPEC",
                   help="deadline per request: fixed:SECONDS or scale:A:B (A + B * output_len s)")


def workload_spec_from_args(args: argparse.Namespace) -> WorkloadSpec:
    """The ``WorkloadSpec`` of parsed ``add_workload_arguments`` options.

    Options the parser lacks keep ``WorkloadSpec``'s defaults.

    Raises:
        SimError: EINVAL naming the bad option's field.
    """
    values = {f.name: getattr(args, f.name) for f in fields(WorkloadSpec) if hasattr(args, f.name)}
    return WorkloadSpec(**values)


# Other names a TOML table may use for a field.
_ALIASES = {"requests": "num_requests", "duration": "duration_s", "format": "trace_format"}


def workload_spec_from_dict(d: dict[str, Any]) -> WorkloadSpec:
    """The ``WorkloadSpec`` of a sweep config's ``[workload]`` table.

    Keys are the field names; ``-`` may stand for ``_`` (``rate-scale``), and ``requests``,
    ``duration`` and ``format`` are accepted for ``num_requests``, ``duration_s`` and
    ``trace_format``.

    Raises:
        SimError: EINVAL naming unknown keys (with the accepted ones) or a bad value.
    """
    if not isinstance(d, dict):
        raise SimError("EINVAL", f"a workload table is a mapping of field names, not {type(d).__name__}")
    names = [f.name for f in fields(WorkloadSpec)]
    values: dict[str, Any] = {}
    unknown = []
    for key, value in d.items():
        name = str(key).replace("-", "_")
        name = _ALIASES.get(name, name)
        if name not in names:
            unknown.append(str(key))
        elif name in values:
            raise SimError("EINVAL", f"workload key {key!r} repeats field {name!r}")
        else:
            values[name] = value
    if unknown:
        raise SimError("EINVAL", f"unknown workload key(s) {', '.join(map(repr, unknown))}; "
                                 f"accepted: {', '.join(names)}")
    return WorkloadSpec(**values)


# ---------------------------------------------------------------------------------------------
# Token ids
# ---------------------------------------------------------------------------------------------
#
# A prompt's ids are a counter-based hash, not a seeded Generator: token p of a stream with key
# k is  3 + mulhi(top32((H[p] ^ k) * C), vocab - 3),  with H[p] = splitmix64(p). Both maps are
# bijections on 64 bits before the top bits are taken, so different keys give independent-
# looking streams; and a whole prompt is five numpy ops, ~3x faster than building a Generator
# per request (the runner makes ~20k prompts per simulation).
#
#   hash_ids = (h0, h1)          tokens_per_hash = 4, prompt_len = 10
#   | h0 h0 h0 h0 | h1 h1 h1 h1 | r r |     h: key from the hash id alone (shared prefixes)
#                                           r: key from (seed, request_id), positions 8, 9

_MASK64 = (1 << 64) - 1
_STREAM_MULT = np.uint64(0xD6E8FEB86659FD93)  # an odd multiplier with well-mixed bits
_U32, _U3 = np.uint64(32), np.uint64(3)  # numpy scalars built once: ~20k prompts a simulation
_HASH_DOMAIN = 0x6A09E667F3BCC909  # keeps a hash id's key apart from any (seed, request) key
_REQUEST_DOMAIN = 0xBB67AE8584CAA73B
_positions: np.ndarray = np.empty(0, dtype=np.uint64)  # H[p] for p < len; grown on demand


def _mix64(x: int) -> int:
    """splitmix64's finalizer on a Python int: a bijection of 64-bit values."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _position_hashes(n: int) -> np.ndarray:
    """H[0..n): splitmix64 of each position, cached and grown by doubling."""
    global _positions
    if len(_positions) < n:
        z = np.arange(max(n, 2 * len(_positions), 4096), dtype=np.uint64)
        z *= np.uint64(0x9E3779B97F4A7C15)
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
        _positions = z
    return _positions[:n]


def _to_tokens(x: np.ndarray, vocab_size: int) -> np.ndarray:
    """Keyed position hashes (uint64, changed in place) to int64 token ids in [3, vocab_size)."""
    x *= _STREAM_MULT
    x >>= _U32
    x *= np.uint64(vocab_size - 3)  # < 2**32 * 2**32: no overflow
    x >>= _U32
    x += _U3
    # Values are < 2**32, so reading the bits as int64 is exact and free; int64 is what torch
    # and the kernel's token lists expect (torch barely supports uint64).
    return x.view(np.int64)


def prompt_token_array(request: Request, seed: int, vocab_size: int = 32000,
                       tokens_per_hash: int = 512) -> np.ndarray:
    """``prompt_token_ids`` as an int64 array (no Python list), for callers that take arrays."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 4 <= vocab_size <= 1 << 32:
        raise SimError("EINVAL", f"vocab_size {vocab_size!r} must be an integer in 4..2**32 "
                                 "(ids 0, 1, 2 are reserved)")
    if isinstance(tokens_per_hash, bool) or not isinstance(tokens_per_hash, int) or tokens_per_hash < 1:
        raise SimError("EINVAL", f"tokens_per_hash {tokens_per_hash!r} must be an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SimError("EINVAL", f"seed {seed!r} must be an integer")
    n = request.prompt_len
    positions = _position_hashes(max(n, tokens_per_hash))
    request_key = np.uint64(_mix64(_mix64(_REQUEST_DOMAIN ^ (seed & _MASK64)) + request.request_id))
    num_blocks = min(len(request.hash_ids), -(-n // tokens_per_hash))
    if num_blocks == 0:
        return _to_tokens(positions[:n] ^ request_key, vocab_size)
    block_keys = np.array([_mix64(_HASH_DOMAIN ^ _mix64(h)) for h in request.hash_ids[:num_blocks]],
                          dtype=np.uint64)
    x = np.empty(n, dtype=np.uint64)
    hashed = min(n, num_blocks * tokens_per_hash)
    # Block i is positions 0..tokens_per_hash of its own key: it depends on hash_ids[i] only,
    # not on i, the seed or the request.
    blocks = positions[:tokens_per_hash][None, :] ^ block_keys[:, None]  # (num_blocks, tokens_per_hash)
    x[:hashed] = blocks.reshape(-1)[:hashed]
    np.bitwise_xor(positions[hashed:n], request_key, out=x[hashed:])
    return _to_tokens(x, vocab_size)


def prompt_token_ids(request: Request, seed: int, vocab_size: int = 32000,
                     tokens_per_hash: int = 512) -> list[int]:
    """Deterministic token ids for a request's prompt, ``request.prompt_len`` of them.

    Ids are in ``[3, vocab_size)`` (0, 1, 2 are BOS, EOS and PAD in the default model). With
    ``request.hash_ids``, prompt block i (``tokens_per_hash`` tokens; Mooncake's are 512) is a
    pure function of ``hash_ids[i]``, so requests sharing leading hash ids share that token
    prefix; tokens past the hashed blocks (or all of them, without hash ids) are a function of
    ``(seed, request.request_id)``.

    Raises:
        SimError: EINVAL for a vocab_size below 4 or a tokens_per_hash below 1.
    """
    return prompt_token_array(request, seed, vocab_size, tokens_per_hash).tolist()


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------

def workload_summary(requests: list[Request]) -> dict[str, Any]:
    """Headline figures of a workload, for reports and sanity checks against a trace's README.

    Returns:
        ``count``; ``duration_s`` (first to last arrival); ``mean_rate`` (requests per second,
        1 / mean gap, 0.0 under two requests or no spread); ``prompt_mean``, ``prompt_p50``,
        ``prompt_p99`` and the same for ``output_*`` (tokens; None when empty); ``tenants``
        (requests per tenant).
    """
    count = len(requests)
    summary: dict[str, Any] = {"count": count}
    arrivals = np.array([r.arrival_s for r in requests], dtype=np.float64)
    duration = float(arrivals.max() - arrivals.min()) if count else 0.0
    summary["duration_s"] = duration
    summary["mean_rate"] = (count - 1) / duration if count >= 2 and duration > 0 else 0.0
    for name in ("prompt", "output"):
        values = np.array([getattr(r, f"{name}_len") for r in requests], dtype=np.float64)
        summary[f"{name}_mean"] = float(values.mean()) if count else None
        summary[f"{name}_p50"] = float(np.percentile(values, 50)) if count else None
        summary[f"{name}_p99"] = float(np.percentile(values, 99)) if count else None
    tenants: dict[str, int] = {}
    for r in requests:
        tenants[r.tenant] = tenants.get(r.tenant, 0) + 1
    summary["tenants"] = tenants
    return summary

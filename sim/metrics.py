"""Metrics of one simulation: per-request CSVs, a summary dict, its JSON file and a terminal table.

Everything here reads a ``SimResult`` (see ``records.py``) and nothing else, so the same
functions serve ``llmos sim``, sweeps and notebooks. Two invariants make results trustworthy:

- Identical inputs give byte-identical files: floats are written as ``repr(round(x, 9))``, rows
  and keys come out in a fixed order, and lines end in ``\\n`` on every platform.
- Latency statistics cover *completed* requests only (finished, not killed, no errno); the
  counts say how many requests that leaves out. Percentiles use numpy's ``linear`` method.
"""

from __future__ import annotations

import csv
import dataclasses
import errno as errno_module
import json
import math
import os
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np
from rich.table import Table

from .errors import SimError
from .records import RequestRecord, SimResult, TimelineSample

REQUEST_COLUMNS: tuple[str, ...] = (
    "request_id", "pid", "tenant", "nice", "prompt_tokens", "output_tokens", "arrival_s",
    "first_scheduled_s", "first_token_s", "completion_s", "ttft_s", "tpot_s", "e2e_s",
    "normalized_latency_s", "max_gap_s", "preemptions", "swaps", "recomputed_tokens",
    "prefix_hit_tokens", "deadline_s", "met_deadline", "exit_reason", "errno",
)
TOKEN_TIME_COLUMNS: tuple[str, ...] = ("request_id", "index", "time_s", "gap_s")
# The latency distributions the summary reports: one value per completed request, except gap_s
# (every inter-token gap of every completed request).
LATENCY_METRICS: tuple[str, ...] = ("ttft_s", "tpot_s", "e2e_s", "normalized_latency_s", "gap_s")
T = TypeVar("T")


# --------------------------------------------------------------------------- per-request values

def is_error(record: RequestRecord) -> bool:
    """Whether the request ended with an errno (it counts as an error, never as completed)."""
    return record.exit_reason == "error" or record.errno is not None


def is_completed(record: RequestRecord) -> bool:
    """Whether the request ran to its end: it finished, was not killed and has no errno."""
    finished = record.completion_s is not None
    return finished and record.exit_reason != "signal" and not is_error(record)


def normalized_latency_s(record: RequestRecord) -> float | None:
    """End-to-end latency per generated token, or None if unfinished or no token came out."""
    e2e = record.e2e_s
    return None if e2e is None or record.output_tokens <= 0 else e2e / record.output_tokens


def met_deadline(record: RequestRecord) -> bool | None:
    """Whether a request with a deadline completed by it; None for a request without one."""
    if record.deadline_s is None:
        return None
    done = record.completion_s
    return is_completed(record) and done is not None and done <= record.deadline_s


def latency_values(records: Iterable[RequestRecord], metric: str) -> list[float]:
    """The values of one latency metric (a ``LATENCY_METRICS`` name) over the completed records.

    Raises:
        SimError: EINVAL for an unknown metric name.
    """
    if metric not in LATENCY_METRICS:
        known = ", ".join(LATENCY_METRICS)
        raise SimError("EINVAL", f"unknown latency metric {metric!r}; known: {known}")
    values: list[float] = []
    for record in records:
        if not is_completed(record):
            continue
        if metric == "gap_s":
            values.extend(record.gaps_s)
            continue
        if metric == "normalized_latency_s":
            value = normalized_latency_s(record)
        else:
            value = getattr(record, metric)
        if value is not None:
            values.append(value)
    return values


def gap_values(records: Iterable[RequestRecord]) -> np.ndarray:
    """``latency_values(records, "gap_s")`` as one array, computed in numpy: a long trace has
    millions of inter-token gaps."""
    gaps = [np.diff(np.asarray(r.token_times_s, dtype=float)) for r in records if is_completed(r)]
    return np.concatenate(gaps) if gaps else np.empty(0)


# --------------------------------------------------------------------------- CSV files

def csv_cell(value: Any) -> str:
    """One CSV cell: empty for None, 1/0 for booleans, ``repr(round(x, 9))`` for floats."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(round(value, 9))
    return str(value)


def os_error_to_sim_error(exc: OSError, action: str) -> SimError:
    """A ``SimError`` for a failed file operation: the OS's errno name when it is one we use."""
    name = errno_module.errorcode.get(exc.errno or 0, "")
    known = {"ENOENT", "EACCES", "EPERM", "EEXIST", "ENOMEM", "EBUSY", "EINVAL"}
    return SimError(name if name in known else "EIO", f"cannot {action}: {exc.strerror or exc}")


def open_for_write(path: str | os.PathLike[str]) -> IO[str]:
    """Open ``path`` for writing text, creating its folder; OS failures become ``SimError``."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # newline="" lets the csv module write exactly "\n", the same bytes on every platform.
        return target.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise os_error_to_sim_error(exc, f"write {target}") from exc


def check_list(items: Any, cls: type[T], what: str) -> list[T]:
    """``items`` as a list of ``cls``, or EINVAL naming ``what`` and the first wrong thing in it."""
    if isinstance(items, (str, bytes, dict)) or not isinstance(items, Iterable):
        raise SimError("EINVAL", f"{what} must be a list of {cls.__name__}, "
                                 f"not {type(items).__name__}")
    checked = list(items)
    for item in checked:
        if not isinstance(item, cls):
            raise SimError("EINVAL", f"{what} must hold only {cls.__name__} objects, "
                                     f"found {type(item).__name__}")
    return checked


def write_csv(path: str | os.PathLike[str], header: Sequence[str],
              rows: Iterable[Iterable[Any]]) -> None:
    """Write a CSV file with ``csv_cell`` cells and "\\n" line ends (the same bytes everywhere)."""
    with open_for_write(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([csv_cell(v) for v in row] for row in rows)


def write_requests_csv(records: Iterable[RequestRecord], path: str | os.PathLike[str]) -> None:
    """Write one row per request (``REQUEST_COLUMNS``) in the order given.

    Raises:
        SimError: EINVAL if ``records`` holds something else; an OS errno if writing fails.
    """
    write_csv(path, REQUEST_COLUMNS, (
        (r.request_id, r.pid, r.tenant, r.nice, r.prompt_tokens, r.output_tokens, r.arrival_s,
         r.first_scheduled_s, r.first_token_s, r.completion_s, r.ttft_s, r.tpot_s, r.e2e_s,
         normalized_latency_s(r), max(r.gaps_s, default=None), r.preemptions, r.swaps,
         r.recomputed_tokens, r.prefix_hit_tokens, r.deadline_s, met_deadline(r),
         r.exit_reason, r.errno)
        for r in check_list(records, RequestRecord, "records")))


def write_token_times_csv(records: Iterable[RequestRecord], path: str | os.PathLike[str]) -> None:
    """Write every generated token's time and the gap since the previous token, in long format.

    One row per token: ``request_id, index, time_s, gap_s`` (``gap_s`` is empty for the first
    token, so the gaps of a request are exactly ``RequestRecord.gaps_s``).

    Raises:
        SimError: as ``write_requests_csv``.
    """
    write_csv(path, TOKEN_TIME_COLUMNS, (
        (r.request_id, index, time_s, None if index == 0 else time_s - r.token_times_s[index - 1])
        for r in check_list(records, RequestRecord, "records")
        for index, time_s in enumerate(r.token_times_s)))


def write_timeline_csv(timeline: Iterable[TimelineSample], path: str | os.PathLike[str]) -> None:
    """Write the timeline samples, one row each, columns named as ``TimelineSample``'s fields.

    Raises:
        SimError: EINVAL for something other than ``TimelineSample``; an OS errno if writing fails.
    """
    names = [f.name for f in dataclasses.fields(TimelineSample)]
    samples = check_list(timeline, TimelineSample, "timeline")
    write_csv(path, names, ([getattr(s, n) for n in names] for s in samples))


# --------------------------------------------------------------------------- summary

def _num(value: Any) -> float | None:
    """A JSON-safe float to 12 significant digits (stable, readable); None for NaN or inf."""
    if value is None:
        return None
    value = float(value)
    return float(f"{value:.12g}") if math.isfinite(value) else None


def _rate(amount: float, seconds: float) -> float | None:
    """``amount`` per second of ``seconds``, or None when no time passed."""
    return _num(amount / seconds) if seconds > 0 else None


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p90, p99 and max of ``values`` (numpy's linear percentiles)."""
    if len(values) == 0:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    array = np.asarray(values, dtype=float)
    p50, p90, p99 = np.percentile(array, [50, 90, 99], method="linear")
    return {"count": int(array.size), "mean": _num(array.mean()), "p50": _num(p50),
            "p90": _num(p90), "p99": _num(p99), "max": _num(array.max())}


def jain_index(values: Sequence[float]) -> float | None:
    """Jain's fairness index (sum x)^2 / (n * sum x^2): 1.0 when all equal, 1/n when one gets all.

    None for no values; 1.0 when every value is zero (nobody was favoured).
    """
    if len(values) == 0:
        return None
    squares = sum(x * x for x in values)
    if squares == 0:
        return 1.0
    return _num(sum(values) ** 2 / (len(values) * squares))


def check_seconds(value: Any, name: str) -> float | None:
    """An SLO (or other duration) as a float, or EINVAL naming it unless None or positive."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise SimError("EINVAL", f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def _slo_section(records: list[RequestRecord], seconds: float,
                 slo_ttft_s: float | None, slo_tpot_s: float | None) -> dict[str, Any]:
    """Goodput: completed requests per second that meet every SLO given, and the met fractions.

    Fractions are over all requests (an error or an unfinished request meets no SLO). A request
    with a single token has no TPOT and meets any TPOT SLO.
    """
    met_ttft = met_tpot = met_both = 0
    for r in records:
        if not is_completed(r):
            continue
        ttft_ok = slo_ttft_s is None or (r.ttft_s is not None and r.ttft_s <= slo_ttft_s)
        tpot_ok = slo_tpot_s is None or r.tpot_s is None or r.tpot_s <= slo_tpot_s
        met_ttft += ttft_ok
        met_tpot += tpot_ok
        met_both += ttft_ok and tpot_ok
    total = len(records)
    given = slo_ttft_s is not None or slo_tpot_s is not None
    return {
        "ttft_s": slo_ttft_s,
        "tpot_s": slo_tpot_s,
        "goodput_requests_per_s": _rate(met_both, seconds) if given else None,
        "met_ttft_fraction": _num(met_ttft / total) if slo_ttft_s is not None and total else None,
        "met_tpot_fraction": _num(met_tpot / total) if slo_tpot_s is not None and total else None,
        "met_both_fraction": _num(met_both / total) if given and total else None,
    }


def _tenant_section(records: list[RequestRecord], seconds: float) -> dict[str, Any]:
    """Jain's index over tenants' generated tokens per second, and a breakdown per tenant.

    Service counts every generated token, also of killed or failed requests: it was served.
    """
    tenants: dict[str, list[RequestRecord]] = {}
    for r in records:
        tenants.setdefault(r.tenant, []).append(r)
    breakdown: dict[str, Any] = {}
    for name in sorted(tenants):
        own = tenants[name]
        e2e = latency_values(own, "e2e_s")
        tokens = sum(r.output_tokens for r in own)
        breakdown[name] = {
            "requests": len(own),
            "completed": sum(is_completed(r) for r in own),
            "prompt_tokens": sum(r.prompt_tokens for r in own),
            "output_tokens": tokens,
            "output_tokens_per_s": _rate(tokens, seconds),
            "mean_e2e_s": _num(sum(e2e) / len(e2e)) if e2e else None,
        }
    # The index is scale-free, so tokens and tokens per second over one duration give the same.
    served = [float(t["output_tokens"]) for t in breakdown.values()]
    return {"jain_index": jain_index(served), "tenants": breakdown}


def _durations(timeline: list[TimelineSample], end_s: float) -> list[float]:
    """How long each sample stands for: until the next sample; the last one until ``end_s``
    (or as long as the interval before it, when the run ended at that sample)."""
    times = [s.time_s for s in timeline]
    spans = [b - a for a, b in pairwise(times)]
    last = end_s - times[-1]
    if last <= 0:
        last = spans[-1] if spans else 1.0
    return spans + [last]


def _kv_section(timeline: list[TimelineSample], end_s: float) -> dict[str, Any]:
    """KV-cache use: time-weighted utilization while any block is held, occupancy and the peak."""
    if not timeline:
        return {"utilization_mean": None, "occupancy_mean": None, "peak_blocks_used": None,
                "blocks_total": None, "peak_fraction": None}
    weights = _durations(timeline, end_s)
    weighted = list(zip(timeline, weights, strict=True))
    busy = [(s, w) for s, w in weighted if s.kv_blocks_used > 0]
    busy_weight = sum(w for _, w in busy)
    utilization = None
    if busy_weight > 0:
        utilization = sum(s.kv_utilization * w for s, w in busy) / busy_weight
    occupancy = sum(s.kv_blocks_used / s.kv_blocks_total * w for s, w in weighted
                    if s.kv_blocks_total > 0) / sum(weights)
    peak = max(s.kv_blocks_used for s in timeline)
    total = max(s.kv_blocks_total for s in timeline)
    return {"utilization_mean": _num(utilization), "occupancy_mean": _num(occupancy),
            "peak_blocks_used": peak, "blocks_total": total,
            "peak_fraction": _num(peak / total) if total > 0 else None}


def _batch_section(timeline: list[TimelineSample]) -> dict[str, Any]:
    """Batch sizes over the samples taken while the device was busy (idle samples would only
    say the device was idle, which the KV occupancy already shows)."""
    busy = [s for s in timeline if s.batch_seqs > 0]
    if not busy:
        return {"seqs_mean": None, "seqs_p50": None, "seqs_max": None, "tokens_mean": None}
    seqs = np.asarray([s.batch_seqs for s in busy], dtype=float)
    return {"seqs_mean": _num(seqs.mean()),
            "seqs_p50": _num(np.percentile(seqs, 50, method="linear")),
            "seqs_max": int(seqs.max()),
            "tokens_mean": _num(np.mean([s.batch_tokens for s in busy]))}


def summarize(result: SimResult, slo_ttft_s: float | None = None,
              slo_tpot_s: float | None = None) -> dict[str, Any]:
    """The headline numbers of one simulation, as a dict of sections with a fixed key order.

    Sections: ``requests``, ``time``, ``throughput`` (over simulated time, completed requests),
    ``latency`` (a ``distribution`` per ``LATENCY_METRICS`` name), ``slo`` (goodput for the SLOs
    given), ``deadlines``, ``fairness`` (Jain's index over tenants, per-tenant breakdown), ``kv``,
    ``batch`` and ``preemption``. A value that cannot be computed (no completed request, no time
    passed) is None, so every summary has the same keys.

    Raises:
        SimError: EINVAL if ``result`` is not a ``SimResult`` or an SLO is not a positive number.
    """
    if not isinstance(result, SimResult):
        raise SimError("EINVAL", f"summarize needs a SimResult, not {type(result).__name__}")
    slo_ttft_s = check_seconds(slo_ttft_s, "slo_ttft_s")
    slo_tpot_s = check_seconds(slo_tpot_s, "slo_tpot_s")
    records = check_list(result.records, RequestRecord, "SimResult.records")
    seconds = float(result.simulated_s)
    completed = [r for r in records if is_completed(r)]
    with_deadline = [r for r in records if r.deadline_s is not None]
    output_tokens = sum(r.output_tokens for r in completed)
    all_tokens = output_tokens + sum(r.prompt_tokens for r in completed)
    met = sum(bool(met_deadline(r)) for r in with_deadline)
    return {
        "requests": {
            "total": len(records),
            "completed": len(completed),
            "errors": sum(is_error(r) for r in records),
            "killed": sum(r.exit_reason == "signal" and not is_error(r) for r in records),
            "unfinished": sum(r.completion_s is None and not is_error(r) for r in records),
        },
        "time": {
            "simulated_s": _num(seconds),
            "wall_s": _num(result.wall_s),
            "steps": result.num_steps,
            "driver_calls": result.num_driver_calls,
            # Steps the device modeled, kept or not: the cost of runs cut short by arrivals.
            "steps_modeled": result.device.get("steps_modeled"),
            "steps_per_wall_s": _rate(result.num_steps, float(result.wall_s)),
        },
        "throughput": {
            "requests_per_s": _rate(len(completed), seconds),
            "output_tokens_per_s": _rate(output_tokens, seconds),
            "total_tokens_per_s": _rate(all_tokens, seconds),
        },
        "latency": {m: distribution(gap_values(completed) if m == "gap_s" else latency_values(completed, m))
                    for m in LATENCY_METRICS},
        "slo": _slo_section(records, seconds, slo_ttft_s, slo_tpot_s),
        "deadlines": {
            "requests": len(with_deadline),
            "met_fraction": _num(met / len(with_deadline)) if with_deadline else None,
        },
        "fairness": _tenant_section(records, seconds),
        "kv": _kv_section(list(result.timeline), seconds),
        "batch": _batch_section(list(result.timeline)),
        "preemption": {
            "preemptions": sum(r.preemptions for r in records),
            "swaps": sum(r.swaps for r in records),
            "recomputed_tokens": sum(r.recomputed_tokens for r in records),
            "prefix_hit_tokens": sum(r.prefix_hit_tokens for r in records),
        },
    }


def flatten_summary(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The summary as one level of dotted keys (``latency.e2e_s.p50``), in the same order."""
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_summary(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def write_summary_json(summary: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the summary as JSON (indent 2, keys in the summary's own fixed order, final newline).

    Raises:
        SimError: EINVAL if it is not a dict of JSON values; an OS errno if it can't be written.
    """
    if not isinstance(summary, dict):
        raise SimError("EINVAL", f"a summary must be a dict, not {type(summary).__name__}")
    try:
        text = json.dumps(summary, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SimError("EINVAL", f"the summary is not plain JSON data: {exc}") from exc
    with open_for_write(path) as handle:
        handle.write(text + "\n")


def _show(value: Any) -> str:
    """A value for the terminal: 4 significant digits for floats, '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_summary_table(summary: dict[str, Any], title: str = "Simulation summary") -> Table:
    """A rich table of a summary: one section per summary section, latencies as one row each."""
    table = Table(title=title, show_lines=False)
    table.add_column("metric", style="bold")
    for column in ("value / mean", "p50", "p90", "p99", "max"):
        table.add_column(column, justify="right")
    for section, values in summary.items():
        if not isinstance(values, dict):
            table.add_row(section, _show(values), "", "", "", "")
            continue
        table.add_section()
        for key, value in values.items():
            name = f"{section}.{key}"
            if isinstance(value, dict) and "p50" in value:
                stats = (value[k] for k in ("mean", "p50", "p90", "p99", "max"))
                table.add_row(name, *map(_show, stats))
            elif isinstance(value, dict):  # per-tenant breakdown: one row per tenant
                for sub, inner in value.items():
                    shown = _show(inner)
                    if isinstance(inner, dict):
                        shown = ", ".join(f"{k}={_show(v)}" for k, v in inner.items())
                    table.add_row(f"{name}.{sub}", shown, "", "", "", "")
            else:
                table.add_row(name, _show(value), "", "", "", "")
    return table

"""PNG plots of simulations: latency CDFs, throughput vs latency, KV use over time, Gantt charts.

Each function draws one figure with matplotlib's object API on an Agg canvas it makes itself, so
importing this module (or calling it from a sweep's worker) never touches pyplot's global state
or the user's interactive backend. matplotlib is imported inside the functions: a run that makes
no plots does not need it installed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SimError
from .metrics import LATENCY_METRICS, check_list, latency_values, os_error_to_sim_error
from .records import RequestRecord, TimelineSample

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Saved into every PNG instead of matplotlib's defaults (which name its version), so that the same
# plot made twice differs as little as possible.
PNG_METADATA: dict[str, str | None] = {"Software": None, "Title": None}
# Axis labels per CDF metric, units included.
_METRIC_LABELS: dict[str, str] = {
    "ttft_s": "time to first token (s)",
    "tpot_s": "time per output token (s)",
    "e2e_s": "end-to-end latency (s)",
    "normalized_latency_s": "end-to-end latency per output token (s/token)",
    "gap_s": "inter-token gap (s)",
}


def _new_figure(width: float = 8.0, height: float = 5.0) -> tuple[Figure, Axes]:
    """A figure on its own Agg canvas, and its one axes."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise SimError("ENOSYS", "plots need matplotlib; "
                                 "install it with 'pip install matplotlib'") from exc
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def _save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Write the figure as a PNG at ``path`` (creating its folder) and return the path."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.tight_layout()
        figure.savefig(target, format="png", metadata=PNG_METADATA)
    except OSError as exc:
        raise os_error_to_sim_error(exc, f"write {target}") from exc
    return target


def _no_data(axes: Axes, what: str) -> None:
    """Say in the plot itself that there was nothing to draw, instead of an empty frame."""
    axes.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=axes.transAxes)


def _metric_name(metric: str) -> str:
    """Accept a short metric name ("e2e") or the summary's ("e2e_s"); EINVAL for anything else."""
    name = metric if metric in LATENCY_METRICS else f"{metric}_s"
    if name not in LATENCY_METRICS:
        short = ", ".join(m.removesuffix("_s") for m in LATENCY_METRICS)
        raise SimError("EINVAL", f"unknown latency metric {metric!r}; known: {short}")
    return name


def plot_latency_cdf(results_by_label: dict[str, list[RequestRecord]],
                     path: str | os.PathLike[str], metric: str = "e2e",
                     title: str | None = None, log_x: bool = False) -> Path:
    """Plot the CDF of one latency metric over the completed requests, one line per label.

    Args:
        results_by_label: records per line label (a policy name, say).
        path: where to write the PNG.
        metric: ``ttft``, ``tpot``, ``e2e``, ``normalized_latency`` or ``gap`` (or with ``_s``).
        title: the figure title; a default names the metric.
        log_x: a logarithmic latency axis, for heavy tails.

    Raises:
        SimError: EINVAL for an unknown metric or records that are not ``RequestRecord``.
    """
    if not isinstance(results_by_label, dict):
        raise SimError("EINVAL", "results_by_label must map a label to a list of RequestRecord")
    name = _metric_name(metric)
    values = {}
    for label, records in results_by_label.items():
        checked = check_list(records, RequestRecord, f"records of {label!r}")
        values[str(label)] = latency_values(checked, name)
    return plot_cdf_values(values, path, name, title=title, log_x=log_x)


def plot_cdf_values(values_by_label: Mapping[str, Sequence[float]], path: str | os.PathLike[str],
                    metric: str = "e2e", title: str | None = None, log_x: bool = False) -> Path:
    """Like ``plot_latency_cdf``, from the latency values themselves (what a sweep keeps)."""
    name = _metric_name(metric)
    figure, axes = _new_figure()
    drawn = False
    for label, raw in values_by_label.items():
        data = sorted(float(v) for v in raw)
        if not data:
            continue
        # The step from 0 at the smallest value, so the curve starts on the axis.
        fractions = [i / len(data) for i in range(len(data) + 1)]
        axes.step([data[0], *data], fractions, where="post", label=f"{label} (n={len(data)})")
        drawn = True
    if drawn:
        axes.legend(loc="lower right")
        if log_x:
            axes.set_xscale("log")
    else:
        _no_data(axes, "completed requests")
    axes.set_xlabel(_METRIC_LABELS[name])
    axes.set_ylabel("fraction of requests" if name != "gap_s" else "fraction of gaps")
    axes.set_ylim(0.0, 1.02)
    axes.grid(True, alpha=0.3)
    axes.set_title(title or f"CDF of {_METRIC_LABELS[name]}")
    return _save(figure, path)


def plot_throughput_latency(points: list[dict[str, Any]], path: str | os.PathLike[str],
                            title: str = "Throughput vs latency",
                            x_label: str = "throughput (output tokens/s)",
                            y_label: str = "end-to-end latency (s)") -> Path:
    """Plot latency against throughput: per line label, p50 solid and p90 dashed, in one colour.

    Args:
        points: dicts with ``label`` (the line, e.g. a policy), ``throughput`` (x), ``p50_s`` and
            ``p90_s`` (y); points of one label are joined in order of throughput. A point whose
            values are None (a failed run) is left out.

    Raises:
        SimError: EINVAL for a point that is not a dict or lacks one of those keys.
    """
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for i, point in enumerate(points):
        if not isinstance(point, dict):
            raise SimError("EINVAL", f"throughput point {i} must be a dict, "
                                     f"not {type(point).__name__}")
        missing = [k for k in ("label", "throughput", "p50_s", "p90_s") if k not in point]
        if missing:
            raise SimError("EINVAL", f"throughput point {i} lacks {', '.join(missing)}; "
                                     "each needs label, throughput, p50_s and p90_s")
        if any(point[k] is None for k in ("throughput", "p50_s", "p90_s")):
            continue
        lines.setdefault(str(point["label"]), []).append(
            (float(point["throughput"]), float(point["p50_s"]), float(point["p90_s"])))
    figure, axes = _new_figure()
    for index, (label, data) in enumerate(lines.items()):
        data.sort()
        colour = f"C{index % 10}"
        xs = [d[0] for d in data]
        axes.plot(xs, [d[1] for d in data], "o-", color=colour, label=f"{label} p50")
        axes.plot(xs, [d[2] for d in data], "s--", color=colour, label=f"{label} p90")
    if lines:
        axes.legend(loc="upper left")
    else:
        _no_data(axes, "successful points")
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.grid(True, alpha=0.3)
    axes.set_title(title)
    return _save(figure, path)


def plot_kv_utilization(timeline: list[TimelineSample], path: str | os.PathLike[str],
                        title: str = "KV cache over time") -> Path:
    """Plot KV occupancy and utilization (left axis) and running/waiting processes (right axis).

    Occupancy is the fraction of KV blocks in use; utilization the fraction of the allocated
    slots that hold tokens (what internal fragmentation leaves).

    Raises:
        SimError: EINVAL if ``timeline`` holds something other than ``TimelineSample``.
    """
    samples = check_list(timeline, TimelineSample, "timeline")
    figure, axes = _new_figure(9.0, 5.0)
    axes.set_title(title)
    axes.set_xlabel("simulated time (s)")
    axes.set_ylabel("fraction")
    if not samples:
        _no_data(axes, "timeline samples")
        return _save(figure, path)
    times = [s.time_s for s in samples]
    occupancy = [s.kv_blocks_used / s.kv_blocks_total if s.kv_blocks_total else 0.0
                 for s in samples]
    axes.plot(times, occupancy, color="C0", label="KV blocks in use (fraction)")
    axes.plot(times, [s.kv_utilization for s in samples], color="C1",
              label="KV slot utilization (fraction)")
    axes.set_ylim(0.0, 1.05)
    counts = axes.twinx()
    for name, colour in (("running", "C2"), ("waiting", "C3")):
        counts.plot(times, [getattr(s, name) for s in samples], color=colour, alpha=0.8,
                    label=f"{name} processes")
    counts.set_ylabel("processes")
    counts.set_ylim(bottom=0)
    from matplotlib.ticker import MaxNLocator  # matplotlib is there: _new_figure made a figure

    counts.yaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes.get_legend_handles_labels()
    more_handles, more_labels = counts.get_legend_handles_labels()
    # Below the plot: any spot inside would hide some of the lines.
    axes.legend(handles + more_handles, labels + more_labels, loc="upper center",
                bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize="small")
    axes.grid(True, alpha=0.3)
    return _save(figure, path)


def plot_gantt(records: list[RequestRecord], path: str | os.PathLike[str],
               max_requests: int = 200, title: str = "Requests over time") -> Path:
    """Plot one bar per process: queued from arrival to first schedule, then running to completion.

    A dot marks each first token; failed or killed requests run in red, and a red cross marks
    one that failed before it ran. The first ``max_requests`` requests in arrival order are
    drawn; one never scheduled and never finished is queued until the last time in the plot.

    Raises:
        SimError: EINVAL for records that are not ``RequestRecord`` or a ``max_requests`` below 1.
    """
    if isinstance(max_requests, bool) or not isinstance(max_requests, int) or max_requests < 1:
        raise SimError("EINVAL", f"max_requests must be a positive integer, not {max_requests!r}")
    every = check_list(records, RequestRecord, "records")
    chosen = sorted(every, key=lambda r: (r.arrival_s, r.request_id))[:max_requests]
    figure, axes = _new_figure(10.0, max(4.0, min(14.0, 2.0 + 0.06 * len(chosen))))
    axes.set_title(title if len(chosen) == len(every) else f"{title} (first {len(chosen)})")
    axes.set_xlabel("simulated time (s)")
    axes.set_ylabel("request (arrival order)")
    if not chosen:
        _no_data(axes, "requests")
        return _save(figure, path)
    end = max(t for r in chosen for t in (r.arrival_s, r.first_scheduled_s, r.completion_s)
              if t is not None)
    for row, r in enumerate(chosen):
        started, finish = r.first_scheduled_s, end if r.completion_s is None else r.completion_s
        ok = r.exit_reason not in ("error", "signal") and r.errno is None
        axes.barh(row, (finish if started is None else started) - r.arrival_s, left=r.arrival_s,
                  height=0.8, color="0.8")
        if started is not None:
            axes.barh(row, finish - started, left=started, height=0.8, color="C0" if ok else "C3")
        elif not ok and r.completion_s is not None:  # refused or killed before it ever ran
            axes.plot([finish], [row], "x", color="C3", markersize=5)
        if r.first_token_s is not None:
            axes.plot([r.first_token_s], [row], "k.", markersize=3)
    # Legend entries made here, whatever the drawn rows happen to contain; upper right is
    # where arrival-ordered bars leave room.
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    axes.legend(handles=[Patch(color="0.8", label="queued"), Patch(color="C0", label="running"),
                         Patch(color="C3", label="running (failed or killed)"),
                         Line2D([], [], color="C3", marker="x", linestyle="",
                                label="failed before running"),
                         Line2D([], [], color="k", marker=".", linestyle="", label="first token")],
                loc="upper right", fontsize="small")
    axes.set_ylim(len(chosen) - 0.5, -0.5)  # inverted: the first arrival on top
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(figure, path)


def _file_safe(text: str) -> str:
    """``text`` with only letters, digits and ``._=-`` (others become ``_``), for file names."""
    return "".join(ch if ch.isalnum() or ch in "._=-" else "_" for ch in text)[:120]


def _mean(summaries: list[dict[str, Any]], key: str) -> float | None:
    """The mean of one flattened-summary value over the summaries that have it."""
    found = [s[key] for s in summaries if s.get(key) is not None]
    return sum(found) / len(found) if found else None


def plot_sweep(points: list[dict[str, Any]], out_dir: str | os.PathLike[str],
               cdf_metrics: Sequence[str] = ("e2e_s", "ttft_s")) -> list[Path]:
    """Write a sweep's figures into ``out_dir`` and return their paths.

    - ``latency_cdf_<metric>[__<group>].png``: per group of non-policy values, one line per
      policy, seeds pooled;
    - ``throughput_latency.png``: one line per policy and curve values, seeds averaged;
    - ``kv_utilization_<policy>.png`` of the first point of each policy that has a timeline;
    - ``gantt.png`` of the first point that has records.

    Args:
        points: one dict per successful point, in point order: ``index``, ``policy``,
            ``group`` ((key, value) pairs of its other swept values), ``curve`` (the pairs of
            ``group`` that name its throughput line: the load is left out, so that it moves a
            point along the line), ``summary`` (flattened), ``values`` (latency values per
            metric), and optionally ``timeline`` and ``records``.
    """
    out, written = Path(out_dir), []
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    curves: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for point in points:
        groups.setdefault(tuple(point["group"]), []).append(point)
        curves.setdefault((point["policy"], *point["group"]), []).append(point)
    for pairs, members in groups.items():
        suffix = "".join(f"__{_file_safe(f'{k}={v}')}" for k, v in pairs)
        where = f" ({', '.join(f'{k}={v}' for k, v in pairs)})" if pairs else ""
        for metric in cdf_metrics:
            by_policy: dict[str, list[float]] = {}
            for point in members:
                by_policy.setdefault(point["policy"], []).extend(point["values"].get(metric, []))
            short = metric.removesuffix("_s")
            written.append(plot_cdf_values(by_policy, out / f"latency_cdf_{short}{suffix}.png",
                                           metric, title=f"CDF of {short} latency{where}"))
    lines = []
    for members in curves.values():
        summaries = [p["summary"] for p in members]
        label = " ".join([members[0]["policy"], *(f"{k}={v}" for k, v in members[0]["curve"])])
        lines.append({"label": label,
                      "throughput": _mean(summaries, "throughput.output_tokens_per_s"),
                      "p50_s": _mean(summaries, "latency.e2e_s.p50"),
                      "p90_s": _mean(summaries, "latency.e2e_s.p90")})
    written.append(plot_throughput_latency(lines, out / "throughput_latency.png"))
    seen: set[str] = set()
    for point in points:
        if point.get("timeline") is not None and point["policy"] not in seen:
            seen.add(point["policy"])
            written.append(plot_kv_utilization(
                point["timeline"], out / f"kv_utilization_{_file_safe(point['policy'])}.png",
                title=f"KV cache over time: {point['policy']} (point {point['index']})"))
    with_records = [p for p in points if p.get("records") is not None]
    if with_records:
        first = with_records[0]
        written.append(plot_gantt(first["records"], out / "gantt.png",
                                  title=f"Requests over time: {first['policy']} "
                                        f"(point {first['index']})"))
    return written

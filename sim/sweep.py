"""Parameter sweeps: a TOML grid of simulator configs, run in parallel, with tables and plots.

A sweep file has a ``[base]`` config (any ``SimConfig`` field; workload fields under
``[base.workload]``), a ``[grid]`` of lists whose cartesian product gives the points (a workload
field is named ``"workload.<field>"``), and optionally ``[slo]`` with ``ttft_s``/``tpot_s`` for
goodput. Trace paths are relative to the sweep file's folder.

``run_sweep`` writes, under its output folder::

    point-000/ config.json (as run, defaults filled in), requests.csv, timeline.csv,
               summary.json; error.txt instead of results if it failed
    ...
    results.csv, results.json        one row per point: swept values, status, headline metrics
    latency_cdf_*.png, throughput_latency.png, kv_utilization_<policy>.png, gantt.png

Each point runs in a worker process (a 'spawn' pool, so workers inherit nothing but their
arguments); a point that raises, or whose worker dies, becomes a row with its error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import pickle
import sys
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import SimError
from .metrics import (
    check_seconds,
    flatten_summary,
    latency_values,
    open_for_write,
    os_error_to_sim_error,
    summarize,
    write_csv,
    write_requests_csv,
    write_summary_json,
    write_timeline_csv,
    write_token_times_csv,
)
from .records import SimResult

# SimConfig's fields, for validating sweep files when the runner cannot be imported (its own
# dataclass is the authority whenever it can).
DEFAULT_CONFIG_FIELDS: tuple[str, ...] = (
    "workload", "seed", "policy", "model", "device", "kv_blocks", "block_size", "swap_blocks",
    "max_seqs", "max_batch_tokens", "preemption", "prefix_cache", "max_steps", "min_residency_steps",
    "sample_interval_s",
)
SECTIONS: tuple[str, ...] = ("base", "grid", "slo")
SLO_KEYS: tuple[str, ...] = ("ttft_s", "tpot_s")
# Summary values copied into each row of results.csv, by their flattened summary key.
HEADLINE_METRICS: tuple[str, ...] = (
    "requests.total", "requests.completed", "requests.errors", "time.simulated_s", "time.wall_s",
    "throughput.requests_per_s", "throughput.output_tokens_per_s", "throughput.total_tokens_per_s",
    "latency.ttft_s.p50", "latency.ttft_s.p99", "latency.tpot_s.p50", "latency.tpot_s.p99",
    "latency.e2e_s.p50", "latency.e2e_s.p90", "latency.e2e_s.p99",
    "latency.normalized_latency_s.mean", "slo.goodput_requests_per_s", "deadlines.met_fraction",
    "fairness.jain_index", "kv.utilization_mean", "kv.peak_fraction", "batch.seqs_mean",
    "preemption.preemptions", "preemption.swaps",
)
CDF_METRICS: tuple[str, ...] = ("e2e_s", "ttft_s")  # latency values each worker sends back
RunFunction = Callable[[dict[str, Any]], SimResult]


@dataclasses.dataclass
class Sweep:
    """A parsed sweep file: the points as plain config dicts, and the SLOs for goodput."""

    points: list[dict[str, Any]]  # one SimConfig-like dict per point, in grid order
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None


# --------------------------------------------------------------------------- loading

def _read_toml(path: Path) -> dict[str, Any]:
    """The TOML document at ``path`` (tomllib, or tomli before Python 3.11)."""
    try:
        import tomllib as toml
    except ModuleNotFoundError:
        try:
            import tomli as toml  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise SimError("ENOSYS", "reading sweep files needs Python 3.11 (tomllib) or the "
                                     "'tomli' package ('pip install tomli')") from None
    if not path.is_file():
        raise SimError("ENOENT", f"{path}: no such sweep file")
    try:
        with path.open("rb") as handle:
            return toml.load(handle)
    except (toml.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SimError("EINVAL", f"{path}: not valid TOML ({exc})") from exc
    except OSError as exc:
        raise os_error_to_sim_error(exc, f"read {path}") from exc


def _sim_config_class() -> Any:
    """The runner's ``SimConfig``, or None when the runner cannot be imported (it is imported
    here, not with this module, so that loading llmos.sim.sweep never boots the kernel's code)."""
    try:
        from .runner import SimConfig
    except ImportError:
        return None
    return SimConfig


def _check_keys(keys: Sequence[str], allowed: Sequence[str], where: str) -> None:
    """EINVAL naming the first unknown key in ``where`` and the allowed ones."""
    for key in keys:
        if key not in allowed:
            raise SimError("EINVAL", f"{where}: unknown key {key!r}; "
                                     f"allowed: {', '.join(allowed)}")


def _is_path_key(name: str) -> bool:
    """Whether a workload field names a file, to be read relative to the sweep file."""
    return name == "trace" or name.endswith(("_path", "_file", "_trace"))


def _workload(workload: Any, folder: Path, where: str) -> dict[str, Any]:
    """A workload table with its relative file fields made absolute (from ``folder``), checked."""
    if not isinstance(workload, dict):
        raise SimError("EINVAL", f"{where}: a workload must be a table of workload fields")
    resolved = dict(workload)
    for key, value in workload.items():
        # "default" names the shared trace (workloads.DEFAULT_TRACE_NAME), not a file here.
        if _is_path_key(key) and isinstance(value, str) and value != "default":
            path = Path(value) if Path(value).is_absolute() else (folder / value).resolve()
            if not path.is_file():
                raise SimError("ENOENT", f"{where}: {key} {value!r} is not a file "
                                         f"(looked for {path})")
            resolved[key] = str(path)
    return resolved


def _grid_axes(grid: dict[str, Any], fields: list[str], where: str) -> list[tuple[str, list[Any]]]:
    """The grid as (key, values) axes; a nested ``[grid.workload]`` table gives workload axes."""
    axes: list[tuple[str, list[Any]]] = []
    for key, values in grid.items():
        if key == "workload" and isinstance(values, dict):  # unquoted workload.x = [...] keys
            axes += _grid_axes({f"workload.{k}": v for k, v in values.items()}, fields, where)
            continue
        if not key.startswith("workload."):  # workload fields are checked with each point
            _check_keys([key], fields, where)
        if not isinstance(values, list) or not values:
            raise SimError("EINVAL", f"{where}: {key!r} must be a non-empty list of values")
        axes.append((key, values))
    return axes


def _combine(base: dict[str, Any], axes: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """The cartesian product of the axes over ``base``, the last axis varying fastest."""
    points = []
    for combination in itertools.product(*(values for _, values in axes)):
        point = dict(base)
        for (key, _), value in zip(axes, combination, strict=True):
            if key == "workload" and isinstance(value, dict):
                point["workload"] = {**point.get("workload", {}), **value}
            elif key.startswith("workload."):
                point["workload"] = {**point.get("workload", {}),
                                     key.removeprefix("workload."): value}
            else:
                point[key] = value
        points.append(point)
    return points


def load_sweep_file(path: str | os.PathLike[str]) -> Sweep:
    """Parse a sweep file into its points (the grid's cartesian product, last key fastest).

    A grid key ``workload`` lists whole workload tables (each over ``[base.workload]``);
    ``"workload.<field>"`` lists values of one workload field. When the runner can be imported,
    every point is checked as a ``SimConfig`` here, so a typo fails before anything runs.

    Raises:
        SimError: ENOENT for a missing file or trace; EINVAL for bad TOML, an unknown section or
            key (named, with the allowed ones), a grid entry that is not a non-empty list, a
            point the runner refuses (named by its number), or a bad SLO; ENOSYS without a
            TOML parser.
    """
    source = Path(path)
    document = _read_toml(source)
    folder = source.resolve().parent
    _check_keys(list(document), SECTIONS, str(source))
    sim_config = _sim_config_class()
    fields = ([f.name for f in dataclasses.fields(sim_config)] if sim_config is not None
              else list(DEFAULT_CONFIG_FIELDS))
    base, grid, slo = (document.get(name, {}) for name in SECTIONS)
    for name, table in (("base", base), ("grid", grid), ("slo", slo)):
        if not isinstance(table, dict):
            raise SimError("EINVAL", f"{source}: [{name}] must be a table")
    _check_keys(list(base), fields, f"{source} [base]")
    _check_keys(list(slo), SLO_KEYS, f"{source} [slo]")
    points = _combine(base, _grid_axes(grid, fields, f"{source} [grid]"))
    for i, point in enumerate(points):
        if "workload" in point:
            point["workload"] = _workload(point["workload"], folder, f"{source}: point {i}")
        if sim_config is not None:
            try:
                sim_config.from_dict(point).check()
            except SimError as exc:
                raise SimError(exc.errno, f"{source}: point {i}: {exc.message}") from exc
    return Sweep(points, *(check_seconds(slo.get(k), f"{source} [slo] {k}") for k in SLO_KEYS))


def load_sweep(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The points of a sweep file, as SimConfig-like dicts (see ``load_sweep_file``)."""
    return load_sweep_file(path).points


# --------------------------------------------------------------------------- one point, in a worker

def _run_point(config: dict[str, Any]) -> SimResult:
    """The default point runner: build the runner's ``SimConfig`` from the dict and simulate."""
    from .runner import SimConfig, run_simulation  # here, so only workers load the kernel

    return run_simulation(SimConfig.from_dict(config))


def _run_point_task(task: dict[str, Any], run: RunFunction | None) -> dict[str, Any]:
    """Run one point in a worker process, write its folder, and send back what the plots need.

    Never raises for a failing point: the error comes back as data, and its traceback is in
    ``error.txt``, so one bad point cannot stop the sweep.
    """
    folder = Path(task["dir"])
    try:
        _write_json(task["config"], folder / "config.json")
        result = (run or _run_point)(task["config"])
        if not isinstance(result, SimResult):
            raise SimError("EINVAL", f"the run function returned {type(result).__name__}, "
                                     "not a SimResult")
        if isinstance(result.config, dict) and result.config:
            # What the runner ran, its defaults filled in: this point, reproducible on its own.
            _write_json(result.config, folder / "config.json")
        write_requests_csv(result.records, folder / "requests.csv")
        write_timeline_csv(result.timeline, folder / "timeline.csv")
        if task["token_times"]:
            write_token_times_csv(result.records, folder / "token_times.csv")
        summary = summarize(result, task["slo_ttft_s"], task["slo_tpot_s"])
        write_summary_json(summary, folder / "summary.json")
    except Exception as exc:  # a failing point is data for the sweep, whatever it raised
        with contextlib.suppress(OSError):
            (folder / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        errno = getattr(exc, "errno", None)
        if isinstance(errno, str):  # an errno error says itself what went wrong
            return _failure(task, errno, str(getattr(exc, "message", exc)))
        return _failure(task, None, f"{type(exc).__name__}: {exc}")
    return {"index": task["index"], "ok": True, "summary": flatten_summary(summary),
            "values": {m: latency_values(result.records, m) for m in CDF_METRICS},
            "timeline": list(result.timeline),
            # Without its token times a record is small, and the Gantt chart needs no more.
            "records": [dataclasses.replace(r, token_times_s=[]) for r in result.records]}


def _write_json(data: Any, path: Path) -> None:
    """``data`` as indented JSON (paths and other odd values as strings)."""
    with open_for_write(path) as handle:
        handle.write(json.dumps(data, indent=2, default=str) + "\n")


def _failure(task: dict[str, Any], errno: str | None, message: str) -> dict[str, Any]:
    """A failed point's payload."""
    return {"index": task["index"], "ok": False, "error": {"errno": errno, "message": message}}


def _execute(tasks: list[dict[str, Any]], jobs: int, run: RunFunction | None,
             on_done: Callable[[dict[str, Any]], None]) -> None:
    """Run every task in a spawn pool, calling ``on_done`` with each payload as it arrives.

    A worker that dies (killed for memory, say) breaks the pool and every unfinished future
    with it; those points run again, each in a pool of its own, so only the culprit fails.
    """
    context = get_context("spawn")
    pending, isolate = tasks, False
    while pending:
        broken: list[dict[str, Any]] = []
        for batch in ([[t] for t in pending] if isolate else [pending]):
            pool = ProcessPoolExecutor(max_workers=min(jobs, len(batch)), mp_context=context)
            try:
                futures = {pool.submit(_run_point_task, task, run): task for task in batch}
                for future in as_completed(futures):
                    task = futures[future]
                    try:
                        payload = future.result()
                    except BrokenProcessPool:
                        if not isolate:
                            broken.append(task)
                            continue
                        payload = _failure(task, "EIO", "the worker process running it died "
                                                     "(killed, out of memory?)")
                    except Exception as exc:  # the payload could not cross the process boundary
                        payload = _failure(task, "EIO", f"{type(exc).__name__}: {exc}")
                    on_done(payload)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
        pending, isolate = sorted(broken, key=lambda t: t["index"]), True


# --------------------------------------------------------------------------- the sweep

def _flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config with workload fields as ``workload.<field>`` keys."""
    flat = {k: v for k, v in config.items() if k != "workload"}
    workload = config.get("workload")
    if isinstance(workload, dict):
        flat.update({f"workload.{k}": v for k, v in workload.items()})
    return flat


def _scalar(value: Any) -> Any:
    """A value fit for one CSV cell or a label: lists and tables as compact JSON."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _swept_keys(flats: list[dict[str, Any]]) -> list[str]:
    """policy, seed, and the keys whose values differ between points, in first-seen order."""
    keys: list[str] = ["policy", "seed"]
    for flat in flats:
        keys += [k for k in flat if k not in keys]
    return [k for k in keys if k in ("policy", "seed")
            or len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1]


def _is_load_key(key: str) -> bool:
    """Whether a swept key sets the offered load (it moves a point along a throughput curve)."""
    field = key.rsplit(".", 1)[-1]
    return any(word in field for word in ("rate", "qps", "load", "num_requests", "arrival"))


def _trim_payloads(payloads: dict[int, dict[str, Any]], policies: list[str]) -> None:
    """Free what the plots will not use: timelines but the first successful point's of each
    policy, records but the first successful point's (a long sweep must not hold them all)."""
    ok = sorted(i for i, p in payloads.items() if p["ok"])
    first_of_policy: dict[str, int] = {}
    for i in ok:
        first_of_policy.setdefault(policies[i], i)
    for i in ok:
        if first_of_policy[policies[i]] != i:
            payloads[i].pop("timeline", None)
        if i != ok[0]:
            payloads[i].pop("records", None)


def run_sweep(path_or_configs: str | os.PathLike[str] | Sequence[dict[str, Any]],
              out_dir: str | os.PathLike[str], jobs: int | None = None,
              run: RunFunction | None = None, progress: bool = True,
              slo_ttft_s: float | None = None, slo_tpot_s: float | None = None,
              token_times: bool = False, plots: bool = True) -> list[dict[str, Any]]:
    """Run every point of a sweep in parallel processes and write results, tables and plots.

    Args:
        path_or_configs: a sweep file, or the config dicts themselves.
        out_dir: the folder to write into (created).
        jobs: worker processes; default ``os.cpu_count()`` (never more than there are points).
        run: ``config dict -> SimResult``, a module-level function (workers import it by name);
            default: the runner's ``run_simulation(SimConfig.from_dict(d))``.
        progress: show a progress bar (only ever on a terminal).
        slo_ttft_s, slo_tpot_s: SLOs for goodput; default the sweep file's ``[slo]``.
        token_times: also write each point's token_times.csv (every token; large).
        plots: write the PNGs (``plots.plot_sweep``).

    Returns:
        One row per point, in point order, as in results.csv: ``point``, ``dir``, the swept
        values, ``status`` ("ok" or "error"), ``errno``, ``error``, then ``HEADLINE_METRICS``.

    Raises:
        SimError: EINVAL for bad arguments, and what ``load_sweep_file`` raises. A failing
            point never raises: its row says what went wrong.
    """
    if isinstance(path_or_configs, (str, os.PathLike)):
        sweep = load_sweep_file(path_or_configs)
    elif isinstance(path_or_configs, Sequence) and all(isinstance(c, dict)
                                                       for c in path_or_configs):
        sweep = Sweep([dict(c) for c in path_or_configs if isinstance(c, dict)])
    else:
        raise SimError("EINVAL", "run_sweep needs a sweep file path or a list of config dicts")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise SimError("EINVAL", f"jobs must be a positive integer, not {jobs!r}")
    try:
        pickle.dumps(run)
    except Exception as exc:
        raise SimError("EINVAL", "run must be a module-level function, so that worker "
                                 f"processes can import it ({exc})") from exc
    slo_ttft_s = check_seconds(slo_ttft_s, "slo_ttft_s") or sweep.slo_ttft_s
    slo_tpot_s = check_seconds(slo_tpot_s, "slo_tpot_s") or sweep.slo_tpot_s
    out, width = Path(out_dir), max(3, len(str(len(sweep.points) - 1)))
    tasks = [{"index": i, "config": c, "dir": str(out / f"point-{i:0{width}d}"),
              "slo_ttft_s": slo_ttft_s, "slo_tpot_s": slo_tpot_s, "token_times": token_times}
             for i, c in enumerate(sweep.points)]
    console = Console(stderr=True)
    payloads = _run_all(tasks, min(jobs or os.cpu_count() or 1, max(1, len(tasks))), run,
                        console if progress else None)
    flats = [_flat_config(c) for c in sweep.points]
    swept = _swept_keys(flats)
    rows = [_row(task, flat, payload, swept)
            for task, flat, payload in zip(tasks, flats, payloads, strict=True)]
    columns = list(rows[0]) if rows else ["point"]
    write_csv(out / "results.csv", columns, ([_scalar(row[c]) for c in columns] for row in rows))
    _write_json(rows, out / "results.json")
    if plots and rows:
        try:
            _plot(flats, payloads, swept, out)
        except SimError as exc:  # the results are written; a missing matplotlib costs only plots
            console.print(f"[yellow]no plots: {exc.errno}: {exc.message}[/yellow]")
    return rows


def _run_all(tasks: list[dict[str, Any]], jobs: int, run: RunFunction | None,
             console: Console | None) -> list[dict[str, Any]]:
    """Every task's payload, in task order, with a progress bar on ``console`` if a terminal."""
    policies = [_policy(task["config"]) for task in tasks]
    payloads: dict[int, dict[str, Any]] = {}
    columns = (TextColumn("sweep"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[failed]}"), TimeElapsedColumn())
    with Progress(*columns, console=console,
                  disable=console is None or not console.is_terminal) as bar:
        bar_task = bar.add_task("sweep", total=len(tasks), failed="")

        def on_done(payload: dict[str, Any]) -> None:
            payloads[payload["index"]] = payload
            _trim_payloads(payloads, policies)
            failed = sum(not p["ok"] for p in payloads.values())
            bar.update(bar_task, advance=1, failed=f"{failed} failed" if failed else "")

        if tasks:
            _execute(tasks, jobs, run, on_done)
    return [payloads[task["index"]] for task in tasks]


def _policy(config: dict[str, Any]) -> str:
    """A point's policy, for labels ("default" when the config leaves it to the runner)."""
    return str(config.get("policy", "default"))


def _row(task: dict[str, Any], flat: dict[str, Any], payload: dict[str, Any],
         swept: list[str]) -> dict[str, Any]:
    """One results row: where the point is, its swept values, status and headline metrics."""
    error, metrics = payload.get("error") or {}, payload.get("summary") or {}
    return {"point": task["index"], "dir": Path(task["dir"]).name,
            **{k: flat.get(k) for k in swept},
            "status": "ok" if payload["ok"] else "error",
            "errno": error.get("errno"), "error": error.get("message"),
            **{k: metrics.get(k) for k in HEADLINE_METRICS}}


def _plot(flats: list[dict[str, Any]], payloads: list[dict[str, Any]], swept: list[str],
          out: Path) -> None:
    """The sweep's PNGs (``plots.plot_sweep``): successful points, grouped by their values."""
    from .plots import plot_sweep

    others = [k for k in swept if k not in ("policy", "seed")]
    points = []
    for flat, payload in zip(flats, payloads, strict=True):
        if payload["ok"]:
            group = [(k, _scalar(flat.get(k))) for k in others]
            points.append({**payload, "policy": _policy(flat), "group": group,
                           "curve": [(k, v) for k, v in group if not _is_load_key(k)]})
    plot_sweep(points, out, CDF_METRICS)


def results_table(rows: list[dict[str, Any]], title: str = "Sweep results") -> Table:
    """A rich table of sweep rows: the swept values, status and a few headline metrics."""
    fixed = {"point", "dir", "status", "errno", "error", *HEADLINE_METRICS}
    swept = [k for k in (rows[0] if rows else {}) if k not in fixed]
    shown = {"requests.completed": "done", "throughput.output_tokens_per_s": "tok/s",
             "latency.ttft_s.p50": "ttft p50 s", "latency.e2e_s.p50": "e2e p50 s",
             "latency.e2e_s.p99": "e2e p99 s", "slo.goodput_requests_per_s": "goodput/s",
             "fairness.jain_index": "jain", "preemption.preemptions": "preempt"}
    table = Table(title=title)
    for column in ["point", *swept, "status", *shown.values()]:
        table.add_column(column, justify="left" if column in (*swept, "status") else "right")
    for row in rows:
        status = "ok" if row["status"] == "ok" else row["errno"] or "error"
        cells = [row["point"], *(_scalar(row.get(k)) for k in swept), status,
                 *(row.get(k) for k in shown)]
        table.add_row(*("-" if c is None else f"{c:.4g}" if isinstance(c, float) else str(c)
                        for c in cells))
    return table


def print_results_table(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """Print ``results_table(rows)``, then each failed point's error, to ``console``.

    The default console writes to standard output, 200 columns wide when that is not a terminal
    (a file or a pipe should get the whole table, not columns cut to 80).
    """
    if console is None:
        console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200)
    console.print(results_table(rows))
    for row in rows:
        if row["status"] != "ok":
            console.print(f"point {row['point']} ({row['dir']}): {row['errno'] or 'error'}: "
                          f"{row['error']}", markup=False, highlight=False)

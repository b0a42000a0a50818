"""``llmos bench fidelity``: does the simulator predict what the real kernel does?

One workload runs on one kernel configuration (KV pool, block size, sequence cap, token budget,
policy) twice: for real, on the cpu driver with the default model under trio's real clock, and in
virtual time on the sim driver, whose cost model is a profile calibrated on the same CPU engine.
Both runs go through ``sim.runner.simulate`` (one injector spawning in arrival order, collectors
reaping with ``wait``, records from the kernel's process records), so they differ only in the
device and the clock. The report gives mean and p90 of E2E, TTFT and TPOT on both sides and the
simulator's relative error ``(sim - real) / real``. Targets (the issue's): mean E2E within 5%,
p90 E2E within 10%.

The profile the simulation runs on is made without the evaluated run's timings::

    pilot    a short real run of *other* requests (same lengths and rate, another seed),
             before anything else
    engine   sim.calibrate times the bare engine over a grid of batch shapes from the
             workload's operating region (decode batches of 1..max_seqs sequences at short,
             long and mixed context lengths; whole and continued prompts; decodes with a
             prompt chunk riding along), plus batches the kernel formed in the pilot, drawn in
             proportion to how often they ran; before and after the real run (``bracket``);
             the fit is scaled to predict the drawn batches' total time (``match_workload``)
    + host   a fixed per-step term added to ``step_s``: the kernel's time per step outside
             the engine (planning, the step's IPC round trip, the hand-offs to the driver's
             compute thread and back, recording the results), which an engine-only
             calibration cannot see. It is the pilot's mean gap between one step's engine end
             and the next step's start while the device stays busy.

On a shared machine the engine's speed moves by tens of percent within a minute, and a run
that queues amplifies that. So the comparison runs ``--trials`` times (real run, calibration)
and reports the errors of the figures averaged over trials, each trial's errors, and two
diagnostics that say where an error comes from: the real run's engine time over the profile's
prediction of its own steps (far from 1: the machine ran at another speed than while
calibrating), and an oracle simulation on the profile scaled to the engine speed the evaluated
run itself had, plus that run's own host gap (what is left is the simulator's error, not the
machine's drift; it is never the headline figure). Torch's intra-op threads (``--threads``)
are set once for the whole benchmark, so calibration, pilot and real runs compute with the
same threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .command import EXIT_FAILURE, EXIT_USAGE

if TYPE_CHECKING:  # the simulator and torch load when the benchmark runs, not with ``llmos --help``
    from llmos.kernel.kernel import KernelConfig
    from llmos.sim.profile import ProfileCost
    from llmos.sim.records import Request, SimResult
    from llmos.sim.runner import SimConfig

TARGET_MEAN_E2E = 0.05  # |relative error| of mean E2E, at most (the issue's)
TARGET_P90_E2E = 0.10  # |relative error| of p90 E2E, at most
METRICS = ("e2e_s", "ttft_s", "tpot_s", "queue_s")  # queue_s: arrival to first scheduled (waiting for a seat)
STATS = ("mean", "p90")
PILOT_SEED_OFFSET = 1000  # the pilot's workload has seed (benchmark seed + this): other requests
REAL_DEVICE = "cpu0"
IDLE_GAP_S = 0.02  # a pause between steps this long is the device idle, not kernel overhead


# ---------------------------------------------------------------------------------------------
# the calibration grid


def _spread(lo: int, hi: int, n: int) -> list[int]:
    """``n`` integers evenly spaced from ``lo`` to ``hi`` (both included when n > 1)."""
    if n <= 1 or hi <= lo:
        return [hi] * n
    return [round(lo + (hi - lo) * i / (n - 1)) for i in range(n)]


def _seq_counts(max_seqs: int) -> list[int]:
    """Decode batch sizes to measure: every size up to 8, then about eight spread to max_seqs."""
    if max_seqs <= 8:
        return list(range(1, max_seqs + 1))
    return sorted(set(_spread(1, max_seqs, 8)) | {1, 2, 4})


def workload_grid(requests: list[Request], max_seqs: int, max_batch_tokens: int) -> list[list[tuple[int, int]]]:
    """Batch shapes covering what ``requests`` put on the engine (lengths only, no timings).

    Each shape is a list of ``(start_pos, num_new)`` chunks (``sim.calibrate``'s form).
    """
    prompts = sorted(r.prompt_len for r in requests)
    contexts = sorted(r.prompt_len + r.output_len for r in requests)
    p_lo, p_hi = prompts[0], min(prompts[-1], max_batch_tokens)
    c_lo, c_hi = p_lo + 1, contexts[-1]
    c_mid = (c_lo + c_hi) // 2
    grid: list[list[tuple[int, int]]] = []
    for n in _seq_counts(max_seqs):
        for context in (c_lo, c_mid, c_hi):
            grid.append([(context - 1, 1)] * n)
        if n > 1:  # contexts spread like a running batch's: attention pads to the longest
            grid.append([(c - 1, 1) for c in _spread(c_lo, c_hi, n)])
    for chunk in _spread(p_lo, p_hi, 4):  # whole prompts from position 0
        grid.append([(0, chunk)])
    if 2 * p_lo <= max_batch_tokens:  # two prompts admitted in one step
        grid.append([(0, p_lo), (0, min((p_lo + p_hi) // 2, max_batch_tokens - p_lo))])
    if p_hi > p_lo + 1:  # the rest of a prompt whose first chunk ran in an earlier step
        grid.append([(p_lo, p_hi - p_lo)])
    decoding = [(c - 1, 1) for c in _spread(c_lo, c_hi, max(1, max_seqs - 1))]
    for chunk in _spread(p_lo, min(p_hi, max_batch_tokens - len(decoding)), 3):
        if chunk >= 1:  # a full batch of decodes with a prompt riding along (chunked prefill)
            grid.append(decoding + [(0, chunk)])
    half = decoding[: max(1, len(decoding) // 2)]
    grid.append(half + [(0, max(1, min((p_lo + p_hi) // 2, max_batch_tokens - len(half))))])
    return grid


# ---------------------------------------------------------------------------------------------
# the real kernel


StepRecord = tuple[list[tuple[int, int]], float, float]  # (chunks, driver start (perf_counter), engine s)


def real_kernel_config(config: SimConfig, num_requests: int, dtype: str,
                       steps: list[StepRecord] | None = None) -> KernelConfig:
    """The simulated kernel's configuration with its device swapped for the real cpu driver.

    Everything else (KV blocks, block size, swap space, prefix cache, scheduler limits, policy,
    process table) is the simulated kernel's own, so the two runs differ only in the device.
    With ``steps``, the driver appends a ``StepRecord`` to it for every step it runs.
    """
    from llmos.drivers.cpu import DEFAULT_MODEL_DIR, TorchDriver
    from llmos.sim.runner import kernel_config

    driver: Any = partial(TorchDriver, "cpu", dtype)
    if steps is not None:
        driver = partial(_recording_driver_class(), steps, "cpu", dtype)
    simulated = kernel_config(config, num_requests)
    device = dataclasses.replace(simulated.devices[0], name=REAL_DEVICE, driver=driver, model="default",
                                 load_args={"path": str(DEFAULT_MODEL_DIR)})
    return dataclasses.replace(simulated, devices=[device])


def _recording_driver_class() -> type:
    """The cpu driver, also noting each step's shape, start time and engine time."""
    from llmos.drivers.cpu import TorchDriver

    class RecordingTorchDriver(TorchDriver):
        def __init__(self, steps: list[StepRecord], device: str, dtype: str) -> None:
            super().__init__(device, dtype)
            self.steps = steps

        async def _step(self, batch: Any) -> Any:
            started = time.perf_counter()
            result = await super()._step(batch)
            self.steps.append(([(c.start_pos, len(c.token_ids)) for c in batch.seqs], started, result.elapsed_s))
            return result

    return RecordingTorchDriver


def run_real(config: SimConfig, requests: list[Request], dtype: str,
             steps: list[StepRecord] | None = None) -> SimResult:
    """Run ``requests`` on the real cpu driver, in real time; a ``SimResult`` like a simulation's.

    ``config``'s sim device is replaced by the cpu (``real_kernel_config``); the rest holds.
    """
    import trio

    from llmos.sim.runner import simulate

    kernel_cfg = real_kernel_config(config, len(requests), dtype, steps)
    wall = time.perf_counter()
    result = trio.run(simulate, config, requests, kernel_cfg)
    result.wall_s = time.perf_counter() - wall
    return result


def run_pilot(config: SimConfig, num_requests: int, seed: int, dtype: str) -> list[StepRecord]:
    """A real run of ``num_requests`` other requests from the workload's spec (another seed); its steps."""
    from llmos.sim.workloads import make_workload

    workload = dataclasses.replace(config.workload, num_requests=num_requests)
    pilot = dataclasses.replace(config, workload=workload, seed=seed)
    steps: list[StepRecord] = []
    run_real(pilot, make_workload(workload, seed), dtype, steps)
    return steps


def step_overhead(profile: ProfileCost, steps: list[StepRecord]) -> dict[str, Any]:
    """What a real run spent per step beyond the engine profile's prediction of its steps.

    ``gap_s``: mean time from one step's engine end to the next one's start while the device
    stayed busy (gaps under ``IDLE_GAP_S``): the kernel's host work, the profile's per-step term.
    ``engine_excess_s``: mean of (engine time - predicted time) per step, and ``engine_ratio``
    the run's engine time over the prediction: how far the machine's speed was from the
    calibration's. ``per_step_s`` is gap plus excess: the fixed term that would make the
    profile's steps as long as the run's on average.
    """
    from llmos.sim.calibrate import sample_of

    engine = sum(seconds for _, _, seconds in steps)
    predicted = 0.0
    for chunks, _, seconds in steps:
        s = sample_of(chunks, seconds)
        predicted += profile.step_seconds(s.num_seqs, s.num_tokens, s.context_tokens, s.attention_pairs)
    gap = busy_gap(steps)
    excess = (engine - predicted) / len(steps) if steps else 0.0
    return {"steps": len(steps), "engine_s": engine, "predicted_engine_s": predicted,
            "engine_ratio": engine / predicted if predicted else None,
            "gap_s": gap, "engine_excess_s": excess, "per_step_s": gap + excess}


def busy_gap(steps: list[StepRecord]) -> float:
    """Mean seconds from a step's engine end to the next step's start, while the device stayed busy.

    A gap of ``IDLE_GAP_S`` or more is the device waiting for work, not the kernel's overhead.
    """
    gaps = [b[1] - (a[1] + a[2]) for a, b in pairwise(steps)]
    busy = [g for g in gaps if g < IDLE_GAP_S]
    return sum(busy) / len(busy) if busy else 0.0


def with_host_overhead(profile: ProfileCost, overhead_s: float) -> ProfileCost:
    """``profile`` with ``overhead_s`` added to its fixed per-step term, noted in its metadata.

    A negative overhead (the kernel's engine ran faster than calibrated) lowers ``step_s`` no
    further than to 0.
    """
    from llmos.sim.profile import ProfileCost

    coefficients = dict(profile.coefficients)
    coefficients["step_s"] = max(0.0, coefficients["step_s"] + overhead_s)
    metadata = {**profile.metadata, "host_overhead_s": overhead_s,
                "engine_step_s": profile.coefficients["step_s"]}
    return ProfileCost(coefficients, metadata, profile.samples)


def scaled(profile: ProfileCost, factor: float) -> ProfileCost:
    """``profile`` with every coefficient times ``factor``: the same engine, ``factor`` x slower."""
    from llmos.sim.profile import ProfileCost

    return ProfileCost({k: v * factor for k, v in profile.coefficients.items()},
                       {**profile.metadata, "scaled_by": factor}, profile.samples)


def match_workload(profile: ProfileCost, num_last: int) -> ProfileCost:
    """``profile`` scaled so it predicts its last ``num_last`` samples' total time exactly.

    The fit minimises relative error shape by shape, so a 3 ms step weighs as much as a 30 ms
    one, and the total over a real run's mix of steps comes out a few percent off. The last
    samples are batches drawn from the pilot in proportion to how often they ran: scaling every
    coefficient by measured / predicted over them fixes the total for that mix. Both sides of
    the ratio are the calibration's own engine timings.
    """

    drawn = profile.samples[len(profile.samples) - num_last:] if num_last > 0 else []
    predicted = sum(profile.step_seconds(s.num_seqs, s.num_tokens, s.context_tokens, s.attention_pairs)
                    for s in drawn)
    if not drawn or predicted <= 0:
        return profile
    scale = sum(s.seconds for s in drawn) / predicted
    matched = scaled(profile, scale)
    matched.metadata = {**profile.metadata, "workload_scale": scale}
    return matched


def bracket(before: ProfileCost, after: ProfileCost, num_last: int = 0) -> ProfileCost:
    """One profile from two calibrations of the same grid, before and after the real run.

    Each shape's time is the average of its two times, so a machine that speeds up or slows down
    steadily across the real run is measured at its average. The metadata keeps the drift
    (after / before, over the whole grid) to say how steady the machine was. ``num_last``: see
    ``match_workload``.
    """
    from llmos.sim.profile import Sample, fit_profile

    pairs = list(zip(before.samples, after.samples, strict=True))
    samples = [Sample(a.num_seqs, a.num_tokens, a.context_tokens, a.attention_pairs, (a.seconds + b.seconds) / 2)
               for a, b in pairs]
    drift = sum(b.seconds for _, b in pairs) / sum(a.seconds for a, _ in pairs)
    metadata = {k: v for k, v in before.metadata.items() if k not in ("fit", "workload_scale")}
    metadata.update(bracketed=True, drift=drift,
                    calibrate_s=before.metadata.get("calibrate_s", 0.0) + after.metadata.get("calibrate_s", 0.0))
    return match_workload(fit_profile(samples, metadata), num_last)


# ---------------------------------------------------------------------------------------------
# comparing


def latency_stats(result: SimResult) -> dict[str, dict[str, float | None]]:
    """Mean and p90 of each of ``METRICS`` over the completed requests."""
    from llmos.sim import metrics

    out: dict[str, dict[str, float | None]] = {}
    for metric in METRICS:
        if metric == "queue_s":
            values = [r.first_scheduled_s - r.arrival_s for r in result.records
                      if metrics.is_completed(r) and r.first_scheduled_s is not None]
        else:
            values = metrics.latency_values(result.records, metric)
        dist = metrics.distribution(values)
        out[metric] = {stat: dist[stat] for stat in STATS}  # type: ignore[misc]
    return out


def mean_stats(runs: list[dict[str, dict[str, float | None]]]) -> dict[str, dict[str, float | None]]:
    """Each statistic averaged over runs (None if any run lacks it)."""
    out: dict[str, dict[str, float | None]] = {}
    for metric in METRICS:
        out[metric] = {}
        for stat in STATS:
            values = [run[metric][stat] for run in runs]
            out[metric][stat] = None if any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type,misc]
    return out


def relative_errors(real: dict[str, dict[str, float | None]],
                    sim: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """``(sim - real) / real`` for each metric and statistic; None where real is 0 or missing."""
    out: dict[str, dict[str, float | None]] = {}
    for metric in METRICS:
        out[metric] = {}
        for stat in STATS:
            r, s = real[metric][stat], sim[metric][stat]
            out[metric][stat] = (s - r) / r if r and s is not None else None
    return out


def _targets(errors: dict[str, dict[str, float | None]]) -> dict[str, Any]:
    mean, p90 = errors["e2e_s"]["mean"], errors["e2e_s"]["p90"]
    met_mean = mean is not None and abs(mean) <= TARGET_MEAN_E2E
    met_p90 = p90 is not None and abs(p90) <= TARGET_P90_E2E
    return {"mean_e2e": TARGET_MEAN_E2E, "p90_e2e": TARGET_P90_E2E, "mean_e2e_met": met_mean,
            "p90_e2e_met": met_p90, "met": met_mean and met_p90}


# ---------------------------------------------------------------------------------------------
# the benchmark


@dataclasses.dataclass
class Setup:
    """What every trial shares: the workload, the kernel, the options and where profiles go."""

    args: argparse.Namespace
    base: SimConfig  # the kernel's settings; real runs swap its sim device for the cpu
    requests: list[Request]
    grid: list[list[tuple[int, int]]]  # calibration shapes
    folder: Path  # profiles are written here for the simulations to read
    overhead_s: float  # the kernel's host seconds per step, from the pilot
    num_pilot_shapes: int  # calibration shapes drawn from the pilot's steps (the grid's last ones)

    def calibrate(self, repeats: int | None = None) -> ProfileCost:
        """The engine alone over the grid (or the --profile given)."""
        from llmos.sim.calibrate import calibrate
        from llmos.sim.profile import load_profile

        a = self.args
        if a.profile:
            return load_profile(a.profile)
        profile = calibrate(model="default", dtype=a.dtype, shapes=self.grid, repeats=repeats or a.repeats,
                            seed=a.seed, threads=a.threads, statistic=a.statistic)
        return match_workload(profile, self.num_pilot_shapes)

    def simulate(self, profile: ProfileCost, name: str) -> SimResult:
        """The workload in virtual time on ``profile``."""
        from llmos.sim.runner import run_simulation

        path = self.folder / f"{name}.json"
        profile.save(path)
        return run_simulation(dataclasses.replace(self.base, device=str(path)), self.requests)


def run_trial(setup: Setup, before: ProfileCost, index: int) -> tuple[dict[str, Any], ProfileCost]:
    """The real run, a calibration after it, and the simulation on what was measured.

    Returns the trial's figures and the calibration after the run (the next trial's ``before``).
    """
    a = setup.args
    steps: list[StepRecord] = []
    real = run_real(setup.base, setup.requests, a.dtype, steps)
    wall = time.perf_counter()
    after = setup.calibrate() if a.bracket and not a.profile else before
    calibrate_s = time.perf_counter() - wall
    engine = bracket(before, after, setup.num_pilot_shapes) if after is not before else before
    sim = setup.simulate(with_host_overhead(engine, setup.overhead_s), f"trial{index}")
    check = step_overhead(engine, steps)
    # The oracle, for the report only: the profile at the engine speed the evaluated run itself
    # had, plus that run's own host gap.
    speed = check["engine_ratio"] or 1.0
    oracle = setup.simulate(with_host_overhead(scaled(engine, speed), check["gap_s"]), f"trial{index}-oracle")
    real_stats, sim_stats, oracle_stats = latency_stats(real), latency_stats(sim), latency_stats(oracle)
    trial: dict[str, Any] = {
        "real": {**real_stats, "duration_s": real.simulated_s, "steps": real.num_steps, "wall_s": real.wall_s},
        "sim": {**sim_stats, "duration_s": sim.simulated_s, "steps": sim.num_steps, "wall_s": sim.wall_s},
        "error": relative_errors(real_stats, sim_stats),
        "real_run_check": check,
        "sim_oracle": oracle_stats,
        "error_oracle": relative_errors(real_stats, oracle_stats),
        "drift": engine.metadata.get("drift"),
        "workload_scale": engine.metadata.get("workload_scale"),
        "fit_rel_rms": (engine.metadata.get("fit") or {}).get("rel_rms"),
        "calibrate_after_s": calibrate_s,
    }
    return trial, after


def prepare(args: argparse.Namespace, folder: Path) -> tuple[Setup, list[StepRecord]]:
    """The workload, the kernel settings, the pilot run and the calibration grid."""
    import random

    from llmos.sim.runner import SimConfig
    from llmos.sim.workloads import WorkloadSpec, make_workload

    workload = WorkloadSpec(arrivals="poisson", rate=args.rate, num_requests=args.requests,
                            prompt_len=args.prompt_len, output_len=args.output_len)
    requests = make_workload(workload, args.seed)
    base = SimConfig(workload=workload, seed=args.seed, policy=args.policy, model="default",
                     kv_blocks=args.kv_blocks, block_size=args.block_size, max_seqs=args.max_seqs,
                     max_batch_tokens=args.max_batch_tokens)
    base.check()
    # The pilot also warms the process up (torch's lazy setup, the allocator), which would
    # otherwise slow the first calibration rounds.
    pilot = run_pilot(base, args.pilot_requests, args.seed + PILOT_SEED_OFFSET, args.dtype) if args.pilot_requests else []
    grid = workload_grid(requests, base.max_seqs, base.max_batch_tokens)
    if args.grid_limit:
        grid = grid[:: max(1, math.ceil(len(grid) / args.grid_limit))]
    # Batches the kernel really formed for such a workload (the pilot's, not the evaluated run's),
    # drawn in proportion to how often they ran, weigh the fit toward the common steps.
    drawn = random.Random(args.seed).sample(pilot, min(args.pilot_shapes, len(pilot)))
    grid += [chunks for chunks, _, _ in drawn]
    return Setup(args, base, requests, grid, folder, busy_gap(pilot), len(drawn)), pilot


def fidelity(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Pilot, calibration, then trials of (real run, calibration), each simulated; the report."""
    started = time.perf_counter()
    setup, pilot = prepare(args, folder)
    wall = time.perf_counter()
    if not args.profile and not pilot:
        setup.calibrate(repeats=1)  # a warm-up, thrown away: a fresh process's first rounds run slow
    before = setup.calibrate()
    first_calibration_s = time.perf_counter() - wall
    pilot_check = step_overhead(before, pilot)
    trials = []
    for index in range(args.trials):
        trial, before = run_trial(setup, before, index)
        trials.append(trial)
    real = mean_stats([t["real"] for t in trials])
    sim = mean_stats([t["sim"] for t in trials])
    errors = relative_errors(real, sim)
    meta = before.metadata
    return {
        "requests": len(setup.requests),
        "trials": args.trials,
        "workload": {"arrivals": "poisson", "rate": args.rate, "prompt_len": args.prompt_len,
                     "output_len": args.output_len, "seed": args.seed},
        "kernel": {"max_seqs": args.max_seqs, "max_batch_tokens": args.max_batch_tokens,
                   "kv_blocks": args.kv_blocks, "block_size": args.block_size, "policy": args.policy,
                   "dtype": args.dtype, "torch_threads": args.threads},
        "real": real,
        "sim": sim,
        "error": errors,
        "targets": _targets(errors),
        "error_oracle": relative_errors(real, mean_stats([t["sim_oracle"] for t in trials])),
        "calibration": {
            "source": str(args.profile) if args.profile else "calibrated", "shapes": len(setup.grid),
            "pilot_shapes": setup.num_pilot_shapes,
            "repeats": meta.get("repeats"), "statistic": meta.get("statistic"), "bracketed": args.bracket,
            "torch_threads": meta.get("device", {}).get("torch_threads"), "fit": meta.get("fit"),
            "wall_s": first_calibration_s + sum(t["calibrate_after_s"] for t in trials),
        },
        "host_overhead_s": setup.overhead_s,
        "pilot": {"requests": args.pilot_requests, "seed": args.seed + PILOT_SEED_OFFSET, **pilot_check},
        "trial_runs": trials,
        "wall_s": time.perf_counter() - started,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f}"


def format_report(report: dict[str, Any]) -> str:
    """The short table ``llmos bench fidelity`` prints without ``--json``."""
    trials = report["trial_runs"]
    lines = [f"{report['requests']} requests, poisson {report['workload']['rate']}/s, "
             f"max_seqs {report['kernel']['max_seqs']}, {report['kernel']['torch_threads']} torch thread(s), "
             f"{len(trials)} trial(s); figures averaged over trials",
             f"{'metric':10s} {'real ms':>9s} {'sim ms':>9s} {'error':>8s}  per trial"]
    for metric in METRICS:
        for stat in STATS:
            per_trial = " ".join(_pct(t["error"][metric][stat]) for t in trials)
            lines.append(f"{metric[:-2] + ' ' + stat:10s} {_ms(report['real'][metric][stat]):>9s} "
                         f"{_ms(report['sim'][metric][stat]):>9s} {_pct(report['error'][metric][stat]):>8s}  {per_trial}")
    t = report["targets"]
    lines.append(f"targets: mean E2E within {t['mean_e2e']:.0%}: {'met' if t['mean_e2e_met'] else 'NOT met'}; "
                 f"p90 E2E within {t['p90_e2e']:.0%}: {'met' if t['p90_e2e_met'] else 'NOT met'}")
    fit = report["calibration"].get("fit") or {}
    if fit:
        lines.append(f"calibration fit: relative RMS {fit['rel_rms']:.1%} over {fit['num_samples']} shapes")
    lines.append(f"host overhead per step: {report['host_overhead_s'] * 1e3:.2f} ms from the pilot of "
                 f"{report['pilot']['requests']} other requests; in each real run: "
                 + " ".join(f"{t['real_run_check']['gap_s'] * 1e3:.2f}" for t in trials) + " ms")
    ratios = [t["real_run_check"]["engine_ratio"] for t in trials]
    if all(r is not None for r in ratios):
        lines.append("real run's engine time / profile's prediction of its steps: " + " ".join(f"{r:.3f}" for r in ratios))
    drifts = [t["drift"] for t in trials]
    if all(d is not None for d in drifts):
        lines.append("calibration after / before each real run: " + " ".join(f"{d:.3f}" for d in drifts))
    oracle = report["error_oracle"]["e2e_s"]
    lines.append(f"oracle (engine speed and host gap of the evaluated runs themselves): mean E2E {_pct(oracle['mean'])}, "
                 f"p90 E2E {_pct(oracle['p90'])}")
    lines.append(f"wall: {report['wall_s']:.1f} s (real runs {sum(t['real']['wall_s'] for t in trials):.1f} s, "
                 f"calibration {report['calibration']['wall_s']:.1f} s)")
    return "\n".join(lines)


def add_fidelity_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``llmos bench fidelity``."""
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--requests", type=int, default=120, help="requests in the workload (default %(default)s)")
    parser.add_argument("--rate", type=float, default=7.0, help="poisson arrivals per second (default %(default)s)")
    parser.add_argument("--prompt-len", default="uniform:32:256", help="prompt length spec (default %(default)s)")
    parser.add_argument("--output-len", default="uniform:16:96", help="output length spec (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the workload, prompts and sampling")
    parser.add_argument("--max-seqs", type=int, default=8, help="sequences per step (default %(default)s)")
    parser.add_argument("--max-batch-tokens", type=int, default=512, help="token budget per step (default %(default)s)")
    parser.add_argument("--kv-blocks", type=int, default=1024, help="KV blocks (default %(default)s)")
    parser.add_argument("--block-size", type=int, default=16, help="tokens per KV block (default %(default)s)")
    parser.add_argument("--policy", default="fcfs", help="scheduling policy (default %(default)s)")
    parser.add_argument("--dtype", default="float32", help="engine dtype (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for calibration, pilots and real runs (default %(default)s)")
    parser.add_argument("--profile", default=None, metavar="PATH",
                        help="an engine profile from 'llmos sim calibrate' instead of calibrating here")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per calibration shape (default %(default)s)")
    parser.add_argument("--statistic", default="mean", choices=["mean", "median"],
                        help="a shape's time from its timed runs (default %(default)s: counts hiccups, as a real run pays them)")
    parser.add_argument("--bracket", action=argparse.BooleanOptionalAction, default=True,
                        help="calibrate again after each real run and average with the calibration before (default: on)")
    parser.add_argument("--grid-limit", type=int, default=0, help="measure at most about N shapes (0: all)")
    parser.add_argument("--pilot-requests", type=int, default=40,
                        help="requests of the pilot run (other requests) that measures the host overhead; 0: none (default %(default)s)")
    parser.add_argument("--pilot-shapes", type=int, default=40,
                        help="calibration shapes drawn from the pilot's steps, besides the grid (default %(default)s)")
    parser.add_argument("--trials", type=int, default=3,
                        help="real runs, each followed by a calibration; figures are averaged (default %(default)s)")
    parser.add_argument("--save-profile", default=None, metavar="PATH",
                        help="also write the last trial's profile (engine fit plus host overhead) here")


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, in a sentence, or None."""
    for name in ("requests", "trials", "threads", "repeats", "max_seqs", "max_batch_tokens", "kv_blocks", "block_size"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1, not {getattr(args, name)}"
    for name in ("pilot_requests", "pilot_shapes", "grid_limit"):
        if getattr(args, name) < 0:
            return f"--{name.replace('_', '-')} must be >= 0, not {getattr(args, name)}"
    if not math.isfinite(args.rate) or args.rate <= 0:
        return f"--rate must be a positive number, not {args.rate}"
    return None


def run_bench_fidelity(args: argparse.Namespace) -> int:
    """Entry point of ``llmos bench fidelity``."""
    import tempfile

    import torch

    from llmos.sim.errors import SimError

    problem = check_arguments(args)
    if problem:
        print(f"llmos bench fidelity: {problem} (EINVAL)", file=sys.stderr)
        return EXIT_USAGE
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="llmos-fidelity-") as folder:
            report = fidelity(args, Path(folder))
            if args.save_profile:
                last = Path(folder) / f"trial{args.trials - 1}.json"
                Path(args.save_profile).write_bytes(last.read_bytes())
    except SimError as exc:
        print(f"llmos bench fidelity: {exc.message} ({exc.errno})", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        torch.set_num_threads(threads_before)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0

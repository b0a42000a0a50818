"""Trace loaders: public LLM inference traces in, ``Request`` lists out.

Four formats, told apart by their first line (``detect_format``):

    llmos     CSV  arrived_at,num_prefill_tokens,num_decode_tokens    (seconds since start)
    azure     CSV  TIMESTAMP,ContextTokens,GeneratedTokens            (Azure 2023/2024 originals)
    burstgpt  CSV  Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
    mooncake  JSONL {"timestamp": ms, "input_length": n, "output_length": n, "hash_ids": [...]}

Every loader applies the same rules, so a trace means the same thing whatever its format:

- Arrival times are rebased so the earliest kept request arrives at 0.0 s, and rows are sorted
  by arrival (a stable sort: equal times keep file order). ``request_id`` is the sorted index.
- A prompt of 0 tokens cannot become a process (DESIGN.md: a process has prompt tokens), so
  that row is skipped and counted under ``skipped["empty_prompt"]``.
- An output of 0 tokens is a request that generated nothing (a cancelled or failed call); it is
  kept with ``output_len = 1`` (every process produces at least one token) and counted under
  ``clamped["zero_output"]``. BurstGPT is the exception: its zero-response rows are its logged
  failures, skipped and counted under ``skipped["failed"]``, the way the BurstGPT paper does.
- A negative length, a non-number, a missing column or a non-finite time is malformed: EINVAL
  naming the file and the line.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from llmos.sim.errors import SimError
from llmos.sim.records import Request

REPO_ROOT = Path(__file__).resolve().parent.parent
# The Azure 2023 conversation trace shipped beside the repository (shared/traces/README.md).
# userland/trace.py computes the same path; it may import it from here.
DEFAULT_TRACE = REPO_ROOT.parent / "shared" / "traces" / "azure_conv_2023.csv"

FORMATS = ("llmos", "azure", "burstgpt", "mooncake")

# The columns each CSV format must have (extra columns are ignored; order is free).
CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "llmos": ("arrived_at", "num_prefill_tokens", "num_decode_tokens"),
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    "burstgpt": ("Timestamp", "Model", "Request tokens", "Response tokens"),
}
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")
ACCEPTED = (
    "llmos CSV (arrived_at,num_prefill_tokens,num_decode_tokens), "
    "Azure CSV (TIMESTAMP,ContextTokens,GeneratedTokens), "
    "BurstGPT CSV (Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type), "
    "Mooncake JSONL ({\"timestamp\", \"input_length\", \"output_length\", \"hash_ids\"})"
)


@dataclass
class Trace:
    """A loaded trace: its requests and what the loader dropped or changed on the way."""

    path: Path  # the file it came from
    format: str  # one of FORMATS
    requests: list[Request]  # sorted by arrival, request_id = index, first arrival 0.0
    num_rows: int  # data rows (lines) read, kept or not
    skipped: dict[str, int] = field(default_factory=dict)  # rows dropped, by reason
    clamped: dict[str, int] = field(default_factory=dict)  # rows kept after a fix-up, by reason
    log_types: dict[str, int] = field(default_factory=dict)  # BurstGPT: kept rows per Log Type
    models: dict[str, int] = field(default_factory=dict)  # BurstGPT: rows per Model (unfiltered)


# A parsed row before sorting: (arrival seconds, prompt_len, output_len, hash_ids).
_Row = tuple[float, int, int, tuple[int, ...]]


# ---------------------------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------------------------

def _open_text(path: Path):
    """Open a trace for reading, or ENOENT naming the path."""
    if not path.is_file():
        raise SimError("ENOENT", f"no trace file at {path}")
    # utf-8-sig drops a byte-order mark, which spreadsheet exports put before the header.
    return path.open(newline="", encoding="utf-8-sig")


def _split_header(line: str) -> list[str]:
    """The column names of a CSV header line, stripped of spaces and quotes."""
    return [name.strip() for name in next(csv.reader([line]), [])]


def _format_of_line(path: Path, line: str) -> str:
    """The format a first line announces, or EINVAL listing the formats accepted."""
    if line.lstrip().startswith("{"):
        return "mooncake"
    columns = set(_split_header(line))
    for fmt, needed in CSV_COLUMNS.items():
        if columns.issuperset(needed):
            return fmt
    shown = line.strip()[:120]
    raise SimError("EINVAL", f"{path}:1: unrecognised trace header {shown!r}; accepted: {ACCEPTED}")


def detect_format(path: str | Path) -> str:
    """The format of a trace file, from its first non-blank line.

    Returns:
        One of ``FORMATS``.

    Raises:
        SimError: ENOENT if there is no such file; EINVAL if the file is empty or its first
            line is no known header (the message lists the accepted ones).
    """
    path = Path(path)
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                return _format_of_line(path, line)
    raise SimError("EINVAL", f"{path}: the trace file is empty; accepted: {ACCEPTED}")


# ---------------------------------------------------------------------------------------------
# Field parsing
# ---------------------------------------------------------------------------------------------

def _length(text: str, where: str, column: str) -> int:
    """A token count: an integer (``"374"``, or an integral float such as ``"374.0"``) >= 0."""
    try:
        value = int(text)
    except ValueError:
        try:
            as_float = float(text)
        except ValueError:
            as_float = math.nan
        if not as_float.is_integer():
            raise SimError("EINVAL", f"{where}: {column} {text!r} is not a token count") from None
        value = int(as_float)
    if value < 0:
        raise SimError("EINVAL", f"{where}: {column} {value} is negative")
    return value


def _seconds(text: str, where: str, column: str) -> float:
    """A finite time in seconds."""
    try:
        value = float(text)
    except ValueError:
        raise SimError("EINVAL", f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise SimError("EINVAL", f"{where}: {column} {text!r} is not finite")
    return value


# "2023-11-16 18:15:46.6805900", "2024-05-10 00:00:00.009930+00:00", "...T...Z": the Azure
# traces carry 7 fractional digits, which datetime.fromisoformat rejects before Python 3.11
# (and strptime's %f always), so the fraction is parsed apart as a decimal.
_TIMESTAMP = re.compile(
    r"\s*(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(\.\d+)?\s*(Z|[+-]\d{2}:?\d{2})?\s*$"
)


class _TimestampParser:
    """Absolute timestamps to seconds since the first one's whole second.

    Whole seconds are cached (consecutive rows share them), and times are kept relative to the
    first row's whole second: POSIX seconds near 1.7e9 would leave a float64 only ~0.2 us of
    resolution, less than the traces' 100 ns digits.
    """

    def __init__(self) -> None:
        self._whole: dict[tuple[str, ...], float] = {}  # (date, time, zone) fields -> seconds
        self._origin: float | None = None  # POSIX seconds of the first whole second seen

    def __call__(self, text: str, where: str) -> float:
        match = _TIMESTAMP.match(text)
        if match is None:
            raise SimError("EINVAL", f"{where}: TIMESTAMP {text!r} is not 'YYYY-MM-DD HH:MM:SS[.fraction]'")
        *date_time, fraction, zone = match.groups()
        key = (*date_time, zone or "")
        whole = self._whole.get(key)
        if whole is None:
            posix = self._parse_whole(date_time, zone, text, where)
            if self._origin is None:
                self._origin = posix
            whole = posix - self._origin  # exact: both are whole seconds
            self._whole[key] = whole
        return whole + (float(fraction) if fraction else 0.0)

    @staticmethod
    def _parse_whole(date_time: list[str], zone: str | None, text: str, where: str) -> float:
        """POSIX seconds of the whole-second part (naive times are read as UTC)."""
        tz = timezone.utc
        if zone and zone != "Z":
            sign = -1 if zone[0] == "-" else 1
            digits = zone[1:].replace(":", "")
            tz = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
        try:
            year, month, day, hour, minute, second = map(int, date_time)
            moment = datetime(year, month, day, hour, minute, second, tzinfo=tz)
        except ValueError as exc:
            raise SimError("EINVAL", f"{where}: TIMESTAMP {text!r}: {exc}") from None
        return moment.timestamp()


# ---------------------------------------------------------------------------------------------
# Per-format row readers: each yields (line number, _Row) and fills the Trace's counters
# ---------------------------------------------------------------------------------------------

def _csv_rows(path: Path, f, fmt: str):
    """(line number, fields, column name -> field index) for each data row of a CSV trace."""
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        raise SimError("EINVAL", f"{path}: the trace file is empty; accepted: {ACCEPTED}")
    names = [name.strip() for name in header]
    missing = [c for c in CSV_COLUMNS[fmt] if c not in names]
    if missing:
        raise SimError("EINVAL", f"{path}:1: a {fmt} trace needs column(s) {', '.join(missing)}; "
                                 f"the header has {', '.join(names)}; accepted: {ACCEPTED}")
    index = {name: names.index(name) for name in names}
    width = len(names)
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line, e.g. a trailing newline pair
        if len(row) != width:
            raise SimError("EINVAL", f"{path}:{line}: expected {width} fields like the header, got {len(row)}")
        yield line, row, index


def _read_llmos(path: Path, f, trace: Trace) -> list[_Row]:
    """Rows of ``arrived_at,num_prefill_tokens,num_decode_tokens``."""
    rows: list[_Row] = []
    for line, row, index in _csv_rows(path, f, "llmos"):
        # Fast path: the common, clean row costs three conversions and no checks that allocate.
        where = f"{path}:{line}"
        arrival = _seconds(row[index["arrived_at"]], where, "arrived_at")
        prompt = _length(row[index["num_prefill_tokens"]], where, "num_prefill_tokens")
        output = _length(row[index["num_decode_tokens"]], where, "num_decode_tokens")
        rows.append((arrival, prompt, output, ()))
    return rows


def _read_llmos_fast(path: Path, f, trace: Trace) -> list[_Row] | None:
    """The llmos format when its header is exactly the three columns: None to fall back.

    The shared Azure trace is loaded on every simulation, so this path avoids per-row helper
    calls; any row it cannot convert sends the whole file back to ``_read_llmos`` for the exact
    error (with line number).
    """
    first = f.readline()
    if _split_header(first) != list(CSV_COLUMNS["llmos"]):
        return None
    try:
        no_hash_ids: tuple[int, ...] = ()
        rows: list[_Row] = [(float(a), int(p), int(d), no_hash_ids) for a, p, d in csv.reader(f)]
    except ValueError:
        return None
    for arrival, prompt, output, _ in rows:
        if prompt < 0 or output < 0 or not math.isfinite(arrival):
            return None
    return rows


def _read_azure(path: Path, f, trace: Trace) -> list[_Row]:
    """Rows of ``TIMESTAMP,ContextTokens,GeneratedTokens`` with absolute timestamps."""
    parse_time = _TimestampParser()
    rows: list[_Row] = []
    for line, row, index in _csv_rows(path, f, "azure"):
        where = f"{path}:{line}"
        arrival = parse_time(row[index["TIMESTAMP"]], where)
        prompt = _length(row[index["ContextTokens"]], where, "ContextTokens")
        output = _length(row[index["GeneratedTokens"]], where, "GeneratedTokens")
        rows.append((arrival, prompt, output, ()))
    return rows


def _read_burstgpt(path: Path, f, trace: Trace, model: str | None) -> list[_Row]:
    """Rows of BurstGPT, keeping only ``model``'s when given and only successful requests."""
    rows: list[_Row] = []
    models: Counter[str] = Counter()
    log_types: Counter[str] = Counter()
    for line, row, index in _csv_rows(path, f, "burstgpt"):
        where = f"{path}:{line}"
        arrival = _seconds(row[index["Timestamp"]], where, "Timestamp")
        row_model = row[index["Model"]].strip()
        prompt = _length(row[index["Request tokens"]], where, "Request tokens")
        output = _length(row[index["Response tokens"]], where, "Response tokens")
        models[row_model] += 1
        if model is not None and row_model != model:
            trace.skipped["other_model"] = trace.skipped.get("other_model", 0) + 1
            continue
        if output == 0:
            # BurstGPT logs a failed request with a zero-token response; it used no decode.
            trace.skipped["failed"] = trace.skipped.get("failed", 0) + 1
            continue
        if "Log Type" in index:
            log_types[row[index["Log Type"]].strip()] += 1
        rows.append((arrival, prompt, output, ()))
    trace.models = dict(models)
    trace.log_types = dict(log_types)
    if model is not None and model not in models:
        present = ", ".join(sorted(models)) or "none"
        raise SimError("EINVAL", f"{path}: no rows of model {model!r}; the trace has: {present}")
    return rows


def _read_mooncake(path: Path, f, trace: Trace) -> list[_Row]:
    """Rows of Mooncake JSONL; ``timestamp`` is in milliseconds, ``hash_ids`` is kept."""
    rows: list[_Row] = []
    for line, text in enumerate(f, start=1):
        if not text.strip():
            continue
        where = f"{path}:{line}"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SimError("EINVAL", f"{where}: not a JSON object ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise SimError("EINVAL", f"{where}: expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in MOONCAKE_KEYS if k not in obj]
        if missing:
            raise SimError("EINVAL", f"{where}: missing key(s) {', '.join(missing)}")
        arrival = _json_number(obj["timestamp"], where, "timestamp") / 1000.0
        prompt = _json_length(obj["input_length"], where, "input_length")
        output = _json_length(obj["output_length"], where, "output_length")
        hash_ids = obj.get("hash_ids", [])
        if not isinstance(hash_ids, list) or not all(
                isinstance(h, int) and not isinstance(h, bool) for h in hash_ids):
            raise SimError("EINVAL", f"{where}: hash_ids must be a list of integers")
        rows.append((arrival, prompt, output, tuple(hash_ids)))
    return rows


def _json_number(value: object, where: str, key: str) -> float:
    """A finite JSON number (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SimError("EINVAL", f"{where}: {key} {value!r} is not a finite number")
    return float(value)


def _json_length(value: object, where: str, key: str) -> int:
    """A JSON token count: a non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SimError("EINVAL", f"{where}: {key} {value!r} is not an integer token count")
    if value < 0:
        raise SimError("EINVAL", f"{where}: {key} {value} is negative")
    return value


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def _finish(trace: Trace, rows: list[_Row], num_rows: int) -> Trace:
    """Apply the shared rules (skip empty prompts, clamp empty outputs, rebase, sort, number)."""
    trace.num_rows = num_rows
    kept: list[_Row] = []
    for arrival, prompt, output, hash_ids in rows:
        if prompt == 0:
            trace.skipped["empty_prompt"] = trace.skipped.get("empty_prompt", 0) + 1
            continue
        if output == 0:
            trace.clamped["zero_output"] = trace.clamped.get("zero_output", 0) + 1
            output = 1
        kept.append((arrival, prompt, output, hash_ids))
    if not kept:
        raise SimError("EINVAL", f"{trace.path}: the trace has no usable requests "
                                 f"({num_rows} rows read, skipped: {trace.skipped or 'none'})")
    # Python's sort is stable, so equal arrival times keep file order; already-sorted input
    # (the common case) costs one linear pass.
    kept.sort(key=lambda r: r[0])
    start = kept[0][0]
    # Positional arguments (request_id, arrival_s, prompt_len, output_len, tenant, nice, slo_s,
    # hash_ids): keywords cost twice as much, and construction is most of the load time.
    trace.requests = [
        Request(i, arrival - start, prompt, output, "default", 0, None, hash_ids)
        for i, (arrival, prompt, output, hash_ids) in enumerate(kept)
    ]
    return trace


def load_trace_info(path: str | Path, fmt: str = "auto", *, model: str | None = None) -> Trace:
    """Load a trace with its bookkeeping (rows read, skipped and clamped, BurstGPT's models).

    Args:
        path: the trace file.
        fmt: ``"auto"`` (from the first line) or one of ``FORMATS``.
        model: BurstGPT only: keep rows of this Model (e.g. ``"ChatGPT"``, ``"GPT-4"``).

    Raises:
        SimError: ENOENT for a missing file; EINVAL for an unknown ``fmt``, a header that does
            not match, a malformed row (naming its line), or a trace with no usable requests.
    """
    path = Path(path).expanduser()
    if fmt != "auto" and fmt not in FORMATS:
        raise SimError("EINVAL", f"unknown trace format {fmt!r}; one of auto, {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(path)
    else:
        try:
            detected: str | None = detect_format(path)
        except SimError as exc:
            if exc.errno != "EINVAL":
                raise
            detected = None  # no known header: the reader of ``fmt`` names what is missing
        if detected is not None and detected != fmt:
            raise SimError("EINVAL", f"{path}:1: the header is a {detected} trace's, not {fmt}'s")
    if model is not None and fmt != "burstgpt":
        raise SimError("EINVAL", f"{path}: a model filter applies to BurstGPT traces only, not {fmt}")
    trace = Trace(path=path, format=fmt, requests=[], num_rows=0)
    with _open_text(path) as f:
        if fmt == "llmos":
            rows = _read_llmos_fast(path, f, trace)
            if rows is None:
                f.seek(0)
                rows = _read_llmos(path, f, trace)
        elif fmt == "azure":
            rows = _read_azure(path, f, trace)
        elif fmt == "burstgpt":
            rows = _read_burstgpt(path, f, trace, model)
            # Rows filtered out by model or failure were read too.
            return _finish(trace, rows, len(rows) + sum(trace.skipped.values()))
        else:
            rows = _read_mooncake(path, f, trace)
    return _finish(trace, rows, len(rows))


def load_trace(path: str | Path, fmt: str = "auto", *, model: str | None = None) -> list[Request]:
    """The requests of a trace file, sorted by arrival, the first at 0.0 s.

    See ``load_trace_info`` for the arguments and errors, and the module docstring for how
    empty prompts, empty outputs and unsorted times are handled.
    """
    return load_trace_info(path, fmt, model=model).requests

"""The arrivals trace that benchmarks replay: ``arrived_at,num_prefill_tokens,num_decode_tokens``.

(The simulator will own a full workload layer with the other trace formats; benchmarks need
only this one.)
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TRACE = REPO_ROOT.parent / "shared" / "traces" / "azure_conv_2023.csv"


class TraceError(Exception):
    """An unusable trace, with the errno a command reports."""

    def __init__(self, errno: str, message: str) -> None:
        super().__init__(f"{errno}: {message}")
        self.errno = errno
        self.message = message


def load_arrivals(path: Path) -> list[tuple[float, int, int]]:
    """(arrival seconds, prompt length, output length) of each row, in file order."""
    if not path.is_file():
        raise TraceError("ENOENT", f"no trace at {path} (expected shared/traces/ beside the repository; pass --trace PATH)")
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                rows.append((float(row["arrived_at"]), int(row["num_prefill_tokens"]), int(row["num_decode_tokens"])))
            except (KeyError, TypeError, ValueError):
                raise TraceError("EINVAL", f"{path}: needs columns arrived_at,num_prefill_tokens,num_decode_tokens") from None
    if not rows:
        raise TraceError("EINVAL", f"{path}: the trace has no rows")
    return rows


def add_trace_arguments(parser: argparse.ArgumentParser, requests: int) -> None:
    """The options every trace-replaying benchmark takes: --trace, --requests, --seed, --json."""
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--trace", default=None, help="arrivals trace CSV (default: shared/traces/azure_conv_2023.csv beside the repository)")
    parser.add_argument("--requests", type=int, default=requests, help="replay the first N requests (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts' token ids")


def load_requests(command: str, args: argparse.Namespace) -> list[tuple[float, int, int]] | None:
    """The first ``args.requests`` rows of ``args.trace``; None after printing why not."""
    try:
        rows = load_arrivals(Path(args.trace).expanduser() if args.trace else DEFAULT_TRACE)
    except TraceError as exc:
        print(f"llmos {command}: {exc.message} ({exc.errno})", file=sys.stderr)
        return None
    return rows[: args.requests]

"""The arrivals trace that benchmarks replay: ``arrived_at,num_prefill_tokens,num_decode_tokens``.

(The simulator will own a full workload layer with the other trace formats; benchmarks need
only this one.)
"""

from __future__ import annotations

import csv
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

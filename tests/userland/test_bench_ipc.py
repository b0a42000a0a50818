"""``llmos bench ipc`` end to end, with few round trips: every transport answers and is reported."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_ipc_reports_every_transport_with_its_floors():
    done = subprocess.run([sys.executable, "-m", "llmos.userland.cli", "bench", "ipc", "--n", "120", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for name in ("floor_codec", "floor_trio", "in_process", "socket", "socket_async", "socket_raw"):
        figures = report[name]
        assert 0 < figures["p50_us"] <= figures["p99_us"], (name, figures)
    assert report["n"] == 120
    assert report["targets"] == {"in_process_p50_us": 50, "socket_p50_us": 150}

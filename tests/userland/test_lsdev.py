"""``llmos lsdev``, ``--devices`` and ``llmos bench dataparallel``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import trio

from llmos.kernel.kernel import open_kernel
from llmos.userland.cli import build_parser, main
from llmos.userland.inspect import format_lsdev
from llmos.userland.system import SystemOptions, build_config, options_from_args


def test_devices_are_named_by_kind_and_index_and_the_npu_serves_an_int8_model():
    config = build_config(SystemOptions(devices=["cpu", "npu", "sim", "sim"]))
    assert [(d.name, d.model) for d in config.devices] == [
        ("cpu0", "default"), ("npu0", "default-int8"), ("sim0", "sim"), ("sim1", "sim")]
    assert [d.name for d in build_config(SystemOptions(device="npu")).devices] == ["npu0"]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--devices", "cpu,gpu"], "unknown device kind 'gpu'"),
        (["--devices", "sim,"], "unknown device kind ''"),
        (["--device", "sim", "--devices", "sim,sim"], "not both"),
        (["--devices", "npu", "--npu", "watch"], "unknown npu preset 'watch'"),
    ],
)
def test_bad_device_options_are_usage_errors(argv, fragment):
    args = build_parser().parse_args(["boot", "--socket", "/tmp/x.sock", *argv])
    with pytest.raises(ValueError, match=fragment):
        build_config(options_from_args(args))


def test_boot_refuses_bad_devices_with_a_usage_status(capsys):
    assert main(["boot", "--socket", "/tmp/never.sock", "--devices", "sim,tpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown device kind 'tpu'" in err and err.rstrip().endswith("(EINVAL)")


def test_format_lsdev_says_emulated_or_real_and_memory_over_capacity():
    rows = [
        {"name": "cpu0", "kind": "cpu", "emulated": False, "spec": None, "model": "default", "kv_blocks_used": 3,
         "kv_blocks_total": 64, "kv_bytes": 2 << 20, "weight_bytes": 15 << 20, "memory_bytes": None,
         "utilization": 0.5, "running": 2, "waiting": 1},
        {"name": "npu0", "kind": "npu", "emulated": True, "spec": "phone", "model": "default-int8", "kv_blocks_used": 0,
         "kv_blocks_total": 64, "kv_bytes": 2 << 20, "weight_bytes": 4 << 20, "memory_bytes": 8 << 30,
         "utilization": 0.001, "running": 0, "waiting": 0},
    ]
    lines = format_lsdev(rows).splitlines()
    assert lines[0].split() == ["NAME", "KIND", "TYPE", "MODEL", "KV_BLOCKS", "MEMORY_MIB", "UTIL", "RUNNING", "WAITING"]
    assert lines[1].split() == ["cpu0", "cpu", "real", "default", "3/64", "17.0", "50.0%", "2", "1"]
    assert lines[2].split() == ["npu0", "npu", "(phone)", "emulated", "default-int8", "0/64", "6.0/8192.0", "0.1%", "0", "0"]


async def test_llmos_lsdev_over_a_socket(capsys):
    path = str(Path(tempfile.mkdtemp(prefix="lsdev", dir="/tmp")) / "k.sock")  # AF_UNIX paths are short
    async with open_kernel(build_config(SystemOptions(devices=["sim", "sim"], kv_blocks=32))) as kernel:
        async with trio.open_nursery() as nursery:
            await nursery.start(kernel.serve_unix, path)
            table = await trio.to_thread.run_sync(main, ["lsdev", "--socket", path])
            table_out = capsys.readouterr().out
            as_json = await trio.to_thread.run_sync(main, ["lsdev", "--socket", path, "--json"])
            rows = json.loads(capsys.readouterr().out)
            nursery.cancel_scope.cancel()
    assert table == 0 and as_json == 0
    assert [line.split()[:3] for line in table_out.splitlines()[1:]] == [["sim0", "sim", "emulated"], ["sim1", "sim", "emulated"]]
    assert [r["kv_blocks_total"] for r in rows] == [32, 32]


def test_bench_dataparallel_two_replicas_nearly_halve_the_time(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    rows = ["arrived_at,num_prefill_tokens,num_decode_tokens"]
    # Requests come in equal pairs, so alternating them over two replicas balances the work.
    rows += [f"{i * 0.5:.1f},{30 + 17 * (i // 2 % 5)},{20 + 7 * (i // 2 % 6)}" for i in range(48)]
    trace.write_text("\n".join(rows) + "\n")
    status = main(["bench", "dataparallel", "--trace", str(trace), "--requests", "48", "--replicas", "2",
                   "--max-seqs", "4", "--kv-blocks", "256", "--json"])
    figures = json.loads(capsys.readouterr().out)
    assert status == 0
    assert list(figures["runs"]) == ["1", "2"]  # one device is always run, as the baseline
    assert figures["speedup"]["1"] == 1.0 and 1.85 < figures["speedup"]["2"] <= 2.0
    assert [d["processes"] for d in figures["runs"]["2"]["devices"].values()] == [24, 24]
    assert figures["runs"]["1"]["generated_tokens"] == figures["runs"]["2"]["generated_tokens"]


def test_bench_dataparallel_rejects_bad_replica_counts(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,10,10\n")
    assert main(["bench", "dataparallel", "--trace", str(trace), "--replicas", "0,x"]) == 2
    assert "EINVAL" in capsys.readouterr().err

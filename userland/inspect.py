"""``llmos ps``, ``uname``, ``meminfo``, ``lsdev`` and ``token``: talk to a running kernel through libllm."""

from __future__ import annotations

import argparse
import json
import sys

from . import libllm

PS_COLUMNS = ("pid", "ppid", "uid", "tenant", "state", "nice", "model", "prompt_tokens", "generated_tokens", "max_tokens")


def format_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    """Rows as an aligned text table, like ps(1)."""
    headers = [c.upper().replace("_TOKENS", "") for c in columns]
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def format_meminfo(devices: list[dict]) -> str:
    """meminfo as free(1) would show it: blocks, swap and the cache's figures per device."""
    lines = [f"{'device':8s} {'total':>7s} {'used':>7s} {'cached':>7s} {'free':>7s} {'swap':>11s} "
             f"{'util':>6s} {'frag':>6s} {'prefix hit':>10s} {'preempt':>8s}"]
    for d in devices:
        lines.append(
            f"{d['device']:8s} {d['blocks_total']:7d} {d['blocks_used']:7d} {d['blocks_cached']:7d} "
            f"{d['blocks_free']:7d} {d['swap_used']:5d}/{d['swap_total']:<5d} {d['utilization']:6.1%} "
            f"{d['fragmentation']:6.1%} {d['prefix_hit_rate']:10.1%} {d['preemptions']:8d}"
        )
    return "\n".join(lines)


def _mib(num_bytes: int | None) -> str:
    return "-" if num_bytes is None else f"{num_bytes / (1 << 20):.1f}"


def format_lsdev(devices: list[dict]) -> str:
    """lsdev as a table: one line per device; emulated devices say so in the TYPE column.

    MEMORY is the device memory in use (weights + KV pool, MiB) over its capacity where the
    driver reports one; UTIL is the device's busy time over the kernel's uptime.
    """
    rows = []
    for d in devices:
        used = (d.get("weight_bytes") or 0) + d["kv_bytes"]
        memory = _mib(used) + (f"/{_mib(d['memory_bytes'])}" if d.get("memory_bytes") else "")
        kind = d["kind"] + (f" ({d['spec']})" if d.get("spec") else "")
        rows.append({
            "name": d["name"], "kind": kind, "type": "emulated" if d["emulated"] else "real", "model": d["model"],
            "kv_blocks": f"{d['kv_blocks_used']}/{d['kv_blocks_total']}", "memory_mib": memory,
            "util": f"{d['utilization']:.1%}", "running": d["running"], "waiting": d["waiting"],
        })
    return format_table(rows, ("name", "kind", "type", "model", "kv_blocks", "memory_mib", "util", "running", "waiting"))


def run_inspect(args: argparse.Namespace) -> int:
    """Entry point of ``llmos ps``, ``uname``, ``meminfo``, ``lsdev`` and ``token``."""
    try:
        with libllm.connect(args.socket) as llm:
            if args.command == "ps":
                rows = llm.ps()
                print(json.dumps(rows) if args.json else format_table(rows, PS_COLUMNS))
            elif args.command in ("meminfo", "free"):
                devices = llm.call("meminfo")["devices"]
                print(json.dumps(devices, indent=2) if args.json else format_meminfo(devices))
            elif args.command == "lsdev":
                devices = llm.lsdev()
                print(json.dumps(devices, indent=2) if args.json else format_lsdev(devices))
            elif args.command == "token":
                print(llm.call("token", tenant=args.tenant)["token"])
            else:
                print(json.dumps(llm.uname(), indent=2))
    except libllm.LLMOSError as exc:
        print(f"llmos {args.command}: {exc.message} ({exc.errno})", file=sys.stderr)
        return 1
    return 0

"""``llmos quota`` and ``llmos usage``: tenant quotas and telemetry of a running kernel (``--home``).

    llmos quota set TENANT [--processes N] [--kv-blocks N] [--tokens-per-s X] [--burst N] [--queue]
                                             (uid 0; -1 removes a limit; --queue: over quota, hold
                                             spawns until they fit instead of refusing them)
    llmos quota get TENANT
    llmos quota list
    llmos usage [--tenant T]                 per tenant: use beside quota; per device: utilization
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import libllm
from .inspect import format_table


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=None, help="the kernel's socket (default $LLMOS_SOCKET or /tmp/llmos.sock)")
    common.add_argument("--json", action="store_true", help="print the reply as JSON")
    return common


def add_quota_arguments(parser: argparse.ArgumentParser) -> None:
    """The actions of ``llmos quota``."""
    common = _common()
    sub = parser.add_subparsers(dest="quota_command", metavar="ACTION")
    sub.required = True
    set_ = sub.add_parser("set", parents=[common], help="set a tenant's limits (uid 0); those not given are kept")
    set_.add_argument("tenant")
    set_.add_argument("--processes", type=int, default=None, help="live processes (-1: no limit)")
    set_.add_argument("--kv-blocks", type=int, default=None, help="KV blocks held over all devices (-1: no limit)")
    set_.add_argument("--tokens-per-s", type=float, default=None, help="generated tokens per second (-1: no limit)")
    set_.add_argument("--burst", type=float, default=None, help="tokens the rate may save up (default: one second's worth)")
    mode = set_.add_mutually_exclusive_group()
    mode.add_argument("--queue", dest="over_quota", action="store_const", const="queue",
                      help="over quota, hold a spawn until it fits")
    mode.add_argument("--refuse", dest="over_quota", action="store_const", const="refuse",
                      help="over quota, refuse a spawn with EAGAIN (the default)")
    sub.add_parser("get", parents=[common], help="one tenant's limits").add_argument("tenant")
    sub.add_parser("list", parents=[common], help="every tenant's limits")


def add_usage_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``llmos usage``."""
    parser.add_argument("--socket", default=None, help="the kernel's socket (default $LLMOS_SOCKET or /tmp/llmos.sock)")
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")
    parser.add_argument("--tenant", default=None, help="one tenant only")


def _limit(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"


def format_quotas(quotas: list[dict[str, Any]]) -> str:
    if not quotas:
        return "no quotas: every tenant is unlimited"
    rows = [{"tenant": q["tenant"], "processes": _limit(q["processes"]), "kv_blocks": _limit(q["kv_blocks"]),
             "tokens_per_s": _limit(q["tokens_per_s"]), "burst": _limit(q["burst"]), "over_quota": q["over_quota"]}
            for q in quotas]
    return format_table(rows, ("tenant", "processes", "kv_blocks", "tokens_per_s", "burst", "over_quota"))


def format_usage(usage: dict[str, Any]) -> str:
    """Tenants (use/quota) then devices, like ``top``'s header."""
    rows = []
    for t in usage["tenants"]:
        q = t.get("quota") or {}
        rows.append({"tenant": t["tenant"], "processes": f"{t['processes']}/{_limit(q.get('processes'))}",
                     "held": t["held"], "kv_blocks": f"{t['kv_blocks']}/{_limit(q.get('kv_blocks'))}",
                     "tokens": t["tokens"], "tokens_per_s": f"{t['tokens_per_s']:.1f}/{_limit(q.get('tokens_per_s'))}",
                     "at_limit": ",".join(t["at_limit"]) or "-"})
    devices = [{"device": d["name"], "util": f"{100 * d['utilization']:.0f}%", "running": d["running"],
                "waiting": d["waiting"], "kv_blocks": f"{d['kv_blocks_used']}/{d['kv_blocks_total']}"}
               for d in usage["devices"]]
    text = format_table(rows, ("tenant", "processes", "held", "kv_blocks", "tokens", "tokens_per_s", "at_limit")) if rows else "no tenants"
    return text + "\n\n" + format_table(devices, ("device", "util", "running", "waiting", "kv_blocks"))


def run_quota(args: argparse.Namespace) -> int:
    """Entry point of ``llmos quota``."""
    action = args.quota_command
    try:
        with libllm.connect(args.socket) as llm:
            if action == "set":
                limits = {"processes": args.processes, "kv_blocks": args.kv_blocks, "tokens_per_s": args.tokens_per_s,
                          "burst": args.burst, "over_quota": args.over_quota}
                result: Any = llm.quota_set(args.tenant, **limits)
            elif action == "get":
                result = llm.quota_get(args.tenant)
            else:
                result = llm.quota_list()
    except libllm.LLMOSError as exc:
        print(f"llmos quota {action}: {exc.message} ({exc.errno})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_quotas(result if action == "list" else [result]))
    return 0


def run_usage(args: argparse.Namespace) -> int:
    """Entry point of ``llmos usage``."""
    try:
        with libllm.connect(args.socket) as llm:
            result = llm.usage(args.tenant)
    except libllm.LLMOSError as exc:
        print(f"llmos usage: {exc.message} ({exc.errno})", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else format_usage(result))
    return 0

"""The resources service: tenant quotas on disk, and the ``usage`` report.

A Minix-style server under the kernel's supervisor. It owns the quota table; the kernel keeps
a cached copy and enforces it (kernel/quotas.py), fetching it at boot and taking each
``set_quota`` reply as the new entry, so enforcement never waits on this server.

State, under ``LLMOS_HOME``, replaced atomically on every change and read on every request,
so an instance the supervisor restarts finds the same table::

    resources/quotas.json     {"version": 1, "quotas": {TENANT: {processes, kv_blocks, ...}}}

Ops: ``set_quota``, ``get_quota``, ``list_quotas``, and ``usage``, which joins the live
figures the kernel sends (per tenant: processes, KV blocks, tokens, tokens/s; per device:
utilization, running, waiting) with each tenant's quota and flags what is at its limit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from llmos.kernel.args import Args
from llmos.kernel.errors import KernelError
from llmos.kernel.server import Server

from .home import llmos_home
from .securefiles import ensure_private_dir, replace_file

STATE_DIR = "resources"
QUOTA_FILE = "quotas.json"
FORMAT_VERSION = 1
MAX_TENANT_CHARS = 128
MAX_PROCESSES = 1 << 20  # sanity bounds of a quota, not limits anyone should reach
MAX_KV_BLOCKS = 1 << 40
MAX_TOKENS_PER_S = 1e12
OVER_QUOTA_MODES = ("refuse", "queue")
LIMITS = ("processes", "kv_blocks", "tokens_per_s", "burst")


class ResourceServer(Server):
    """The resources service; its state lives in ``home`` (default: ``llmos_home()``)."""

    name: ClassVar[str] = "resources"

    def __init__(self, home: Path | None = None) -> None:
        self.home = llmos_home() if home is None else Path(home)
        self.path = self.home / STATE_DIR / QUOTA_FILE

    # -- state -----------------------------------------------------------------------------

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise KernelError("EIO", f"resources: cannot read {self.path}: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION or not isinstance(data.get("quotas"), dict):
            raise KernelError("EIO", f"resources: {self.path} is not a version {FORMAT_VERSION} quota table")
        return data["quotas"]

    def _write(self, quotas: dict[str, dict[str, Any]]) -> None:
        ensure_private_dir(self.path.parent)
        body = json.dumps({"version": FORMAT_VERSION, "quotas": quotas}, indent=2, sort_keys=True)
        replace_file(self.path, body.encode() + b"\n")

    # -- ops -------------------------------------------------------------------------------

    async def do_set_quota(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Set some of a tenant's limits; those not given keep their value.

        Args: tenant; processes, kv_blocks (integers >= 0); tokens_per_s (> 0), burst (>= 1,
        tokens; default one second's worth); over_quota ("refuse" or "queue"). A limit of -1
        removes that limit. Returns the tenant's whole quota as stored.
        """
        a = Args("set_quota", raw, ("tenant", *LIMITS, "over_quota"))
        tenant = _tenant(a)
        quotas = self._read()
        quota = dict(quotas.get(tenant) or {"tenant": tenant, **{key: None for key in LIMITS}, "over_quota": "refuse"})
        for key, hi in (("processes", MAX_PROCESSES), ("kv_blocks", MAX_KV_BLOCKS)):
            if a.has(key):
                value = a.integer(key, lo=-1, hi=hi)
                quota[key] = None if value == -1 else value
        for key, lo in (("tokens_per_s", 0.0), ("burst", 1.0)):
            if a.has(key):
                value = a.number(key, hi=MAX_TOKENS_PER_S)
                if value == -1:
                    quota[key] = None
                elif value < lo or (key == "tokens_per_s" and value == 0):
                    raise KernelError("EINVAL", f"set_quota: {key} must be {'positive' if lo == 0 else f'at least {lo:g}'}, or -1 for no limit")
                else:
                    quota[key] = value
        if a.has("over_quota"):
            mode = a.text("over_quota", max_len=16)
            if mode not in OVER_QUOTA_MODES:
                raise KernelError("EINVAL", f"set_quota: over_quota must be one of {', '.join(OVER_QUOTA_MODES)}, not {mode!r}")
            quota["over_quota"] = mode
        quotas[tenant] = quota
        self._write(quotas)
        return quota

    async def do_get_quota(self, raw: dict[str, Any]) -> dict[str, Any]:
        """One tenant's quota; ENOENT if none was set."""
        tenant = _tenant(Args("get_quota", raw, ("tenant",)))
        quota = self._read().get(tenant)
        if quota is None:
            raise KernelError("ENOENT", f"get_quota: tenant {tenant!r} has no quota (no limits)")
        return quota

    async def do_list_quotas(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Every tenant's quota, by tenant name."""
        Args("list_quotas", raw, ())
        return {"quotas": [quota for _, quota in sorted(self._read().items())]}

    async def do_usage(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The kernel's live figures (``live``) beside each tenant's quota.

        Returns {"tenants": [row + quota + at_limit], "devices": [...]}; ``at_limit`` names the
        resources whose use has reached the quota.
        """
        a = Args("usage", raw, ("tenant", "live"))
        tenant = a.text("tenant", None, max_len=MAX_TENANT_CHARS)
        live = raw.get("live")
        if not isinstance(live, dict) or not isinstance(live.get("tenants"), list) or not isinstance(live.get("devices"), list):
            raise KernelError("EINVAL", "usage: argument 'live' must be a map with lists 'tenants' and 'devices'")
        quotas = self._read()
        rows = {row["tenant"]: dict(row) for row in live["tenants"] if isinstance(row, dict) and "tenant" in row}
        for name in quotas:
            if tenant in (None, name) and name not in rows:
                rows[name] = {"tenant": name, "processes": 0, "held": 0, "kv_blocks": 0, "tokens": 0, "tokens_per_s": 0.0}
        for name, row in rows.items():
            quota = quotas.get(name)
            row["quota"] = quota
            row["at_limit"] = _at_limit(row, quota)
        return {"tenants": [rows[name] for name in sorted(rows)], "devices": live["devices"]}


def _tenant(a: Args) -> str:
    tenant = a.text("tenant", max_len=MAX_TENANT_CHARS)
    if not tenant or not tenant.isprintable():
        raise KernelError("EINVAL", f"{a.op}: the tenant must be a non-empty printable name")
    return tenant


def _at_limit(row: dict[str, Any], quota: dict[str, Any] | None) -> list[str]:
    if quota is None:
        return []
    limits = []
    for key in ("processes", "kv_blocks"):
        if quota.get(key) is not None and row.get(key, 0) >= quota[key]:
            limits.append(key)
    if quota.get("tokens_per_s") is not None and row.get("tokens_per_s", 0.0) >= 0.95 * quota["tokens_per_s"]:
        limits.append("tokens_per_s")
    return limits

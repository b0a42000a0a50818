"""The resources service under a supervisor: quotas on disk survive a restart."""

from __future__ import annotations

import json

import pytest
import trio

from llmos.kernel.errors import KernelError
from llmos.kernel.names import NameServer
from llmos.kernel.supervisor import Supervisor
from llmos.services import securefiles
from llmos.services.resources import ResourceServer


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    monkeypatch.setattr(securefiles, "SYNC", False)


async def test_quotas_persist_across_a_restart_and_bad_input_is_einval(autojump_clock, tmp_path):
    names = NameServer()
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(names, nursery)
        await supervisor.start("resources", lambda: ResourceServer(tmp_path))
        stored = await names.call("resources", "set_quota", {"tenant": "alice", "processes": 2, "tokens_per_s": 5.0})
        assert stored["processes"] == 2 and stored["over_quota"] == "refuse" and stored["kv_blocks"] is None
        supervisor.kill("resources")
        assert (await names.call("resources", "get_quota", {"tenant": "alice"}))["tokens_per_s"] == 5.0
        updated = await names.call("resources", "set_quota", {"tenant": "alice", "processes": -1, "over_quota": "queue"})
        assert updated["processes"] is None and updated["tokens_per_s"] == 5.0 and updated["over_quota"] == "queue"
        assert [q["tenant"] for q in (await names.call("resources", "list_quotas", {}))["quotas"]] == ["alice"]
        assert json.loads((tmp_path / "resources" / "quotas.json").read_text())["quotas"]["alice"]["over_quota"] == "queue"
        for args in ({"tenant": "a", "over_quota": "drop"}, {"tenant": "a", "tokens_per_s": 0}, {"tenant": ""}):
            with pytest.raises(KernelError) as err:
                await names.call("resources", "set_quota", args)
            assert err.value.errno == "EINVAL"
        with pytest.raises(KernelError) as err:
            await names.call("resources", "get_quota", {"tenant": "bob"})
        assert err.value.errno == "ENOENT"
        supervisor.stop_all()

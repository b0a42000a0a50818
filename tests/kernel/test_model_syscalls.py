"""The model syscalls through libllm, in-process, on the sim driver in virtual time.

A kernel here runs the security and models services with their state in a tmp LLMOS_HOME;
checkpoints are tiny real ones (tests/model_fixtures.py). The sim device loads them by their
vocabulary size, so a process spawned on a loaded model samples from that vocabulary.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest
import trio
from model_fixtures import write_checkpoint, write_tokenizer
from sim_fixtures import open_system, sim_config

from llmos.kernel.kernel import open_kernel
from llmos.services import securefiles
from llmos.services.security import SecurityServer
from llmos.userland import libllm

VOCAB = 100  # of the checkpoints here; the boot sim model has 32000


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """A throwaway home: skip fsync (the services are crashed by cancellation, not power cuts)."""
    monkeypatch.setattr(securefiles, "SYNC", False)




def checkpoint(tmp_path: Path, name: str, seed: int = 0) -> Path:
    path = tmp_path / "checkpoints" / name
    write_checkpoint(path, seed=seed, vocab_size=VOCAB)
    return path


def weight_bytes(path: Path) -> int:
    return (path / "model.safetensors").stat().st_size


async def test_model_syscalls_are_enosys_without_the_models_service(autojump_clock, root, tmp_path):
    for op, args in [("model_list", {}), ("model_show", {"name": "tiny"}), ("model_load", {"name": "tiny"}),
                     ("model_import", {"path": str(tmp_path), "name": "tiny"}), ("model_unload", {"name": "tiny"}),
                     ("model_rm", {"name": "tiny"}), ("model_update", {"name": "tiny", "path": str(tmp_path)})]:
        with pytest.raises(libllm.ENOSYS) as err:
            await root.call(op, **args)
        assert "no 'models' service" in err.value.message and "--home" in err.value.message
    assert not list(tmp_path.iterdir())  # nothing was written anywhere


async def test_only_uid_0_may_change_models(autojump_clock, tmp_path):
    source = checkpoint(tmp_path, "tiny")
    async with open_system(tmp_path / "home") as (kernel, root):
        await root.model_import(source, "tiny")
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            for call in (alice.model_import(source, "other"), alice.model_update("tiny", source), alice.model_rm("tiny"),
                         alice.model_load("tiny"), alice.model_unload("tiny")):
                with pytest.raises(libllm.EPERM) as err:
                    await call
                assert "only uid 0" in err.value.message
            assert [m["name"] for m in await alice.model_list()] == ["tiny"]  # reading is for everyone
            assert (await alice.model_show("tiny"))["version"] == "1"
            assert (await alice.model_verify("tiny"))["files"] == 2


async def test_load_then_spawn_on_the_loaded_model_and_unload_rm_refused_while_in_use(autojump_clock, tmp_path):
    source = checkpoint(tmp_path, "tiny")
    async with open_system(tmp_path / "home") as (kernel, root):
        assert (await root.model_import(source, "tiny"))["model"] == "tiny@1"
        loaded = await root.model_load("tiny")
        assert loaded["device"] == "sim0/tiny@1" and loaded["model"] == "tiny@1" and loaded["weight_bytes"] == weight_bytes(source)
        assert (await root.model_load("tiny@1"))["already_loaded"]
        devices = {d["name"]: d for d in await root.lsdev()}
        assert devices["sim0/tiny@1"]["loaded_on"] == "sim0" and devices["sim0"]["model"] == "sim"
        assert (await root.model_list())[0]["loaded"] == ["1"]

        reply = await root.call("spawn", model="tiny", prompt_ids=[1, 2, 3], max_tokens=200, seed=3)
        assert reply["device"] == "sim0/tiny@1"
        with pytest.raises(libllm.EBUSY):
            await root.model_unload("tiny")
        with pytest.raises(libllm.EBUSY):
            await root.model_rm("tiny")
        result = await root.wait(reply["pid"])
        assert result.finish_reason == "length" and len(result.output_ids) == 200
        assert max(result.output_ids) < VOCAB  # sampled from the loaded model's vocabulary
        with pytest.raises(libllm.EINVAL):  # its vocabulary, not the boot model's
            await root.spawn(model="tiny@1", prompt_ids=[VOCAB + 1])

        assert (await root.model_unload("tiny")) == {"unloaded": ["sim0/tiny@1"]}
        with pytest.raises(libllm.ENOENT):
            await root.spawn(model="tiny", prompt_ids=[1])
        assert (await root.model_rm("tiny"))["removed"] == ["1"]
        # Loaded again after an unload: the parked driver is reused.
        await root.model_import(source, "tiny")
        assert (await root.model_load("tiny"))["device"] == "sim0/tiny@1"
        assert (await root.wait(await root.spawn(model="tiny", prompt_ids=[1], max_tokens=4, seed=3))).output_ids == result.output_ids[:4]


async def test_a_model_loaded_on_the_cpu_computes_what_the_checkpoint_booted_directly_computes(tmp_path):
    source = tmp_path / "checkpoints" / "coder"
    write_checkpoint(source, seed=5, vocab_size=512)
    write_tokenizer(source, vocab_size=512)
    async with open_kernel(sim_config(device="cpu", model=str(source))) as kernel, libllm.open_client(kernel) as llm:
        direct = (await llm.wait(await llm.spawn("def main():", max_tokens=6, temperature=0))).output_ids
    async with open_system(tmp_path / "home", device="cpu") as (kernel, root):
        await root.model_import(source, "coder")
        assert (await root.model_load("coder"))["device"] == "cpu0/coder@1"
        reply = await root.call("spawn", model="coder", prompt="def main():", max_tokens=6, temperature=0)
        assert reply["device"] == "cpu0/coder@1"
        assert (await root.wait(reply["pid"])).output_ids == direct


async def test_update_new_processes_get_the_new_version_running_ones_keep_theirs(autojump_clock, tmp_path):
    async with open_system(tmp_path / "home") as (kernel, root):
        await root.model_import(checkpoint(tmp_path, "v1"), "tiny")
        await root.model_load("tiny")
        old = await root.call("spawn", model="tiny", prompt_ids=[1, 2], max_tokens=200, seed=1)
        assert (await root.model_update("tiny", checkpoint(tmp_path, "v2", seed=1)))["model"] == "tiny@2"
        assert (await root.model_load("tiny"))["device"] == "sim0/tiny@2"
        new = await root.call("spawn", model="tiny", prompt_ids=[1, 2], max_tokens=4, seed=1)
        assert new["device"] == "sim0/tiny@2"
        assert (await root.stat(old["pid"]))["device"] == "sim0/tiny@1"
        assert [m["loaded"] for m in await root.model_list()] == [["1", "2"]]
        assert (await root.wait(old["pid"])).finish_reason == "length"
        assert (await root.wait(new["pid"])).finish_reason == "length"


async def test_one_changed_byte_in_a_weight_file_refuses_the_load_with_eacces_naming_the_file(autojump_clock, tmp_path):
    home = tmp_path / "home"
    async with open_system(home) as (kernel, root):
        await root.model_import(checkpoint(tmp_path, "tiny"), "tiny")
        weights = home / "models" / "tiny" / "1" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
        with pytest.raises(libllm.EACCES) as err:
            await root.model_load("tiny")
        assert "model.safetensors" in err.value.message and "tiny@1" in err.value.message
        assert [d["name"] for d in await root.lsdev()] == ["sim0"]
        assert (await root.model_list())[0]["loaded"] == []


async def test_residency_unloads_idle_models_lru_first_and_never_one_in_use(autojump_clock, tmp_path):
    sources = {name: checkpoint(tmp_path, name, seed) for seed, name in enumerate("abc")}
    size = weight_bytes(sources["a"])
    async with open_system(tmp_path / "home", model_memory=2 * size + size // 2) as (kernel, root):  # room for two
        for name, source in sources.items():
            await root.model_import(source, name)
        assert (await root.model_load("a"))["evicted"] == []
        assert (await root.model_load("b"))["evicted"] == []
        await root.wait(await root.spawn(model="a", prompt_ids=[1], max_tokens=2))  # a used after b's load
        assert (await root.model_load("c"))["evicted"] == ["b@1"]  # the least recently used
        on_c = await root.spawn(model="c", prompt_ids=[1], max_tokens=200)
        assert (await root.model_load("b"))["evicted"] == ["a@1"]  # c is in use: the idle one goes
        on_b = await root.spawn(model="b", prompt_ids=[1], max_tokens=200)
        with pytest.raises(libllm.ENOMEM) as err:  # both resident models are in use
            await root.model_load("a")
        assert "never unloaded" in err.value.message and f"pids {on_c}" in err.value.message
        with pytest.raises(libllm.EBUSY):
            await root.model_unload("c")
        assert sorted(d["name"] for d in await root.lsdev()) == ["sim0", "sim0/b@1", "sim0/c@1"]
        for pid in (on_b, on_c):
            await root.kill(pid, "SIGKILL")
            await root.wait(pid)
        assert (await root.model_load("a"))["evicted"] == ["c@1"]  # b was chosen for a process later
        big = tmp_path / "checkpoints" / "big"
        write_checkpoint(big, vocab_size=2000)
        await root.model_import(big, "big")
        with pytest.raises(libllm.ENOMEM) as err:  # more than the whole budget
            await root.model_load("big")
        assert "budget of sim0" in err.value.message
        assert sorted(d["name"] for d in await root.lsdev()) == ["sim0", "sim0/a@1", "sim0/b@1"]  # nothing evicted
        with pytest.raises(libllm.ENOENT):
            await root.model_load("b", device="nosuch")


# -- fault injection ---------------------------------------------------------------------------

KILLS_PER_SERVICE = 100
WAVES = 40  # processes started one after another while the services are being killed
SECURITY_LATENCY_S = 0.05  # virtual time a signature or verification takes, so kills land mid-call


class SlowSecurityServer(SecurityServer):
    """The security service, taking virtual time to sign and verify as hashing a real checkpoint does."""

    async def do_sign_manifest(self, raw: dict[str, Any]) -> dict[str, Any]:
        await trio.sleep(SECURITY_LATENCY_S)
        return await super().do_sign_manifest(raw)

    async def do_verify_manifest(self, raw: dict[str, Any]) -> dict[str, Any]:
        await trio.sleep(SECURITY_LATENCY_S)
        return await super().do_verify_manifest(raw)


async def run_processes(root: libllm.Client, spacing_s: float) -> dict[int, list[int]]:
    """WAVES processes, alternately on the boot model and on the loaded model ``a``: seed -> output."""
    outputs: dict[int, list[int]] = {}
    async with trio.open_nursery() as nursery:
        async def one(seed: int) -> None:
            model = "a" if seed % 2 else "sim"
            pid = await root.spawn(model=model, prompt_ids=[1, 2, seed % VOCAB], max_tokens=64, seed=seed)
            result = await root.wait(pid)
            assert result.finish_reason == "length", result.exit
            outputs[seed] = result.output_ids
        for seed in range(WAVES):
            nursery.start_soon(one, seed)
            await trio.sleep(spacing_s)
    return outputs


async def test_killing_the_models_and_security_services_loses_no_process_output_or_registry_entry(autojump_clock, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="llmos.kernel.kernel")
    async with open_system(tmp_path / "home", security=SlowSecurityServer) as (kernel, root):
        for seed, name in enumerate("abc"):
            await root.model_import(checkpoint(tmp_path, name, seed), name)
        await root.model_update("a", checkpoint(tmp_path, "a2", seed=7))
        await root.model_load("a")
        registry = await root.model_list()
        reference = await run_processes(root, spacing_s=0.0)
        before = kernel.supervisor.restarts()

        injected = {"models": 0, "security": 0}
        survived: dict[str, int] = {}
        done = trio.Event()

        async def kill_services() -> None:
            rng = random.Random(0)
            for index in range(2 * KILLS_PER_SERVICE):
                service = ("models", "security")[index % 2]
                # Every other kill waits for both to be back (so a call needing both can get
                # through); the rest may hit models while it waits on a restarting security.
                for name in injected if index % 4 < 2 else [service]:
                    await kernel.names.wait_ready(name)
                await trio.sleep(rng.uniform(0.0, 0.4))
                kernel.supervisor.kill(service)
                injected[service] += 1
            done.set()

        async def use_models() -> None:
            while not done.is_set():
                for op, call in [("model_list", lambda: root.model_list()), ("model_show", lambda: root.model_show("a@1")),
                                 ("model_verify", lambda: root.model_verify("b")), ("model_load", lambda: root.model_load("c")),
                                 ("model_unload", lambda: root.model_unload("c")),
                                 ("model_import", lambda: root.model_import(tmp_path / "checkpoints" / "b", "b"))]:
                    result = await call()
                    if op == "model_list":
                        assert result == registry
                    survived[op] = survived.get(op, 0) + 1
                    await trio.sleep(0.2)  # virtual time passes only while every task waits

        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_services)
            nursery.start_soon(use_models)
            faulty = await run_processes(root, spacing_s=2.0)  # spread over the faults
        restarts = kernel.supervisor.restarts()
        retried = sum("died during" in r.getMessage() for r in caplog.records)
        print(f"\nfault injection: kills injected {injected}, restarts {dict((s, restarts[s] - before[s]) for s in injected)}, "
              f"model calls survived {sum(survived.values())} ({survived}), of which {retried} met their service dying "
              f"mid-call and were retried; processes {len(faulty)}/{WAVES} with unchanged output")
        assert faulty == reference  # no process lost, every output unchanged
        assert await root.model_list() == registry  # no registry entry lost
        assert all(restarts[s] - before[s] == KILLS_PER_SERVICE for s in injected)
        assert min(survived.values()) >= 10
        assert (await root.model_verify("a"))["model"] == "a@2"


class SlowMintingSecurityServer(SecurityServer):
    """The security service, taking virtual time to mint a process's capabilities."""

    async def do_mint_capabilities(self, raw: dict[str, Any]) -> dict[str, Any]:
        await trio.sleep(1.0)
        return await super().do_mint_capabilities(raw)


async def test_a_spawn_racing_an_unload_never_lands_on_the_unloaded_device(autojump_clock, tmp_path):
    # Spawn awaits the security service (capabilities) after routing: an unload can run then.
    async with open_system(tmp_path / "home", security=SlowMintingSecurityServer) as (kernel, root):
        await root.model_import(checkpoint(tmp_path, "tiny"), "tiny")
        await root.model_load("tiny")
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            outcome: dict[str, Any] = {}

            async def spawn() -> None:
                try:
                    outcome["spawn"] = await alice.spawn(model="tiny", prompt_ids=[1, 2, 3], max_tokens=5)
                except libllm.ENOENT as error:
                    outcome["spawn"] = error

            async with trio.open_nursery() as nursery:
                nursery.start_soon(spawn)
                await trio.lowlevel.checkpoint()
                await trio.lowlevel.checkpoint()
                outcome["unload"] = await root.model_unload("tiny")
            spawned = outcome["spawn"]
            assert isinstance(spawned, libllm.ENOENT) and "unloaded while" in spawned.message
            assert all(p.device in kernel.devices for p in kernel.table)
            await alice.call("ps")  # every process is on a device that exists

"""The security server under the kernel's supervisor: its ops over real messages, and restarts.

Calls go through the name server and encoded messages, as the kernel's would, so argument
types (msgpack bin, maps) are exercised on the wire.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from llmos.kernel.errors import KernelError
from llmos.kernel.names import NameServer
from llmos.kernel.supervisor import Supervisor
from llmos.services import securefiles
from llmos.services import security as security_module
from llmos.services.keys import KeyStore, public_pem
from llmos.services.manifest import MANIFEST_FILE
from llmos.services.security import SecurityServer

NAME = "security"


@asynccontextmanager
async def open_security(home: Path) -> AsyncIterator[tuple[Supervisor, NameServer]]:
    """A supervised SecurityServer bound as ``security``; stopped when the block ends."""
    names = NameServer()
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(names, nursery)
        await supervisor.start(NAME, lambda: SecurityServer(home))
        try:
            yield supervisor, names
        finally:
            supervisor.stop_all()


async def call(names: NameServer, op: str, **args: Any) -> Any:
    return await names.call(NAME, op, args)


async def fails(names: NameServer, errno: str, op: str, **args: Any) -> str:
    with pytest.raises(KernelError) as err:
        await call(names, op, **args)
    assert err.value.errno == errno, err.value.message
    return err.value.message


async def restart(supervisor: Supervisor, names: NameServer) -> None:
    supervisor.kill(NAME)
    await names.wait_ready(NAME)


async def event_types(names: NameServer, count: int = 1000) -> list[str]:
    return [entry["event"]["type"] for entry in await call(names, "audit_tail", count=count)]


async def test_manifest_ops_sign_verify_and_refuse_a_changed_weight_file(home, model_dir, monkeypatch):
    monkeypatch.setattr(securefiles, "SYNC", True)  # the real, durable path once
    async with open_security(home) as (_, names):
        signed = await call(names, "sign_manifest", path=str(model_dir), name="tiny", version="1")
        assert signed["file"] == str(model_dir / MANIFEST_FILE)
        result = await call(names, "verify_manifest", path=str(model_dir))
        assert result == {"name": "tiny", "version": "1", "key_id": signed["key_id"], "files": 4,
                          "bytes": sum(f["bytes"] for f in signed["manifest"]["manifest"]["files"])}
        assert (await call(names, "verify_manifest", path=str(model_dir), manifest=signed["manifest"]))["files"] == 4
        weights = model_dir / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[123_456] ^= 0xFF
        weights.write_bytes(bytes(data))
        message = await fails(names, "EACCES", "verify_manifest", path=str(model_dir))
        assert "model.safetensors" in message
        types = await event_types(names)
        assert types[:3] == ["security.key_created", "security.master_key_created", "security.started"]
        assert types[3:] == ["security.manifest_signed", "security.manifest_verified", "security.manifest_verified",
                             "security.manifest_refused"]
        assert (await call(names, "audit_verify"))["entries"] == len(types)


async def test_a_manifest_signed_by_an_untrusted_key_is_refused_until_its_key_is_trusted(home, tmp_path, model_dir):
    stranger_home = tmp_path / "stranger"
    async with open_security(stranger_home) as (_, stranger):
        envelope = (await call(stranger, "sign_manifest", path=str(model_dir), name="tiny", version="1", write=False))["manifest"]
    async with open_security(home) as (_, names):
        message = await fails(names, "EACCES", "verify_manifest", path=str(model_dir), manifest=envelope)
        assert "signed by an untrusted key" in message
        await fails(names, "ENOENT", "verify_manifest", path=str(model_dir))  # write=False: no file
        pem = public_pem(KeyStore(stranger_home).public_key).decode()
        trusted = await call(names, "trust_key", pem=pem)
        assert trusted["new"] and trusted["key_id"] == envelope["signature"]["key_id"]
        assert (await call(names, "verify_manifest", path=str(model_dir), manifest=envelope))["key_id"] == trusted["key_id"]
        listed = await call(names, "list_keys")
        assert {k["key_id"] for k in listed["keys"]} == {listed["local"], trusted["key_id"]}
        assert "security.manifest_refused" in await event_types(names)


async def test_capabilities_over_the_wire_refuse_another_pid_and_stay_revoked_after_a_restart(home, autojump_clock):
    async with open_security(home) as (supervisor, names):
        minted = await call(names, "mint_capability", pid=7, kind="model", name="tiny", rights=["load"])
        handle = minted["handle"]
        checked = await call(names, "check_capability", handle=handle, pid=7, kind="model", name="tiny", right="load")
        assert checked["cap_id"] == minted["cap_id"]
        assert "belongs to pid 7" in await fails(names, "EPERM", "check_capability", handle=handle, pid=8, kind="model", name="tiny", right="load")
        await restart(supervisor, names)
        assert (await call(names, "check_capability", handle=handle, pid=7, kind="model", name="tiny", right="load"))["pid"] == 7
        assert (await call(names, "revoke_capability", handle=handle))["cap_id"] == minted["cap_id"]
        await restart(supervisor, names)
        assert "revoked" in await fails(names, "EPERM", "check_capability", handle=handle, pid=7, kind="model", name="tiny", right="load")
        other = (await call(names, "mint_capability", pid=9, kind="model", name="tiny", rights=["load"]))["handle"]
        assert await call(names, "revoke_pid", pid=9) == {"pid": 9, "new": True}
        await restart(supervisor, names)
        await fails(names, "EPERM", "check_capability", handle=other, pid=9, kind="model", name="tiny", right="load")
        await call(names, "new_epoch")
        assert "earlier boot" in await fails(names, "EPERM", "check_capability", handle=handle, pid=7, kind="model", name="tiny", right="load")
        types = await event_types(names)
        for expected in ("security.capability_minted", "security.capability_refused", "security.capability_revoked",
                         "security.pid_revoked", "security.epoch_started"):
            assert expected in types
        assert types.count("security.started") == 4 and supervisor.restarts()[NAME] == 3


async def test_encrypt_and_decrypt_carry_binary_data_and_a_flipped_byte_is_eio(home, autojump_clock):
    async with open_security(home) as (supervisor, names):
        blob = await call(names, "encrypt", tenant="alice", data=b"\x00kv bytes\xff", aad=b"pid 7")
        assert isinstance(blob, bytes) and b"kv bytes" not in blob
        await restart(supervisor, names)
        assert await call(names, "decrypt", tenant="alice", data=blob, aad=b"pid 7") == b"\x00kv bytes\xff"
        flipped = bytes([blob[0] ^ 1]) + blob[1:]
        assert "failed authentication" in await fails(names, "EIO", "decrypt", tenant="alice", data=flipped, aad=b"pid 7")
        await fails(names, "EIO", "decrypt", tenant="bob", data=blob, aad=b"pid 7")
        assert (await event_types(names))[-1] == "security.decrypt_refused"


async def test_audit_ops_append_tail_and_detect_an_edited_entry(home, autojump_clock):
    async with open_security(home) as (_, names):
        appended = await call(names, "audit_append", event={"type": "kernel.spawn", "pid": 7})
        assert (await call(names, "audit_tail", count=1))[0]["index"] == appended["index"]
        assert "written only by the security service" in await fails(names, "EPERM", "audit_append", event={"type": "security.key_created"})
        log = home / "audit" / "audit.jsonl"
        log.write_bytes(log.read_bytes().replace(b'"pid":7', b'"pid":8'))
        assert f"at entry {appended['index']}" in await fails(names, "EIO", "audit_verify")


async def test_bad_requests_get_errors_and_never_crash_the_server(home, model_dir, autojump_clock):
    ops = ["sign_manifest", "verify_manifest", "trust_key", "list_keys", "mint_capability", "mint_capabilities", "check_capability",
           "revoke_capability", "revoke_pid", "audit_append", "audit_verify", "audit_tail", "encrypt", "decrypt",
           "new_epoch_typo", "ping"]
    fields = ["path", "name", "version", "write", "manifest", "pem", "pid", "kind", "rights", "grants", "handle", "right",
              "event", "count", "tenant", "data", "aad", "bogus"]
    unreadable = model_dir.parent / "unreadable"
    unreadable.mkdir(mode=0o000)
    values = [None, 0, -1, 2**40, 1.5, True, "", "x", "model", str(unreadable), str(model_dir / "config.json"),
              str(model_dir), str(model_dir.parent / "nowhere"), "relative/path", "../x", b"",
              b"\x00" * 40, [], ["load"], [1], {}, {"type": "t"}, {"manifest": {}, "signature": {}}, "-----BEGIN PUBLIC KEY-----",
              [{"kind": "model", "name": "x", "rights": ["run"]}], [{"kind": 1}], [{}], ["x"]]
    rng = random.Random(8)
    async with open_security(home) as (supervisor, names):
        errors = set()
        for _ in range(400):
            op = rng.choice(ops)
            args = {rng.choice(fields): rng.choice(values) for _ in range(rng.randint(0, 4))}
            try:
                await call(names, op, **args)
            except KernelError as error:
                errors.add((op, error.errno))
        assert supervisor.restarts()[NAME] == 0
        errnos = {errno for _, errno in errors}
        assert {"EINVAL", "ENOSYS"} <= errnos
        assert {op for op, errno in errors if errno == "EIO"} <= {"decrypt"}  # only a failed authentication
        assert ("sign_manifest", "EACCES") in errors or os.geteuid() == 0  # root reads any directory
        assert (await call(names, "audit_verify"))["entries"] >= 3


async def test_a_process_set_of_capabilities_is_minted_in_one_call_and_one_audit_entry(home, autojump_clock):
    async with open_security(home) as (_, names):
        before = (await call(names, "audit_verify"))["entries"]
        grants = [{"kind": "model", "name": "tiny", "rights": ["run", "fork"]}, {"kind": "priority", "name": "0", "rights": ["renice"]}]
        reply = await call(names, "mint_capabilities", pid=7, grants=grants)
        assert len(reply["handles"]) == len(set(reply["cap_ids"])) == 2
        assert (await call(names, "audit_verify"))["entries"] == before + 1
        cap = await call(names, "check_capability", handle=reply["handles"][1], pid=7, kind="priority", name="0", right="renice")
        assert cap["pid"] == 7
        await fails(names, "EPERM", "check_capability", handle=reply["handles"][0], pid=8, kind="model", name="tiny", right="run")
        for bad in ([], [{"kind": "model"}], ["x"], [{"kind": "Model", "name": "x", "rights": ["run"]}] , None):
            await fails(names, "EINVAL", "mint_capabilities", pid=7, grants=bad)


async def test_a_private_key_readable_by_others_makes_every_op_eacces_with_a_sentence(home, autojump_clock):
    KeyStore(home).private_path.chmod(0o644)
    async with open_security(home) as (supervisor, names):
        assert await call(names, "ping") == "pong"
        message = await fails(names, "EACCES", "mint_capability", pid=1, kind="model", name="x", rights=["load"])
        assert "chmod 600" in message
        assert supervisor.restarts()[NAME] == 0  # no crash loop: the reason reaches the caller


async def test_large_checkpoints_are_hashed_in_a_worker_thread(home, model_dir, monkeypatch):
    monkeypatch.setattr(security_module, "INLINE_HASH_BYTES", 0)
    async with open_security(home) as (_, names):
        await call(names, "sign_manifest", path=str(model_dir), name="tiny", version="1")
        assert (await call(names, "verify_manifest", path=str(model_dir)))["files"] == 4
        await fails(names, "EINVAL", "verify_manifest", path="relative/dir")


async def test_killed_100_times_while_a_client_keeps_calling_it_loses_no_state(home, autojump_clock, capsys):
    """Fault injection: kill the server 100 times at random points of a client's call stream.

    The client retries after EIO/ETIMEDOUT, as a client re-binding by name does. Afterwards
    every acknowledged capability still verifies (or stays revoked), every acknowledged audit
    entry is in the log, the chain verifies, and the keys are unchanged.
    """
    rng = random.Random(20240508)
    stats = {"injected": 0, "survived": 0, "calls": 0, "retried": 0}
    minted: dict[str, int] = {}  # acknowledged handle -> pid
    revoked: set[str] = set()
    appended: list[tuple[int, dict]] = []  # acknowledged (index, event)
    sealed: list[tuple[str, bytes, bytes]] = []  # (tenant, plaintext, blob)
    keys_dir = home / "keys"
    async with open_security(home) as (supervisor, names):
        local_before = (await call(names, "list_keys"))["local"]
        secrets_before = [(keys_dir / f).read_bytes() for f in ("local.key", "local.pub", "master.key")]
        killer_done = trio.Event()

        async def retrying(op: str, **args: Any) -> Any:
            while True:
                stats["calls"] += 1
                try:
                    return await call(names, op, **args)
                except KernelError as error:
                    if error.errno not in ("EIO", "ETIMEDOUT"):
                        raise
                    stats["retried"] += 1

        async def refused(op: str, **args: Any) -> None:
            with pytest.raises(KernelError) as err:
                await retrying(op, **args)
            assert err.value.errno == "EPERM", err.value.message

        async def killer() -> None:
            for _ in range(100):
                await names.wait_ready(NAME)
                for _ in range(rng.randint(0, 40)):  # land anywhere in the client's next calls
                    await trio.lowlevel.checkpoint()
                supervisor.kill(NAME)
                stats["injected"] += 1
                await names.wait_ready(NAME)
                if await call(names, "ping") == "pong":
                    stats["survived"] += 1
            killer_done.set()

        async def client() -> None:
            step = 0
            while not killer_done.is_set():
                step += 1
                pid = 100 + step % 13
                minted[(await retrying("mint_capability", pid=pid, kind="model", name="tiny", rights=["load"]))["handle"]] = pid
                handle = rng.choice(sorted(minted))
                if handle in revoked:
                    await refused("check_capability", handle=handle, pid=minted[handle], kind="model", name="tiny", right="load")
                else:
                    await retrying("check_capability", handle=handle, pid=minted[handle], kind="model", name="tiny", right="load")
                if step % 4 == 0:
                    await retrying("revoke_capability", handle=handle)
                    revoked.add(handle)
                event = {"type": "test.step", "step": step}
                appended.append(((await retrying("audit_append", event=event))["index"], event))
                plaintext = rng.randbytes(64)
                tenant = f"tenant-{step % 3}"
                sealed.append((tenant, plaintext, await retrying("encrypt", tenant=tenant, data=plaintext)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            nursery.start_soon(client)

        assert stats["injected"] == 100 and supervisor.restarts()[NAME] == 100
        assert stats["survived"] == 100 and stats["retried"] > 0
        for handle, pid in minted.items():
            if handle in revoked:
                await fails(names, "EPERM", "check_capability", handle=handle, pid=pid, kind="model", name="tiny", right="load")
            else:
                await call(names, "check_capability", handle=handle, pid=pid, kind="model", name="tiny", right="load")
        for tenant, plaintext, blob in sealed:
            assert await call(names, "decrypt", tenant=tenant, data=blob) == plaintext
        summary = await call(names, "audit_verify")
        assert (await call(names, "list_keys"))["local"] == local_before
    assert [(keys_dir / f).read_bytes() for f in ("local.key", "local.pub", "master.key")] == secrets_before
    entries = [json.loads(line) for line in (home / "audit" / "audit.jsonl").read_bytes().splitlines()]
    assert len(entries) == summary["entries"]
    for index, event in appended:
        assert entries[index]["event"] == event
    assert sum(e["event"]["type"] == "security.started" for e in entries) == 101
    with capsys.disabled():
        print(f"\nfault injection: injected={stats['injected']} survived={stats['survived']} "
              f"calls={stats['calls']} retried_after_eio={stats['retried']} capabilities={len(minted)} "
              f"revoked={len(revoked)} audit_entries={summary['entries']}")


async def test_a_file_system_error_is_an_errno_reply_not_a_crash(home, model_dir, autojump_clock):
    (model_dir / "dangling.bin").symlink_to(model_dir / "gone")
    async with open_security(home) as (supervisor, names):
        message = await fails(names, "ENOENT", "sign_manifest", path=str(model_dir), name="tiny", version="1")
        assert "dangling.bin" in message or "gone" in message
        assert supervisor.restarts()[NAME] == 0

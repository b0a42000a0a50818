"""The models service under a supervisor, beside a real security service: the registry on disk.

Calls go over encoded messages through a name server, as the kernel's would; the models server
reaches the security server by name through the same name server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from model_fixtures import write_checkpoint
from model_services import call, fails, open_services

from llmos.kernel.errors import KernelError
from llmos.kernel.names import NameServer
from llmos.services.keys import KeyStore, public_pem
from llmos.services.manifest import MANIFEST_FILE


def checkpoint(tmp_path: Path, name: str, seed: int = 0) -> Path:
    path = tmp_path / name
    write_checkpoint(path, seed=seed)
    return path


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


async def test_import_list_show_and_the_registry_survives_a_restart(autojump_clock, home, tmp_path):
    source = checkpoint(tmp_path, "src")
    async with open_services(home) as (supervisor, names):
        imported = await call(names, "import", path=str(source), name="tiny")
        assert imported["model"] == "tiny@1" and imported["files"] == 2 and not imported["existing"]
        stored = home / "models" / "tiny" / "1"
        assert (stored / MANIFEST_FILE).is_file() and (stored / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
        listed = await call(names, "list")
        assert listed == {"models": [{"name": "tiny", "versions": ["1"], "newest": "1", "loaded": [],
                                      "bytes": imported["bytes"]}]}
        shown = await call(names, "show", name="tiny")
        assert shown["version"] == "1" and shown["versions"] == ["1"] and shown["key_id"] == imported["key_id"]
        assert shown["config"]["vocab_size"] == 128 and shown["config"]["num_hidden_layers"] == 2
        assert [f["path"] for f in shown["files"]] == ["config.json", "model.safetensors"]
        assert shown["files"][1]["bytes"] == (source / "model.safetensors").stat().st_size
        assert shown["source"] == str(source) and not shown["loaded"]
        assert (await call(names, "verify", name="tiny@1"))["files"] == 2

        supervisor.kill("models")  # a new instance reads the same store
        assert (await call(names, "list")) == listed
    async with open_services(home) as (_, names):  # and so does a new boot
        assert (await call(names, "show", name="tiny@1"))["key_id"] == imported["key_id"]


async def test_import_is_idempotent_on_content_and_refuses_a_name_taken_by_other_content(autojump_clock, home, tmp_path):
    async with open_services(home) as (_, names):
        first = await call(names, "import", path=str(checkpoint(tmp_path, "a")), name="tiny")
        again = await call(names, "import", path=str(checkpoint(tmp_path, "a-copy")), name="tiny")
        assert again["existing"] and again["version"] == "1" and again["key_id"] == first["key_id"]
        message = await fails(names, "EEXIST", "import", path=str(checkpoint(tmp_path, "b", seed=1)), name="tiny")
        assert "update" in message
        assert (await call(names, "list"))["models"][0]["versions"] == ["1"]
        assert not [p for p in (home / "models").iterdir() if p.name.startswith(".")]  # no staging left


async def test_update_makes_a_new_version_and_load_without_a_version_takes_the_newest(autojump_clock, home, tmp_path):
    async with open_services(home) as (_, names):
        await call(names, "import", path=str(checkpoint(tmp_path, "v1")), name="tiny")
        updated = await call(names, "update", name="tiny", path=str(checkpoint(tmp_path, "v2", seed=1)))
        assert updated["model"] == "tiny@2" and not updated["existing"]
        assert (await call(names, "update", name="tiny", path=str(tmp_path / "v2")))["model"] == "tiny@2"  # no change
        assert (await call(names, "show", name="tiny"))["versions"] == ["1", "2"]
        loaded = await call(names, "load", name="tiny", holder="kernel-a")
        assert loaded["model"] == "tiny@2" and loaded["path"] == str(home / "models" / "tiny" / "2")
        assert loaded["weight_bytes"] == (tmp_path / "v2" / "model.safetensors").stat().st_size
        assert (await call(names, "load", name="tiny@1", holder="kernel-a"))["model"] == "tiny@1"
        assert (await call(names, "list"))["models"][0]["loaded"] == ["1", "2"]
        await fails(names, "ENOENT", "update", name="other", path=str(tmp_path / "v2"))
        await fails(names, "ENOENT", "show", name="tiny@3")


async def test_rm_is_refused_with_ebusy_while_a_version_is_loaded(autojump_clock, home, tmp_path):
    async with open_services(home) as (supervisor, names):
        await call(names, "import", path=str(checkpoint(tmp_path, "v1")), name="tiny")
        await call(names, "update", name="tiny", path=str(checkpoint(tmp_path, "v2", seed=1)))
        await call(names, "load", name="tiny@2", holder="kernel-a")
        supervisor.kill("models")  # pins are on disk too
        assert "tiny@2" in await fails(names, "EBUSY", "rm", name="tiny")
        await fails(names, "EBUSY", "rm", name="tiny@2")
        assert (await call(names, "rm", name="tiny@1")) == {"name": "tiny", "removed": ["1"]}
        assert (await call(names, "unload", name="tiny@2", holder="kernel-a"))["unpinned"]
        assert (await call(names, "rm", name="tiny")) == {"name": "tiny", "removed": ["2"]}
        assert (await call(names, "list")) == {"models": []}
        assert "no model named 'tiny'" in await fails(names, "ENOENT", "rm", name="tiny")
        assert not list((home / "models").glob("tiny*"))


async def test_release_drops_every_pin_of_a_holder(autojump_clock, home, tmp_path):
    async with open_services(home) as (_, names):
        await call(names, "import", path=str(checkpoint(tmp_path, "v1")), name="tiny")
        await call(names, "load", name="tiny", holder="kernel-a")
        assert (await call(names, "release", holder="kernel-a")) == {"released": ["tiny@1"]}
        await call(names, "rm", name="tiny")


async def test_one_changed_byte_in_a_weight_file_makes_verify_and_load_eacces_naming_the_file(autojump_clock, home, tmp_path):
    async with open_services(home) as (_, names):
        await call(names, "import", path=str(checkpoint(tmp_path, "v1")), name="tiny")
        flip_byte(home / "models" / "tiny" / "1" / "model.safetensors", 5000)
        message = await fails(names, "EACCES", "verify", name="tiny")
        assert "tiny@1" in message and "model.safetensors" in message
        assert "model.safetensors" in await fails(names, "EACCES", "load", name="tiny", holder="kernel-a")
        assert (await call(names, "list"))["models"][0]["loaded"] == []  # a refused load pins nothing


async def test_a_manifest_signed_by_an_untrusted_key_is_refused(autojump_clock, home, tmp_path):
    stranger = tmp_path / "stranger-home"
    async with open_services(home) as (_, names):
        await call(names, "import", path=str(checkpoint(tmp_path, "v1")), name="tiny")
    stored = home / "models" / "tiny" / "1"
    async with open_services(stranger) as (_, other):
        # Someone re-signs the stored files with a key this home does not trust.
        signed = await other.call("security", "sign_manifest", {"path": str(stored), "name": "tiny", "version": "1"})
    assert json.loads((stored / MANIFEST_FILE).read_text())["signature"]["key_id"] == signed["key_id"]
    async with open_services(home) as (_, names):
        message = await fails(names, "EACCES", "load", name="tiny", holder="kernel-a")
        assert "untrusted key" in message and "tiny@1" in message
        await fails(names, "EACCES", "verify", name="tiny")
        await names.call("security", "trust_key", {"pem": public_pem(KeyStore(stranger).public_key).decode()})
        assert (await call(names, "verify", name="tiny"))["key_id"] == signed["key_id"]


async def test_a_manifest_of_another_model_copied_over_is_refused(autojump_clock, home, tmp_path):
    async with open_services(home) as (_, names):
        await call(names, "import", path=str(checkpoint(tmp_path, "a")), name="tiny")
        await call(names, "import", path=str(checkpoint(tmp_path, "a-again")), name="twin")  # same files
        twin = home / "models" / "twin" / "1" / MANIFEST_FILE
        (home / "models" / "tiny" / "1" / MANIFEST_FILE).write_bytes(twin.read_bytes())
        assert "signed for twin@1" in await fails(names, "EACCES", "verify", name="tiny")


async def test_a_models_server_killed_mid_import_leaves_no_entry_and_the_retry_works(autojump_clock, home, tmp_path):
    names_ref: list[NameServer] = []
    stall = trio.Event()

    async def slow_security(op: str, args: dict[str, Any]) -> Any:
        if op == "sign_manifest" and not stall.is_set():
            await trio.sleep_forever()  # killed here, with a staging copy on disk
        return await names_ref[0].call("security", op, args)

    source = checkpoint(tmp_path, "v1")
    async with open_services(home, slow_security) as (supervisor, names):
        names_ref.append(names)
        async with trio.open_nursery() as nursery:
            async def doomed_import() -> None:
                with pytest.raises(KernelError) as err:
                    await call(names, "import", path=str(source), name="tiny")
                assert err.value.errno == "EIO"
            nursery.start_soon(doomed_import)
            await trio.sleep(1)
            assert [p.name for p in (home / "models").iterdir() if p.name.startswith(".staging-")]
            supervisor.kill("models")
        stall.set()
        assert (await call(names, "list")) == {"models": []}
        assert not [p for p in (home / "models").iterdir() if p.name.startswith(".")]  # cleared at restart
        assert (await call(names, "import", path=str(source), name="tiny"))["model"] == "tiny@1"


@pytest.mark.parametrize("args, errno, fragment", [
    ({"path": "relative/dir", "name": "tiny"}, "EINVAL", "absolute"),
    ({"path": "/nonexistent/dir", "name": "tiny"}, "ENOENT", "does not exist"),
    ({"path": "/tmp", "name": "../etc"}, "EINVAL", "not a model name"),
    ({"path": "/tmp", "name": "tiny@2"}, "EINVAL", "without a version"),
    ({"path": "/tmp", "name": "tiny", "colour": 1}, "EINVAL", "unknown argument"),
])
async def test_import_rejects_bad_arguments(autojump_clock, home, args, errno, fragment):
    async with open_services(home) as (_, names):
        assert fragment in await fails(names, errno, "import", **args)


async def test_import_refuses_a_directory_without_weights(autojump_clock, home, tmp_path):
    source = tmp_path / "no-weights"
    source.mkdir()
    (source / "config.json").write_text("{}")
    async with open_services(home) as (_, names):
        assert "safetensors" in await fails(names, "EINVAL", "import", path=str(source), name="tiny")
        await fails(names, "ENOENT", "show", name="tiny")
        assert "not a version" in await fails(names, "EINVAL", "show", name="tiny@x")

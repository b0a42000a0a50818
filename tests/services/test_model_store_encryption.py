"""An encrypted model store (``import --encrypt``): no plaintext on disk, the same model when loaded.

The checkpoint is the embedded default model (drivers/default_model), as a user would import it.
Store-level tests run the security and models servers under a supervisor, over encoded messages
as the kernel would; the end-to-end one boots a cpu kernel and loads through the model syscalls.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from model_services import call, fails, open_services
from sim_fixtures import sim_config

from llmos.drivers.cpu import DEFAULT_MODEL_DIR, TorchDriver
from llmos.kernel.errors import KernelError
from llmos.kernel.kernel import open_kernel
from llmos.services.manifest import MANIFEST_FILE
from llmos.userland import libllm
from llmos.userland.model_cmd import add_model_arguments, format_result
from llmos.userland.system import add_services

WINDOW = 64  # bytes: no window this long of the original weights may be found on disk
MODEL_FILES = sorted(p.name for p in DEFAULT_MODEL_DIR.iterdir())  # config, generation config, metadata, weights, tokenizer
PROMPT = "def main():"


def grams(data: bytes) -> np.ndarray:
    """(len - 7,) uint64: the 8 bytes at each offset of ``data``."""
    views = np.lib.stride_tricks.sliding_window_view(np.frombuffer(data, dtype=np.uint8), 8)
    return np.ascontiguousarray(views).view(np.uint64).ravel()


class WindowIndex:
    """Finds, exactly and quickly, any ``WINDOW``-byte window of one byte string inside another.

    A shared window holds, at a stored offset that is a multiple of ``STRIDE``, a whole 8-byte
    gram of the original. So the stored bytes' grams at every ``STRIDE``-th offset are looked up
    among all the original's grams (sorted once, numpy), and only matches are compared in full.
    """

    STRIDE = 32  # at most WINDOW - 8 + 1, so that every window holds a sampled gram whole

    def __init__(self, original: bytes) -> None:
        self.original = original
        every = grams(original)
        self.order = np.argsort(every)  # positions in the original, by gram
        self.ranked = every[self.order]

    def find(self, stored: bytes) -> int | None:
        """The offset in ``stored`` of a window of the original, or None."""
        if min(len(stored), len(self.original)) < WINDOW:
            return None
        offsets = np.arange(0, len(stored) - 7, self.STRIDE)
        sample = grams(stored)[offsets]
        lo, hi = np.searchsorted(self.ranked, sample, "left"), np.searchsorted(self.ranked, sample, "right")
        for k in np.nonzero(hi > lo)[0]:
            for position in self.order[lo[k]:hi[k]]:
                for back in range(self.STRIDE):  # the window may start up to STRIDE - 1 before the gram
                    at, origin = int(offsets[k]) - back, int(position) - back
                    window = stored[at:at + WINDOW] if at >= 0 and origin >= 0 else b""
                    if len(window) == WINDOW and window == self.original[origin:origin + WINDOW]:
                        return at
        return None


@pytest.fixture
def one_thread() -> Iterator[None]:
    """A tiny model on a shared machine gains nothing from intra-op threads (they only spin)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights() -> WindowIndex:
    """The windows of the default model's weights, indexed once."""
    return WindowIndex((DEFAULT_MODEL_DIR / "model.safetensors").read_bytes())


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def assert_no_plaintext_weights(directory: Path, weights: WindowIndex, skip: Path | None = None) -> None:
    for path in files_under(directory):
        if skip is not None and path.is_relative_to(skip):
            continue
        offset = weights.find(path.read_bytes())
        assert offset is None, f"{path} holds plaintext weights at byte {offset}"


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_window_index_finds_a_window_at_any_offset_and_only_a_whole_one(weights):
    noise = np.random.default_rng(0).bytes(5000)
    for at in (0, 1234, 1255, 5000):
        planted = noise[:at] + weights.original[70_001:70_001 + WINDOW] + noise[at:]
        assert weights.find(planted) == at
        almost = noise[:at] + weights.original[70_001:70_001 + WINDOW - 1] + noise[at:]
        assert weights.find(almost) is None


async def test_an_encrypted_import_stores_no_plaintext_and_show_list_verify_say_encrypted(autojump_clock, tmp_path, weights):
    home = tmp_path / "home"
    async with open_services(home) as (_, names):
        imported = await call(names, "import", path=str(DEFAULT_MODEL_DIR), name="secret", encrypt=True)
        plain = await call(names, "import", path=str(DEFAULT_MODEL_DIR), name="plain")
        assert imported["encrypted"] and not plain["encrypted"] and imported["files"] == len(MODEL_FILES)
        assert imported["bytes"] == plain["bytes"]  # sizes are of the plaintext

        stored = home / "models" / "secret" / "1"
        assert sorted(p.name for p in stored.iterdir() if not p.name.startswith(".")) == sorted([*MODEL_FILES, MANIFEST_FILE])
        assert_no_plaintext_weights(stored, weights)
        assert weights.find((home / "models" / "plain" / "1" / "model.safetensors").read_bytes()) == 0  # it would see them
        for name in MODEL_FILES:  # every file sealed, none left as it was
            assert (stored / name).read_bytes() != (DEFAULT_MODEL_DIR / name).read_bytes()
            assert (stored / name).read_bytes().startswith(b"LLMOSMF1")
        # The manifest is over the plaintext: the same file table as the plain store's, signed.
        assert (await call(names, "show", name="secret"))["files"] == (await call(names, "show", name="plain"))["files"]

        shown = await call(names, "show", name="secret")
        assert shown["encrypted"] is True and shown["config"]["vocab_size"] == 4096
        assert (await call(names, "show", name="plain"))["encrypted"] is False
        rows = {row["name"]: row for row in (await call(names, "list"))["models"]}
        assert rows["secret"]["encrypted"] is True and "encrypted" not in rows["plain"]
        assert (await call(names, "verify", name="secret"))["files"] == len(MODEL_FILES)

        # Idempotent on content, encryption included.
        again = await call(names, "import", path=str(DEFAULT_MODEL_DIR), name="secret", encrypt=True)
        assert again["existing"] and again["version"] == "1"
        assert "update" in await fails(names, "EEXIST", "import", path=str(DEFAULT_MODEL_DIR), name="secret")
        updated = await call(names, "update", name="plain", path=str(DEFAULT_MODEL_DIR), encrypt=True)
        assert updated["model"] == "plain@2" and updated["encrypted"] and not updated["existing"]
        assert_no_plaintext_weights(home / "models" / "plain" / "2", weights)


async def test_the_load_grant_carries_the_key_and_no_audit_entry_does(autojump_clock, tmp_path):
    home = tmp_path / "home"
    async with open_services(home) as (_, names):
        await call(names, "import", path=str(DEFAULT_MODEL_DIR), name="secret", encrypt=True)
        await call(names, "import", path=str(DEFAULT_MODEL_DIR), name="plain")
        grant = await call(names, "load", name="secret", holder="kernel-a")
        assert grant["encrypted"] and set(grant["sealed"]) == {"key", "sha256"}
        assert sorted(grant["sealed"]["sha256"]) == MODEL_FILES and len(grant["sealed"]["key"]) == 32
        plain = await call(names, "load", name="plain", holder="kernel-a")
        assert not plain["encrypted"] and "sealed" not in plain
        # A key per version: another version's differs; the same version's is the same after a restart.
        other = await names.call("security", "model_key", {"name": "secret", "version": "2"})
        assert other["key"] != grant["sealed"]["key"]
    async with open_services(home) as (_, names):
        assert (await call(names, "load", name="secret", holder="kernel-b"))["sealed"]["key"] == grant["sealed"]["key"]
    audit = b"".join(p.read_bytes() for p in files_under(home / "audit"))
    assert b"model_key_issued" in audit and grant["sealed"]["key"].hex().encode() not in audit


async def test_one_flipped_byte_in_an_encrypted_weight_file_is_refused_at_load_naming_the_file(autojump_clock, tmp_path):
    home = tmp_path / "home"
    async with open_services(home) as (_, names):
        await call(names, "import", path=str(DEFAULT_MODEL_DIR), name="secret", encrypt=True)
        shard = home / "models" / "secret" / "1" / "model.safetensors"
        for offset in (25, shard.stat().st_size // 2, shard.stat().st_size - 1):  # in a nonce, ciphertext, a tag
            flip_byte(shard, offset)
            message = await fails(names, "EACCES", "load", name="secret", holder="kernel-a")
            assert "model.safetensors" in message and "secret@1" in message
            assert "model.safetensors" in await fails(names, "EACCES", "verify", name="secret")
            flip_byte(shard, offset)  # back as it was
        assert (await call(names, "list"))["models"][0]["loaded"] == []  # nothing was pinned
        await call(names, "load", name="secret", holder="kernel-a")


async def test_a_sealed_file_changed_after_verification_is_refused_by_the_driver(tmp_path, one_thread):
    home = tmp_path / "home"
    async with open_services(home) as (_, names):
        await call(names, "import", path=str(DEFAULT_MODEL_DIR), name="secret", encrypt=True)
        grant = await call(names, "load", name="secret", holder="kernel-a")
    driver = TorchDriver()
    try:
        loaded = await driver.do_load_model({"path": grant["path"], "sealed": grant["sealed"]})
        assert loaded["vocab_size"] == 4096 and loaded["tokenizer"]
        flip_byte(Path(grant["path"]) / "model.safetensors", 1000)
        with pytest.raises(KernelError) as err:
            await driver.do_load_model({"path": grant["path"], "sealed": grant["sealed"]})
        assert err.value.errno == "EACCES" and "model.safetensors" in err.value.message
    finally:
        driver.compute.close()


async def test_an_encrypted_version_loads_on_the_cpu_computes_as_the_plain_one_and_writes_no_plaintext(tmp_path, weights, one_thread):
    home = tmp_path / "home"
    config = sim_config(device="cpu")
    add_services(config, home)
    async with open_kernel(config) as kernel, libllm.open_client(kernel, uid=0, tenant="system") as root:
        await root.call("model_import", path=str(DEFAULT_MODEL_DIR), name="plain")
        assert (await root.call("model_import", path=str(DEFAULT_MODEL_DIR), name="secret", encrypt=True))["encrypted"]
        assert (await root.model_load("secret"))["device"] == "cpu0/secret@1"
        await root.model_load("plain")
        outputs = {}
        for model in ("plain", "secret"):
            reply = await root.call("spawn", model=model, prompt=PROMPT, max_tokens=12, temperature=0)
            assert reply["device"] == f"cpu0/{model}@1"
            outputs[model] = (await root.wait(reply["pid"])).output_ids
        assert outputs["secret"] == outputs["plain"] and outputs["plain"]
        text = await root.detokenize(outputs["secret"], model="secret")  # the sealed tokenizer, opened in memory
        assert text and text == await root.detokenize(outputs["plain"], model="plain")
        assert (await root.model_show("secret"))["encrypted"] is True
        # Nothing under the home but the plain store's copy holds the weights in the clear.
        assert_no_plaintext_weights(home, weights, skip=home / "models" / "plain")

        flip_byte(home / "models" / "secret" / "1" / "model.safetensors", 5000)
        await root.model_unload("secret")
        with pytest.raises(libllm.EACCES) as err:
            await root.model_load("secret")
        assert "model.safetensors" in err.value.message and "secret@1" in err.value.message


def test_the_cli_asks_for_encryption_and_says_what_is_encrypted():
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    assert parser.parse_args(["import", "ckpt", "--name", "s", "--encrypt"]).encrypt
    assert not parser.parse_args(["import", "ckpt", "--name", "s"]).encrypt
    assert parser.parse_args(["update", "s", "ckpt", "--encrypt"]).encrypt
    added = {"model": "s@1", "files": 5, "bytes": 2048, "key_id": "ab", "existing": False, "encrypted": True}
    assert format_result("import", added).endswith("stored encrypted")
    rows = [{"name": "s", "versions": ["1"], "newest": "1", "loaded": [], "bytes": 2048, "encrypted": True},
            {"name": "p", "versions": ["1"], "newest": "1", "loaded": [], "bytes": 2048}]
    table = format_result("list", rows).splitlines()
    assert table[0].split()[-1] == "ENCRYPTED" and table[1].split()[-1] == "yes" and table[2].split()[-1] == "-"
    assert "ENCRYPTED" not in format_result("list", rows[1:])

"""The model manager: a registry of models and their versions, with signed manifests.

A Minix-style server under the kernel's supervisor (DESIGN.md, Services). It owns the model
store under ``LLMOS_HOME/models``; the security service signs and verifies what is in it::

    models/                        0700
      NAME/
        1/                         a copy of the imported checkpoint directory, never modified:
          config.json                config.json, *.safetensors, tokenizer.json, ...
          model.safetensors
          llmos-manifest.json        sha256 of every file, signed by the security service
          .llmos-import.json         where it came from and when (metadata, not signed)
        2/                         ``update`` makes the next version; versions count up from 1
                                   (``encrypt``: every model file sealed, see below)
      pins.json                    versions a kernel has loaded: {"holders": {holder: [[name, version]]}}
      .staging-PID-HEX/            an import in progress (removed at start if its process is gone)
      .trash-HEX/                  a removal in progress

The store itself is the registry: a version exists exactly when its directory does, and it
appears whole (copied and signed in a staging directory, then renamed into place) or not at
all. ``pins.json`` is replaced atomically. Every request reads the disk, so an instance the
supervisor restarts finds every model again, and one killed half-way through an import leaves
only a staging directory that the next instance clears.

Ops (``name`` may be ``NAME@VERSION`` where a version is meant; without one the newest):

    import  {path, name, encrypt=false}  copy, sign -> {name, version, key_id, files, bytes, existing, encrypted}
    update  {name, path, encrypt=false}  a new version of an existing model (same reply)
    list    {}                   -> {models: [{name, versions, newest, loaded, bytes}]}, and
                                 ``encrypted: true`` in a row whose newest version is encrypted
    show    {name}               config summary, files, sizes, key id, versions, loaded, encrypted
    rm      {name}               one version or the whole model; EBUSY while a version is loaded
    verify  {name}               the signed manifest against the files: EACCES naming the file
    load    {name, holder}       verify, then pin the version for ``holder`` (a kernel); the grant
                                 (path, and ``sealed`` for an encrypted version) goes to the driver
    unload  {name, holder}       unpin it
    release {holder}             unpin everything ``holder`` pinned (its shutdown)

``import`` and ``update`` are idempotent on content: importing the same files again returns
the version that holds them (``existing: true``), so a kernel may retry one whose reply was
lost when this server was killed. ``import`` of a name that exists with other content is
EEXIST (use ``update``). Whether a version is encrypted counts as content: the same files
imported again with another ``encrypt`` are not the version that holds them.

Encryption at rest (``import``/``update`` with ``encrypt: true``): every model file of the
version is stored sealed with AES-256-GCM (drivers/sealed.py) under the version's own key, which
the security service derives from its master key by HKDF (``model_key``; services/crypto.py
``model_store_key`` says why per version). Files are sealed as they are copied in, so no
plaintext copy is made. The signed manifest still lists the plaintext's sizes and sha256, plus
``encrypted: true``; ``verify`` decrypts in memory to check them. ``load`` then grants the
driver the key and the manifest's sha256 of each file (``sealed``), and the driver decrypts and
checks in memory: an encrypted version's plaintext is never written to disk.

The security service is reached through ``security_call(op, args)``, an async callable: the
kernel wires one that calls the server named "security" (``ServiceLink``); tests pass the
same over an in-process ``NameServer``. A call that fails with EIO (the security server died
mid-call and is being restarted) is retried.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import trio

from llmos.drivers import sealed
from llmos.kernel.args import Args
from llmos.kernel.errors import KernelError
from llmos.kernel.server import Server

from . import manifest as manifests
from .home import holder_alive, llmos_home, pid_alive
from .sealed_manifest import is_encrypted
from .securefiles import absolute_path_arg, ensure_private_dir, os_errors, replace_file

SecurityCall = Callable[[str, dict[str, Any]], Awaitable[Any]]

MAX_PATH_CHARS = 4096
SECURITY_RETRY_S = 60.0  # how long a security call is retried while its server keeps dying (EIO)
INLINE_COPY_BYTES = 8 << 20  # checkpoints smaller than this are copied without a thread
IMPORT_FILE = ".llmos-import.json"
PINS_FILE = "pins.json"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
WEIGHT_SUFFIXES = (".safetensors",)
# config.json keys ``show`` summarises, when present.
CONFIG_SUMMARY_KEYS = (
    "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "torch_dtype",
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")


# -- names and paths ---------------------------------------------------------------------------

def parse_ref(op: str, ref: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME@VERSION`` -> (name, version or None); EINVAL for a malformed one."""
    name, _, version = ref.partition("@")
    if not _NAME.fullmatch(name):
        raise KernelError("EINVAL", f"{op}: {name!r} is not a model name (letters, digits, '.', '_', '-'; "
                                    "at most 128, not starting with '.', '_' or '-')")
    if "@" in ref and not _VERSION.fullmatch(version):
        raise KernelError("EINVAL", f"{op}: {version!r} is not a version (a positive integer, as in {name}@2)")
    return name, (version if "@" in ref else None)


def _source_directory(args: Args) -> Path:
    return absolute_path_arg(args.op, args.text("path", max_len=MAX_PATH_CHARS))


def copy_checkpoint(source: Path, target: Path, key: bytes | None = None) -> int:
    """Copy a checkpoint's model files (not hidden ones, not a manifest) into ``target``.

    With ``key``, each file is sealed under it as it is copied (drivers/sealed.py), so its
    plaintext is never written to the store.

    Returns the bytes copied (of plaintext). Raises ``KernelError`` ENOENT for a missing
    directory, EINVAL for one without config.json or *.safetensors.
    """
    files = manifests.list_model_files(source)
    if "config.json" not in files:
        raise KernelError("EINVAL", f"{source} has no config.json; it is not a Hugging Face-format checkpoint")
    if not any(rel.endswith(WEIGHT_SUFFIXES) for rel in files):
        raise KernelError("EINVAL", f"{source} has no *.safetensors weights")
    copied = 0
    for rel in files:
        destination = target / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        if key is None:
            shutil.copyfile(source / rel, destination)
            copied += destination.stat().st_size
        else:
            copied += sealed.seal_file(source / rel, destination, key, rel)
    return copied


def _file_table(envelope: dict[str, Any]) -> list[tuple[str, int, str]]:
    return sorted((f["path"], f["bytes"], f["sha256"]) for f in envelope["manifest"]["files"])


def _same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two signed manifests hold the same files, stored the same way (plain or encrypted)."""
    return _file_table(a) == _file_table(b) and is_encrypted(a["manifest"]) == is_encrypted(b["manifest"])


def weight_bytes(envelope: dict[str, Any]) -> int:
    """Bytes of the weight files a manifest lists: what loading the model puts in memory."""
    return sum(f["bytes"] for f in envelope["manifest"]["files"] if f["path"].endswith(WEIGHT_SUFFIXES))


# -- the server ---------------------------------------------------------------------------------

class ModelServer(Server):
    """The models service; its store lives in ``home/models`` (default: ``llmos_home()``).

    Args:
        security_call: ``await security_call(op, args)`` calls the security service.
    """

    name: ClassVar[str] = "models"
    blocking_ops: ClassVar[frozenset[str]] = frozenset({"import", "update", "verify", "load", "rm"})

    def __init__(self, home: Path | None, security_call: SecurityCall) -> None:
        self.home = (llmos_home() if home is None else Path(home)).absolute()
        self.store = ensure_private_dir(self.home / "models")
        self._security_call = security_call
        self._lock = trio.Lock()  # one change of the store at a time (import, update, rm, pins)
        self._clear_leftovers()

    def _clear_leftovers(self) -> None:
        """Remove staging directories of imports whose process is gone, and unfinished removals."""
        for entry in self.store.iterdir():
            if entry.name.startswith(TRASH_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.startswith(STAGING_PREFIX):
                pid = entry.name[len(STAGING_PREFIX):].split("-")[0]
                # Our own pid too: the supervisor starts an instance only after the last one died.
                if not pid.isdigit() or int(pid) == os.getpid() or not pid_alive(int(pid)):
                    shutil.rmtree(entry, ignore_errors=True)

    async def _security(self, op: str, args: dict[str, Any]) -> Any:
        """Call the security service, retrying while its server is being restarted (EIO)."""
        give_up_at = trio.current_time() + SECURITY_RETRY_S
        while True:
            try:
                return await self._security_call(op, args)
            except KernelError as error:
                if error.errno != "EIO" or trio.current_time() >= give_up_at:
                    raise

    # -- the store, read from disk on every request --------------------------------------------

    def _versions(self, name: str) -> list[str]:
        """The versions of ``name``, oldest first (empty if there is no such model)."""
        directory = self.store / name
        if not directory.is_dir():
            return []
        found = [e.name for e in directory.iterdir() if _VERSION.fullmatch(e.name) and (e / manifests.MANIFEST_FILE).is_file()]
        return sorted(found, key=int)

    def _names(self) -> list[str]:
        return sorted(e.name for e in self.store.iterdir() if e.is_dir() and _NAME.fullmatch(e.name) and self._versions(e.name))

    def _resolve(self, op: str, ref: str) -> tuple[str, str]:
        """(name, version) of an existing version; ENOENT naming what exists."""
        name, version = parse_ref(op, ref)
        versions = self._versions(name)
        if not versions:
            known = ", ".join(self._names()) or "none"
            raise KernelError("ENOENT", f"{op}: no model named {name!r}; models: {known}")
        if version is None:
            return name, versions[-1]
        if version not in versions:
            raise KernelError("ENOENT", f"{op}: model {name!r} has no version {version}; versions: {', '.join(versions)}")
        return name, version

    def _envelope(self, name: str, version: str) -> dict[str, Any]:
        with os_errors("models"):
            envelope = manifests.read_envelope(self.store / name / version)
        if not isinstance(envelope, dict) or not isinstance(envelope.get("manifest"), dict):
            raise KernelError("EACCES", f"{name}@{version}: its {manifests.MANIFEST_FILE} is not a signed manifest")
        return envelope

    def _pins(self) -> dict[str, list[list[str]]]:
        """holder -> [[name, version]]; holders whose process is gone are dropped."""
        try:
            data = json.loads((self.store / PINS_FILE).read_bytes())
            holders = data["holders"]
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError):
            return {}  # unreadable: nothing is held (rm may then remove a loaded version's files)
        return {h: [list(p) for p in pins] for h, pins in holders.items() if pins and holder_alive(h)}

    def _write_pins(self, pins: dict[str, list[list[str]]]) -> None:
        body = json.dumps({"holders": {h: p for h, p in sorted(pins.items()) if p}}, sort_keys=True).encode()
        replace_file(self.store / PINS_FILE, body)

    def _loaded(self) -> set[tuple[str, str]]:
        return {(name, version) for pins in self._pins().values() for name, version in pins}

    # -- import and update ---------------------------------------------------------------------

    async def do_import(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Copy a checkpoint into the store as NAME version 1 and have it signed (sealed if ``encrypt``)."""
        return await self._add_version("import", raw)

    async def do_update(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Add the next version of an existing model from a checkpoint directory (sealed if ``encrypt``)."""
        return await self._add_version("update", raw)

    async def _add_version(self, op: str, raw: dict[str, Any]) -> dict[str, Any]:
        """import or update: {path, name, encrypt} -> the new (or identical existing) version."""
        args = Args(op, raw, ("path", "name", "encrypt"))
        source = _source_directory(args)
        name, version = parse_ref(op, args.text("name", max_len=256))
        encrypt = args.flag("encrypt", False)
        if version is not None:
            raise KernelError("EINVAL", f"{op}: give a model name without a version; versions are numbered for you")
        async with self._lock:
            versions = self._versions(name)
            if op == "update" and not versions:
                raise KernelError("ENOENT", f"update: no model named {name!r}; import it first")
            version = str(int(versions[-1]) + 1) if versions else "1"
            staging = self.store / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
            try:
                signed = await self._stage(op, source, staging, name, version, encrypt)
                same = [v for v in (versions if op == "import" else versions[-1:])
                        if _same_content(self._envelope(name, v), signed["manifest"])]
                if same:  # these files are already in the store: a retry, or nothing new
                    return self._describe_add(name, same[0], self._envelope(name, same[0]), existing=True)
                if versions and op == "import":
                    raise KernelError("EEXIST", f"import: a model named {name!r} exists (versions {', '.join(versions)}); "
                                                f"use update to add a version")
                # From here to the reply nothing awaits: a kill lands before the rename or after it.
                with os_errors(op):
                    ensure_private_dir(self.store / name)
                    os.rename(staging, self.store / name / version)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
            return self._describe_add(name, version, signed["manifest"], existing=False)

    async def _stage(self, op: str, source: Path, staging: Path, name: str, version: str, encrypt: bool) -> dict[str, Any]:
        """Copy ``source`` into ``staging`` (sealing each file if ``encrypt``) and have it signed there."""
        key = await self._version_key(op, name, version) if encrypt else None
        with os_errors(op):
            staging.mkdir(mode=0o700)
            size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file()) if source.is_dir() else 0
        with os_errors(op):
            if size <= INLINE_COPY_BYTES:
                copy_checkpoint(source, staging, key)
            else:  # not abandoned on cancel: a kill waits for the copy, so instances never overlap
                await trio.to_thread.run_sync(copy_checkpoint, source, staging, key)
            meta = {"source": str(source), "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "op": op}
            (staging / IMPORT_FILE).write_text(json.dumps(meta))
        try:
            return await self._security("sign_manifest", {"path": str(staging), "name": name, "version": version, "write": True,
                                                          "encrypted": encrypt})
        except KernelError as error:
            raise KernelError(error.errno, f"{op}: {name}@{version}: {error.message}") from None

    async def _version_key(self, op: str, name: str, version: str) -> bytes:
        """The key that seals ``name@version`` in an encrypted store (the security service's ``model_key``)."""
        try:
            return bytes((await self._security("model_key", {"name": name, "version": version}))["key"])
        except KernelError as error:
            raise KernelError(error.errno, f"{op}: {name}@{version}: {error.message}") from None

    @staticmethod
    def _describe_add(name: str, version: str, envelope: dict[str, Any], existing: bool) -> dict[str, Any]:
        files = envelope["manifest"]["files"]
        return {"name": name, "version": version, "model": f"{name}@{version}", "key_id": envelope["signature"]["key_id"],
                "files": len(files), "bytes": sum(f["bytes"] for f in files), "existing": existing,
                "encrypted": is_encrypted(envelope["manifest"])}

    # -- reading the registry ------------------------------------------------------------------

    async def do_list(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Every model: its versions, the newest, those loaded, and the newest one's size."""
        Args("list", raw, ())
        loaded = self._loaded()
        rows = []
        for name in self._names():
            versions = self._versions(name)
            envelope = self._envelope(name, versions[-1])
            row = {"name": name, "versions": versions, "newest": versions[-1],
                   "loaded": [v for v in versions if (name, v) in loaded],
                   "bytes": sum(f["bytes"] for f in envelope["manifest"]["files"])}
            if is_encrypted(envelope["manifest"]):  # only then: rows of plain stores stay as they were
                row["encrypted"] = True
            rows.append(row)
        return {"models": rows}

    async def do_show(self, raw: dict[str, Any]) -> dict[str, Any]:
        """One version (the newest unless named): config summary, files and sizes, signer, versions."""
        args = Args("show", raw, ("name",))
        name, version = self._resolve("show", args.text("name", max_len=256))
        envelope = self._envelope(name, version)
        manifest = envelope["manifest"]
        config = manifest["config"]
        try:
            meta = json.loads((self.store / name / version / IMPORT_FILE).read_text())
        except (OSError, ValueError):
            meta = {}
        return {
            "name": name, "version": version, "model": f"{name}@{version}", "versions": self._versions(name),
            "path": str(self.store / name / version), "created": manifest["created"],
            "source": meta.get("source"), "key_id": envelope["signature"]["key_id"],
            "config": {key: config[key] for key in CONFIG_SUMMARY_KEYS if key in config},
            "files": [{"path": f["path"], "bytes": f["bytes"]} for f in manifest["files"]],
            "bytes": manifests.total_bytes(manifest), "weight_bytes": weight_bytes(envelope),
            "loaded": (name, version) in self._loaded(), "encrypted": is_encrypted(manifest),
        }

    async def do_verify(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Check a version's files against its signed manifest; EACCES naming what is wrong."""
        args = Args("verify", raw, ("name",))
        name, version = self._resolve("verify", args.text("name", max_len=256))
        return await self._verify("verify", name, version)

    async def _verify(self, op: str, name: str, version: str) -> dict[str, Any]:
        try:
            result = await self._security("verify_manifest", {"path": str(self.store / name / version)})
        except KernelError as error:
            raise KernelError(error.errno, f"{op}: {name}@{version}: {error.message}") from None
        if (result.get("name"), result.get("version")) != (name, version):
            # A valid manifest of another model copied over this one's: refuse it too.
            raise KernelError("EACCES", f"{op}: {name}@{version}: its manifest is signed for "
                                        f"{result.get('name')}@{result.get('version')}")
        return {**result, "name": name, "version": version, "model": f"{name}@{version}"}

    # -- removal -------------------------------------------------------------------------------

    async def do_rm(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Remove one version (NAME@VERSION) or every version (NAME); EBUSY if one is loaded."""
        args = Args("rm", raw, ("name",))
        ref = args.text("name", max_len=256)
        async with self._lock:
            name, version = parse_ref("rm", ref)
            if version is not None:
                name, version = self._resolve("rm", ref)
            elif not self._versions(name):
                self._resolve("rm", name)  # ENOENT naming the models there are
            doomed = [version] if version is not None else self._versions(name)
            busy = sorted((v for n, v in self._loaded() if n == name and v in doomed), key=int)
            if busy:
                what = ", ".join(f"{name}@{v}" for v in busy)
                raise KernelError("EBUSY", f"rm: {what} {'is' if len(busy) == 1 else 'are'} loaded; unload first (llmos model unload)")
            with os_errors("rm"):
                trash = self.store / f"{TRASH_PREFIX}{secrets.token_hex(6)}"
                if version is None or self._versions(name) == [version]:
                    os.rename(self.store / name, trash)  # the whole model disappears at once
                else:
                    os.rename(self.store / name / version, trash)
            shutil.rmtree(trash, ignore_errors=True)
            return {"name": name, "removed": doomed}

    # -- pins: what a kernel has loaded --------------------------------------------------------

    async def do_load(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Verify a version and pin it for ``holder``: {name, holder} -> where and how big it is.

        The kernel loads the returned ``path`` only after this reply, so what it loads is what
        was signed (the store is private to this server's user). For an encrypted version the
        reply also has ``sealed``: {key, sha256: {path: hex}}, which the kernel passes to the
        driver's ``load_model``; the driver decrypts in memory and checks each file again.
        """
        args = Args("load", raw, ("name", "holder"))
        ref, holder = args.text("name", max_len=256), args.text("holder", max_len=128)
        name, version = self._resolve("load", ref)
        verified = await self._verify("load", name, version)
        envelope = self._envelope(name, version)
        sealed_grant = None
        if is_encrypted(envelope["manifest"]):  # asked before pinning: a failure leaves nothing pinned
            # The key travels in this reply to the kernel and on to the driver. That is acceptable:
            # both are trusted (the driver must hold the plaintext weights anyway), the messages go
            # over in-process channels or a local socket only, and the key opens this version alone.
            sealed_grant = {"key": await self._version_key("load", name, version), "sha256": {f["path"]: f["sha256"] for f in envelope["manifest"]["files"]}}
        async with self._lock:
            if not self._versions(name) or version not in self._versions(name):
                raise KernelError("ENOENT", f"load: {name}@{version} was removed while it was verified")
            pins = self._pins()
            held = pins.setdefault(holder, [])
            if [name, version] not in held:
                held.append([name, version])
                self._write_pins(pins)
        grant = {"name": name, "version": version, "model": f"{name}@{version}", "path": str(self.store / name / version),
                 "key_id": verified["key_id"], "bytes": verified["bytes"], "weight_bytes": weight_bytes(envelope),
                 "config": {key: envelope["manifest"]["config"][key] for key in CONFIG_SUMMARY_KEYS
                            if key in envelope["manifest"]["config"]},
                 "encrypted": sealed_grant is not None}
        if sealed_grant is not None:
            grant["sealed"] = sealed_grant
        return grant

    async def do_unload(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Unpin NAME@VERSION for ``holder``: {name, holder} -> {model, unpinned}."""
        args = Args("unload", raw, ("name", "holder"))
        name, version = parse_ref("unload", args.text("name", max_len=256))
        holder = args.text("holder", max_len=128)
        if version is None:
            raise KernelError("EINVAL", "unload: name the version (NAME@VERSION)")
        async with self._lock:
            pins = self._pins()
            held = pins.get(holder, [])
            unpinned = [name, version] in held
            if unpinned:
                held.remove([name, version])
                self._write_pins(pins)
        return {"model": f"{name}@{version}", "unpinned": unpinned}

    async def do_release(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Unpin everything ``holder`` pinned (the kernel shuts down): {holder} -> {released}."""
        holder = Args("release", raw, ("holder",)).text("holder", max_len=128)
        async with self._lock:
            pins = self._pins()
            released = pins.pop(holder, [])
            if released:
                self._write_pins(pins)
        return {"released": [f"{n}@{v}" for n, v in released]}

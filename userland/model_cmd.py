"""``llmos model``: the model manager of a running kernel (booted with ``--home``), through libllm.

    llmos model import PATH --name NAME [--encrypt]   copy and sign a Hugging Face-format checkpoint (uid 0);
                                            --encrypt stores its files sealed with AES-GCM
    llmos model list                        models, versions, which are loaded
    llmos model show NAME[@VERSION]         config summary, files, sizes, signer
    llmos model verify NAME[@VERSION]       check the files against the signed manifest
    llmos model load NAME[@VERSION] [--device D]   verify and load onto a device (uid 0)
    llmos model unload NAME[@VERSION] [--device D] (uid 0)
    llmos model update NAME PATH [--encrypt]   a new version; running processes keep theirs (uid 0)
    llmos model rm NAME[@VERSION]           (uid 0; refused while loaded)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import libllm
from .inspect import format_table

ENCRYPT_HELP = ("store every file of the version encrypted (AES-256-GCM, a key per version derived from the "
                "home's master key); loading decrypts in the driver's memory only")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The actions of ``llmos model``, each with ``--socket`` and ``--json``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=None, help="the kernel's socket (default $LLMOS_SOCKET or /tmp/llmos.sock)")
    common.add_argument("--json", action="store_true", help="print the reply as JSON")
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION")
    sub.required = True
    imp = sub.add_parser("import", parents=[common], help="copy a Hugging Face-format checkpoint into the store, signed")
    imp.add_argument("path", help="checkpoint directory: config.json, *.safetensors, tokenizer.json")
    imp.add_argument("--name", required=True, help="the model's name")
    imp.add_argument("--encrypt", action="store_true", help=ENCRYPT_HELP)
    sub.add_parser("list", parents=[common], help="models, their versions, which are loaded")
    for action, text in (("show", "one version: config summary, files, sizes, signer"),
                         ("verify", "check a version's files against its signed manifest"),
                         ("rm", "remove a model, or one version (NAME@VERSION); refused while loaded")):
        sub.add_parser(action, parents=[common], help=text).add_argument("name", metavar="NAME[@VERSION]")
    for action, text in (("load", "verify a model and load it onto a device; idle models make room, LRU first"),
                         ("unload", "unload a model loaded with 'load'; refused while a process uses it")):
        one = sub.add_parser(action, parents=[common], help=text)
        one.add_argument("name", metavar="NAME[@VERSION]")
        one.add_argument("--device", default=None, help="the boot device (default: the first)")
    update = sub.add_parser("update", parents=[common], help="add a new version from a checkpoint directory")
    update.add_argument("name")
    update.add_argument("path")
    update.add_argument("--encrypt", action="store_true", help=ENCRYPT_HELP)


def _size(num_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def format_result(action: str, result: Any) -> str:
    """A reply of ``llmos model ACTION`` as lines for a person."""
    if action in ("import", "update"):
        what = "already held" if result["existing"] else ("imported" if action == "import" else "added")
        return (f"{what} {result['model']}: {result['files']} files, {_size(result['bytes'])}, "
                f"signed by key {result['key_id']}" + (", stored encrypted" if result.get("encrypted") else ""))
    if action == "list":
        rows = [{"name": m["name"], "versions": ",".join(m["versions"]), "newest": m["newest"],
                 "loaded": ",".join(m["loaded"]) or "-", "size": _size(m["bytes"]),
                 "encrypted": "yes" if m.get("encrypted") else "-"} for m in result]
        columns = ("name", "versions", "newest", "loaded", "size")
        if any(m.get("encrypted") for m in result):  # the column appears once there is something to say
            columns += ("encrypted",)
        return format_table(rows, columns) if rows else "no models"
    if action == "show":
        lines = [f"model    {result['model']}  (versions {', '.join(result['versions'])}; "
                 f"{'loaded' if result['loaded'] else 'not loaded'})",
                 f"path     {result['path']}", f"source   {result['source']}", f"created  {result['created']}",
                 f"signer   key {result['key_id']}",
                 f"size     {_size(result['bytes'])} ({_size(result['weight_bytes'])} of weights)"]
        if result.get("encrypted"):
            lines.append("stored   encrypted (AES-256-GCM; sizes and sha256 are of the plaintext)")
        lines += [f"config   {key} = {json.dumps(value)}" for key, value in result["config"].items()]
        lines += [f"file     {f['path']}  {_size(f['bytes'])}" for f in result["files"]]
        return "\n".join(lines)
    if action == "verify":
        return (f"{result['model']}: {result['files']} files, {_size(result['bytes'])} match the manifest "
                f"signed by key {result['key_id']}")
    if action == "load":
        if result["already_loaded"]:
            return f"{result['model']} is already loaded on {result['device']}"
        line = f"loaded {result['model']} as device {result['device']} ({_size(result['weight_bytes'])} of weights)"
        return line + (f"; unloaded idle {', '.join(result['evicted'])}" if result["evicted"] else "")
    if action == "unload":
        return f"unloaded {', '.join(result['unloaded'])}"
    if action == "rm":
        removed = result["removed"]
        return f"removed {result['name']}" + (f" version {', '.join(removed)}" if removed else "")
    raise AssertionError(action)


def run_model(args: argparse.Namespace) -> int:
    """Entry point of ``llmos model``."""
    action = args.model_command
    try:
        with libllm.connect(args.socket) as llm:
            if action == "import":
                result: Any = llm.model_import(args.path, args.name, encrypt=args.encrypt)
            elif action == "update":
                result = llm.model_update(args.name, args.path, encrypt=args.encrypt)
            elif action == "list":
                result = llm.model_list()
            elif action in ("load", "unload"):
                result = getattr(llm, f"model_{action}")(args.name, device=args.device)
            else:
                result = getattr(llm, f"model_{action}")(args.name)
    except libllm.LLMOSError as exc:
        print(f"llmos model {action}: {exc.message} ({exc.errno})", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else format_result(action, result))
    return 0

"""The simulator's one exception: an errno name and a sentence, like the kernel's.

``SimError`` subclasses ``KernelError`` so that a cost-model problem raised inside a driver or a
service (say, the sim driver given a bad cost-model spec over IPC) becomes an ordinary error reply
``{"errno": "EINVAL", "message": ...}`` without a translation layer, and a command-line tool can
print ``ERRNO: message`` for it like for any other error.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from llmos.kernel.errors import KernelError

T = TypeVar("T")


class SimError(KernelError):
    """A problem with simulator input a user can fix: a preset name, a config file, a spec.

    Args:
        errno: an errno name (``EINVAL``, ``ENOENT``, ...), available as ``.errno``.
        message: a sentence naming what was wrong, available as ``.message``.
    """


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``what`` names the file's role in error messages.

    Raises:
        SimError: ENOENT if there is no such file; EINVAL if it is not valid JSON or not an object.
    """
    if not path.is_file():
        raise SimError("ENOENT", f"{path}: no such {what} file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SimError("EINVAL", f"{path}: {what} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SimError("EINVAL", f"{path}: {what} must be a JSON object")
    return data


def dataclass_from_dict(cls: type[T], data: Any, what: str) -> T:
    """Build the dataclass ``cls`` from plain data, checking keys and scalar types first.

    A field without a default is required. Fields annotated ``int``, ``float``, ``bool`` or ``str``
    are type-checked (an int is accepted for a float; a bool never counts as a number), so a
    typo'd key or a quoted number is reported by name instead of failing somewhere later.

    Raises:
        SimError: EINVAL naming ``what`` and the missing, unknown or mistyped key.
    """
    if not isinstance(data, dict):
        raise SimError("EINVAL", f"{what} must be a map of fields, not {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SimError(
            "EINVAL",
            f"{what}: unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(fields)}",
        )
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in data:
            if required:
                raise SimError("EINVAL", f"{what}: missing field {name!r}")
            continue
        value, kind = data[name], str(f.type)
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
        }.get(kind, True)
        if not ok:
            raise SimError("EINVAL", f"{what}: field {name!r} must be {kind}, not {value!r}")
    return cls(**data)

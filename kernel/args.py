"""Copying syscall arguments in: every field checked for presence, type and range.

Each getter raises ``KernelError("EINVAL", ...)`` naming the syscall and the field, so a user
reads exactly what was wrong. ``check_known`` refuses unknown fields, which catches typos.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import KernelError

_REQUIRED: Any = object()


class Args:
    """The ``args`` map of one request, read through typed, checked getters."""

    def __init__(self, op: str, raw: dict[str, Any], known: Iterable[str]) -> None:
        self.op = op
        self.raw = raw
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise KernelError("EINVAL", f"{op}: unknown argument {unknown[0]!r}; accepted: {', '.join(sorted(known)) or 'none'}")

    def _get(self, name: str, default: Any) -> Any:
        value = self.raw.get(name)
        if value is None:
            if default is _REQUIRED:
                raise KernelError("EINVAL", f"{self.op}: missing argument {name!r}")
            return default
        return value

    def integer(self, name: str, default: Any = _REQUIRED, lo: int | None = None, hi: int | None = None) -> Any:
        """An integer in [lo, hi] (bools are not integers here)."""
        value = self._get(name, default)
        if value is default and default is not _REQUIRED:
            return value
        if type(value) is not int:
            raise KernelError("EINVAL", f"{self.op}: argument {name!r} must be an integer, not {type(value).__name__}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise KernelError("EINVAL", f"{self.op}: argument {name!r}={value} is outside [{lo}, {hi}]")
        return value

    def number(self, name: str, default: Any = _REQUIRED, lo: float | None = None, hi: float | None = None) -> Any:
        """A finite number in [lo, hi]; integers are accepted."""
        value = self._get(name, default)
        if value is default and default is not _REQUIRED:
            return value
        if type(value) not in (int, float) or value != value or value in (float("inf"), float("-inf")):
            raise KernelError("EINVAL", f"{self.op}: argument {name!r} must be a finite number")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise KernelError("EINVAL", f"{self.op}: argument {name!r}={value} is outside [{lo}, {hi}]")
        return float(value)

    def text(self, name: str, default: Any = _REQUIRED, max_len: int = 1 << 20) -> Any:
        """A string of at most ``max_len`` characters."""
        value = self._get(name, default)
        if value is default and default is not _REQUIRED:
            return value
        if not isinstance(value, str):
            raise KernelError("EINVAL", f"{self.op}: argument {name!r} must be a string, not {type(value).__name__}")
        if len(value) > max_len:
            raise KernelError("E2BIG", f"{self.op}: argument {name!r} is longer than {max_len} characters")
        return value

    def flag(self, name: str, default: Any = _REQUIRED) -> Any:
        """A boolean."""
        value = self._get(name, default)
        if value is default and default is not _REQUIRED:
            return value
        if not isinstance(value, bool):
            raise KernelError("EINVAL", f"{self.op}: argument {name!r} must be true or false")
        return value

    def int_list(self, name: str, default: Any = _REQUIRED, max_len: int = 1 << 20) -> Any:
        """A list of non-negative integers of at most ``max_len`` items."""
        value = self._get(name, default)
        if value is default and default is not _REQUIRED:
            return value
        if not isinstance(value, list):
            raise KernelError("EINVAL", f"{self.op}: argument {name!r} must be a list of integers")
        if len(value) > max_len:
            raise KernelError("E2BIG", f"{self.op}: argument {name!r} has {len(value)} items; the limit is {max_len}")
        # Checked in C (map, set, min) first: prompts are lists of thousands of token ids.
        if value and (set(map(type, value)) != {int} or min(value) < 0):
            item = next(x for x in value if type(x) is not int or x < 0)
            raise KernelError("EINVAL", f"{self.op}: argument {name!r} must hold non-negative integers, found {item!r}")
        return value

    def has(self, name: str) -> bool:
        return self.raw.get(name) is not None

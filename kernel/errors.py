"""Errno-named errors: the one exception type that crosses every message boundary.

A handler anywhere (kernel, service, driver) raises ``KernelError("ESRCH", "no process 7")``;
the server loop turns it into an error reply ``{"errno": "ESRCH", "message": "no process 7"}``
and userland turns that back into the matching ``LLMOSError`` subclass.
"""

from __future__ import annotations

import sys

if sys.version_info < (3, 11):  # pragma: no cover - trio brings the backport on 3.10
    from exceptiongroup import BaseExceptionGroup

# The errno names DESIGN.md allows, each with the one-line meaning a user sees first.
ERRNO_NAMES: dict[str, str] = {
    "EINVAL": "invalid argument",
    "ENOSYS": "function not implemented",
    "EPERM": "operation not permitted",
    "EACCES": "permission denied",
    "ENOENT": "no such file or entry",
    "ENOMEM": "out of memory",
    "ESRCH": "no such process",
    "EAGAIN": "resource temporarily unavailable",
    "EBUSY": "device or resource busy",
    "ETIMEDOUT": "timed out",
    "ECANCELED": "operation canceled",
    "E2BIG": "argument list too long",
    "EEXIST": "already exists",
    "ECHILD": "no child processes",
    "EIO": "input/output error",
}


class KernelError(Exception):
    """An error with an errno name and a sentence for the user.

    Args:
        errno: one of ``ERRNO_NAMES``.
        message: a sentence that says what was wrong with *this* request.
    """

    def __init__(self, errno: str, message: str) -> None:
        if errno not in ERRNO_NAMES:
            raise ValueError(f"unknown errno name {errno!r}")
        super().__init__(f"{message} ({errno})")
        self.errno = errno
        self.message = message

    def to_wire(self) -> dict[str, str]:
        """The ``error`` map of a failed reply."""
        return {"errno": self.errno, "message": self.message}


def sole_exception(exc: BaseException) -> BaseException:
    """What a chain of one-member exception groups holds (trio >= 0.25 wraps errors in them).

    Returns ``exc`` itself if it is not a group, or a group of several.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc

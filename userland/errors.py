"""``LLMOSError`` and one subclass per errno name, as userland raises them.

    try:
        client.kill(999)
    except libllm.ESRCH as e:
        print(e.errno, e.message)
"""

from __future__ import annotations

from llmos.kernel.errors import ERRNO_NAMES, KernelError


class LLMOSError(KernelError):
    """An error a syscall returned: ``errno`` is its name, ``message`` says what was wrong."""


def _make(name: str) -> type[LLMOSError]:
    return type(name, (LLMOSError,), {"__doc__": f"{name}: {ERRNO_NAMES[name]}.", "__module__": __name__})


ERRORS: dict[str, type[LLMOSError]] = {name: _make(name) for name in ERRNO_NAMES}
EINVAL = ERRORS["EINVAL"]
ENOSYS = ERRORS["ENOSYS"]
EPERM = ERRORS["EPERM"]
EACCES = ERRORS["EACCES"]
ENOENT = ERRORS["ENOENT"]
ENOMEM = ERRORS["ENOMEM"]
ESRCH = ERRORS["ESRCH"]
EAGAIN = ERRORS["EAGAIN"]
EBUSY = ERRORS["EBUSY"]
ETIMEDOUT = ERRORS["ETIMEDOUT"]
ECANCELED = ERRORS["ECANCELED"]
E2BIG = ERRORS["E2BIG"]
EEXIST = ERRORS["EEXIST"]
ECHILD = ERRORS["ECHILD"]
EIO = ERRORS["EIO"]


def from_kernel_error(error: KernelError) -> LLMOSError:
    """The userland exception for an error reply."""
    return ERRORS[error.errno](error.errno, error.message)


__all__ = ["LLMOSError", "ERRORS", "from_kernel_error", *ERRORS]

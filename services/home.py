"""Where services keep state that must outlive a restart: ``LLMOS_HOME``.

A restarted service (the supervisor's reincarnation) finds its keys, logs and lists again
only if it looks in the same place, so every service asks ``llmos_home()`` instead of
choosing a folder itself.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

ENV_VAR = "LLMOS_HOME"
APP_NAME = "llmos"


def llmos_home() -> Path:
    """The state directory: ``$LLMOS_HOME`` if set, else the user's data directory.

    The data directory follows each platform's convention (no extra dependency for it):
    ``$XDG_DATA_HOME/llmos`` or ``~/.local/share/llmos`` on Linux and other Unixes,
    ``~/Library/Application Support/llmos`` on macOS, ``%LOCALAPPDATA%\\llmos`` on Windows.
    The directory is not created here; ``ensure_private_dir`` does that.
    """
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / APP_NAME
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP_NAME
    xdg = os.environ.get("XDG_DATA_HOME")
    # XDG says a relative XDG_DATA_HOME is invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / APP_NAME
    return Path.home() / ".local" / "share" / APP_NAME


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (True when it cannot be told)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's), or we cannot tell: keep what it holds
    return True


def new_holder() -> str:
    """A name for this kernel among those sharing a home: ``kernel-PID-HEX``, new per boot."""
    return f"kernel-{os.getpid()}-{secrets.token_hex(4)}"


def holder_alive(holder: str) -> bool:
    """Holders are ``kernel-PID-HEX``; a kernel whose process is gone holds nothing.

    Kernels in different PID namespaces sharing one home cannot see each other's pids: give
    each its own home there.
    """
    parts = holder.split("-")
    if len(parts) >= 2 and parts[1].isdigit():
        return pid_alive(int(parts[1]))
    return True

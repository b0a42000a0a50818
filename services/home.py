"""Where services keep state that must outlive a restart: ``LLMOS_HOME``.

A restarted service (the supervisor's reincarnation) finds its keys, logs and lists again
only if it looks in the same place, so every service asks ``llmos_home()`` instead of
choosing a folder itself.
"""

from __future__ import annotations

import os
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

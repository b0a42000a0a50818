"""llmos_home(): LLMOS_HOME wins, else the platform's data directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llmos.services.home import llmos_home


def test_llmos_home_env_var_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "state"))
    assert llmos_home() == tmp_path / "state"


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG layout")
def test_llmos_home_defaults_to_the_xdg_data_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMOS_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert llmos_home() == tmp_path / "llmos"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert llmos_home() == Path(tmp_path) / ".local" / "share" / "llmos"

"""Fixtures for the service tests: a fresh LLMOS_HOME and a tiny Hugging Face-format checkpoint."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llmos.services import securefiles

WEIGHT_BYTES = (5 << 20) // 2  # 2.5 MiB: more than one 1 MiB hashing chunk, still quick


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """Skip fsync (~3 ms each, several per audited call): these tests crash servers by
    cancellation, which fsync cannot affect; write order, and so the tests' meaning, is kept."""
    monkeypatch.setattr(securefiles, "SYNC", False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty LLMOS_HOME (created by the service at first boot)."""
    return tmp_path / "llmos-home"


def write_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A fake checkpoint: config.json, model.safetensors (random bytes), tokenizer files."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    (directory / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "rms_norm_eps": 1e-6,
        "rope_scaling": {"type": "linear", "factor": 2.0},
    }))
    (directory / "model.safetensors").write_bytes(rng.randbytes(WEIGHT_BYTES))
    (directory / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"vocab": {"a": 0}}}))
    (directory / "generation_config.json").write_text("{}")
    return directory


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "tiny-model")


@pytest.fixture
def make_checkpoint(tmp_path: Path):
    """A factory: ``make_checkpoint(name, seed=0)`` writes another checkpoint under tmp_path."""
    return lambda name, seed=0: write_checkpoint(tmp_path / name, seed)

"""The default model's corpus: this interpreter's standard library sources.

scripts/train_default_model.py trains the embedded default model on it and ``llmos bench npu``
measures perplexity on the files it held out, so both take the corpus from here: the same
files, in the same order, split by the same rule (drivers/default_model/metadata.json records
the values the model was trained with).
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Folders of the stdlib that are not "ordinary library source": test suites (huge, and full of
# odd fixtures), third-party packages, and byte-compiled caches.
SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
MAX_FILE_BYTES = 500_000  # larger files are skipped
MAX_CORPUS_BYTES = 40_000_000  # the corpus stops growing here
HELD_OUT_PERCENT = 5  # percent of files held out of training, for evaluation


@dataclass
class Document:
    rel_path: str  # path relative to the stdlib root, '/'-separated
    text: str


def stdlib_root() -> Path:
    """Where this interpreter's standard library sources are."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_held_out(rel_path: str, percent: int = HELD_OUT_PERCENT) -> bool:
    """A file is held out iff the first 8 bytes of sha256(rel_path) mod 100 < percent."""
    digest = hashlib.sha256(rel_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < percent


def collect_corpus(root: Path, max_file_bytes: int = MAX_FILE_BYTES, max_corpus_bytes: int = MAX_CORPUS_BYTES) -> list[Document]:
    """All *.py files under ``root`` in sorted path order, minus skipped folders, huge and
    non-UTF-8 files, up to ``max_corpus_bytes`` in all."""
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]  # site-packages alone may hold 10^5 files
        paths += [Path(folder, name) for name in files if name.endswith(".py")]
    docs: list[Document] = []
    total = 0
    for path in sorted(paths):
        if not path.is_file():
            continue
        size = path.stat().st_size
        if size == 0 or size > max_file_bytes or total + size > max_corpus_bytes:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        docs.append(Document(path.relative_to(root).as_posix(), text.replace("\r\n", "\n")))
        total += size
    return docs

"""Files written whole or not at all: into a temporary file beside the target, then one rename.

A process killed mid-write (SIGKILL, a full disk, a crash) leaves the previous file, or none, under the real name:
never half a CSV, half a model or half a record that a later run or a user would trust. ``os.replace`` is
atomic on POSIX and Windows when both names are on one file system, hence the temporary file in the same folder.
A temporary left by a killed process is hidden (a leading dot) and replaced by the next write.

>>> import tempfile
>>> target = Path(tempfile.mkdtemp()) / "out.csv"
>>> with atomic_write(target) as f:
...     _ = f.write("id,label\\n")
>>> target.read_text()
'id,label\\n'
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (``savefig``, ``torch.jit.save``);
    it becomes ``path`` when the block ends without an error, and is removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when the writer failed


@contextmanager
def atomic_write(path: Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """``open(path, mode)`` that appears whole or not at all (``newline=""`` for csv is passed through)."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f

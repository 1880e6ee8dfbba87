"""Files written whole or not at all: into a temporary file beside the target, then one rename.

A process killed mid-write (SIGKILL, a full disk, a crash) leaves the previous file, or none, under the real name:
never half a CSV, half a model or half a record that a later run or a user would trust. ``os.replace`` is
atomic on POSIX when both names are on one file system, hence the temporary file in the same folder; the file is
flushed to the disk (``fsync``) before the rename and the folder after it, so a power cut cannot leave the new
name pointing at empty blocks. A temporary is hidden (a leading dot) and carries its writer's ``host-pid``: the
next write to the same name removes the ones left by killed processes of this machine. The file gets the
permissions a plain ``open()`` would give it (the old file's, or the umask's), whatever mode its writer created the
temporary with (safetensors writes 0600).

Output paths are checked before the work that fills them (:func:`check_output`): a folder, a path under a file or
a folder that cannot be written is refused in one sentence, not after a long prediction or export.

>>> import tempfile
>>> target = Path(tempfile.mkdtemp()) / "out.csv"
>>> with atomic_write(target) as f:
...     _ = f.write("id,label\\n")
>>> target.read_text()
'id,label\\n'
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from cifarlit.utils.errors import CifarlitError

TMP_SUFFIX = ".tmp"


def owner() -> str:
    """``host-pid``, in the names of temporary files, so later runs can tell which were left by killed runs."""
    return f"{socket.gethostname()}-{os.getpid()}"


def left_by_dead_process(owner: str) -> bool:
    """Whether ``owner`` (``host-pid``) names a process of this machine that no longer runs."""
    host, _, pid = owner.rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's run on a shared disk may still be writing it
    try:
        os.kill(int(pid), 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:  # it exists, as another user's process
        return False
    return False


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{owner()}{TMP_SUFFIX}")


def _remove_stale_temporaries(path: Path) -> None:
    """The temporaries of ``path`` that killed writers of this machine left (their pid no longer runs)."""
    prefix = f".{path.name}."
    with suppress(OSError):
        for entry in os.scandir(path.parent):
            name = entry.name
            if name.startswith(prefix) and name.endswith(TMP_SUFFIX) and entry.is_file(follow_symlinks=False):
                if left_by_dead_process(name[len(prefix) : -len(TMP_SUFFIX)]):
                    Path(entry.path).unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it where the system tells (Linux); else set and put back."""
    with suppress(OSError, ValueError, StopIteration), open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _plain_mode(path: Path) -> int:
    """The permission bits ``open(path, "w")`` would leave: an existing file keeps its own, a new one gets the
    umask's."""
    with suppress(OSError):
        info = os.stat(path)
        if stat.S_ISREG(info.st_mode):
            return stat.S_IMODE(info.st_mode)
    return 0o666 & ~_umask()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (``savefig``, ``torch.jit.save``);
    it becomes ``path`` when the block ends without an error, and is removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = _temporary(path)
    try:
        yield tmp
        _fsync(tmp)  # the data on the disk before the name points at it
        os.chmod(tmp, _plain_mode(path))  # not the writer's own mode: a user's model must not become private
        os.replace(tmp, path)
        _fsync(path.parent)  # and the rename itself
    finally:
        tmp.unlink(missing_ok=True)  # only still there when the writer failed


@contextmanager
def atomic_write(path: Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """``open(path, mode)`` that appears whole or not at all (``newline=""`` for csv is passed through)."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f


def check_output(path: Path, option: str, example: str) -> Path:
    """``path`` if a file can be written there; else a CifarlitError naming ``option`` (``example``: a file name
    to suggest inside a folder). Creates nothing: the folder is probed with an unnamed temporary file."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CifarlitError(f"{option} {path} is a folder: pass a file path, e.g. {path / example}.")
    if path.exists() and not path.is_file():
        raise CifarlitError(f"{option} {path} is not a regular file (a device or pipe): pass a file path.")
    folder = path.parent.absolute()
    while not folder.exists() and folder != folder.parent:  # the folders that would be created
        folder = folder.parent
    if not folder.is_dir():
        raise CifarlitError(f"{option} {path} cannot be written: {folder} is a file, not a folder.")
    try:
        with tempfile.TemporaryFile(dir=folder):  # unnamed where the system allows: nothing appears
            pass
    except OSError as err:
        raise CifarlitError(
            f"{option} {path} cannot be written ({err.strerror or err.__class__.__name__} in {folder}): pass a "
            "path in a folder you can write to."
        ) from None
    return path

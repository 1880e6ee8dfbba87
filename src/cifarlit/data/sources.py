"""Where the pixels come from: CIFAR-10's pickle batches or an image folder, decoded once to uint8 arrays.

Both sources give the same thing, a :class:`RawData` of ``(N, size, size, channels)`` uint8 images (32x32 RGB
unless the data options say otherwise) with int64 labels for the official train and test sets. Image folders are
slow to decode (tens of seconds for CIFAR-10's 60,000 JPEGs on 2 cores, with a progress bar), so the decoded
arrays are cached in one ``.npz`` file next to the folder, keyed by a fingerprint of the file names, sizes and
modification times and the image size: a changed folder or a damaged cache is rebuilt, never used.

Nothing read from disk is trusted: the pickle batches are read by an unpickler that can only rebuild numpy
arrays and their labels must agree with ``batches.meta``; the archive is unpacked only when its md5 is the
release's, by cifarlit itself (regular files and folders inside the target, at most ``ARCHIVE_MAX_BYTES``), not
by ``tarfile``'s filters; images are opened only as the raster formats of :data:`IMAGE_FORMATS` (no Pillow
plugin that hands a file to another program) and only when they are regular files (a FIFO would block a reader
forever); a cache whose arrays do not match the folder's listing is rebuilt; every unreadable image is reported
in one error; the archive and the cache are written under temporary names and renamed into place, and a lock
makes runs started together decode a folder once.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import shutil
import socket
import stat
import tarfile
import warnings
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, NoReturn

import numpy as np
from filelock import FileLock

from cifarlit.utils.errors import CifarlitError
from cifarlit.utils.files import left_by_dead_process as _left_by_dead_process
from cifarlit.utils.files import owner as _owner

if TYPE_CHECKING:
    from PIL import Image

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
PICKLE_DIR = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# What Pillow may open them as, whatever the name says: raster formats it decodes itself. Any other plugin is
# never tried, so no file is handed to another program (EPS and PS go to Ghostscript).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
ARCHIVE_MAX_BYTES = 256 * 2**20  # unpacked at most: CIFAR-10's archive unpacks to 178 MB (with its tar headers)
ARCHIVE_MAX_RATIO = 4  # unpacked bytes per archive byte, at most (+1 MB): CIFAR-10's pixels barely compress (1.05)
ARCHIVE_MAX_MEMBERS = 100  # CIFAR-10's holds 9: a folder, 7 batch files and a readme
CACHE_NAME = ".cifarlit-cache.npz"
LOCK_NAME = ".cifarlit-cache.lock"  # held while a run checks, decodes and writes the cache
EXTRACT_PREFIX = ".cifarlit-extract-"  # + host-pid: the archive is unpacked here, then moved into place
CACHE_VERSION = 1
CIFAR_SIZE = 32  # CIFAR-10's images are 32x32 RGB; other sizes and channel counts are the data options'
RESIZE_CHUNK = 1024  # images resized in float32 at once
PROGRESS_FROM = 1000  # files: a decode of fewer ends before a progress bar would help
SHOWN_UNREADABLE = 5  # files named in the message about unreadable images; the count covers the rest

REDO_PICKLES = f"delete the '{PICKLE_DIR}' folder so it is extracted or downloaded again"
HOW_TO_GET_DATA = (
    f"put CIFAR-10's '{PICKLE_DIR}' folder (or '{ARCHIVE}') there, or an image folder laid out as "
    "ROOT/train/<class>/*.png|jpg and ROOT/test/<class>/*; the repository's README explains both"
)


class DataError(CifarlitError):
    """A problem with the user's data: the message says what is wrong and how to fix it."""


@dataclass
class RawData:
    """The official train and test sets as uint8 ``(N, H, W, C)`` images and int64 labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    fingerprint: str  # identifies the files the arrays came from


def select_classes(raw: RawData, keep: tuple[str, ...]) -> RawData:
    """Only the images of ``keep``, relabelled ``0..len(keep)-1`` in that order."""
    new_label = np.full(len(raw.classes), -1, dtype=np.int64)
    new_label[[raw.classes.index(c) for c in keep]] = np.arange(len(keep))
    train, test = new_label[raw.train_y] >= 0, new_label[raw.test_y] >= 0
    return RawData(
        raw.train_x[train], new_label[raw.train_y[train]], raw.test_x[test], new_label[raw.test_y[test]],
        tuple(keep), f"{raw.fingerprint}-{'+'.join(keep)}",
    )  # fmt: skip


def detect_format(root: Path) -> str | None:
    """Return ``"pickle"``, ``"archive"``, ``"folder"`` or ``None`` for what ``root`` holds."""
    if (root / PICKLE_DIR).is_dir():
        return "pickle"
    if (root / ARCHIVE).is_file():
        return "archive"
    if (root / "train").is_dir():
        return "folder"
    return None


def _class_dirs(split_dir: Path) -> tuple[str, ...]:
    """The sorted names of the sub-folders of ``split_dir`` (hidden ones left out): one per class.

    A name that is not UTF-8 is refused: class names go into checkpoints and the per-class CSV files, which are
    UTF-8, and Python holds such a name with stand-in characters that neither can store.
    """
    names = tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")))
    for name in names:
        if not _is_utf8(name):
            raise DataError(
                f"class folder {os.fsencode(split_dir / name)!r} is not named in UTF-8, and class names go into "
                "checkpoints and CSV files, which are UTF-8: rename it (e.g. convmv -f latin1 -t utf8)."
            )
    return names


def _is_utf8(name: str) -> bool:
    """Whether a file name read from disk is valid UTF-8 (Python keeps other bytes as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def folder_classes(root: Path) -> tuple[str, ...]:
    """Class names of an image folder: the sorted sub-folders of ``root/train``, at least 2 of them.

    Checked here, where the names are first read, so the user hears about the folder before a model is built with
    a class count they never set.
    """
    train = root / "train"
    classes = _class_dirs(train)
    if not classes:
        raise DataError(f"{train} has no class folders; lay images out as {root}/train/<class>/*.png.")
    if len(classes) == 1:
        raise DataError(
            f"{train} has one class folder ({classes[0]!r}); a classifier needs at least 2: add a folder per class."
        )
    return classes


def class_names(root: Path) -> tuple[str, ...]:
    """Class names without decoding anything: the folders', or the pickle batches' ``batches.meta``."""
    fmt = detect_format(root)
    if fmt == "folder":
        return folder_classes(root)
    return pickle_classes(root / PICKLE_DIR) if fmt == "pickle" else CIFAR10_CLASSES


def ensure_available(root: Path, download: bool) -> None:
    """Make sure ``root`` holds a dataset, extracting or downloading CIFAR-10 only when nothing is there."""
    fmt = detect_format(root)
    if fmt in ("pickle", "folder"):
        return
    if fmt == "archive":
        _extract(root / ARCHIVE, root)
        return
    if os.path.lexists(root / ARCHIVE):  # a FIFO or a link to nothing: never read, nor downloaded into
        raise DataError(
            f"{root / ARCHIVE} is not a regular file, so it was neither read nor downloaded over: delete it so "
            "CIFAR-10 is downloaded again, or put the release's archive there."
        )
    if root.exists() and not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"data.data_dir={str(root)!r} is not readable; fix its permissions or point elsewhere.")
    if not download:
        raise DataError(f"data.data_dir={str(root)!r} holds no dataset and data.download is false: {HOW_TO_GET_DATA}.")
    _download(root)


def _download(root: Path) -> None:
    from torchvision.datasets.utils import download_url

    host = "www.cs.toronto.edu"
    try:  # fail in seconds rather than hang on a machine without internet
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as err:
        raise DataError(
            f"data.data_dir={str(root)!r} holds no dataset and {host} cannot be reached to download CIFAR-10 "
            f"({err.__class__.__name__}): {HOW_TO_GET_DATA}."
        ) from None
    root.mkdir(parents=True, exist_ok=True)
    download_url(CIFAR10_URL, str(root), ARCHIVE, CIFAR10_MD5)
    _extract(root / ARCHIVE, root)


def _extract(archive: Path, root: Path) -> None:
    """Unpack into a temporary folder next to the dataset, then move the finished folder into place: an
    interrupted extraction never leaves a half ``cifar-10-batches-py`` that later runs would read."""
    _check_md5(archive, root)
    _remove_leftovers(root)
    tmp = root / f"{EXTRACT_PREFIX}{_owner()}"
    try:
        try:
            size = archive.stat().st_size
            limit = min(ARCHIVE_MAX_BYTES, ARCHIVE_MAX_RATIO * size + 2**20)
            with open_regular(archive) as raw, _reading(raw, size, "extracting") as f:
                with gzip.GzipFile(fileobj=f) as unzipped:  # type: ignore[arg-type]
                    # stream mode ("r|"): tarfile reads the bytes once, in order, through the counter
                    with tarfile.open(fileobj=_Capped(unzipped, limit, archive), mode="r|") as tar:
                        _unpack(tar, tmp, archive)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise DataError(
                f"{archive} is not a readable CIFAR-10 archive ({err}); delete it and download again."
            ) from None
        if not (tmp / PICKLE_DIR).is_dir():
            raise DataError(
                f"{archive} holds no '{PICKLE_DIR}' folder, so it is not CIFAR-10's python archive; delete it and "
                "download again."
            )
        _move_into_place(tmp / PICKLE_DIR, root / PICKLE_DIR)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_md5(archive: Path, root: Path) -> None:
    """Refuse an archive that is not CIFAR-10's release, as the download does, before anything is unpacked."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open_regular(archive) as f:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
    except OSError as err:
        raise DataError(f"{archive} cannot be read ({err}); delete it and download again.") from None
    if digest.hexdigest() != CIFAR10_MD5:
        raise DataError(
            f"{archive} is not CIFAR-10's release (its md5 is {digest.hexdigest()}, the release's {CIFAR10_MD5}), so "
            f"it was not unpacked: delete it so it is downloaded again, or, for an archive you packed yourself, "
            f"unpack it yourself and put its '{PICKLE_DIR}' folder in {root}."
        )


class _Capped:
    """A file's ``read`` that refuses to go past ``limit`` bytes: counted on the unpacked bytes, so a small
    archive that unpacks to gigabytes, or a header that lies about its size, stops there."""

    def __init__(self, f: BinaryIO, limit: int, archive: Path) -> None:
        self.f, self.limit, self.archive, self.read_so_far = f, limit, archive, 0

    def read(self, size: int = -1) -> bytes:
        left = self.limit - self.read_so_far
        data = self.f.read(left + 1 if size < 0 or size > left else size)
        self.read_so_far += len(data)
        if self.read_so_far > self.limit:
            _unsafe(
                self.archive,
                f"it unpacks to more than {self.limit / 2**20:.1f} MB ({ARCHIVE_MAX_RATIO} times its size plus 1 MB, "
                f"at most {ARCHIVE_MAX_BYTES // 2**20} MB)",
            )
        return data


def _unsafe(archive: Path, why: str) -> NoReturn:
    raise DataError(
        f"{archive} was not unpacked: {why}, and CIFAR-10's archive holds only the '{PICKLE_DIR}' folder and its "
        "files; delete it so it is downloaded again."
    )


def _unpack(tar: tarfile.TarFile, folder: Path, archive: Path) -> None:
    """Write the archive's folders and regular files into ``folder``, by cifarlit rather than ``tarfile``: links,
    devices and FIFOs, names outside ``folder`` and more than :data:`ARCHIVE_MAX_MEMBERS` entries are refused
    (``tarfile``'s own filter had holes, CVE-2025-4517); file modes and owners are not taken from the archive."""
    folder.mkdir()
    inside = Path(os.path.realpath(folder))
    for count, member in enumerate(tar, start=1):
        if count > ARCHIVE_MAX_MEMBERS:
            _unsafe(archive, f"it holds more than {ARCHIVE_MAX_MEMBERS} entries")
        parts = PurePosixPath(member.name).parts
        if not parts and member.isdir():  # "./": the folder itself
            continue
        target = folder.joinpath(*parts)
        if not parts or member.name.startswith("/") or ".." in parts or not _within(target, inside):
            _unsafe(archive, f"its entry {member.name!r} points outside the folder it is unpacked into")
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
        elif not member.isreg():
            _unsafe(archive, f"its entry {member.name!r} is a {_member_kind(member)}, not a file or folder")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_member(tar.extractfile(member), target)  # type: ignore[arg-type]
    # tarfile stops quietly at a block that is not a header: what follows the last entry must be padding, or a
    # header lied about its size (the rest is read through the counter too)
    for block in iter(lambda: tar.fileobj.read(2**16), b""):  # type: ignore[union-attr]
        if block.strip(b"\0"):
            _unsafe(archive, "it has data after its last entry (a header that lies about a size)")


def _within(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(folder)


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    return {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "FIFO"}.get(
        member.type, f"tar entry of type {member.type!r}"
    )


def _write_member(source: BinaryIO, target: Path) -> None:
    # O_NOFOLLOW: never write through a link, even one that appeared after the checks
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out)


def _move_into_place(folder: Path, target: Path) -> None:
    try:
        os.replace(folder, target)  # one rename: the folder appears whole or not at all
    except OSError as err:
        if not target.is_dir():  # else another run extracted it first, and its copy is as good as this one
            raise DataError(
                f"cannot move the extracted '{PICKLE_DIR}' into {target.parent} ({err}); check the folder's "
                "permissions and free space."
            ) from None


def _remove_leftovers(root: Path) -> None:
    """Delete the temporary extraction folders and cache files of runs on this machine that were killed while
    writing them; nothing reads them, but they can be as large as the dataset."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(EXTRACT_PREFIX):
            owner = entry.name.removeprefix(EXTRACT_PREFIX)
        elif entry.name.startswith(f"{CACHE_NAME}.") and entry.name.endswith(".tmp"):
            owner = entry.name.removeprefix(f"{CACHE_NAME}.").removesuffix(".tmp")
        else:
            continue
        if _left_by_dead_process(owner):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                Path(entry.path).unlink(missing_ok=True)


def load(
    root: Path, cache: bool = True, skip_unreadable: bool = False, size: int = CIFAR_SIZE, channels: int = 3
) -> RawData:
    """Decode the dataset in ``root`` (pickle batches or image folder) into uint8 ``(N, size, size, channels)``.

    ``skip_unreadable`` leaves an image folder's damaged files out instead of refusing the folder.
    """
    fmt = detect_format(root)
    if fmt == "pickle":
        raw = load_pickle_batches(root / PICKLE_DIR)
        if raw.train_x.shape[1:] != (size, size, channels):  # resized into one new array
            check_memory(len(raw.train_y) + len(raw.test_y), size, channels, 1, f"the images of {root / PICKLE_DIR}")
        return resize_raw(raw, size, channels)
    if fmt == "folder":
        return load_image_folder(root, cache=cache, skip_unreadable=skip_unreadable, size=size, channels=channels)
    raise DataError(f"data.data_dir={str(root)!r} holds no dataset: {HOW_TO_GET_DATA}.")


def available_memory() -> int | None:
    """Bytes of memory this process can still take (the system's available memory, within a cgroup's limit),
    or None where the system does not say."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    try:  # a container's limit (cgroup v2), often far below the machine's memory
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def image_count(root: Path) -> int:
    """About how many images ``root`` holds, counted without reading one (CIFAR-10's 60,000 for an archive or
    nothing yet, to be downloaded), for a memory estimate before anything is built."""
    try:
        if detect_format(root) == "folder":
            class_dirs = [d for split in ("train", "test") if (root / split).is_dir() for d in (root / split).iterdir()]
            return sum(
                entry.name.lower().endswith(IMAGE_EXTENSIONS)
                for d in class_dirs
                if d.is_dir()
                for entry in os.scandir(d)
            )
        if detect_format(root) == "pickle":  # 3,072 bytes of pixels and a label an image
            return sum(p.stat().st_size for p in (root / PICKLE_DIR).glob("*_batch*")) // 3073
    except OSError:  # unreadable: the reading says so, in its own words
        return 0
    return 60_000


def check_fits(root: Path, size: int, channels: int) -> None:
    """Refuse ``data.image_size`` when the images of ``root`` at that size cannot be held in memory (see
    :func:`check_memory`): the DataModule holds them three times over while it splits them (the loaded arrays,
    their channels-first copy and the splits)."""
    check_memory(image_count(root), size, channels, 3, f"the images of {root}")


def check_memory(count: int, size: int, channels: int, copies: int, what: str, hint: str | None = None) -> None:
    """Refuse ``data.image_size`` before allocating when ``copies`` bytes per pixel of ``count`` images at it do
    not fit in the memory available now, naming the largest size that would."""
    available = available_memory()
    need = count * size * size * channels * copies
    if available is None or need <= available:
        return
    largest = math.isqrt(max(0, available) // max(1, count * channels * copies))
    if hint is None:
        hint = ", or stream the data (cifarlit prepare, then data.stream) to hold none of it in memory"
    raise DataError(
        f"data.image_size={size} is too large for the memory here: {what} ({count} images at "
        f"{size}x{size}x{channels}, held {copies} times over) need {need / 2**30:,.1f} GiB and "
        f"{available / 2**30:,.1f} GiB is available; use data.image_size {largest} or less{hint}."
    )


# --- CIFAR-10's python pickle batches -------------------------------------------------------------------------


# The globals that CIFAR-10's batches (Python-2 protocol-2 pickles of a dict holding one uint8 array) and numpy
# 1.x/2.x re-pickles of them name; any other global in a batch file would be called while reading it.
_BATCH_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),  # the official release, and numpy 1.x
    ("numpy._core.multiarray", "_reconstruct"),  # numpy 2.x
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5 (Python 3.14's default): an array from its bytes
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes (the array's buffer) in a protocol-2 pickle
})  # fmt: skip


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle names a global outside :data:`_BATCH_GLOBALS`."""


class _BatchUnpickler(pickle.Unpickler):
    """Reads CIFAR-10 batches without running code: a pickle can call any importable function while it loads."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _BATCH_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """The dict in a CIFAR-10 pickle file; a file that would run code, or is damaged, is a DataError."""
    try:
        with open_regular(path) as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()  # latin1: Python 2's byte strings, as numpy does
        if not isinstance(entry, dict):
            raise TypeError(f"it holds a {type(entry).__name__}, not a dict")
    except _RefusedGlobal as err:
        raise DataError(
            f"{path} holds Python objects that reading it would run as code ({err}), not a CIFAR-10 batch, so it "
            f"was not read: {REDO_PICKLES}."
        ) from None
    except Exception as err:  # pickle raises many types for a damaged file
        raise DataError(
            f"{path} is not a valid CIFAR-10 batch ({err.__class__.__name__}: {err}); {REDO_PICKLES}."
        ) from None
    return entry


def _read_batch(path: Path, classes: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(N, 32, 32, 3)`` images and int64 labels of one batch file; with ``classes``, every label must be
    one of their positions."""
    entry = _unpickle(path)
    try:
        data = _as_uint8(entry["data"]).reshape(-1, 3, 32, 32)  # (N, 3072) -> (N, 3, 32, 32)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")))
        if labels.dtype.kind not in "iu" or labels.shape != (len(data),):
            raise ValueError(f"{len(data)} images need as many whole-number labels, not {labels.dtype} {labels.shape}")
        labels = labels.astype(np.int64)
    except Exception as err:  # a dict without the arrays of a batch
        raise DataError(
            f"{path} is not a valid CIFAR-10 batch ({err.__class__.__name__}: {err}); {REDO_PICKLES}."
        ) from None
    if classes is not None and len(labels) and not 0 <= labels.min() <= labels.max() < len(classes):
        bad = labels[(labels < 0) | (labels >= len(classes))][0]
        raise DataError(
            f"{path} has label {bad}, but the {len(classes)} classes ({', '.join(classes[:3])}, ...) are labelled "
            f"0..{len(classes) - 1}: the labels and the class names disagree; {REDO_PICKLES}."
        )
    return data.transpose(0, 2, 3, 1), labels  # (N, 3, H, W) -> (N, H, W, 3)


def _as_uint8(data) -> np.ndarray:
    """``data`` as uint8, refusing values a cast would wrap around (300 read as 44)."""
    data = np.asarray(data)
    if data.dtype == np.uint8:
        return data
    if data.dtype.kind not in "iu" or (data.size and not 0 <= data.min() <= data.max() <= 255):
        raise ValueError(f"its pixels are {data.dtype}, not bytes 0..255")
    return data.astype(np.uint8)


def pickle_classes(folder: Path) -> tuple[str, ...]:
    """The class names in ``folder/batches.meta`` (CIFAR-10's own without one): at least 2 distinct strings."""
    meta = folder / "batches.meta"
    if not os.path.lexists(meta):
        return CIFAR10_CLASSES
    names = _unpickle(meta).get("label_names")
    if not isinstance(names, list | tuple):
        problem = "it has no list of label_names"
    elif not all(isinstance(name, str) and name for name in names):
        problem = f"its label_names {names!r:.200} are not all names (non-empty strings)"
    elif len(set(names)) != len(names) or len(names) < 2:
        problem = f"its label_names {names!r:.200} are not 2 or more distinct names"
    else:
        return tuple(names)
    raise DataError(f"{meta} is not a valid batches.meta ({problem}); {REDO_PICKLES}.")


def _check_every_class_trained(train_y: np.ndarray, classes: tuple[str, ...], folder: Path) -> None:
    """A class of ``batches.meta`` without a training image would be reported but never learned."""
    missing = np.flatnonzero(np.bincount(train_y, minlength=len(classes)) == 0)
    if len(missing):
        meta = folder / "batches.meta"
        names = meta if os.path.lexists(meta) else f"{folder}, without a batches.meta, is CIFAR-10: it"
        raise DataError(
            f"{names} names {len(classes)} classes, but no training batch has an image of class {missing[0]} "
            f"({classes[missing[0]]!r}): the names and the labels disagree; {REDO_PICKLES}."
        )


def load_pickle_batches(folder: Path) -> RawData:
    """Read ``data_batch_*`` and ``test_batch`` from a ``cifar-10-batches-py`` folder."""
    train_files = sorted(folder.glob("data_batch_*"))
    if not train_files or not os.path.lexists(folder / "test_batch"):
        raise DataError(f"{folder} must contain data_batch_1..5 and test_batch; extract or download CIFAR-10 again.")
    classes = pickle_classes(folder)
    parts = [_read_batch(p, classes) for p in train_files]
    test_x, test_y = _read_batch(folder / "test_batch", classes)
    train_y = np.concatenate([p[1] for p in parts])
    _check_every_class_trained(train_y, classes, folder)
    return RawData(
        train_x=np.concatenate([p[0] for p in parts]),
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        classes=classes,
        fingerprint=pickle_fingerprint(folder, train_files),
    )


def pickle_fingerprint(folder: Path, train_files: list[Path]) -> str:
    """The fingerprint of the batch files (names, sizes, modification times)."""
    files = [*train_files, folder / "test_batch"]
    return _fingerprint([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])


# --- image folders ----------------------------------------------------------------------------------------------


class NotRegularFile(OSError):
    """A path that is not a regular file (nor a link to one), so it was not read."""


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, for a message."""
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "special file")


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``open(path, "rb")`` for a regular file (a link to one is followed); anything else raises
    :class:`NotRegularFile` unread: reading a FIFO waits for a writer forever, a device never ends, and merely
    opening some devices does something."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(f"{os.fspath(path)} is a {_kind(mode)}, not a regular file")
    # O_NONBLOCK: should a FIFO have replaced the file since, opening it does not wait for a writer
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{os.fspath(path)} is a {_kind(mode)}, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _list_images(folder: Path, skip_hidden: bool = False) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]]]:
    """``(path, size, mtime_ns)`` of the files in ``folder`` with an image's name, sorted, and ``(path, what it
    is)`` of those left out because they are not regular files (nor links to one), which are never opened.

    Plain strings: pathlib sorting 60,000 files is slow. A link that leads nowhere is listed with size and time
    -1: decoding it fails, so it is reported with the unreadable images (or left out with them).
    """
    items, skipped = [], []
    for entry in os.scandir(folder):
        if not entry.name.lower().endswith(IMAGE_EXTENSIONS) or (skip_hidden and entry.name.startswith(".")):
            continue
        try:
            st = os.stat(entry.path)  # a link's target
        except OSError:
            items.append((entry.path, -1, -1))
            continue
        if stat.S_ISREG(st.st_mode):
            items.append((entry.path, st.st_size, st.st_mtime_ns))
        else:
            skipped.append((entry.path, _kind(st.st_mode)))
    return sorted(items), sorted(skipped)


def _report_skipped(skipped: list[tuple[str, str]], where: str, rel: int) -> None:
    """One log line naming the entries with an image's name that were left out because they are not files."""
    if not skipped:
        return
    from lightning.pytorch.utilities import rank_zero_info  # here: importing Lightning takes seconds

    shown = ", ".join(f"{path[rel:]} ({kind})" for path, kind in skipped[:SHOWN_UNREADABLE])
    more = f" and {len(skipped) - SHOWN_UNREADABLE} more" if len(skipped) > SHOWN_UNREADABLE else ""
    many = len(skipped) > 1
    rank_zero_info(
        f"left out {len(skipped)} entr{'ies' if many else 'y'} in {where} that {'are' if many else 'is'} not "
        f"{'regular files' if many else 'a regular file'}, so never opened (reading a FIFO or a device would never "
        f"end): {shown}{more}."
    )


def _list_split(
    split_dir: Path, classes: tuple[str, ...], skipped: list[tuple[str, str]]
) -> list[tuple[str, int, int, int]]:
    """``(path, label, size, mtime_ns)`` of every image, by class then name (see :func:`_list_images`); the
    entries left out are added to ``skipped``."""
    items = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            raise DataError(
                f"{split_dir} has no folder {name!r}, but {split_dir.parent / 'train'} does: train and test must "
                f"have the same class folders."
            )
        found, left_out = _list_images(class_dir)
        skipped += left_out
        if not found:
            raise DataError(
                f"class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}); add some or remove it."
            )
        items += [(path, label, nbytes, mtime) for path, nbytes, mtime in found]
    return items


@dataclass
class FolderListing:
    """An image folder's classes and files, listed without decoding any."""

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, list[tuple[str, int, int, int]]]  # "train" (and "test"): (path, label, size, mtime_ns)

    @property
    def rel(self) -> int:
        """``path[rel:]`` is a listed path relative to the folder."""
        return len(str(self.root)) + 1

    def fingerprint(self, size: int, channels: int) -> str:
        """Of the files' relative names, sizes and times, at this image shape: it must not change when the folder
        is moved."""
        files = [
            (path[self.rel :], nbytes, mtime) for items in self.splits.values() for path, _, nbytes, mtime in items
        ]
        return _fingerprint([self.classes, (size, channels), *files])


def list_image_folder(root: Path) -> FolderListing:
    """The files of ``root/train/<class>/*`` and, when there, ``root/test/<class>/*``; one log line names the
    entries left out because they are not regular files."""
    classes = folder_classes(root)
    skipped: list[tuple[str, str]] = []
    splits = {"train": _list_split(root / "train", classes, skipped)}
    if (root / "test").is_dir():
        test_classes = _class_dirs(root / "test")
        if test_classes != classes:
            raise DataError(
                f"class folders differ between {root / 'train'} {list(classes)} and {root / 'test'} "
                f"{list(test_classes)}: give both the same classes."
            )
        splits["test"] = _list_split(root / "test", classes, skipped)
    _report_skipped(skipped, str(root), len(str(root)) + 1)
    return FolderListing(root, classes, splits)


def decode(source: str | os.PathLike | BinaryIO, size: int = CIFAR_SIZE, channels: int = 3) -> np.ndarray:
    """One image (a path, or a binary file object such as ``io.BytesIO``) as uint8 ``(size, size, channels)``:
    converted to RGB (or gray), its shorter side resized to ``size`` and the middle cut out (PIL's
    ``ImageOps.fit``), so nothing is stretched; PIL's exception (or :class:`NotRegularFile`) when it cannot be
    read. Only the formats of :data:`IMAGE_FORMATS` are tried, whatever the file is named."""
    from PIL import Image, ImageOps

    opened = open_regular(source) if isinstance(source, str | os.PathLike) else nullcontext(source)
    with opened as f, Image.open(f, formats=IMAGE_FORMATS) as im:
        im = _eight_bits(im).convert("RGB" if channels == 3 else "L")
        if im.size != (size, size):
            im = ImageOps.fit(im, (size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8).reshape(size, size, channels)


def _eight_bits(im: Image.Image) -> Image.Image:
    """16-bit gray (PNG's ``I;16`` modes, or ``I``) scaled to 8 bits: PIL's ``convert`` clips it instead, so
    mid-gray became white."""
    if not (im.mode.startswith("I;16") or im.mode == "I"):
        return im
    from PIL import Image

    values = np.asarray(im).astype(np.int64)  # numpy reads I;16B's byte order from the array interface
    return Image.fromarray(((values.clip(0, 65535) * 255 + 32767) // 65535).astype(np.uint8))  # round(v / 257)


def _try_decode(path: str, size: int, channels: int) -> np.ndarray | str:
    """The image, or the name of the exception that says why it cannot be read."""
    try:
        return decode(path, size, channels)
    except Exception as err:  # PIL raises several types for damaged files
        return err.__class__.__name__


def _decode_all(paths: list[str], size: int, channels: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Decode every file, so one run finds all damaged ones: ``(N, size, size, channels)`` images of those that
    decode, their positions in ``paths``, and ``(position, why)`` of the others."""
    decode_one = partial(_try_decode, size=size, channels=channels)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        results = list(progress(pool.map(decode_one, paths, chunksize=64), len(paths), "decoding images"))
    kept = [i for i, r in enumerate(results) if isinstance(r, np.ndarray)]
    failed = [(i, r) for i, r in enumerate(results) if not isinstance(r, np.ndarray)]
    x = np.stack([results[i] for i in kept]) if kept else np.zeros((0, size, size, channels), np.uint8)
    return x, np.array(kept, dtype=np.int64), failed


def progress(items: Iterable, total: int, what: str) -> Iterable:
    """``items`` with a progress bar (counts, rate, time left) on stderr, for long one-time work only: shown by
    the first process of a run (rank 0) when ``total`` is large enough to take a while."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only
    from tqdm import tqdm

    if total < PROGRESS_FROM or rank_zero_only.rank != 0:
        return items
    return tqdm(items, total=total, desc=what, unit=" files", mininterval=1.0, leave=False)


def _reading(f, size: int, what: str):
    """``f`` read with a progress bar in bytes (rank 0, files of 50 MB or more), or as it is."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only
    from tqdm import tqdm

    if size < 50 * 2**20 or rank_zero_only.rank != 0:
        return nullcontext(f)
    return tqdm.wrapattr(f, "read", total=size, desc=what, unit="B", unit_scale=True, mininterval=1.0, leave=False)


def resize_raw(raw: RawData, size: int, channels: int) -> RawData:
    """``raw``'s images at ``size`` x ``size`` and ``channels`` (CIFAR-10's batches are 32x32 RGB): resized with
    antialiasing, turned gray with ITU-R 601 luma (what PIL's ``convert("L")`` uses)."""
    if raw.train_x.shape[1:] == (size, size, channels):
        return raw
    return RawData(resize_images(raw.train_x, size, channels), raw.train_y, resize_images(raw.test_x, size, channels),
                   raw.test_y, raw.classes, f"{raw.fingerprint}-{channels}x{size}")  # fmt: skip


def resize_images(x: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` images as ``(N, size, size, channels)`` (see :func:`resize_raw`), in float32 a chunk
    of images at a time: all of CIFAR-10 at 224 pixels would be 36 GB of floats at once."""
    if x.shape[1:] == (size, size, channels):
        return x
    import torch
    import torch.nn.functional as F

    out = np.empty((len(x), size, size, channels), np.uint8)
    for start in range(0, len(x), RESIZE_CHUNK):
        # (n, H, W, C) -> (n, C, H, W)
        t = torch.from_numpy(x[start : start + RESIZE_CHUNK]).permute(0, 3, 1, 2).float()
        if channels == 1 and t.shape[1] == 3:
            t = (t * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if t.shape[-1] != size:
            t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + RESIZE_CHUNK] = t.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def _report_unreadable(unreadable: list[tuple[str, str]], where: str, skip: bool) -> None:
    """One DataError for all the unreadable files (``(name, why)``), or, when skipping them, one log line."""
    if not unreadable:
        return
    shown = ", ".join(f"{name} ({why})" for name, why in unreadable[:SHOWN_UNREADABLE])
    more = f" and {len(unreadable) - SHOWN_UNREADABLE} more" if len(unreadable) > SHOWN_UNREADABLE else ""
    files = f"{len(unreadable)} image file{'s' if len(unreadable) > 1 else ''} in {where}"
    formats = "PNG, JPEG, BMP or WebP"  # IMAGE_FORMATS, as a person names them
    them = "them" if len(unreadable) > 1 else "it"
    if not skip:
        raise DataError(
            f"cannot read {files}: {shown}{more}; fix or delete {them} (images are read as {formats} only), or "
            f"set data.skip_unreadable=true to leave {them} out."
        )
    from lightning.pytorch.utilities import rank_zero_info  # here: importing Lightning takes seconds

    rank_zero_info(f"data.skip_unreadable: left out {files} that cannot be read: {shown}{more}.")


def _fingerprint(entries: list[tuple]) -> str:
    digest = hashlib.sha1(repr((CACHE_VERSION, entries)).encode())
    return digest.hexdigest()[:16]


def load_image_folder(
    root: Path, cache: bool = True, skip_unreadable: bool = False, size: int = CIFAR_SIZE, channels: int = 3
) -> RawData:
    """Decode ``root/train/<class>/*`` and ``root/test/<class>/*`` to ``(size, size, channels)`` uint8 images (see
    :func:`decode`), cached next to the folder; the cache holds one size: another size decodes again.

    ``root/test`` is optional: without it the test arrays are empty and the DataModule carves a test split.
    Unreadable files are a DataError naming them, or with ``skip_unreadable`` are left out (and the cache
    remembers them, so a later run without the option refuses the folder too).
    """
    listing = list_image_folder(root)
    count = sum(len(items) for items in listing.splits.values())
    check_memory(count, size, channels, 2, f"the images of {root}")  # decoded one by one, then stacked: 2 copies
    fingerprint = listing.fingerprint(size, channels)
    cache_file = root / CACHE_NAME
    with _cache_lock(root) if cache else nullcontext():  # runs started together decode once; the others wait
        # checked under the lock: maybe just written
        found = _read_cache(cache_file, fingerprint, listing, size, channels) if cache else None
        if found is None:
            found = _decode_folder(listing, fingerprint, size, channels)
            if cache and (skip_unreadable or not found[1]):  # a refused folder is left as it was
                _write_cache(cache_file, *found)
    data, unreadable = found
    _report_unreadable(unreadable, str(root), skip_unreadable)
    return data


def _decode_folder(
    listing: FolderListing, fingerprint: str, size: int, channels: int
) -> tuple[RawData, list[tuple[str, str]]]:
    """The images of every split that decode, and ``(path relative to the folder, why)`` of those that do not."""
    arrays, unreadable = {}, []
    for split, items in listing.splits.items():
        x, kept, failed = _decode_all([item[0] for item in items], size, channels)
        labels = np.array([item[1] for item in items], dtype=np.int64)
        arrays[split] = (x, labels[kept])  # the labels of the images that decoded, in the same order
        unreadable += [(items[i][0][listing.rel :], why) for i, why in failed]
    empty = (np.zeros((0, size, size, channels), np.uint8), np.zeros(0, np.int64))
    test_x, test_y = arrays.get("test", empty)
    train_x, train_y = arrays["train"]
    return RawData(train_x, train_y, test_x, test_y, listing.classes, fingerprint), unreadable


def load_unlabelled_folder(
    folder: Path, skip_unreadable: bool = False, size: int = CIFAR_SIZE, channels: int = 3
) -> tuple[np.ndarray, list[str]]:
    """Decode the images directly in ``folder`` (not in sub-folders), sorted by name, as :func:`decode` does.

    Returns uint8 ``(N, size, size, channels)`` images and their file-name stems, the ids of a predictions CSV.
    Unreadable files are a DataError naming them, or with ``skip_unreadable`` are left out; entries that are not
    regular files are left out and named in one log line.
    """
    option = f"data.predict_dir={str(folder)!r}"
    if not folder.is_dir():
        raise DataError(f"{option} is not a folder; point it at a folder of images to predict.")
    items, skipped = _list_images(folder, skip_hidden=True)
    _report_skipped(skipped, option, len(str(folder)) + 1)
    paths = [path for path, _, _ in items]
    if not paths:
        nested = any(p.is_dir() for p in folder.iterdir())
        hint = "; images in sub-folders are not read, put them in the folder itself" if nested else ""
        raise DataError(f"{option} has no images ({', '.join(IMAGE_EXTENSIONS)}){hint}.")
    stems = [Path(p).stem for p in paths]
    seen: dict[str, str] = {}
    for path, stem in zip(paths, stems, strict=True):
        if not _is_utf8(stem):
            raise DataError(
                f"{option}: the name of {os.fsencode(path)!r} is not UTF-8, and it would be its id in the predictions "
                "CSV, which is UTF-8: rename it (e.g. convmv -f latin1 -t utf8)."
            )
        if stem in seen:
            raise DataError(
                f"{seen[stem]} and {path} share the name {stem!r}, which is their id in the predictions CSV: "
                "rename one of them."
            )
        seen[stem] = path
    check_memory(len(paths), size, channels, 2, f"the images of {option}")  # decoded, then stacked: 2 copies
    x, kept, failed = _decode_all(paths, size, channels)
    unreadable = [(Path(paths[i]).name, why) for i, why in failed]
    if skip_unreadable and not len(kept):  # leaving them out would leave nothing to predict
        raise DataError(f"{option}: none of its {len(paths)} images can be read; fix or replace them.")
    _report_unreadable(unreadable, option, skip_unreadable)
    return x, [stems[i] for i in kept]


@contextmanager
def _cache_lock(root: Path) -> Iterator[None]:
    """Hold ``root/.cifarlit-cache.lock``; where it cannot be created (a read-only folder, which gets no cache
    either) go on without it."""
    lock_file = root / LOCK_NAME
    try:  # created here because FileLock would retry a failing open until its timeout, forever by default
        os.close(os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666))
    except OSError:
        yield
        return
    with FileLock(lock_file):
        yield


class _CacheMismatch(Exception):
    """A cache whose arrays are not what the folder's listing says they must be."""


def _read_cache(
    cache_file: Path, fingerprint: str, listing: FolderListing, size: int, channels: int
) -> tuple[RawData, list[tuple[str, str]]] | None:
    """The cached images of ``listing``, or None (with one warning) when the cache is absent, stale, damaged or
    holds arrays of other shapes, types, labels or classes than the listed files give: it is rebuilt, never used."""
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            headers = _npy_headers(z)
            _expect_strings(headers, "fingerprint", ())
            if str(z["fingerprint"]) != fingerprint:
                warnings.warn(
                    f"{cache_file} is stale (the image folder changed); decoding the images again.",
                    stacklevel=3,
                )
                return None
            return _cached(z, headers, listing, size, channels, fingerprint)
    except _CacheMismatch as err:
        warnings.warn(
            f"{cache_file} does not match the folder it claims to cache ({err}); decoding the images again.",
            stacklevel=3,
        )
    except Exception as err:  # a truncated or foreign file: rebuild rather than trust it
        warnings.warn(
            f"{cache_file} is unreadable ({err.__class__.__name__}); decoding the images again.", stacklevel=3
        )
    return None


def _npy_headers(z) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{name: (shape, dtype)}`` of every array in an open ``.npz``, read from the headers before any array is,
    so a cache that says it holds more than the folder never makes numpy allocate it."""
    headers = {}
    for member in z.zip.namelist():
        with z.zip.open(member) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        headers[member.removesuffix(".npy")] = (shape, dtype)
    return headers


def _expect(headers: dict, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if name not in headers:
        raise _CacheMismatch(f"it has no {name}")
    if headers[name] != (shape, dtype):
        found_shape, found_dtype = headers[name]
        raise _CacheMismatch(f"{name} is {found_dtype} {found_shape} where the folder gives {dtype} {shape}")


def _expect_strings(headers: dict, name: str, shape: tuple[int, ...] | None, most: int = 0) -> None:
    """Strings of at most 4,096 characters (a path's limit); ``shape`` None: up to ``most`` of them."""
    if name not in headers:
        raise _CacheMismatch(f"it has no {name}")
    found_shape, dtype = headers[name]
    fits = found_shape == shape if shape is not None else len(found_shape) == 1 and found_shape[0] <= most
    if dtype.kind != "U" or dtype.itemsize > 4 * 4096 or not fits:
        raise _CacheMismatch(f"{name} is {dtype} {found_shape}, not the strings the folder gives")


def _cached(
    z, headers: dict, listing: FolderListing, size: int, channels: int, fingerprint: str
) -> tuple[RawData, list[tuple[str, str]]]:
    """The arrays of a cache with the right fingerprint, each checked against what the listed files give."""
    files = {path[listing.rel :]: label for items in listing.splits.values() for path, label, _, _ in items}
    _expect_strings(headers, "classes", (len(listing.classes),))
    classes = tuple(str(c) for c in z["classes"])
    if classes != listing.classes:
        raise _CacheMismatch(f"its classes {list(classes)} are not the folders' {list(listing.classes)}")
    unreadable: list[tuple[str, str]] = []
    if "unreadable" in headers:  # caches written before files could be skipped have no list: they hold every file
        _expect_strings(headers, "unreadable", None, len(files))
        _expect_strings(headers, "unreadable_why", headers["unreadable"][0])
        unreadable = [(str(name), str(why)) for name, why in zip(z["unreadable"], z["unreadable_why"], strict=True)]
    left_out = {name for name, _ in unreadable}
    if len(left_out) != len(unreadable) or not left_out <= files.keys():
        raise _CacheMismatch("it leaves out files the folder does not have")
    arrays = {}
    for split in ("train", "test"):
        items = listing.splits.get(split, [])
        labels = np.array([label for path, label, _, _ in items if path[listing.rel :] not in left_out], np.int64)
        _expect(headers, f"{split}_x", (len(labels), size, size, channels), np.dtype(np.uint8))
        _expect(headers, f"{split}_y", (len(labels),), np.dtype(np.int64))
        if not np.array_equal(z[f"{split}_y"], labels):
            raise _CacheMismatch(f"its {split} labels are not those of the class folders its images are in")
        arrays[split] = (z[f"{split}_x"], labels)
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    return RawData(train_x, train_y, test_x, test_y, listing.classes, fingerprint), unreadable


def _write_cache(cache_file: Path, data: RawData, unreadable: list[tuple[str, str]]) -> None:
    # Write to a temporary name and rename, so a crash mid-write never leaves a half cache under the real name;
    # only the real name is ever read.
    _remove_leftovers(cache_file.parent)
    tmp = cache_file.with_name(f"{cache_file.name}.{_owner()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                train_x=data.train_x, train_y=data.train_y, test_x=data.test_x, test_y=data.test_y,
                classes=np.array(data.classes), fingerprint=np.array(data.fingerprint),
                # plain string arrays, readable with allow_pickle=False
                unreadable=np.array([name for name, _ in unreadable], dtype=str),
                unreadable_why=np.array([why for _, why in unreadable], dtype=str),
            )  # fmt: skip
        os.replace(tmp, cache_file)
    except OSError as err:  # a read-only data folder still trains, just without the cache
        tmp.unlink(missing_ok=True)
        warnings.warn(
            f"could not write the decode cache {cache_file} ({err}); images will be decoded each run.",
            stacklevel=3,
        )

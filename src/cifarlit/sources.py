"""Where the pixels come from: CIFAR-10's pickle batches or an image folder, decoded once to uint8 arrays.

Both sources give the same thing, a :class:`RawData` of ``(N, size, size, channels)`` uint8 images (32x32 RGB
unless the data options say otherwise) with int64 labels for the official train and test sets. Image folders are
slow to decode (tens of seconds for CIFAR-10's 60,000 JPEGs on 2 cores, with a progress bar), so the decoded
arrays are cached in one ``.npz`` file next to the folder, keyed by a fingerprint of the file names, sizes and
modification times and the image size: a changed folder or a damaged cache is rebuilt, never used.

Nothing read from disk is trusted: the pickle batches are read by an unpickler that can only rebuild numpy
arrays, every unreadable image is reported in one error, the archive and the cache are written under temporary
names and renamed into place, and a lock makes runs started together decode a folder once.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import socket
import tarfile
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from filelock import FileLock

from cifarlit.errors import CifarlitError
from cifarlit.files import left_by_dead_process as _left_by_dead_process
from cifarlit.files import owner as _owner

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
PICKLE_DIR = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CACHE_NAME = ".cifarlit-cache.npz"
LOCK_NAME = ".cifarlit-cache.lock"  # held while a run checks, decodes and writes the cache
EXTRACT_PREFIX = ".cifarlit-extract-"  # + host-pid: the archive is unpacked here, then moved into place
CACHE_VERSION = 1
CIFAR_SIZE = 32  # CIFAR-10's images are 32x32 RGB; other sizes and channel counts are the data options'
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
    """The sorted names of the sub-folders of ``split_dir`` (hidden ones left out): one per class."""
    return tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")))


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
    """Class names without decoding anything (CIFAR-10's own for the pickle format)."""
    return folder_classes(root) if detect_format(root) == "folder" else CIFAR10_CLASSES


def ensure_available(root: Path, download: bool) -> None:
    """Make sure ``root`` holds a dataset, extracting or downloading CIFAR-10 only when nothing is there."""
    fmt = detect_format(root)
    if fmt in ("pickle", "folder"):
        return
    if fmt == "archive":
        _extract(root / ARCHIVE, root)
        return
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
    _remove_leftovers(root)
    tmp = root / f"{EXTRACT_PREFIX}{_owner()}"
    try:
        try:
            with open(archive, "rb") as raw, _reading(raw, archive.stat().st_size, "extracting") as f:
                with tarfile.open(fileobj=f, mode="r:gz") as tar:
                    tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as err:
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
        return resize_raw(load_pickle_batches(root / PICKLE_DIR), size, channels)
    if fmt == "folder":
        return load_image_folder(root, cache=cache, skip_unreadable=skip_unreadable, size=size, channels=channels)
    raise DataError(f"data.data_dir={str(root)!r} holds no dataset: {HOW_TO_GET_DATA}.")


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
        with open(path, "rb") as f:
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


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    entry = _unpickle(path)
    try:
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # (N, 3072) -> (N, 3, 32, 32)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
        if labels.shape != (len(data),):
            raise ValueError("labels and images differ in number")
    except Exception as err:  # a dict without the arrays of a batch
        raise DataError(
            f"{path} is not a valid CIFAR-10 batch ({err.__class__.__name__}: {err}); {REDO_PICKLES}."
        ) from None
    return data.transpose(0, 2, 3, 1), labels  # (N, 3, H, W) -> (N, H, W, 3)


def load_pickle_batches(folder: Path) -> RawData:
    """Read ``data_batch_*`` and ``test_batch`` from a ``cifar-10-batches-py`` folder."""
    train_files = sorted(folder.glob("data_batch_*"))
    if not train_files or not (folder / "test_batch").is_file():
        raise DataError(f"{folder} must contain data_batch_1..5 and test_batch; extract or download CIFAR-10 again.")
    parts = [_read_batch(p) for p in train_files]
    test_x, test_y = _read_batch(folder / "test_batch")
    classes = CIFAR10_CLASSES
    meta = folder / "batches.meta"
    if meta.is_file():
        names = _unpickle(meta).get("label_names")
        if not isinstance(names, list):
            raise DataError(f"{meta} is not CIFAR-10's batches.meta (it has no list of label_names); {REDO_PICKLES}.")
        classes = tuple(names)
    files = [*train_files, folder / "test_batch"]
    return RawData(
        train_x=np.concatenate([p[0] for p in parts]),
        train_y=np.concatenate([p[1] for p in parts]),
        test_x=test_x,
        test_y=test_y,
        classes=classes,
        fingerprint=_fingerprint([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]),
    )


# --- image folders ----------------------------------------------------------------------------------------------


def _list_split(split_dir: Path, classes: tuple[str, ...]) -> list[tuple[str, int, int, int]]:
    """``(path, label, size, mtime_ns)`` of every image, with plain strings: pathlib sorting 60,000 files is slow."""
    items = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            raise DataError(
                f"{split_dir} has no folder {name!r}, but {split_dir.parent / 'train'} does: train and test must "
                f"have the same class folders."
            )
        entries = sorted(
            (e for e in os.scandir(class_dir) if e.name.lower().endswith(IMAGE_EXTENSIONS)),
            key=lambda e: e.name,
        )
        if not entries:
            raise DataError(
                f"class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}); add some or remove it."
            )
        for e in entries:
            st = e.stat()
            items.append((e.path, label, st.st_size, st.st_mtime_ns))
    return items


def decode(path: str, size: int = CIFAR_SIZE, channels: int = 3) -> np.ndarray:
    """One image file as uint8 ``(size, size, channels)``: converted to RGB (or gray), its shorter side resized to
    ``size`` and the middle cut out (PIL's ``ImageOps.fit``), so nothing is stretched; PIL's exception when it
    cannot be read."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = im.convert("RGB" if channels == 3 else "L")
        if im.size != (size, size):
            im = ImageOps.fit(im, (size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8).reshape(size, size, channels)


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
    """uint8 ``(N, H, W, C)`` images as ``(N, size, size, channels)`` (see :func:`resize_raw`)."""
    if x.shape[1:] == (size, size, channels):
        return x
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(x).permute(0, 3, 1, 2).float()  # (N, H, W, C) -> (N, C, H, W)
    if channels == 1 and t.shape[1] == 3:
        t = (t * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if t.shape[-1] != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _report_unreadable(unreadable: list[tuple[str, str]], where: str, skip: bool) -> None:
    """One DataError for all the unreadable files (``(name, why)``), or, when skipping them, one log line."""
    if not unreadable:
        return
    shown = ", ".join(f"{name} ({why})" for name, why in unreadable[:SHOWN_UNREADABLE])
    more = f" and {len(unreadable) - SHOWN_UNREADABLE} more" if len(unreadable) > SHOWN_UNREADABLE else ""
    files = f"{len(unreadable)} image file{'s' if len(unreadable) > 1 else ''} in {where}"
    them = "them" if len(unreadable) > 1 else "it"
    if not skip:
        raise DataError(
            f"cannot read {files}: {shown}{more}; fix or delete {them}, or set data.skip_unreadable=true to leave "
            f"{them} out."
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
    classes = folder_classes(root)
    splits = {"train": _list_split(root / "train", classes)}
    if (root / "test").is_dir():
        test_classes = _class_dirs(root / "test")
        if test_classes != classes:
            raise DataError(
                f"class folders differ between {root / 'train'} {list(classes)} and {root / 'test'} "
                f"{list(test_classes)}: give both the same classes."
            )
        splits["test"] = _list_split(root / "test", classes)
    rel = len(str(root)) + 1  # the fingerprint must not change when the folder is moved
    listing = [(path[rel:], size, mtime) for items in splits.values() for path, _, size, mtime in items]
    fingerprint = _fingerprint([classes, (size, channels), *listing])

    cache_file = root / CACHE_NAME
    with _cache_lock(root) if cache else nullcontext():  # runs started together decode once; the others wait
        found = _read_cache(cache_file, fingerprint) if cache else None  # checked under the lock: maybe just written
        if found is None:
            found = _decode_folder(splits, classes, fingerprint, rel, size, channels)
            if cache and (skip_unreadable or not found[1]):  # a refused folder is left as it was
                _write_cache(cache_file, *found)
    data, unreadable = found
    _report_unreadable(unreadable, str(root), skip_unreadable)
    return data


def _decode_folder(
    splits: dict[str, list[tuple[str, int, int, int]]], classes: tuple[str, ...], fingerprint: str, rel: int,
    size: int, channels: int,
) -> tuple[RawData, list[tuple[str, str]]]:  # fmt: skip
    """The images of every split that decode, and ``(path relative to the folder, why)`` of those that do not."""
    arrays, unreadable = {}, []
    for split, items in splits.items():
        x, kept, failed = _decode_all([item[0] for item in items], size, channels)
        labels = np.array([item[1] for item in items], dtype=np.int64)
        arrays[split] = (x, labels[kept])  # the labels of the images that decoded, in the same order
        unreadable += [(items[i][0][rel:], why) for i, why in failed]
    empty = (np.zeros((0, size, size, channels), np.uint8), np.zeros(0, np.int64))
    test_x, test_y = arrays.get("test", empty)
    return RawData(arrays["train"][0], arrays["train"][1], test_x, test_y, classes, fingerprint), unreadable


def load_unlabelled_folder(
    folder: Path, skip_unreadable: bool = False, size: int = CIFAR_SIZE, channels: int = 3
) -> tuple[np.ndarray, list[str]]:
    """Decode the images directly in ``folder`` (not in sub-folders), sorted by name, as :func:`decode` does.

    Returns uint8 ``(N, size, size, channels)`` images and their file-name stems, the ids of a predictions CSV.
    Unreadable files are a DataError naming them, or with ``skip_unreadable`` are left out.
    """
    option = f"data.predict_dir={str(folder)!r}"
    if not folder.is_dir():
        raise DataError(f"{option} is not a folder; point it at a folder of images to predict.")
    entries = sorted(
        (e for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")),
        key=lambda e: e.name,
    )
    paths = [e.path for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
        nested = any(p.is_dir() for p in folder.iterdir())
        hint = "; images in sub-folders are not read, put them in the folder itself" if nested else ""
        raise DataError(f"{option} has no images ({', '.join(IMAGE_EXTENSIONS)}){hint}.")
    stems = [Path(p).stem for p in paths]
    seen: dict[str, str] = {}
    for path, stem in zip(paths, stems, strict=True):
        if stem in seen:
            raise DataError(
                f"{seen[stem]} and {path} share the name {stem!r}, which is their id in the predictions CSV: "
                "rename one of them."
            )
        seen[stem] = path
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


def _read_cache(cache_file: Path, fingerprint: str) -> tuple[RawData, list[tuple[str, str]]] | None:
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint:
                warnings.warn(
                    f"{cache_file} is stale (the image folder changed); decoding the images again.",
                    stacklevel=3,
                )
                return None
            data = RawData(
                z["train_x"],
                z["train_y"],
                z["test_x"],
                z["test_y"],
                tuple(str(c) for c in z["classes"]),
                fingerprint,
            )
            # Caches written before files could be skipped have no list: they hold every file.
            skipped = zip(z["unreadable"], z["unreadable_why"], strict=True) if "unreadable" in z.files else ()
            return data, [(str(name), str(why)) for name, why in skipped]
    except Exception as err:  # a truncated or foreign file: rebuild rather than trust it
        warnings.warn(
            f"{cache_file} is unreadable ({err.__class__.__name__}); decoding the images again.", stacklevel=3
        )
        return None


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

"""Image files: listed without being opened, opened only when regular, decoded only as the raster formats of
:data:`IMAGE_FORMATS`.

An image folder is ``ROOT/train/<class>/*`` (and ``ROOT/test/<class>/*``): the sorted sub-folders are the
classes, in UTF-8. Entries with an image's name that are not regular files (a FIFO would block a reader forever,
a device never ends) are left out and named in one log line; every file that does not decode is named in one
error, or with ``data.skip_unreadable`` left out. Decoding resizes by the shorter side and keeps the middle, so
nothing is stretched; Pillow never hands a file to another program (EPS and PS would go to Ghostscript).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from cifarlit.data import DataError

if TYPE_CHECKING:
    from PIL import Image

CIFAR_SIZE = 32  # CIFAR-10's images are 32x32 RGB; other sizes and channel counts are the data options'
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")  # what Pillow may open them as, whatever the name says
FORMATS_NAMED = "PNG, JPEG, BMP or WebP"  # IMAGE_FORMATS, as a person names them
FINGERPRINT_VERSION = 1  # part of every file fingerprint: a new version makes every decode cache stale
PROGRESS_FROM = 1000  # files: a decode of fewer ends before a progress bar would help
PROGRESS_BYTES_FROM = 50 * 2**20  # likewise, for reading one file
SHOWN_UNREADABLE = 5  # files named in the message about unreadable images; the count covers the rest


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


def fingerprint(entries: list[tuple]) -> str:
    """A short id of file names, sizes and times (and whatever else decides what was read from them)."""
    return hashlib.sha1(repr((FINGERPRINT_VERSION, entries)).encode()).hexdigest()[:16]


def is_utf8(name: str) -> bool:
    """Whether a file name read from disk is valid UTF-8 (Python keeps other bytes as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def class_dirs(split_dir: Path) -> tuple[str, ...]:
    """The sorted names of the sub-folders of ``split_dir`` (hidden ones left out): one per class.

    A name that is not UTF-8 is refused: class names go into checkpoints and the per-class CSV files, which are
    UTF-8, and Python holds such a name with stand-in characters that neither can store.
    """
    names = tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")))
    for name in names:
        if not is_utf8(name):
            raise DataError(
                f"class folder {os.fsencode(split_dir / name)!r} is not named in UTF-8, and class names go into "
                "checkpoints and CSV files, which are UTF-8: rename it (e.g. convmv -f latin1 -t utf8)."
            )
    return names


def folder_classes(root: Path) -> tuple[str, ...]:
    """Class names of an image folder: the sorted sub-folders of ``root/train``, at least 2 of them.

    Checked here, where the names are first read, so the user hears about the folder before a model is built with
    a class count they never set.
    """
    train = root / "train"
    classes = class_dirs(train)
    if not classes:
        raise DataError(f"{train} has no class folders; lay images out as {root}/train/<class>/*.png.")
    if len(classes) == 1:
        raise DataError(
            f"{train} has one class folder ({classes[0]!r}); a classifier needs at least 2: add a folder per class."
        )
    return classes


def list_images(folder: Path, skip_hidden: bool = False) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]]]:
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


def report_skipped(skipped: list[tuple[str, str]], where: str, rel: int) -> None:
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
    """``(path, label, size, mtime_ns)`` of every image, by class then name (see :func:`list_images`); the
    entries left out are added to ``skipped``."""
    items = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            raise DataError(
                f"{split_dir} has no folder {name!r}, but {split_dir.parent / 'train'} does: train and test must "
                f"have the same class folders."
            )
        found, left_out = list_images(class_dir)
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
        return fingerprint([self.classes, (size, channels), *files])

    def labels(self, split: str) -> np.ndarray:
        """The int64 labels of a split's files, in listing order."""
        return np.array([item[1] for item in self.splits[split]], dtype=np.int64)


def list_image_folder(root: Path) -> FolderListing:
    """The files of ``root/train/<class>/*`` and, when there, ``root/test/<class>/*``; one log line names the
    entries left out because they are not regular files."""
    classes = folder_classes(root)
    skipped: list[tuple[str, str]] = []
    splits = {"train": _list_split(root / "train", classes, skipped)}
    if (root / "test").is_dir():
        test_classes = class_dirs(root / "test")
        if test_classes != classes:
            raise DataError(
                f"class folders differ between {root / 'train'} {list(classes)} and {root / 'test'} "
                f"{list(test_classes)}: give both the same classes."
            )
        splits["test"] = _list_split(root / "test", classes, skipped)
    report_skipped(skipped, str(root), len(str(root)) + 1)
    return FolderListing(root, classes, splits)


def decode(source: str | os.PathLike | BinaryIO, size: int = CIFAR_SIZE, channels: int = 3) -> np.ndarray:
    """One image (a path, or a binary file object such as ``io.BytesIO``) as uint8 ``(size, size, channels)``:
    converted to RGB (or gray), its shorter side resized to ``size`` and the middle cut out (PIL's
    ``ImageOps.fit``), so nothing is stretched; PIL's exception (or :class:`NotRegularFile`) when it cannot be
    read. Only the formats of :data:`IMAGE_FORMATS` are tried, whatever the file is named."""
    from PIL import Image, ImageOps

    opened = open_regular(source) if isinstance(source, str | os.PathLike) else nullcontext(source)
    with opened as f, Image.open(f, formats=IMAGE_FORMATS) as im:
        im = eight_bits(im).convert("RGB" if channels == 3 else "L")
        if im.size != (size, size):
            im = ImageOps.fit(im, (size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8).reshape(size, size, channels)


def eight_bits(im: Image.Image) -> Image.Image:
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


def decode_all(paths: list[str], size: int, channels: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Decode every file, so one run finds all damaged ones: ``(N, size, size, channels)`` images of those that
    decode, their positions in ``paths``, and ``(position, why)`` of the others."""
    decode_one = partial(_try_decode, size=size, channels=channels)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        results = list(progress(pool.map(decode_one, paths, chunksize=64), len(paths), "decoding images"))
    kept = [i for i, r in enumerate(results) if isinstance(r, np.ndarray)]
    failed = [(i, r) for i, r in enumerate(results) if not isinstance(r, np.ndarray)]
    x = np.stack([results[i] for i in kept]) if kept else np.zeros((0, size, size, channels), np.uint8)
    return x, np.array(kept, dtype=np.int64), failed


def report_unreadable(unreadable: list[tuple[str, str]], where: str, skip: bool) -> None:
    """One DataError for all the unreadable files (``(name, why)``), or, when skipping them, one log line."""
    if not unreadable:
        return
    shown = ", ".join(f"{name} ({why})" for name, why in unreadable[:SHOWN_UNREADABLE])
    more = f" and {len(unreadable) - SHOWN_UNREADABLE} more" if len(unreadable) > SHOWN_UNREADABLE else ""
    files = f"{len(unreadable)} image file{'s' if len(unreadable) > 1 else ''} in {where}"
    them = "them" if len(unreadable) > 1 else "it"
    if not skip:
        raise DataError(
            f"cannot read {files}: {shown}{more}; fix or delete {them} (images are read as {FORMATS_NAMED} only), or "
            f"set data.skip_unreadable=true to leave {them} out."
        )
    from lightning.pytorch.utilities import rank_zero_info  # here: importing Lightning takes seconds

    rank_zero_info(f"data.skip_unreadable: left out {files} that cannot be read: {shown}{more}.")


def progress(items: Iterable, total: int, what: str) -> Iterable:
    """``items`` with a progress bar (counts, rate, time left) on stderr, for long one-time work only: shown by
    the first process of a run (rank 0) when ``total`` is large enough to take a while."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only
    from tqdm import tqdm

    if total < PROGRESS_FROM or rank_zero_only.rank != 0:
        return items
    return tqdm(items, total=total, desc=what, unit=" files", mininterval=1.0, leave=False)


def reading(f: BinaryIO, size: int, what: str):
    """``f`` read with a progress bar in bytes (rank 0, large files only), or as it is."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only
    from tqdm import tqdm

    if size < PROGRESS_BYTES_FROM or rank_zero_only.rank != 0:
        return nullcontext(f)
    return tqdm.wrapattr(f, "read", total=size, desc=what, unit="B", unit_scale=True, mininterval=1.0, leave=False)

"""Where the pixels come from: CIFAR-10's pickle batches or an image folder, decoded once to uint8 arrays.

Both sources give the same thing, a :class:`~cifarlit.data.RawData` of ``(N, size, size, channels)`` uint8 images
(32x32 RGB unless the data options say otherwise) with int64 labels for the official train and test sets. An image
folder is slow to decode (with a progress bar), so its arrays are cached next to it (:mod:`cifarlit.data.cache`).
The readers this module calls each hold one kind of file: :mod:`~cifarlit.data.pickles` (the batches, read without
running code), :mod:`~cifarlit.data.archive` (the release's archive), :mod:`~cifarlit.data.images` (image
files). Before anything is decoded, the images must fit in the memory available: a size too large is refused
with the largest that would fit.
"""

from __future__ import annotations

import math
import os
import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from cifarlit.data import DataError, RawData, archive
from cifarlit.data import cache as decode_cache  # `cache` is load()'s option
from cifarlit.data.archive import ARCHIVE, EXTRACT_PREFIX, HOW_TO_GET_DATA
from cifarlit.data.images import (
    CIFAR_SIZE,
    IMAGE_EXTENSIONS,
    FolderListing,
    decode_all,
    folder_classes,
    is_utf8,
    list_image_folder,
    list_images,
    report_skipped,
    report_unreadable,
)
from cifarlit.data.pickles import CIFAR10_CLASSES, PICKLE_DIR, load_pickle_batches, pickle_classes
from cifarlit.utils.files import left_by_dead_process

RESIZE_CHUNK = 1024  # images resized in float32 at once


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


def class_names(root: Path, keep: list[str] | None = None) -> tuple[str, ...]:
    """Class names without decoding anything: the folders', or the pickle batches' ``batches.meta``; with ``keep``
    (``data.keep_classes``), those of them, in that order."""
    fmt = detect_format(root)
    if fmt == "folder":
        available = folder_classes(root)
    else:
        available = pickle_classes(root / PICKLE_DIR) if fmt == "pickle" else CIFAR10_CLASSES
    if keep is None:
        return available
    if any(c not in available for c in keep) or len(set(keep)) != len(keep) or len(keep) < 2:
        raise DataError(
            f"data.keep_classes={list(keep)} is not valid: name at least 2 distinct classes of {list(available)}."
        )
    return tuple(keep)


def ensure_available(root: Path, download: bool) -> None:
    """Make sure ``root`` holds a dataset, extracting or downloading CIFAR-10 only when nothing is there."""
    fmt = detect_format(root)
    if fmt in ("pickle", "folder"):
        return
    if fmt == "archive":
        remove_leftovers(root, (EXTRACT_PREFIX, ""))
        archive.extract(root / ARCHIVE, root)
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
    archive.download(root)


def remove_leftovers(folder: Path, *names: tuple[str, str]) -> None:
    """Delete the entries of ``folder`` named ``prefix + owner + suffix`` (for each ``(prefix, suffix)`` of
    ``names``) whose owner is a process of this machine that is gone: the temporary folders and files of runs
    killed while writing them. Nothing reads them, but they can be as large as the dataset."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        for prefix, suffix in names:
            if entry.name.startswith(prefix) and entry.name.endswith(suffix):
                if left_by_dead_process(entry.name[len(prefix) : len(entry.name) - len(suffix)]):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        Path(entry.path).unlink(missing_ok=True)
                break


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


def load_image_folder(
    root: Path, cache: bool = True, skip_unreadable: bool = False, size: int = CIFAR_SIZE, channels: int = 3
) -> RawData:
    """Decode ``root/train/<class>/*`` and ``root/test/<class>/*`` to ``(size, size, channels)`` uint8 images (see
    :func:`cifarlit.data.images.decode`), cached next to the folder; the cache holds one size: another size
    decodes again.

    ``root/test`` is optional: without it the test arrays are empty and the DataModule carves a test split.
    Unreadable files are a DataError naming them, or with ``skip_unreadable`` are left out (and the cache
    remembers them, so a later run without the option refuses the folder too).
    """
    listing = list_image_folder(root)
    count = sum(len(items) for items in listing.splits.values())
    check_memory(count, size, channels, 2, f"the images of {root}")  # decoded one by one, then stacked: 2 copies
    fingerprint = listing.fingerprint(size, channels)
    cache_file = root / decode_cache.CACHE_NAME
    with decode_cache.lock(root) if cache else nullcontext():  # runs started together decode once; others wait
        # checked under the lock: maybe just written
        found = decode_cache.read(cache_file, fingerprint, listing, size, channels) if cache else None
        if found is None:
            found = _decode_folder(listing, fingerprint, size, channels)
            if cache and (skip_unreadable or not found[1]):  # a refused folder is left as it was
                remove_leftovers(root, (f"{decode_cache.CACHE_NAME}.", ".tmp"))
                decode_cache.write(cache_file, *found)
    data, unreadable = found
    report_unreadable(unreadable, str(root), skip_unreadable)
    return data


def _decode_folder(
    listing: FolderListing, fingerprint: str, size: int, channels: int
) -> tuple[RawData, list[tuple[str, str]]]:
    """The images of every split that decode, and ``(path relative to the folder, why)`` of those that do not."""
    arrays, unreadable = {}, []
    for split, items in listing.splits.items():
        x, kept, failed = decode_all([item[0] for item in items], size, channels)
        arrays[split] = (x, listing.labels(split)[kept])  # the labels of the images that decoded, in order
        unreadable += [(items[i][0][listing.rel :], why) for i, why in failed]
    empty = (np.zeros((0, size, size, channels), np.uint8), np.zeros(0, np.int64))
    test_x, test_y = arrays.get("test", empty)
    train_x, train_y = arrays["train"]
    return RawData(train_x, train_y, test_x, test_y, listing.classes, fingerprint), unreadable


def load_unlabelled_folder(
    folder: Path, skip_unreadable: bool = False, size: int = CIFAR_SIZE, channels: int = 3
) -> tuple[np.ndarray, list[str]]:
    """Decode the images directly in ``folder`` (not in sub-folders), sorted by name, as ``images.decode`` does.

    Returns uint8 ``(N, size, size, channels)`` images and their file-name stems, the ids of a predictions CSV.
    Unreadable files are a DataError naming them, or with ``skip_unreadable`` are left out; entries that are not
    regular files are left out and named in one log line.
    """
    option = f"data.predict_dir={str(folder)!r}"
    if not folder.is_dir():
        raise DataError(f"{option} is not a folder; point it at a folder of images to predict.")
    items, skipped = list_images(folder, skip_hidden=True)
    report_skipped(skipped, option, len(str(folder)) + 1)
    paths = [path for path, _, _ in items]
    if not paths:
        nested = any(p.is_dir() for p in folder.iterdir())
        hint = "; images in sub-folders are not read, put them in the folder itself" if nested else ""
        raise DataError(f"{option} has no images ({', '.join(IMAGE_EXTENSIONS)}){hint}.")
    stems = _prediction_ids(paths, option)
    check_memory(len(paths), size, channels, 2, f"the images of {option}")  # decoded, then stacked: 2 copies
    x, kept, failed = decode_all(paths, size, channels)
    unreadable = [(Path(paths[i]).name, why) for i, why in failed]
    if skip_unreadable and not len(kept):  # leaving them out would leave nothing to predict
        raise DataError(f"{option}: none of its {len(paths)} images can be read; fix or replace them.")
    report_unreadable(unreadable, option, skip_unreadable)
    return x, [stems[i] for i in kept]


def _prediction_ids(paths: list[str], option: str) -> list[str]:
    """The file-name stems of ``paths``: each a distinct UTF-8 id, as the predictions CSV needs."""
    stems = [Path(p).stem for p in paths]
    seen: dict[str, str] = {}
    for path, stem in zip(paths, stems, strict=True):
        if not is_utf8(stem):
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
    return stems


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


def sized_fingerprint(fingerprint: str, size: int, channels: int) -> str:
    """The fingerprint of CIFAR-10's batch files as read at ``size`` and ``channels`` (see :func:`resize_raw`)."""
    return fingerprint if (size, channels) == (CIFAR_SIZE, 3) else f"{fingerprint}-{channels}x{size}"


def resize_raw(raw: RawData, size: int, channels: int) -> RawData:
    """``raw``'s images at ``size`` x ``size`` and ``channels`` (CIFAR-10's batches are 32x32 RGB): resized with
    antialiasing, turned gray with ITU-R 601 luma (what PIL's ``convert("L")`` uses)."""
    if raw.train_x.shape[1:] == (size, size, channels):
        return raw
    return RawData(resize_images(raw.train_x, size, channels), raw.train_y, resize_images(raw.test_x, size, channels),
                   raw.test_y, raw.classes, sized_fingerprint(raw.fingerprint, size, channels))  # fmt: skip


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

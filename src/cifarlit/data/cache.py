"""The decode cache of an image folder: one ``.npz`` next to it, used only when it is exactly what the folder
gives.

The cache is keyed by the fingerprint of the folder's listing (file names, sizes, modification times) and the
image size; every array is checked against the listing from the file's headers before numpy reads it, so a stale,
damaged or foreign cache is rebuilt, never used. It is written under a temporary name and renamed into place, and
a lock makes runs started together decode a folder once.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from filelock import FileLock

from cifarlit.data import RawData
from cifarlit.data.images import FolderListing
from cifarlit.utils.files import owner

CACHE_NAME = ".cifarlit-cache.npz"
LOCK_NAME = ".cifarlit-cache.lock"  # held while a run checks, decodes and writes the cache
MAX_NAME = 4096  # characters in a stored file name or reason, at most: a path's limit


@contextmanager
def lock(root: Path) -> Iterator[None]:
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


def read(
    cache_file: Path, fingerprint: str, listing: FolderListing, size: int, channels: int
) -> tuple[RawData, list[tuple[str, str]]] | None:
    """The cached images of ``listing`` and the files left out as unreadable, or None (with one warning) when the
    cache is absent, stale, damaged or holds arrays of other shapes, types, labels or classes than the listed
    files give: it is rebuilt, never used."""
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
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)  # fmt: skip
            shape, _, dtype = read_header(f)
        headers[member.removesuffix(".npy")] = (shape, dtype)
    return headers


def _expect(headers: dict, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if name not in headers:
        raise _CacheMismatch(f"it has no {name}")
    if headers[name] != (shape, dtype):
        found_shape, found_dtype = headers[name]
        raise _CacheMismatch(f"{name} is {found_dtype} {found_shape} where the folder gives {dtype} {shape}")


def _expect_strings(headers: dict, name: str, shape: tuple[int, ...] | None, most: int = 0) -> None:
    """Strings of at most :data:`MAX_NAME` characters; ``shape`` None: up to ``most`` of them."""
    if name not in headers:
        raise _CacheMismatch(f"it has no {name}")
    found_shape, dtype = headers[name]
    fits = found_shape == shape if shape is not None else len(found_shape) == 1 and found_shape[0] <= most
    if dtype.kind != "U" or dtype.itemsize > 4 * MAX_NAME or not fits:
        raise _CacheMismatch(f"{name} is {dtype} {found_shape}, not the strings the folder gives")


def _unreadable(z, headers: dict, files: dict[str, int]) -> list[tuple[str, str]]:
    """The files the cache left out, with why: each one of the folder's, named once."""
    unreadable: list[tuple[str, str]] = []
    if "unreadable" in headers:  # caches written before files could be skipped have no list: they hold every file
        _expect_strings(headers, "unreadable", None, len(files))
        _expect_strings(headers, "unreadable_why", headers["unreadable"][0])
        unreadable = [(str(name), str(why)) for name, why in zip(z["unreadable"], z["unreadable_why"], strict=True)]
    left_out = {name for name, _ in unreadable}
    if len(left_out) != len(unreadable) or not left_out <= files.keys():
        raise _CacheMismatch("it leaves out files the folder does not have")
    return unreadable


def _cached(
    z, headers: dict, listing: FolderListing, size: int, channels: int, fingerprint: str
) -> tuple[RawData, list[tuple[str, str]]]:
    """The arrays of a cache with the right fingerprint, each checked against what the listed files give."""
    files = {path[listing.rel :]: label for items in listing.splits.values() for path, label, _, _ in items}
    _expect_strings(headers, "classes", (len(listing.classes),))
    classes = tuple(str(c) for c in z["classes"])
    if classes != listing.classes:
        raise _CacheMismatch(f"its classes {list(classes)} are not the folders' {list(listing.classes)}")
    unreadable = _unreadable(z, headers, files)
    left_out = {name for name, _ in unreadable}
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


def write(cache_file: Path, data: RawData, unreadable: list[tuple[str, str]]) -> None:
    """Write the cache under a temporary name and rename it, so a crash mid-write never leaves a half cache under
    the real name (only that is ever read); a folder that cannot be written to gets a warning and no cache."""
    tmp = cache_file.with_name(f"{cache_file.name}.{owner()}.tmp")
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

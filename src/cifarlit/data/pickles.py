"""CIFAR-10's python pickle batches, read without running code.

A pickle can call any importable function while it loads, so the batches are read by an unpickler that can only
rebuild numpy arrays; their labels must be whole numbers that name the classes of ``batches.meta``, and their
pixels bytes.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from cifarlit.data import DataError, RawData
from cifarlit.data.images import fingerprint, open_regular

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
PICKLE_DIR = "cifar-10-batches-py"
REDO_PICKLES = f"delete the '{PICKLE_DIR}' folder so it is extracted or downloaded again"

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


def read_batch(path: Path, classes: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
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


def batch_files(folder: Path) -> list[Path]:
    """The training batch files ``data_batch_*`` of a ``cifar-10-batches-py`` folder, which must hold a
    ``test_batch`` too."""
    train_files = sorted(folder.glob("data_batch_*"))
    if not train_files or not os.path.lexists(folder / "test_batch"):
        raise DataError(f"{folder} must contain data_batch_1..5 and test_batch; extract or download CIFAR-10 again.")
    return train_files


def check_every_class_trained(train_y: np.ndarray, classes: tuple[str, ...], folder: Path) -> None:
    """A class of ``batches.meta`` without a training image would be reported but never learned."""
    missing = np.flatnonzero(np.bincount(train_y, minlength=len(classes)) == 0)
    if len(missing):
        meta = folder / "batches.meta"
        names = meta if os.path.lexists(meta) else f"{folder}, without a batches.meta, is CIFAR-10: it"
        raise DataError(
            f"{names} names {len(classes)} classes, but no training batch has an image of class {missing[0]} "
            f"({classes[missing[0]]!r}): the names and the labels disagree; {REDO_PICKLES}."
        )


def pickle_fingerprint(folder: Path, train_files: list[Path]) -> str:
    """The fingerprint of the batch files (names, sizes, modification times)."""
    files = [*train_files, folder / "test_batch"]
    return fingerprint([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])


def load_pickle_batches(folder: Path) -> RawData:
    """Read ``data_batch_*`` and ``test_batch`` from a ``cifar-10-batches-py`` folder."""
    train_files = batch_files(folder)
    classes = pickle_classes(folder)
    parts = [read_batch(p, classes) for p in train_files]
    test_x, test_y = read_batch(folder / "test_batch", classes)
    train_y = np.concatenate([p[1] for p in parts])
    check_every_class_trained(train_y, classes, folder)
    return RawData(
        train_x=np.concatenate([p[0] for p in parts]),
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        classes=classes,
        fingerprint=pickle_fingerprint(folder, train_files),
    )

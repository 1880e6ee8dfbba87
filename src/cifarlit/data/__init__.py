"""The data: the DataModules (``datamodule.py``), where their pixels come from (``sources.py`` and the readers it
calls), the split (``split.py``), the loaders, the augmentations and the LitData streams.

Two types every reader shares live here: :class:`RawData`, a dataset decoded to arrays, and :class:`DataError`,
the user error of every data problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cifarlit.utils.errors import CifarlitError

if TYPE_CHECKING:
    import numpy as np


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

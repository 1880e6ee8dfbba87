"""The split: which images train, validate and test, and the statistics the inputs are normalized with.

One owner for both readers of a dataset: the in-memory DataModule splits the labels it decoded and ``cifarlit
prepare`` the labels it listed, with these functions, so a stream holds exactly the in-memory split (the same
split fingerprint). Every split is stratified and seeded by ``data.seed`` alone, so the training seed never moves
an image between train and val.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from sklearn.model_selection import train_test_split

from cifarlit.data import DataError

STD_FLOOR = 1e-3  # a constant channel's std: its normalized values stay finite


def count_or_fraction(size: int | float | None) -> int | float | None:
    """A size is a count (a whole number >= 1) or a fraction in (0, 1). A whole float counts too: 16.0 is 16
    images (a config parser may turn the 16 of ``int | float`` into 16.0), and 1.0 one image, not all of them."""
    if isinstance(size, float) and size >= 1 and size.is_integer():
        return int(size)
    return size


def check_split_size(size: int | float, option: str) -> None:
    """Refuse a held-out size that is neither a count >= 1 nor a fraction in (0, 1)."""
    if isinstance(size, float) and not 0 < size < 1:
        raise DataError(f"{option}={size} is not valid: use a fraction in (0, 1), e.g. 0.2, or a count.")
    if isinstance(size, int) and size < 1:
        raise DataError(f"{option}={size} is not valid: use a count >= 1 or a fraction in (0, 1).")


def stratified_split(labels: np.ndarray, size: int | float, seed: int, option: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``labels`` split into (kept, held out), with ``size`` (a count or a fraction) held out."""
    n, n_classes = len(labels), len(np.unique(labels))
    if isinstance(size, int) and not n_classes <= size <= n - n_classes:
        raise DataError(
            f"{option}={size} does not fit the {n} training images: a stratified split needs "
            f"{n_classes}..{n - n_classes} (at least one image per class on each side)."
        )
    try:
        keep, held = train_test_split(np.arange(n), test_size=size, stratify=labels, random_state=seed)
    except ValueError as err:  # e.g. a fraction that leaves fewer held-out images than classes
        raise DataError(f"{option}={size} cannot split {n} images into {n_classes} classes: {err}") from None
    return np.sort(keep), np.sort(held)


def split_positions(
    labels: np.ndarray, carve_test: bool, val_size: int | float, test_size: int | float, seed: int, where: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(train, val, test)`` positions in the training labels: ``test_size`` carved out first when the dataset has
    no test set of its own (``carve_test``; otherwise test is None), then ``val_size`` held out of the rest."""
    min_per_class = np.bincount(labels).min() if len(labels) else 0
    if min_per_class < (3 if carve_test else 2):
        raise DataError(
            f"the training set in {where} has a class with {min_per_class} image(s); a stratified "
            f"train/val{'/test' if carve_test else ''} split needs at least {3 if carve_test else 2} per class."
        )
    pool, test_idx = np.arange(len(labels)), None  # positions in the dataset, so indices always name its files
    if carve_test:
        keep, held = stratified_split(labels, test_size, seed, "data.test_size")
        pool, test_idx = pool[keep], pool[held]
    keep, held = stratified_split(labels[pool], val_size, seed, "data.val_size")
    return pool[keep], pool[held], test_idx


def subset(labels: np.ndarray, size: int | float, seed: int, option: str) -> np.ndarray:
    """A stratified subset of ``size`` (a count or a fraction) of the positions in ``labels``, sorted."""
    n = len(labels)
    if isinstance(size, float):
        if not 0 < size < 1:
            raise DataError(f"{option}={size} is not a valid fraction: use a number in (0, 1) or a count >= 1.")
        count = max(1, round(size * n))
    else:
        count = int(size)
        if not 1 <= count <= n:
            raise DataError(f"{option}={size} is not a valid count: use 1..{n} (the split's size) or a fraction.")
    if count == n:
        return np.arange(n)
    n_classes = len(np.unique(labels))
    if count < n_classes:
        rank_zero_info(
            f"{option}={size} is fewer samples than the {n_classes} classes, so it cannot be stratified; "
            f"drawing {count} at random."
        )
        return np.sort(np.random.default_rng(seed).choice(n, count, replace=False))
    keep, _ = train_test_split(np.arange(n), train_size=count, stratify=labels, random_state=seed)
    return np.sort(keep)


def split_fingerprint(
    train_idx: np.ndarray, val_idx: np.ndarray, data_fingerprint: str, test_idx: np.ndarray | None = None
) -> str:
    """A short id of which images are train and val (and test, when carved from train), and of their files."""
    h = hashlib.sha1(data_fingerprint.encode())
    h.update(np.ascontiguousarray(train_idx, dtype=np.int64).tobytes())
    h.update(b"|")
    h.update(np.ascontiguousarray(val_idx, dtype=np.int64).tobytes())
    if test_idx is not None:
        h.update(b"|")
        h.update(np.ascontiguousarray(test_idx, dtype=np.int64).tobytes())
    return h.hexdigest()[:12]


def histograms(x: torch.Tensor) -> torch.Tensor:
    """``(C, 256)`` counts of each byte value per channel of uint8 images ``(N, C, H, W)``; summed over batches,
    they give a split's exact statistics (:func:`stats_from_histograms`) a batch at a time."""
    # uint8 straight into bincount: an int64 copy of the images would cost several times more (benchmarks/tricks.py)
    return torch.stack([torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(x.shape[1])])


def stats_from_histograms(hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std on the 0-1 scale from :func:`histograms`, in float64, returned as float32."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    p = hist.double() / hist.sum(1, keepdim=True)
    mean = (p * levels).sum(1)
    std = (p * (levels - mean[:, None]) ** 2).sum(1).sqrt()
    return mean.float(), std.clamp_min(STD_FLOOR).float()


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std on the 0-1 scale of uint8 images ``(N, C, H, W)``, exact, without a float copy of
    the images (CIFAR-10's training split would be 490 MB as float32).

    >>> x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    >>> [round(float(v), 3) for v in channel_stats(x)]
    [0.5, 0.5]
    """
    return stats_from_histograms(histograms(x))


def fixed_stats(
    mean: list[float] | None, std: list[float] | None, channels: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``data.mean``/``data.std`` as tensors, or None to compute them from the training split."""
    if mean is None and std is None:
        return None
    ok = mean is not None and std is not None and len(mean) == len(std) == channels
    if not ok or not all(0 <= m <= 1 for m in mean) or not all(0 < v <= 1 for v in std):
        raise DataError(
            f"data.mean={mean} / data.std={std} are not valid: give both, {channels} values each, means in [0, 1] "
            f"and stds in (0, 1] (the 0-1 scale, e.g. ImageNet's [0.485, 0.456, 0.406] / [0.229, 0.224, 0.225])."
        )
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def normalizer(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)``, each ``(1, C, 1, 1)``, with ``x_uint8 * scale + shift == (x / 255 - mean) / std``: one
    multiply-add per pixel. The training data and the exported model both normalize with it.

    >>> scale, shift = normalizer(torch.tensor([0.5]), torch.tensor([0.25]))
    >>> (torch.tensor([255.0]).view(1, 1, 1, 1) * scale + shift).item()
    2.0
    """
    std = std.view(1, -1, 1, 1).float()
    return 1 / (255 * std), -mean.view(1, -1, 1, 1).float() / std

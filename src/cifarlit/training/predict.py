"""What `cifarlit predict` writes: a Kaggle-style CSV of one predicted class name per image."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from cifarlit.utils.files import atomic_write


def write_csv(
    path: Path, ids: list[str], probs: torch.Tensor, classes: tuple[str, ...], probabilities: bool = False
) -> Path:
    """Write ``id,label`` rows (``label`` = the most probable class name), plus ``prob_<class>`` columns if asked.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "p.csv"
    >>> _ = write_csv(path, ["a", "b"], torch.tensor([[0.9, 0.1], [0.2, 0.8]]), ("cat", "dog"), probabilities=True)
    >>> print(path.read_text().strip())
    id,label,prob_cat,prob_dog
    a,cat,0.900000,0.100000
    b,dog,0.200000,0.800000
    """
    if probs.shape != (len(ids), len(classes)):
        raise ValueError(f"{tuple(probs.shape)} probabilities for {len(ids)} images and {len(classes)} classes")
    labels = probs.argmax(1).tolist()
    with atomic_write(path, newline="", encoding="utf-8") as f:  # whole or not at all; ids and names are UTF-8
        writer = csv.writer(f)
        writer.writerow(["id", "label", *(f"prob_{c}" for c in classes)] if probabilities else ["id", "label"])
        for i, (id_, label) in enumerate(zip(ids, labels, strict=True)):
            row = [id_, classes[label]]
            if probabilities:
                row += [f"{p:.6f}" for p in probs[i].tolist()]
            writer.writerow(row)
    return path

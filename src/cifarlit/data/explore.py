"""What `cifarlit explore` prints and draws: per-split statistics and a grid of sample images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cifarlit.utils import figures


def describe(x: torch.Tensor, y: torch.Tensor, classes: tuple[str, ...]) -> dict:
    """Statistics of one split of uint8 images ``(N, C, H, W)`` and labels."""
    counts = np.bincount(y.numpy(), minlength=len(classes)).tolist() if len(y) else [0] * len(classes)
    stats = {
        "samples": len(y),
        "classes": len(classes),
        "channels": x.shape[1],
        "resolution": list(x.shape[2:]),
        "dtype": str(x.dtype).replace("torch.", ""),
        "min": int(x.min()) if len(y) else None,
        "max": int(x.max()) if len(y) else None,
        "class_counts": dict(zip(classes, counts, strict=True)),
        # balanced: the largest class is at most 10% bigger than the smallest
        "balanced": bool(len(y)) and max(counts) <= 1.1 * min(counts),
    }
    if len(y):
        from cifarlit.data.split import channel_stats

        mean, std = channel_stats(x)
        stats["mean"] = [round(v, 4) for v in mean.tolist()]
        stats["std"] = [round(v, 4) for v in std.tolist()]
    return stats


def format_table(splits: dict[str, dict], classes: tuple[str, ...]) -> str:
    """A plain-text table, one column per split."""
    names = list(splits)
    rows = [("", *names)]

    def fmt(value) -> str:
        if isinstance(value, list):
            return "(" + ", ".join(str(v) for v in value) + ")"
        return str(value)

    for key in (
        "samples",
        "classes",
        "channels",
        "resolution",
        "dtype",
        "min",
        "max",
        "mean",
        "std",
        "balanced",
    ):
        rows.append((key, *(fmt(splits[s].get(key, "-")) for s in names)))
    for name in classes:
        rows.append((f"  {name}", *(str(splits[s]["class_counts"][name]) for s in names)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - len(classes), "images per class:")
    lines.append("(mean/std on the 0-1 scale; min/max in stored uint8 values)")
    return "\n".join(lines)


def to_json(splits: dict[str, dict], classes: tuple[str, ...]) -> str:
    return json.dumps({"class_names": list(classes), "splits": splits}, indent=2)


def sample_grid(x: torch.Tensor, y: torch.Tensor, classes: tuple[str, ...], per_class: int, path: Path, seed: int = 0):
    """Save a PNG with ``per_class`` random images of each class, one row per class; returns the figure."""
    plt = figures.pyplot()
    rng = np.random.default_rng(seed)
    labels = y.numpy()
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9, len(classes) * 0.95), squeeze=False)
    for row, name in enumerate(classes):
        idx = np.flatnonzero(labels == row)
        chosen = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        for col in range(per_class):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(chosen):
                ax.imshow(x[chosen[col]].permute(1, 2, 0).numpy())  # (C, H, W) -> (H, W, C)
        axes[row][0].set_title(name, fontsize=7, loc="left")
    fig.tight_layout()
    figures.save(fig, path)
    return fig

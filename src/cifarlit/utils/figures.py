"""Matplotlib for files and TensorBoard, not screens: the backend is chosen in one place, figures saved whole."""

from __future__ import annotations

from pathlib import Path

from cifarlit.utils.files import atomic_path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: it draws without a display (servers, CI, SSH sessions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` (its format from the suffix, PNG by default), whole or not at all."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    return path

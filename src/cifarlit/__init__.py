"""cifarlit: train image classifiers well with PyTorch Lightning.

The public face is the design card's two classes, imported on first use (``import cifarlit`` stays cheap)::

    from cifarlit import CIFAR10DataModule, LitMLP

The package, by concern: ``data/`` (the DataModule, its sources and augmentation), ``models/`` (the networks and
the LightningModule), ``training/`` (the Trainer, callbacks, run folders), ``commands/`` (prepare, compare, tune,
export, serve), ``utils/`` (errors, atomic files, safe checkpoint reading); ``cli.py`` is the command line on top.
"""

from __future__ import annotations

__version__ = "0.1.0"

_PUBLIC = {
    "CIFAR10DataModule": "cifarlit.data.datamodule",
    "LitMLP": "cifarlit.models.lit_mlp",
}
__all__ = ["CIFAR10DataModule", "LitMLP", "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'cifarlit' has no attribute {name!r}")

"""Shared helpers: where the benchmark data comes from and how cifarlit is run in-process."""

from __future__ import annotations

import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-images.tar.gz"
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"


def data_dir(requested: str | None = None) -> tuple[Path, str]:
    """The real CIFAR-10 (extracted once into data/) when available, else generated data of the same shape."""
    if requested:
        return Path(requested), "given"
    real = REPO / "data" / "cifar10"
    if not (real / "train").is_dir() and SHARED_ARCHIVE.is_file():
        real.parent.mkdir(exist_ok=True)
        with tarfile.open(SHARED_ARCHIVE) as tar:
            tar.extractall(real.parent, filter="data")
    if (real / "train").is_dir():
        return real, "real CIFAR-10 (shared image folder)"
    return synthetic(), "generated 50,000 / 10,000 images of CIFAR-10's shape"


def synthetic() -> Path:
    """A CIFAR-10-shaped pickle-batch folder of random images (no real data on this machine)."""
    import pickle

    root = REPO / "data" / "synthetic"
    folder = root / "cifar-10-batches-py"
    if folder.is_dir():
        return root
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        entry = {
            "data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, 10000).tolist(),
        }
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8), "labels": [0] * 10000}, f)
    return root


def cifarlit_cli(args: list[str]):
    """A configured (not yet run) cifarlit CLI writing its logs to a temporary folder."""
    from cifarlit.cli import CifarCLI
    from cifarlit.data import CIFAR10DataModule
    from cifarlit.model import LitMLP

    sys.argv = ["cifarlit"]
    logs = tempfile.mkdtemp(prefix="cifarlit-bench-")
    return CifarCLI(
        LitMLP, CIFAR10DataModule, run=False, save_config_kwargs={"overwrite": True},
        args=["-c", str(DEFAULT_CONFIG), "--trainer.logger.init_args.save_dir", logs, *args],
    )  # fmt: skip


class Stopwatch:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def machine() -> str:
    import platform

    import torch

    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"

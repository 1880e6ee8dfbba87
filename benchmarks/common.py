"""Shared helpers: where the benchmark data comes from, and timing `cifarlit fit` in a fresh process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from cifarlit.training.callbacks import DEFAULTS

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-images.tar.gz"
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
# src/ first: the runs measure this checkout's code, whichever cifarlit the environment has installed
ENV = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}", "NO_ALBUMENTATIONS_UPDATE": "1"}


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


def synthetic(root: Path = REPO / "data" / "synthetic", n_train: int = 50000, n_test: int = 10000) -> Path:
    """A CIFAR-10-shaped pickle-batch folder of random images (no real data on this machine)."""
    import pickle

    folder = root / "cifar-10-batches-py"
    if folder.is_dir():
        return root
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per_batch = n_train // 5
    for i in range(1, 6):
        entry = {
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, per_batch).tolist(),
        }
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), "labels": [0] * n_test}, f)
    return root


def markers(out: subprocess.CompletedProcess, marker: str) -> list[float]:
    # A progress bar shares stdout, so a marker may follow a bar's "\r" on the same line.
    values = [float(v) for v in re.findall(rf"{marker} ([0-9.eE+-]+)", out.stdout)]
    if out.returncode != 0 or not values:
        raise RuntimeError(f"benchmark run failed (exit {out.returncode}):\n{out.stdout[-1500:]}\n{out.stderr[-3000:]}")
    return values


# Lightning's floor: the same model and data with Trainer(barebones=True): no callbacks, logger, progress bar,
# checkpointing or model summary.
BAREBONES = ("--trainer.barebones", "true", "--trainer.logger", "false", "--trainer.callbacks", "[]",
             *(arg for name in DEFAULTS for arg in (f"--{name}", "null")),  # cifarlit's default callbacks off
             "--trainer.enable_model_summary", "false",
             "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
             "--trainer.log_every_n_steps", "0")  # fmt: skip


def fit_run(
    data: str, *args: str, barebones: bool = False, configs: tuple[str, ...] = (), accelerator: str = "cpu",
    env: dict | None = None,
) -> subprocess.CompletedProcess:  # fmt: skip
    """``cifarlit fit`` with the default config (plus ``configs``, then ``args``) in a fresh process, timed by
    :class:`benchmarks.timers.FitTimer`: each run starts from a clean heap, as a user's does."""
    logs = tempfile.mkdtemp(prefix="cifarlit-bench-")
    where = BAREBONES if barebones else ("--trainer.logger.init_args.save_dir", logs)
    data = str(Path(data).resolve())
    config_args = [arg for c in configs for arg in ("-c", str(REPO / c))]
    return subprocess.run(  # without a logger Lightning writes to the working directory: a temporary one
        [sys.executable, "-m", "cifarlit", "fit", "-c", str(DEFAULT_CONFIG), *config_args, "--data.data_dir", data,
         "--trainer.accelerator", accelerator, "--test_after_fit", "false", *where,
         "--trainer.callbacks+=benchmarks.timers.FitTimer", *args],
        capture_output=True, text=True, cwd=logs, env={**ENV, **(env or {})},
    )  # fmt: skip


def fit_epochs(data: str, *args: str, **kwargs) -> list[float]:
    """Seconds per epoch (its val pass included) of :func:`fit_run`."""
    return markers(fit_run(data, *args, **kwargs), "EPOCH_SECONDS")


def plain_run(
    split: Path, batch_size: int, epochs: int, like_cifarlit: bool = False, device: str = "cpu", net: str = "mlp",
    hidden_sizes: list[int] | None = None, env: dict | None = None,
) -> subprocess.CompletedProcess:  # fmt: skip
    """The plain PyTorch loop (benchmarks/plain_loop.py) in a fresh process without Lightning."""
    sizes = [] if hidden_sizes is None else ["--hidden_sizes", *map(str, hidden_sizes)]
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "plain_loop.py"), str(split), "--batch_size", str(batch_size),
         "--epochs", str(epochs), "--device", device, "--net", net, *sizes,
         *(["--like_cifarlit"] if like_cifarlit else [])],
        capture_output=True, text=True, cwd=REPO, env={**ENV, **(env or {})},
    )  # fmt: skip


def plain_epochs(split: Path, batch_size: int, epochs: int, **kwargs) -> list[float]:
    """Seconds per epoch of :func:`plain_run`."""
    return markers(plain_run(split, batch_size, epochs, **kwargs), "EPOCH_SECONDS")


class Stopwatch:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def machine() -> str:
    import platform

    import torch

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    threads = torch.get_num_threads()
    return f"{platform.machine()}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, {threads} threads"

"""Test helpers: running the CLI in-process, and callbacks that slow tests put into real `cifarlit fit`
subprocesses (via PYTHONPATH=tests)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Callback

from cifarlit.cli import cli_main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str):
    """`cifarlit ARGS` in this process; returns the LightningCLI."""
    sys.argv = ["cifarlit"]  # LightningCLI warns when pytest's own arguments are there next to `args`
    return cli_main(list(args))


CONFIGS = sorted(p.relative_to(REPO) for p in (REPO / "configs").rglob("*.yaml") if not p.name.endswith("_space.yaml"))


# the package each tracker's logger config needs (an optional extra: tests of it skip without it)
TRACKERS = {"loggers/mlflow.yaml": "mlflow", "loggers/wandb_offline.yaml": "wandb"}


def skip_without_its_tracker(config: Path) -> None:
    """Skip the test of a logger config whose tracker is not installed (`pip install 'cifarlit[trackers]'`)."""
    import pytest

    package = TRACKERS.get(Path(config).relative_to("configs").as_posix())
    if package:
        pytest.importorskip(package)


def config_args(config: Path) -> list[str]:
    """The `-c` files of the command on the config's first line (which must run it: the files exist and the last
    is the config itself)."""
    first = (REPO / config).read_text().splitlines()[0]
    match = re.match(r"^# cifarlit fit ((?:-c \S+\s*)+)", first)
    assert match, f"{config} must start with the comment that runs it: '# cifarlit fit -c ... -c {config}'"
    files = match.group(1).split()[1::2]
    assert files[-1] == str(config), f"{config}: its first line runs {files[-1]} instead"
    return [arg for f in files for arg in ("-c", str(REPO / f))]


def one_node(config: Path) -> list[str]:
    """For a config of several machines, the options that run it as one process of one node: started alone it would
    wait for the processes of the other machines (tests/test_multinode.py starts it on two, as a launcher does)."""
    trainers = [(yaml.safe_load(Path(f).read_text()) or {}).get("trainer") or {} for f in config_args(config)[1::2]]
    nodes = [trainer["num_nodes"] for trainer in trainers if "num_nodes" in trainer]
    return ["--trainer.num_nodes", "1", "--trainer.devices", "1"] if nodes and nodes[-1] > 1 else []


class RunsCode:
    """Unpickling this runs a shell command that leaves a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def out_dir() -> Path:
    return Path(os.environ["CIFARLIT_TEST_OUT"])


class SlowSteps(Callback):
    """Makes each step take a while and leaves a marker per step, so a test can kill the run mid-epoch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        time.sleep(0.02)
        (out_dir() / f"epoch{trainer.current_epoch}_batch{batch_idx}").touch()


class RankReport(Callback):
    """Each rank writes what it saw: its split, its shard of the training set and the synced metrics."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            self.shard = [
                int(i) for i in trainer.train_dataloader.batch_sampler.sampler
            ]  # Lightning's DistributedSampler
            self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0:
            self.steps += 1

    def on_fit_end(self, trainer, pl_module):
        report = {
            "rank": trainer.global_rank,
            "node_rank": trainer.node_rank,
            "pid": os.getpid(),
            "world_size": trainer.world_size,
            "environment": type(trainer.strategy.cluster_environment).__name__,  # who started the processes
            "split": trainer.datamodule.split_fingerprint,
            "shard": self.shard,
            "steps": self.steps,
            "val_acc": float(trainer.callback_metrics["val/acc"]),
            "val_loss": float(trainer.callback_metrics["val/loss"]),
        }
        (out_dir() / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


class RankDrift(Callback):
    """Rank 1 draws one extra random number per step, so the processes' RNG states differ, as they do when
    each draws for batches of its own sizes or on its own GPU."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == 1:
            import torch

            torch.rand(1)


class SeenImages(Callback):
    """Records which images each process trained and validated on, epoch by epoch, as digests of the uint8 images
    (the batches arrive normalized; the DataModule's statistics undo that exactly), and writes them to
    ``CIFARLIT_TEST_OUT/seen_rank<N>.json`` when that is set."""

    def __init__(self) -> None:
        self.train: dict[int, list[str]] = {}
        self.val: dict[int, list[str]] = {}

    @staticmethod
    def digests(trainer, x) -> list[str]:
        import hashlib

        import torch

        from cifarlit.data.split import normalizer

        scale, shift = (t.to(x.device) for t in normalizer(trainer.datamodule.mean, trainer.datamodule.std))
        images = ((x - shift) / scale).round().to(torch.uint8).cpu()
        return [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.train.setdefault(trainer.current_epoch, []).extend(self.digests(trainer, batch[0]))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.val.setdefault(trainer.current_epoch, []).extend(self.digests(trainer, batch[0]))

    def on_fit_end(self, trainer, pl_module):
        if "CIFARLIT_TEST_OUT" in os.environ:
            report = {"train": self.train, "val": self.val, "val_acc": float(trainer.callback_metrics["val/acc"])}
            (out_dir() / f"seen_rank{trainer.global_rank}.json").write_text(json.dumps(report))


class OomNet(torch.nn.Module):
    """A linear classifier that fails as a GPU out of memory does when a batch holds more than ``limit`` images:
    what Lightning's batch-size finder looks for, on the CPU."""

    head_name = "head"

    def __init__(self, num_classes: int, image_shape: tuple[int, int, int], limit: int = 100) -> None:
        super().__init__()
        self.limit = limit
        self.head = torch.nn.Linear(image_shape[0] * image_shape[1] * image_shape[2], num_classes)

    def forward(self, x):
        if len(x) > self.limit:
            raise RuntimeError(f"CUDA out of memory. Tried to allocate a batch of {len(x)} (simulated)")
        return self.head(x.flatten(1))

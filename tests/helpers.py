"""Test helpers: running the CLI in-process, and callbacks that slow tests put into real `cifarlit fit`
subprocesses (via PYTHONPATH=tests)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from lightning.pytorch import Callback

from cifarlit.cli import cli_main


def run_cli(*args: str):
    """`cifarlit ARGS` in this process; returns the LightningCLI."""
    sys.argv = ["cifarlit"]  # LightningCLI warns when pytest's own arguments are there next to `args`
    return cli_main(list(args))


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
            "world_size": trainer.world_size,
            "split": trainer.datamodule.split_fingerprint,
            "shard": self.shard,
            "steps": self.steps,
            "val_acc": float(trainer.callback_metrics["val/acc"]),
            "val_loss": float(trainer.callback_metrics["val/loss"]),
        }
        (out_dir() / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))

"""Callbacks that give the debug ladder an honest verdict."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info

HINTS = (
    "check: data shapes (do images and labels line up?), labels (shuffled separately from images?), "
    "the loss (cross-entropy on raw logits?), the learning rate (0, or far too high/low?) and max_epochs"
)


class OverfitCheck(Callback):
    """After fit, test whether the model memorised the training images it was given.

    A network that is wired correctly fits one sample or one small batch perfectly; one that doesn't has a
    bug. The check re-evaluates the final model in eval mode on the whole (un-augmented) training subset, so
    a lucky last batch cannot pass it.

    Args:
        loss_threshold: the cross-entropy that counts as "near zero".
        min_accuracy: the training accuracy required (1.0 = every image right).
    """

    def __init__(self, loss_threshold: float = 0.05, min_accuracy: float = 1.0) -> None:
        self.loss_threshold = loss_threshold
        self.min_accuracy = min_accuracy
        self.passed: bool | None = None
        self.message = ""

    @torch.no_grad()
    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.fast_dev_run:  # one step proves the wiring runs, not that the model can fit
            rank_zero_info("OverfitCheck skipped: fast_dev_run trains a single step.")
            return
        dm = trainer.datamodule
        was_training = pl_module.training
        pl_module.eval()
        correct, loss_sum, n = 0, 0.0, 0
        for start in range(0, len(dm.train_set), 1024):
            x = dm.to_input(dm.train_set.x[start : start + 1024].to(pl_module.device))  # never augmented
            y = dm.train_set.y[start : start + 1024].to(pl_module.device)
            logits = pl_module(x)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            n += len(y)
        pl_module.train(was_training)
        acc, loss = correct / n, loss_sum / n
        self.passed = acc >= self.min_accuracy and loss < self.loss_threshold
        what = f"{acc:.1%} training accuracy and loss {loss:.4f} on the {n} training image(s)"
        what += f" after {trainer.current_epoch} epochs"
        if self.passed:
            self.message = f"PASS: {what}. The pipeline can learn; climb to the next rung."
        else:
            self.message = (
                f"FAIL: {what} (needs {self.min_accuracy:.0%} and loss < {self.loss_threshold}). Something in the "
                f"pipeline is broken: {HINTS}."
            )
        rank_zero_info(self.message)


class RunInfo(Callback):
    """Records what a result depends on.

    Writes ``run_info.json`` next to the run's ``config.yaml`` (which images were train/val, as a fingerprint
    of the index lists and of the dataset files, and the package versions), and registers the hyperparameters
    with TensorBoard's HPARAMS tab against the ``val/*`` and ``test/*`` curves.
    """

    METRICS = ("val/acc", "val/loss", "test/acc", "test/loss")

    def on_fit_start(self, trainer, pl_module) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if not trainer.is_global_zero or log_dir is None:
            return
        self._write_info(trainer, log_dir)
        self._register_hparams(trainer, pl_module)

    def _register_hparams(self, trainer, pl_module) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger
        from torch.utils.tensorboard.summary import hparams

        logger = trainer.logger
        if not isinstance(logger, TensorBoardLogger):
            return
        flat = {}
        for key, value in pl_module.hparams.items():  # the plugin takes numbers, strings and bools only
            flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
        # Lightning's own log_hyperparams would also log a placeholder metric point; writing the summaries
        # directly links the existing curves without adding a fake value to them.
        writer = logger.experiment._get_file_writer()
        for summary in hparams(flat, {m: 0.0 for m in self.METRICS}):
            writer.add_summary(summary)

    def _write_info(self, trainer, log_dir: str) -> None:
        import json
        import platform
        from importlib.metadata import PackageNotFoundError, version
        from pathlib import Path

        packages = {}
        for name in (
            "cifarlit",
            "torch",
            "torchvision",
            "lightning",
            "torchmetrics",
            "albumentations",
            "numpy",
        ):
            try:
                packages[name] = version(name)
            except PackageNotFoundError:
                packages[name] = None
        dm = trainer.datamodule
        info = {
            "split_fingerprint": getattr(dm, "split_fingerprint", None),
            "train_size": len(dm.train_set) if hasattr(dm, "train_set") else None,
            "val_size": len(dm.val_set) if hasattr(dm, "val_set") else None,
            "data_dir": str(getattr(dm, "data_dir", "")),
            "python": platform.python_version(),
            "packages": packages,
        }
        path = Path(log_dir) / "run_info.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info, indent=2) + "\n")

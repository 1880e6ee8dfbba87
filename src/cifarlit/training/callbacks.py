"""Callbacks: the ones every run has unless its config switches them off, the debug ladder's verdict, the record of
what a run depends on, and the per-class test report."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import (
    Checkpoint,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from cifarlit.training import trackers
from cifarlit.utils import figures
from cifarlit.utils.files import atomic_write

# The default callbacks, written once: the CLI offers each as a top-level option of this name, whose value is
# ``{class_path, init_args}`` of a subclass of the first class (by default the second, with these arguments). A
# config tunes one (``early_stopping: {patience: 10}``), replaces it (``progress_bar: {class_path:
# lightning.pytorch.callbacks.RichProgressBar}``) or switches it off (``early_stopping: null``); ``trainer.callbacks``
# lists the callbacks a run adds to these.
DEFAULTS: dict[str, tuple[type[Callback], type[Callback], dict]] = {
    "early_stopping": (EarlyStopping, EarlyStopping, {"monitor": "val/loss", "mode": "min", "patience": 5}),
    # the best epoch by val/acc: what `test --ckpt_path best` loads
    "best_checkpoint": (ModelCheckpoint, ModelCheckpoint, {"monitor": "val/acc", "mode": "max",
                        "filename": "epoch{epoch:02d}-val_acc{val/acc:.4f}", "auto_insert_metric_name": False}),
    # last.ckpt after every epoch, for `--ckpt_path last` (Lightning's save_last rewrites it only when the best
    # checkpoint changes)
    "last_checkpoint": (ModelCheckpoint, ModelCheckpoint, {"filename": "last", "enable_version_counter": False}),
    "lr_monitor": (LearningRateMonitor, LearningRateMonitor, {"logging_interval": "epoch"}),
    # Lightning's tqdm bar does nothing between redraws (the Rich bar updates its state every step); a redraw costs
    # about as much as a small training step, so the bar redraws every 50 steps.
    "progress_bar": (ProgressBar, TQDMProgressBar, {"refresh_rate": 50}),
}  # fmt: skip

HINTS = (
    "check: data shapes (do images and labels line up?), labels (shuffled separately from images?), "
    "the loss (cross-entropy on raw logits?), the learning rate (0, or far too high/low?) and max_epochs"
)


def kept_defaults(defaults: Mapping[str, Callback | None], trainer: Mapping) -> list[Callback]:
    """The default callbacks a run keeps: those its config did not switch off (``None``), less those that need what
    the Trainer options turn off (a checkpoint without ``enable_checkpointing``, a progress bar without
    ``enable_progress_bar``, the LR monitor without a logger), which Lightning would refuse to start with."""
    needs = {Checkpoint: "enable_checkpointing", ProgressBar: "enable_progress_bar", LearningRateMonitor: "logger"}
    return [
        callback
        for callback in defaults.values()
        if callback is not None
        and all(trainer.get(option) is not False for kind, option in needs.items() if isinstance(callback, kind))
    ]


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


class RunRecord(SaveConfigCallback):
    """Records what a result depends on, next to the curves: LightningCLI's ``config.yaml`` (the full resolved
    config), ``run_info.json`` (which images were train/val, as a fingerprint of the index lists and of the
    dataset files, the sizes, classes and package versions) and the hyperparameters in TensorBoard's HPARAMS
    tab, against the ``val/*`` and ``test/*`` curves. Both files go into the run folder whatever the loggers, and
    into the store of each tracker that keeps one (training/trackers.py).

    One callback for both jobs: Lightning calls every callback at every hook of every training step (about
    six per step) whether it overrides the hook or not, so each callback in a config costs every step.
    """

    METRICS = ("val/acc", "val/loss", "test/acc", "test/loss")

    def __init__(self, *args, **kwargs) -> None:
        # LightningCLI's own saving writes to trainer.log_dir, which is the tracker's store root (or None) for an
        # MLflow or W&B logger: this callback writes to the run folder instead, in save_config.
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})
        self.run_dir: str | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.logger is None or self.already_saved:  # no logger, no run folder: Lightning's would be the cwd
            return
        self.run_dir = trackers.run_dir(trainer)  # a collective under DDP: every rank must ask
        super().setup(trainer, pl_module, stage)  # calls save_config on rank 0

    def save_config(self, trainer, pl_module, stage: str) -> None:
        run = Path(self.run_dir)
        run.mkdir(parents=True, exist_ok=True)
        files = [run / self.config_filename]
        self.parser.save(
            self.config, str(files[0]), skip_none=False, overwrite=self.overwrite, multifile=self.multifile
        )
        if stage == "fit":
            files.append(self._write_info(trainer, run))
            self._register_hparams(trainer, pl_module)
        trackers.log_files(trainer, files)

    def _register_hparams(self, trainer, pl_module) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger
        from torch.utils.tensorboard.summary import hparams

        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if logger is None:  # MLflow and W&B show the hyperparameters Lightning logs; a CSV run has hparams.yaml
            return
        flat = {}
        for key, value in pl_module.hparams.items():  # the plugin takes numbers, strings and bools only
            flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
        # Lightning's own log_hyperparams would also log a placeholder metric point; writing the summaries
        # directly links the existing curves without adding a fake value to them.
        writer = event_writer(logger.experiment)
        for summary in hparams(flat, {m: 0.0 for m in self.METRICS}):
            writer.add_summary(summary)

    def _write_info(self, trainer, run: Path) -> Path:
        import json
        import platform
        from importlib.metadata import PackageNotFoundError, version

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

        def size(split: str) -> int | None:
            if getattr(dm, "stream_sizes", None):  # a stream's len() is only this process's share under DDP
                return dm.stream_sizes[split]
            return len(getattr(dm, f"{split}_set")) if hasattr(dm, f"{split}_set") else None

        info = {
            "split_fingerprint": getattr(dm, "split_fingerprint", None),
            "train_size": size("train"),
            "val_size": size("val"),
            "test_size": size("test"),
            "test_carved_from_train": getattr(dm, "test_idx", None) is not None,
            "classes": list(dm.classes) if hasattr(dm, "classes") else None,
            "data_dir": str(getattr(dm, "data_dir", "")),
            "data_on_device": str(dm.train_set.x.device) if hasattr(getattr(dm, "train_set", None), "x") else None,
            "device": str(trainer.strategy.root_device),
            "python": platform.python_version(),
            "packages": packages,
        }
        with atomic_write(run / "run_info.json", encoding="utf-8") as f:
            f.write(json.dumps(info, indent=2) + "\n")
        return run / "run_info.json"


def event_writer(experiment):
    """The event-file writer of a TensorBoard ``SummaryWriter``, to add a summary it has no method for (the HPARAMS
    plugin's, which ``add_hparams`` would write into a run folder of its own, with a point per metric).

    ``file_writer`` is the attribute torch's own ``add_hparams`` writes through; this is the one place cifarlit
    reaches into the writer (tests/test_workflow.py fails if a torch release renames it).
    """
    writer = getattr(experiment, "file_writer", None)
    if writer is None or not callable(getattr(writer, "add_summary", None)):
        raise RuntimeError(f"{type(experiment).__name__} has no file_writer with add_summary: update event_writer")
    return writer


class PerClassReport(Callback):
    """After testing: accuracy per class and the confusion matrix, with the data's class names.

    Logs ``test/acc_<class>`` and a ``test/confusion_matrix`` figure, and writes ``confusion_matrix.csv`` (rows: true
    class, columns: predicted) and ``per_class_accuracy.csv`` into the run directory, and into the store of each
    tracker that keeps one (training/trackers.py). The CLI adds it to every ``test``, including the one after ``fit``
    (only then: a callback costs every training step, see :class:`RunRecord`).
    """

    def __init__(self) -> None:
        self.matrix: torch.Tensor | None = None

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.matrix = None

    @torch.no_grad()
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        x, y = batch
        # LitMLP's test_step returns the logits it scored (test-time augmentation included): the test set is
        # not run through the network a second time.
        logits = outputs if isinstance(outputs, torch.Tensor) else pl_module(x)
        k = logits.shape[1]
        counts = torch.bincount(y * k + logits.argmax(1), minlength=k * k).view(k, k)  # (true, predicted)
        self.matrix = counts if self.matrix is None else self.matrix + counts

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if self.matrix is None:
            return
        matrix = trainer.strategy.reduce(self.matrix, reduce_op="sum").cpu()  # every rank's shard of the test set
        dm = trainer.datamodule
        classes = tuple(dm.classes) if dm is not None and len(dm.classes) == len(matrix) else None
        self.classes = classes or tuple(str(i) for i in range(len(matrix)))
        self.matrix = matrix
        support = matrix.sum(1)
        self.accuracy = matrix.diag() / support.clamp_min(1)
        for name, acc, n in zip(self.classes, self.accuracy.tolist(), support.tolist(), strict=True):
            if n:  # a class without test images has no accuracy
                pl_module.log(f"test/acc_{name}", acc)
        log_dir = trackers.run_dir(trainer)  # a collective under DDP
        if trainer.is_global_zero and log_dir is not None:
            self._write(Path(log_dir), trainer)

    def _write(self, run_dir: Path, trainer) -> None:
        import csv

        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(run_dir / "confusion_matrix.csv", newline="", encoding="utf-8") as f:  # class names: UTF-8
            writer = csv.writer(f)
            writer.writerow(["true\\predicted", *self.classes])
            writer.writerows([name, *row] for name, row in zip(self.classes, self.matrix.tolist(), strict=True))
        with atomic_write(run_dir / "per_class_accuracy.csv", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["class", "images", "correct", "accuracy"])
            for name, n, right, acc in zip(
                self.classes, self.matrix.sum(1).tolist(), self.matrix.diag().tolist(), self.accuracy.tolist(),
                strict=True,
            ):  # fmt: skip
                writer.writerow([name, n, right, f"{acc:.4f}" if n else ""])
        trackers.log_files(trainer, [run_dir / "confusion_matrix.csv", run_dir / "per_class_accuracy.csv"])
        figure = confusion_figure(self.matrix, self.classes)
        trackers.log_figure(trainer, figure, "test/confusion_matrix")
        figures.pyplot().close(figure)
        rank_zero_info(f"per-class accuracy and confusion matrix: {run_dir}")


def confusion_figure(matrix: torch.Tensor, classes: tuple[str, ...]):
    """A matplotlib figure of the confusion matrix, rows normalized to the true class's share, counts written in."""
    plt = figures.pyplot()
    k = len(classes)
    share = (matrix / matrix.sum(1, keepdim=True).clamp_min(1)).numpy()
    fig, ax = plt.subplots(figsize=(2 + 0.6 * k, 1.5 + 0.6 * k))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:  # beyond that the numbers are unreadable
        for i in range(k):
            for j in range(k):
                color = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8, color=color)
    fig.tight_layout()
    return fig

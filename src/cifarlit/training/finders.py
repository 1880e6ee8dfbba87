"""``cifarlit fit --find_lr true`` / ``--find_batch_size true``: Lightning's learning-rate and batch-size finders
(``Tuner.lr_find``, ``Tuner.scale_batch_size``) run before the fit, what they find used by the fit and recorded
where the run records its configuration.

The finder trains the model for up to 100 steps while its rate grows from 1e-8 to 1, and suggests the rate where
the loss fell fastest. It runs on a Trainer of its own (one device, no logger, no callbacks, its temporary
checkpoint in a temporary folder), so none of its steps reach the run's logs, checkpoints or early stopping, and
Lightning restores the weights it started from. The suggestion then becomes ``LitMLP.lr``: the optimizer (and a
schedule that sets the rate itself, ``OneCycleLR``'s ``max_lr``) is built with it, the checkpoints' hyperparameters
hold it, and the run's ``config.yaml`` says ``lr: <found>`` with ``find_lr: false``, so ``fit -c config.yaml``
trains at the same rate and resumes without searching again.

The batch-size finder (``mode="power"``) doubles ``data.batch_size`` until a step runs out of the accelerator's
memory and keeps the largest that fitted, written to ``config.yaml`` the same way; on the CPU nothing runs out, so
it is refused there. With both, the batch size is found first and the rate for it second.
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.tuner import Tuner

from cifarlit.data.datamodule import CIFAR10DataModule
from cifarlit.models import factories
from cifarlit.models.lit_mlp import LitMLP
from cifarlit.training import trackers
from cifarlit.training.trainer import CifarTrainer
from cifarlit.utils import figures
from cifarlit.utils.errors import CifarlitError

PLOT = "lr_find.png"  # in the run folder
FLAGS = {  # each finder's option, and the option it sets
    "find_batch_size": "--data.batch_size",
    "find_lr": "--model.optimizer.init_args.lr",
}


def check_options(config) -> None:
    """Refuse, before anything is built, a fit whose ``--find_lr`` / ``--find_batch_size`` cifarlit cannot honour."""
    trainer, model = config.get("trainer") or {}, config.get("model") or {}
    for flag in [name for name in FLAGS if config.get(name)]:
        what = f"--{flag} true"
        if config.get("ckpt_path"):
            raise CifarlitError(
                f"{what} cannot be used with --ckpt_path {config.ckpt_path}: a resumed run keeps the settings its "
                "checkpoint was trained with; drop one of them (the run's config.yaml already records what was found)."
            )
        if trainer.get("fast_dev_run"):
            raise CifarlitError(f"{what} needs real training steps: drop --trainer.fast_dev_run to use it.")
        devices, nodes = trainer.get("devices"), trainer.get("num_nodes") or 1
        if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():  # "2" on the command line
            devices = int(devices)
        count = len(devices) if isinstance(devices, list) else devices  # or "auto": checked once the fit starts
        if count == -1 or (isinstance(count, int) and count > 1) or nodes > 1:
            raise CifarlitError(
                f"{what} runs on one device (got trainer.devices={devices!r}, num_nodes={nodes}): find the value "
                f"with --trainer.devices 1, then train on several with {FLAGS[flag]} set to it."
            )
    if config.get("find_lr"):
        try:
            factories.rate_argument(_class_of(model.get("lr_scheduler")))
        except ValueError as err:
            raise CifarlitError(
                f"--find_lr true cannot set one rate for model.lr_scheduler: {err}; set them by hand."
            ) from None


def _one_process(trainer: CifarTrainer, flag: str) -> None:
    if trainer.world_size > 1:  # e.g. devices: auto on a machine with several GPUs
        raise CifarlitError(
            f"--{flag} true runs on one device, and this fit has {trainer.world_size} processes: find the value with "
            f"--trainer.devices 1, then train on several with {FLAGS[flag]} set to it."
        )


def _class_of(section) -> type | None:
    """The class a config's ``{class_path, init_args}`` names (only for its signature), or None."""
    path = section.get("class_path") if section is not None else None
    if not isinstance(path, str) or "." not in path:
        return None
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name, None)


def find_lr(trainer: CifarTrainer, model: LitMLP, datamodule: CIFAR10DataModule) -> tuple[float, Path | None]:
    """Run Lightning's LR finder on ``model`` and set ``model.lr`` to its suggestion; returns the suggestion and
    the plot's path (in the run folder; None without one). ``trainer`` is the run's: the finder's own trainer
    uses its device, precision and gradient options, and never its logger or callbacks."""
    _one_process(trainer, "find_lr")
    before = model.lr
    with _tuner(trainer, model) as tuner:
        finder = tuner.lr_find(model, datamodule=datamodule, update_attr=False)
    lr = finder.suggestion() if finder is not None else None
    if lr is None:
        raise CifarlitError(
            "--find_lr true found no rate: the loss had too few finite points to pick one (the training split gave "
            "too few steps, or the loss diverged at once); set --model.optimizer.init_args.lr by hand."
        )
    model.lr = lr
    run_dir = _run_dir(trainer)
    plot = run_dir / PLOT if run_dir is not None else None
    if plot is not None:
        plt = figures.pyplot()
        fig = finder.plot(suggest=True)
        fig.axes[0].set_title(f"LR finder: suggested {lr:.3g} (config: {before:.3g})" if before else f"{lr:.3g}")
        figures.save(fig, plot)
        plt.close(fig)
        trackers.log_files(trainer, [plot])  # an MLflow run's artifacts, a W&B run's files
    print(f"find_lr: the run trains at lr {lr:.4g} (Lightning's LR finder; the config said {before})"
          + (f"; plot: {plot}" if plot else ""))  # fmt: skip
    return lr, plot


def check_device(trainer: CifarTrainer) -> None:
    """Refuse ``--find_batch_size`` where no memory runs out: on the CPU the batch would simply grow."""
    if trainer.strategy.root_device.type == "cpu":
        raise CifarlitError(
            "--find_batch_size true finds the largest batch that fits in the accelerator's memory, and this fit runs "
            "on the CPU, where the batch would grow to 8192 images or the whole training split: set --data.batch_size."
        )


def find_batch_size(trainer: CifarTrainer, model: LitMLP, datamodule: CIFAR10DataModule) -> int:
    """Run Lightning's batch-size finder (``mode="power"``: the config's ``data.batch_size`` doubled until a step
    runs out of memory) and leave ``datamodule.hparams.batch_size`` at the largest that fitted; returns it."""
    _one_process(trainer, "find_batch_size")
    before = datamodule.hparams.batch_size
    with _tuner(trainer, model) as tuner:
        size = tuner.scale_batch_size(model, datamodule=datamodule, mode="power", init_val=before)
    if not size:
        raise CifarlitError("--find_batch_size true found no batch size that fits; set --data.batch_size by hand.")
    datamodule.hparams.batch_size = size
    print(f"find_batch_size: the run trains with batches of {size} (Lightning's batch-size finder; the config "
          f"said {before}); the rate is not rescaled: --find_lr true finds one for this batch size")  # fmt: skip
    return size


def _run_dir(trainer: CifarTrainer) -> Path | None:
    """The run folder whatever the logger (an MLflow or W&B run has no ``log_dir``); None without a logger."""
    folder = trackers.run_dir(trainer)
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)  # an MLflow or W&B run's folder appears with its first file
    return Path(folder)


@contextlib.contextmanager
def _tuner(trainer: CifarTrainer, model: LitMLP) -> Iterator[Tuner]:
    """Lightning's Tuner on a Trainer of its own, whose temporary checkpoint (the weights the finder restores)
    goes to a temporary folder in the run folder, removed afterwards whatever happens."""
    model.stop_on_nonfinite = False  # the LR finder drives the loss to diverge, then restores the weights
    try:
        with tempfile.TemporaryDirectory(prefix=".finder-", dir=_run_dir(trainer)) as scratch:
            yield Tuner(_finder_trainer(trainer, scratch))
    finally:
        del model.stop_on_nonfinite  # the class's again


def _finder_trainer(trainer: CifarTrainer, root: str) -> CifarTrainer:
    """A Trainer that steps as the run's does (device, precision, accumulation, clipping, the same global torch
    flags) and keeps nothing: no logger, checkpoints, callbacks or progress bar of its own."""
    root_device = trainer.strategy.root_device
    deterministic = torch.are_deterministic_algorithms_enabled()
    if deterministic and torch.is_deterministic_algorithms_warn_only_enabled():
        deterministic = "warn"
    return CifarTrainer(
        accelerator=root_device.type,
        devices=[root_device.index] if root_device.index is not None else 1,
        precision=trainer.precision,
        deterministic=deterministic,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        accumulate_grad_batches=trainer.accumulate_grad_batches,
        gradient_clip_val=trainer.gradient_clip_val,
        gradient_clip_algorithm=trainer.gradient_clip_algorithm,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        max_epochs=1000,  # Lightning's default, said: the finder stops after its steps; a schedule needs a length
        plugins=[WeightsOnlyIO()],
        default_root_dir=root,
    )


class WeightsOnlyIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, reading as cifarlit reads every checkpoint: tensors and plain values only (the
    finder restores the weights from the file it wrote; Lightning reads it with ``weights_only=False``)."""

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict:
        return super().load_checkpoint(path, map_location, weights_only=True)

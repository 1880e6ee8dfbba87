"""``CifarTrainer``: Lightning's Trainer with cifarlit's device policy and ``explore``, and the check of its count and
fraction options.

The device policy is what a user should not have to know:

- ``deterministic: auto`` (the default): bit-identical runs on the CPU, where PyTorch's deterministic kernels
  cost nothing measurable; on a GPU the run is seeded (same initial weights, shuffles and augmentation draws)
  but PyTorch is free to pick its fastest kernels, some of which add in a varying order (benchmarks/README.md
  has the measured cost of ``deterministic: true`` there). ``true``, ``false`` and ``warn`` mean what they mean
  to Lightning.
- ``float32_matmul_precision: high``: TF32 tensor cores for float32 matmuls on GPUs that have them (Lightning
  asks every GPU user to choose this); on the CPU ``high`` gives the same results as ``highest``.
- a profiler that costs nothing unless one is asked for (see :class:`NoProfiler`), and no dispatch of the
  per-batch hooks a callback does not override (see :func:`skip_unused_hooks`).

``barebones: true`` keeps Lightning's own behaviour on both counts: it is the floor the benchmarks compare with.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.utilities import rank_zero_info

from cifarlit.data.datamodule import CIFAR10DataModule
from cifarlit.models.lit_mlp import LitMLP
from cifarlit.training import trackers
from cifarlit.utils.errors import CifarlitError
from cifarlit.utils.files import check_output

_NO_CONTEXT = contextlib.nullcontext()
_NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
# The callback hooks Lightning calls at every batch.
PER_BATCH_HOOKS = tuple(
    f"on_{stage}_batch_{when}" for stage in ("train", "validation", "test", "predict") for when in ("start", "end")
) + ("on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad")


class NoProfiler(PassThroughProfiler):
    """Lightning's pass-through profiler without the context manager it builds around every hook call.

    Lightning wraps each hook of each callback, the module, the data module and the strategy in
    ``profiler.profile(name)``; the pass-through one still creates a generator-based context per call, 60 or so
    per training step with the default callbacks. This one hands back one shared no-op context instead.
    """

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return _NO_CONTEXT


def skip_unused_hooks(callbacks: list[Callback]) -> None:
    """Mark the per-batch hooks a callback does not override as absent (``None``) on that callback.

    Lightning calls every callback at every per-batch hook, and a hook a callback does not override is a no-op
    that still costs a dispatch (the callback's ``state_key``, a profiler context): six per training step per
    callback. Lightning's dispatcher calls only what is callable, so an absent hook is skipped, while the hooks
    a callback does override (the progress bar's, a checkpoint's) run as before.
    """
    for callback in callbacks:
        for hook in PER_BATCH_HOOKS:
            if getattr(type(callback), hook, None) is getattr(Callback, hook):
                setattr(callback, hook, None)


@contextlib.contextmanager
def _without_nvml_cuda_check(device: torch.device):
    """On the CPU, fit without the NVML-based CUDA check that importing Lightning switches on.

    Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` so that asking whether CUDA is there cannot break a later
    fork. With it, every optimizer step (Adam asks, to guard CUDA-graph capture) loads NVML, which on a machine
    without a GPU driver fails every time and costs about as much as the fused step itself (benchmarks/tricks.py).
    A CPU run has no CUDA context to protect. Switched off once for the fit, not per step: the environment is
    process-wide, and changing it while other threads run is unsafe.
    """
    saved = os.environ.pop(_NVML_CHECK, None) if device.type == "cpu" else None
    try:
        yield
    finally:
        if saved is not None:
            os.environ[_NVML_CHECK] = saved


class CifarTrainer(Trainer):
    """Lightning's Trainer; every Trainer option is accepted as it is, with two more and one more value.

    Args:
        deterministic: ``auto`` = ``true`` on the CPU (bit-identical runs), seeded but free to use
            non-deterministic kernels on a GPU (faster; runs may differ in the last bits and grow apart).
            ``true`` makes GPU runs bit-identical too, at a cost; ``warn`` only warns about non-deterministic ops.
        float32_matmul_precision: ``torch.set_float32_matmul_precision`` for this process: ``high`` (TF32 on
            GPUs with tensor cores), ``highest`` (full float32) or ``medium`` (bfloat16 internally).
    """

    def __init__(
        self,
        *,
        deterministic: bool | Literal["warn", "auto"] | None = "auto",
        float32_matmul_precision: Literal["highest", "high", "medium"] = "high",
        **kwargs,
    ) -> None:
        torch.set_float32_matmul_precision(float32_matmul_precision)  # before Lightning checks it, in __init__
        if not kwargs.get("barebones") and kwargs.get("profiler") is None:
            kwargs["profiler"] = NoProfiler()
        super().__init__(deterministic=None if deterministic == "auto" else deterministic, **kwargs)
        if deterministic == "auto":
            on_cpu = self.strategy.root_device.type == "cpu"
            torch.use_deterministic_algorithms(on_cpu)  # process-global: set either way, whatever ran before
            if not on_cpu:
                rank_zero_info(
                    f"trainer.deterministic=auto: the run is seeded but not bit-reproducible on "
                    f"{self.strategy.root_device.type}; set trainer.deterministic true for identical runs (slower)."
                )

    def _skip_unused_hooks(self) -> None:
        if not self.barebones:
            skip_unused_hooks(self.callbacks)

    def fit(self, *args, **kwargs) -> None:
        self._skip_unused_hooks()  # here, not in __init__: the CLI adds callbacks after building the Trainer
        with _without_nvml_cuda_check(self.strategy.root_device):
            return super().fit(*args, **kwargs)

    def validate(self, *args, **kwargs):
        self._skip_unused_hooks()
        return super().validate(*args, **kwargs)

    def test(self, *args, **kwargs):
        self._skip_unused_hooks()
        return super().test(*args, **kwargs)

    def predict(self, *args, **kwargs):
        self._skip_unused_hooks()
        return super().predict(*args, **kwargs)

    def explore(
        self,
        model: LitMLP,
        datamodule: CIFAR10DataModule,
        format: Literal["table", "json"] = "table",
        samples_per_class: int = 8,
        grid_path: str | None = None,
        log_grid: bool = False,
    ) -> dict:
        """Describe the data per split: sizes, classes, channels, resolution, dtype, range, mean/std, balance.

        Args:
            format: ``table`` for people, ``json`` for scripts.
            samples_per_class: images per class in the sample grid; 0 for no grid.
            grid_path: where to save the PNG grid of samples; default ``explore.png`` in the run directory (the
                logger's ``version_N`` folder), never the working directory.
            log_grid: also log the grid to the run's loggers that show images (TensorBoard, MLflow, W&B).
        """
        from cifarlit.data import explore as report

        if datamodule.hparams.stream is not None:
            raise CifarlitError(
                "explore describes a dataset held in memory: run it with data.data_dir, not data.stream."
            )
        path = None
        if samples_per_class > 0 and (grid_path or log_grid or self.logger):  # checked before the data is read
            path = Path(grid_path) if grid_path else Path(trackers.run_dir(self)) / "explore.png"
            check_output(path, "--grid_path", "explore.png")
        datamodule.prepare_data()
        datamodule.setup("fit")
        classes = datamodule.classes
        splits = {
            name: report.describe(ds.x, ds.y, classes)
            for name, ds in (
                ("train", datamodule.train_set),
                ("val", datamodule.val_set),
                ("test", datamodule.test_set),
            )
        }
        print(report.to_json(splits, classes) if format == "json" else report.format_table(splits, classes))
        if path is not None:
            ds = datamodule.train_set
            fig = report.sample_grid(ds.x, ds.y, classes, samples_per_class, path)
            if format == "table":
                print(f"\nsample grid: {path}")
            if log_grid:
                trackers.log_figure(self, fig, "explore/samples")
        return splits


# Trainer options whose invalid values Lightning reports as a traceback (or a division by zero, or not at all):
# each with what is valid, checked before anything is built.
NUMBERS = {
    "max_epochs": ("a whole number >= 0, or -1 for no limit", lambda v: v is None or _whole(v, -1)),
    "min_epochs": ("a whole number >= 0", lambda v: v is None or _whole(v, 0)),
    "max_steps": ("a whole number >= 0, or -1 for no limit", lambda v: _whole(v, -1)),
    "min_steps": ("a whole number >= 0", lambda v: v is None or _whole(v, 0)),
    "accumulate_grad_batches": ("a whole number >= 1", lambda v: _whole(v, 1)),
    "check_val_every_n_epoch": ("a whole number >= 1, or null", lambda v: v is None or _whole(v, 1)),
    "log_every_n_steps": ("a whole number >= 0 (0: never)", lambda v: v is None or _whole(v, 0)),
    "num_sanity_val_steps": ("a whole number >= 0, or -1 for the whole split", lambda v: v is None or _whole(v, -1)),
    "reload_dataloaders_every_n_epochs": ("a whole number >= 0", lambda v: _whole(v, 0)),
    "num_nodes": ("a whole number >= 1", lambda v: _whole(v, 1)),
    "devices": ("a count >= 1, -1 for all, 'auto' or a list of device indices", lambda v: _devices(v)),
    "fast_dev_run": ("true, false or a number of batches >= 0", lambda v: isinstance(v, bool) or _whole(v, 0)),
    "gradient_clip_val": ("a number >= 0, or null", lambda v: v is None or _number(v, 0)),
    "val_check_interval": ("a fraction of an epoch in (0, 1] or a whole number of batches >= 1",
                           lambda v: not _number(v, -math.inf) or _share(v, 1) and v != 0),
    "overfit_batches": ("a fraction in [0, 1] or a whole number of batches >= 0", lambda v: _share(v, 0)),
}  # fmt: skip
NUMBERS |= {
    f"limit_{split}_batches": ("a fraction in [0, 1] or a whole number of batches >= 0, or null",
                               lambda v: v is None or _share(v, 0))
    for split in ("train", "val", "test", "predict")
}  # fmt: skip


def check_numbers(options: Mapping) -> None:
    """Refuse a Trainer count or fraction out of its range, naming the option, the value and what is valid."""
    for option, (valid, ok) in NUMBERS.items():
        value = options.get(option)
        if option in options and not ok(value):
            raise CifarlitError(f"trainer.{option}={value!r} is not valid: use {valid}.")


def _whole(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _number(value, least: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= least


def _share(value, least_count: int) -> bool:
    """A fraction in [0, 1] (a float) or a count (an int) of at least ``least_count``."""
    return _whole(value, least_count) or (isinstance(value, float) and 0 <= value <= 1)


def _devices(value) -> bool:
    """A device count is -1 (all) or >= 1; "0" arrives as a string (devices may also be a list or "auto")."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    return not isinstance(value, int) or isinstance(value, bool) or value == -1 or value >= 1

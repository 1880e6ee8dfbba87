"""The networks (plain ``nn.Module``) and ``LitMLP``, the LightningModule that trains them."""

from __future__ import annotations

import random
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from cifarlit.errors import CifarlitError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}


class MLP(nn.Module):
    """Flatten, then ``Linear -> [BatchNorm1d] -> activation -> [Dropout]`` per hidden layer, then a linear head.

    >>> MLP(3 * 32 * 32, [100, 100], 10)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: list[int],
        num_classes: int,
        batch_norm: bool = False,
        dropout: float | list[float] = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        drops = dropout if isinstance(dropout, list) else [dropout] * len(hidden_sizes)
        layers: list[nn.Module] = [nn.Flatten()]  # (B, 3, 32, 32) -> (B, 3072)
        width = in_features
        for size, p in zip(hidden_sizes, drops, strict=True):
            layers.append(nn.Linear(width, size, bias=not batch_norm))  # BN's shift makes the bias redundant
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(ACTIVATIONS[activation]())
            if p > 0:
                layers.append(nn.Dropout(p))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LitMLP(L.LightningModule):
    """Trains an :class:`MLP` classifier; optimizer and LR scheduler come from the config.

    Args:
        hidden_sizes: width of each hidden layer; ``[]`` gives a linear model. The lecture's net is [100, 100].
        num_classes: number of output classes (linked from ``data.num_classes`` by the CLI).
        image_shape: ``(C, H, W)`` of the input images.
        batch_norm: BatchNorm1d after each hidden linear layer.
        dropout: dropout after each hidden layer: one probability for all, or one per layer.
        activation: one of relu, gelu, silu, tanh, leaky_relu.
        optimizer: optimizer class and arguments, e.g. ``torch.optim.SGD`` with ``lr``, ``momentum``,
            ``weight_decay`` (the L2 penalty).
        lr_scheduler: optional LR scheduler class and arguments, e.g. ``torch.optim.lr_scheduler.StepLR``.
        scheduler_interval: step the scheduler every ``epoch`` or every ``step`` (OneCycleLR, warm-up).
        scheduler_monitor: metric that ReduceLROnPlateau watches.
        compile: run the network through ``torch.compile`` (worth it on a GPU; compiling takes a minute).
    """

    def __init__(
        self,
        hidden_sizes: list[int] = [100, 100],  # noqa: B006 -- jsonargparse reads the default from the signature
        num_classes: int = 10,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        batch_norm: bool = False,
        dropout: float | list[float] = 0.0,
        activation: Literal["relu", "gelu", "silu", "tanh", "leaky_relu"] = "relu",
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        scheduler_monitor: str = "val/loss",
        compile: bool = False,
    ) -> None:
        super().__init__()
        _check_architecture(hidden_sizes, dropout, num_classes)
        self.save_hyperparameters()
        c, h, w = image_shape
        self.net = MLP(c * h * w, list(hidden_sizes), num_classes, batch_norm, dropout, activation)
        if compile:
            # Kept out of the module tree (plain attribute) so state_dict and checkpoints keep only `net.*`;
            # the compiled wrapper shares self.net's parameters.
            object.__setattr__(self, "_compiled_net", torch.compile(self.net))
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        # Metrics accumulate on the device and are logged once per epoch: a per-step self.log cost ~1.5 ms a
        # step here (a third of the MLP's own step) and per-step values force host syncs on a GPU.
        # validate_args / nan_strategy off: their checks read tensors back to the host on every update.
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{name}": metric
                for stage in ("train", "val", "test")
                for name, metric in (
                    ("loss", MeanMetric(nan_strategy="disable")),
                    ("acc", MulticlassAccuracy(num_classes, average="micro", validate_args=False)),
                )
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._compiled_net(x) if self.hparams.compile else self.net(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.metrics[f"{stage}_loss"].update(loss.detach(), weight=len(y))
        self.metrics[f"{stage}_acc"].update(logits.detach(), y)
        return loss

    def _log_epoch(self, stage: str) -> None:
        # Logging the metric objects lets Lightning compute, sync across devices and reset them.
        for name in ("loss", "acc"):
            self.log(f"{stage}/{name}", self.metrics[f"{stage}_{name}"], prog_bar=stage == "val")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def on_before_backward(self, loss: torch.Tensor) -> None:
        # Stop at the first non-finite loss, before it reaches the weights or a checkpoint. Reading the loss is
        # free on the CPU; on an accelerator it is a host sync, so there it is read every log_every_n_steps.
        step = self.global_step
        if self.device.type != "cpu" and step % max(1, self.trainer.log_every_n_steps) != 0:
            return
        if not torch.isfinite(loss).item():
            raise CifarlitError(
                f"the training loss became {loss.item()} at step {step} (epoch {self.current_epoch}); training "
                f"stopped and the last good checkpoint is kept. Lower the learning rate "
                f"(--model.optimizer.init_args.lr) or check the data for bad values."
            )

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).softmax(-1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning restores weights, optimizer, scheduler, loops and callbacks; the RNG states make a resumed
        # run shuffle and augment exactly as the uninterrupted one would have.
        checkpoint["cifarlit_rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "cifarlit_rng_states" in checkpoint:
            set_rng_states(checkpoint["cifarlit_rng_states"])

    def configure_optimizers(self):
        try:
            optimizer = self.optimizer(self.parameters())
        except ValueError as err:  # torch's own check, e.g. "Invalid learning rate: -0.1"
            raise CifarlitError(f"model.optimizer: {err}; use values the optimizer accepts (lr >= 0).") from None
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self.lr_scheduler(optimizer)
        config = {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.hparams.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}


def _check_architecture(hidden_sizes, dropout, num_classes) -> None:
    bad = [s for s in hidden_sizes if s < 1]
    if bad:
        raise CifarlitError(f"model.hidden_sizes={list(hidden_sizes)} has width {bad[0]}: every layer needs >= 1 unit.")
    drops = dropout if isinstance(dropout, list) else [dropout]
    if isinstance(dropout, list) and len(dropout) != len(hidden_sizes):
        raise CifarlitError(
            f"model.dropout={dropout} has {len(dropout)} values for {len(hidden_sizes)} hidden layers: "
            "give one per layer or a single number."
        )
    for p in drops:
        if not 0 <= p < 1:
            raise CifarlitError(f"model.dropout={dropout} is not valid: each probability must be in [0, 1).")
    if num_classes < 2:
        raise CifarlitError(f"model.num_classes={num_classes} is not valid: a classifier needs at least 2 classes.")


def rng_states() -> dict:
    """torch, CUDA, NumPy and Python RNG states as tensors and plain values (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))

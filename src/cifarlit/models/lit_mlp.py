"""``LitMLP``, the LightningModule that trains a network from :mod:`cifarlit.models.nets` (the MLP unless the config
names another) with the optimizer and LR schedule from the config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric

from cifarlit.models import factories, nets, pretrained, rng, schedules, weights
from cifarlit.models.nets import MLP
from cifarlit.utils import checkpoint_state
from cifarlit.utils.errors import CifarlitError
from cifarlit.utils.lightning_adapter import built_by_cli

STAGES = ("train", "val", "test")
NetFactory = Callable[[int, tuple[int, int, int]], nn.Module]  # (num_classes, image_shape) -> network


# Steps whose tallies are stacked into one: a list of a tensor pair per step, held until the epoch ends, grew the
# process with every step when batches came from a stream (fragmented small allocations; benchmarks/README.md,
# "Streaming"), so a larger dataset took more memory.
PACK_STEPS = 256


def _pack(tally: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Per-step ``(loss, correct, count)`` tallies (or stacks of them) as one stack: losses, correct, counts."""
    losses = torch.cat([loss.reshape(-1) for loss, _, _ in tally])
    correct = torch.cat([right.reshape(-1) for _, right, _ in tally])
    counts = [n for _, _, count in tally for n in (count if isinstance(count, list) else [count])]
    return losses, correct, counts


class LitMLP(L.LightningModule):
    """Trains a classifier network; the network, optimizer and LR scheduler come from the config.

    The network is the MLP built from ``hidden_sizes``/``norm``/``dropout``/``activation`` unless ``net`` names
    another class (``cifarlit.models.nets.SmallCNN``, ``cifarlit.models.nets.TorchvisionNet``,
    ``cifarlit.models.pretrained.TimmNet`` or your own ``nn.Module`` whose ``__init__`` takes ``num_classes`` and
    ``image_shape`` first). A net with a ``load_weights(classes)`` method (TimmNet, TorchvisionNet) gets its
    ``weights`` when a fit starts, not when built.

    Args:
        hidden_sizes: MLP: width of each hidden layer; ``[]`` gives a linear model. The lecture's net is [100, 100].
        num_classes: number of output classes (linked from ``data.num_classes`` by the CLI).
        image_shape: ``(C, H, W)`` of the input images.
        norm: MLP: ``batch`` (BatchNorm1d), ``layer`` (LayerNorm) or ``none`` after each hidden linear layer.
        dropout: MLP: dropout after each hidden layer: one probability for all, or one per layer.
        activation: MLP: one of relu, gelu, silu, tanh, leaky_relu.
        net: another network: ``{class_path: cifarlit.models.nets.SmallCNN, init_args: {widths: [32, 64, 128]}}``.
        init_from: start from these weights (a cifarlit ``.ckpt`` or a ``torch.save``'d state_dict); the head is
            re-created when the class count differs. Applied when a fit starts, not when resuming.
        optimizer: optimizer class and arguments, e.g. ``torch.optim.SGD`` with ``lr``, ``momentum``,
            ``weight_decay`` (the L2 penalty). Optimizers with a fused kernel (Adam, AdamW, SGD) use it unless
            ``init_args`` set ``fused: false`` (or ``foreach``).
        lr_scheduler: optional LR scheduler class and arguments, e.g. ``torch.optim.lr_scheduler.StepLR``. For
            ``OneCycleLR`` and ``cifarlit.models.schedules.WarmupCosineLR`` ``total_steps`` is filled in when unset.
        scheduler_interval: step the scheduler every ``epoch`` or every ``step`` (OneCycleLR, warm-up).
        scheduler_monitor: metric that ReduceLROnPlateau watches.
        label_smoothing: training loss only (val/test report plain cross-entropy, comparable across runs).
        compile: run the network through ``torch.compile`` (worth it on a GPU; compiling takes a minute).
        tta: test-time augmentation of test and predict (and the test after fit): ``flip`` scores each image as
            the mean of its and its mirror's logits. A run's choice: testing a checkpoint takes it from the command
            line (``--model.tta flip``), not from the checkpoint.
    """

    # Where the classes a checkpoint's hyperparameters may name come from (``checkpoint_hparams``): cifarlit's
    # networks (timm's through TimmNet) and schedules, torch's optimizers and LR schedulers.
    CHECKPOINT_MODULES = (nets, pretrained, schedules, torch.optim, torch.optim.lr_scheduler)
    # False while Lightning's learning-rate finder drives the rate up until the loss diverges (training/finders.py):
    # its weights are thrown away, so a non-finite loss there is the finder's signal, not a damaged run.
    stop_on_nonfinite = True

    def __init__(
        self,
        hidden_sizes: list[int] = [100, 100],  # noqa: B006 -- jsonargparse reads the default from the signature
        num_classes: int = 10,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        norm: Literal["none", "batch", "layer"] = "none",
        dropout: float | list[float] = 0.0,
        activation: Literal["relu", "gelu", "silu", "tanh", "leaky_relu"] = "relu",
        net: NetFactory | None = None,
        init_from: str | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        scheduler_monitor: str = "val/loss",
        label_smoothing: float = 0.0,
        compile: bool = False,
        tta: Literal["none", "flip"] = "none",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise CifarlitError(f"model.num_classes={num_classes} is not valid: a classifier needs at least 2 classes.")
        if not 0 <= label_smoothing < 1:
            raise CifarlitError(f"model.label_smoothing={label_smoothing} is not valid: use a value in [0, 1).")
        # Hyperparameters are the config, as plain values: from the CLI they arrive as class_path/init_args; built
        # in Python, the factories are written the same way, so every checkpoint loads with weights_only=True (no
        # pickled classes) and load_from_checkpoint rebuilds the module with LightningCLI's instantiator.
        # a list, not a tuple, in the hparams (collected from these locals): hparams.yaml must stay plain YAML (a
        # tuple is written as !!python/tuple, which yaml.safe_load refuses); LightningCLI links a list too (cli.py)
        image_shape = [int(n) for n in image_shape]
        self.save_hyperparameters()
        if not built_by_cli(self.hparams):
            factories.write_plain(self.hparams)
            self.save_hyperparameters(self.hparams)  # and as Lightning's copy that loggers write (hparams.yaml)
        if net is None:
            _check_mlp(hidden_sizes, dropout)
            self.net = MLP(num_classes, tuple(image_shape), list(hidden_sizes), norm, dropout, activation)
        else:
            with weights.deferred():  # a net's own `weights` are applied in setup, when a fit starts
                self.net = net(num_classes, tuple(image_shape))
            if not isinstance(self.net, nn.Module):
                raise CifarlitError(f"model.net built a {type(self.net).__name__}, not a torch.nn.Module.")
        if compile:
            # Kept out of the module tree (plain attribute) so state_dict and checkpoints keep only `net.*`;
            # the compiled wrapper shares self.net's parameters.
            object.__setattr__(self, "_compiled_net", torch.compile(self.net))
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        # Each step only appends its (loss, correct, count) to a list, on the device; the epoch's end sums them
        # into torchmetrics objects, which Lightning computes, syncs across devices and logs once. A per-step
        # self.log or metric update costs far more than the append (benchmarks/tricks.py), and nothing is read
        # back to the host before the epoch ends.
        self.metrics = nn.ModuleDict(
            {f"{stage}_{name}": MeanMetric(nan_strategy="disable") for stage in STAGES for name in ("loss", "acc")}
        )
        self._tallies: dict[str, list[tuple[torch.Tensor, torch.Tensor, int | list[int]]]] = {
            stage: [] for stage in STAGES
        }
        self._first_step = 0  # global step at the start of the training epoch
        self.tta = tta

    @property
    def lr(self) -> float | None:
        """The rate the run trains at: the optimizer's ``lr``, or the schedule's when it sets the rate itself
        (``OneCycleLR``'s ``max_lr``). The attribute Lightning's learning-rate finder (``Tuner.lr_find``,
        ``cifarlit fit --find_lr true``) reads and sets; setting it rebuilds both factories and the
        hyperparameters, so the run, its checkpoints and its logged hyperparameters all use the new rate."""
        return factories.learning_rate(self.optimizer, self.lr_scheduler)

    @lr.setter
    def lr(self, value: float) -> None:
        self.optimizer, self.lr_scheduler = factories.with_learning_rate(self.optimizer, self.lr_scheduler, value)
        factories.write_learning_rate(self.hparams, value, factories.rate_argument(self.lr_scheduler))
        self.save_hyperparameters(self.hparams)  # and Lightning's copy that loggers write (hparams.yaml)

    @property
    def head_name(self) -> str:
        """The network's classifier layer (re-created by ``init_from`` when the class count changes)."""
        return getattr(self.net, "head_name", "head")

    @property
    def backbone(self) -> nn.Module:
        """Everything but the head, for Lightning's ``BackboneFinetuning`` callback (train the head first)."""
        return nn.ModuleList(_without(self.net, self.net.get_submodule(self.head_name)))

    def setup(self, stage: str) -> None:
        # A resumed fit restores its own weights afterwards, so the net's `weights` (TimmNet, TorchvisionNet) and
        # init_from only matter for a fresh start; a checkpoint tested, predicted with or exported needs neither.
        if stage != "fit" or self.trainer.ckpt_path is not None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        classes = list(datamodule.classes) if datamodule is not None and hasattr(datamodule, "classes") else None
        load_weights = getattr(self.net, "load_weights", None)
        report = self.weights_report = load_weights(classes) if callable(load_weights) else None
        if report is not None and self.trainer.is_global_zero:
            print(f"model.net.init_args.weights {self.net.weights}: {report}")
        if self.hparams.init_from:
            from cifarlit.models.transfer import load_into

            report = load_into(self.net, Path(self.hparams.init_from), self.head_name, classes)
            self.init_report = report
            if self.trainer.is_global_zero:
                print(f"init_from {self.hparams.init_from}: {report}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._compiled_net(x) if self.hparams.compile else self.net(x)

    def _step(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The loss and the logits of a batch, tallied for the epoch's metrics."""
        x, y = batch
        if len(y) == 0:  # a process's share of a split smaller than the process count (EvalBatchSampler)
            return None
        logits = self.scores(x) if stage == "test" else self(x)
        smoothing = self.hparams.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)  # y: class indices, or MixUp's probabilities
        truth = y.argmax(-1) if y.is_floating_point() else y  # a mixed image counts for its larger share
        tally = self._tallies[stage]
        tally.append((loss.detach(), (logits.detach().argmax(-1) == truth).sum(), len(y)))
        if len(tally) > PACK_STEPS:  # keeps few small tensors alive for the epoch, however long it is
            tally[:-1] = [_pack(tally[:-1])]
        return loss, logits

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The logits that test and predict use: with ``tta = "flip"`` the mean of the image's and its mirror's."""
        logits = self(x)
        return (logits + self(x.flip(-1))) / 2 if self.tta == "flip" else logits

    def _log_epoch(self, stage: str) -> None:
        tally, self._tallies[stage] = self._tallies[stage], []
        if not tally:
            return
        losses, correct, counts = _pack(tally)
        n = sum(counts)
        weights = torch.tensor(counts, dtype=torch.float32, device=losses.device)
        # One update per epoch: the mean over images, weighted by n so devices with different counts sync exactly.
        self.metrics[f"{stage}_loss"].update((losses.float() * weights).sum() / n, weight=n)
        self.metrics[f"{stage}_acc"].update(correct.sum().float() / n, weight=n)
        # Logging the metric objects lets Lightning compute, sync across devices and reset them.
        for name in ("loss", "acc"):
            self.log(f"{stage}/{name}", self.metrics[f"{stage}_{name}"], prog_bar=stage == "val")

    def _start_epoch(self, stage: str) -> None:
        self._tallies[stage] = []  # nothing left over from an interrupted epoch or the sanity check

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def _check_finite(self) -> None:
        """Stop with one sentence if a training loss of this epoch was NaN or infinite.

        Checked where something is about to be kept (before every checkpoint is written, and at the end of each
        training epoch), not at every step: reading a loss on the host stalls a GPU until the step is done. So a
        run that goes bad stops within the epoch and no checkpoint ever holds the damaged weights.
        """
        tally = self._tallies["train"]
        if not tally or not self.stop_on_nonfinite:
            return
        losses = _pack(tally)[0].float()
        finite = torch.isfinite(losses)
        if bool(finite.all()):  # the one host sync
            return
        i = int((~finite).nonzero()[0])
        step = self._first_step + i // max(1, self.trainer.accumulate_grad_batches)
        raise CifarlitError(
            f"the training loss became {losses[i].item()} at step {step} (epoch {self.current_epoch}); training "
            f"stopped before any checkpoint kept the damaged weights (the last good checkpoint stays). Lower the "
            f"learning rate (--model.optimizer.init_args.lr) or check the data for bad values."
        )

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        scored = self._step(batch, "test")
        return None if scored is None else scored[1]  # the logits, for the per-class report

    def on_train_epoch_start(self) -> None:
        self._start_epoch("train")
        self._first_step = self.global_step  # names the step of a non-finite loss

    def on_validation_epoch_start(self) -> None:
        self._start_epoch("val")

    def on_test_epoch_start(self) -> None:
        self._start_epoch("test")

    def on_train_epoch_end(self) -> None:
        self._check_finite()
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self.scores(batch[0]).softmax(-1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._check_finite()  # raising here means the file is never written
        # only rank 0 writes the file, so it gathers every process's RNG states (cifarlit.models.rng)
        checkpoint[checkpoint_state.RNG_KEY] = rng.every_process(rng.rng_states())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Lightning calls this before it restores the data module and the callbacks, whichever way the file came
        # (the CLI checked it already; Python code, SLURM's hpc resume and testing the best checkpoint did not).
        trainer = self._attached_trainer()
        checkpoint_state.check_restorable(
            checkpoint, f"--ckpt_path {trainer.ckpt_path}" if trainer else "the checkpoint"
        )
        if trainer is not None:  # nothing a crafted file names outside the run's checkpoint folder is ever removed
            checkpoint_state.confine_paths(checkpoint, trainer.callbacks, warn=trainer.state.fn == "fit")
        states = checkpoint.get(checkpoint_state.RNG_KEY)
        if states:
            rng.set_rng_states(rng.this_process(states, trainer.global_rank if trainer is not None else 0))

    def _attached_trainer(self) -> L.Trainer | None:
        """The trainer, or None for a module outside one (``load_from_checkpoint``)."""
        try:
            return self.trainer
        except RuntimeError:  # Lightning's "is not attached to a `Trainer`"
            return None

    def configure_optimizers(self):
        # Only trainable parameters: BackboneFinetuning adds the frozen backbone as its own group later.
        params = [p for p in self.parameters() if p.requires_grad]
        try:
            optimizer = factories.build_optimizer(self.optimizer, params)
        except ValueError as err:  # torch's own check, e.g. "Invalid learning rate: -0.1"
            raise CifarlitError(f"model.optimizer: {err}; use values the optimizer accepts (lr >= 0).") from None
        if self.lr_scheduler is None:
            return optimizer
        interval, length = self.hparams.scheduler_interval, {}
        if factories.needs_total_steps(self.lr_scheduler):  # the run's optimizer steps, or its epochs
            steps = self.trainer.estimated_stepping_batches if interval == "step" else self.trainer.max_epochs
            length["total_steps"] = int(steps)
        scheduler = self.lr_scheduler(optimizer, **length)
        config = {"scheduler": scheduler, "interval": interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.hparams.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}


def _without(module: nn.Module, head: nn.Module) -> list[nn.Module]:
    """The children of ``module`` that do not hold ``head``, descending into those that do."""
    parts = []
    for child in module.children():
        if child is head:
            continue
        holds_head = any(m is head for m in child.modules())
        parts += _without(child, head) if holds_head else [child]
    return parts


def _check_mlp(hidden_sizes, dropout) -> None:
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

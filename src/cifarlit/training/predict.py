"""What `cifarlit predict` writes: a Kaggle-style CSV of one predicted class name per image, from a checkpoint that
is read once.

The CLI reads and checks the checkpoint (:func:`cifarlit.utils.checkpoints.load_checkpoint`), builds the module
from it (:func:`module_from`) and hands it to Lightning's predict with :class:`PredictionsCSV`, which applies the
checkpoint's data state (normalization, classes, image size) where Lightning's own restore would, and writes the
CSV once every image is scored. Nothing reads the file again.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from cifarlit.training import trackers
from cifarlit.utils.errors import CifarlitError
from cifarlit.utils.files import atomic_write, check_output

DEFAULT_NAME = "predictions.csv"


def options(output: str | None = None, probabilities: bool = False) -> None:
    """The options `cifarlit predict` takes besides Lightning's (the CLI reads them from this signature).

    Args:
        output: the CSV to write (``id,label``; ``id`` is the file-name stem, or the index in the test split).
            Default: predictions.csv in the run folder, or without a logger in the folder of the checkpoint's run.
        probabilities: add a ``prob_<class>`` column per class.
    """


def module_from(checkpoint: Mapping, model_class: type[LightningModule], **overrides) -> LightningModule:
    """The module ``checkpoint`` (already read and checked) holds, weights and all: what ``load_from_checkpoint``
    builds from the file, built from the dict. ``overrides`` replace hyperparameters that are a run's own choice
    (``tta``)."""
    from lightning.pytorch.cli import instantiate_module

    hparams = dict(checkpoint["hyper_parameters"])
    by_cli = hparams.pop("_instantiator", None) is not None  # factories as {class_path, init_args}, as the CLI's
    hparams.update(overrides)
    module = instantiate_module(model_class, hparams) if by_cli else model_class(**hparams)
    module.on_load_checkpoint(dict(checkpoint))  # as load_from_checkpoint does: before the weights
    module.load_state_dict(checkpoint["state_dict"])
    return module


def csv_path(output: str | None, trainer: Trainer, ckpt_path: str) -> Path:
    """The CSV to write, checked before any image is scored: ``output``, else ``predictions.csv`` in the run folder,
    or without a logger in the run folder of ``ckpt_path`` (never the working directory)."""
    if output:
        path = Path(output)
    elif trainer.logger is not None:
        path = Path(trackers.run_dir(trainer)) / DEFAULT_NAME  # whatever the logger (trainer.log_dir: TensorBoard's)
    else:
        ckpt = Path(ckpt_path).resolve()
        path = (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent) / DEFAULT_NAME
    return check_output(path, "--output", DEFAULT_NAME)


class PredictionsCSV(BasePredictionWriter):
    """Writes the class probabilities every predict step returned as one CSV (:func:`write_csv`), ids and class
    names from the data module, once the whole split is scored.

    Args:
        path: the CSV (see :func:`csv_path`).
        probabilities: add a ``prob_<class>`` column per class.
        checkpoint: the checkpoint the module was built from; its data module state is applied when the run sets
            up, after the data module's own setup, where Lightning's restore would apply it.
    """

    def __init__(self, path: Path, probabilities: bool = False, checkpoint: Mapping | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.path, self.probabilities = path, probabilities
        self.states = {key: value for key, value in (checkpoint or {}).items() if key != "state_dict"}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        state = self.states.get(type(datamodule).__qualname__) if datamodule is not None else None
        if state is not None:
            datamodule.load_state_dict(state)

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions, batch_indices) -> None:
        probs = torch.cat([batch.float().cpu() for batch in predictions])  # (N, num_classes), each row sums to 1
        datamodule = trainer.datamodule
        ids = getattr(datamodule, "predict_ids", None) or [str(i) for i in range(len(probs))]
        classes = tuple(datamodule.classes) if datamodule is not None else tuple(map(str, range(probs.shape[1])))
        if len(classes) != probs.shape[1]:
            raise CifarlitError(
                f"the model predicts {probs.shape[1]} classes but the data names {len(classes)} ({list(classes)}): "
                "use the checkpoint and data of the same training run."
            )
        write_csv(self.path, ids, probs, classes, self.probabilities)
        print(f"predictions for {len(ids)} images: {self.path}")


def write_csv(
    path: Path, ids: list[str], probs: torch.Tensor, classes: tuple[str, ...], probabilities: bool = False
) -> Path:
    """Write ``id,label`` rows (``label`` = the most probable class name), plus ``prob_<class>`` columns if asked.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "p.csv"
    >>> _ = write_csv(path, ["a", "b"], torch.tensor([[0.9, 0.1], [0.2, 0.8]]), ("cat", "dog"), probabilities=True)
    >>> print(path.read_text().strip())
    id,label,prob_cat,prob_dog
    a,cat,0.900000,0.100000
    b,dog,0.200000,0.800000
    """
    if probs.shape != (len(ids), len(classes)):
        raise ValueError(f"{tuple(probs.shape)} probabilities for {len(ids)} images and {len(classes)} classes")
    labels = probs.argmax(1).tolist()
    with atomic_write(path, newline="", encoding="utf-8") as f:  # whole or not at all; ids and names are UTF-8
        writer = csv.writer(f)
        writer.writerow(["id", "label", *(f"prob_{c}" for c in classes)] if probabilities else ["id", "label"])
        for i, (id_, label) in enumerate(zip(ids, labels, strict=True)):
            row = [id_, classes[label]]
            if probabilities:
                row += [f"{p:.6f}" for p in probs[i].tolist()]
            writer.writerow(row)
    return path

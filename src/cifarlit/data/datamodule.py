"""The DataModules: CIFAR10DataModule holds the dataset in memory, StreamDataModule streams a prepared one.

The in-memory dataset is held as uint8 ``(N, C, H, W)`` tensors. The loader hands out whole batches by index
slicing (``__getitems__``), uint8 crosses to the device (4x fewer bytes than float32), and the float conversion,
augmentation and normalization run there on the whole batch in ``on_after_batch_transfer``. A stream (written by
``cifarlit prepare``) is read in batches of the same uint8 images, so everything after the transfer is shared.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from cifarlit.data import DataError, shapes, sources, split
from cifarlit.data.augment import AlbumentationsBatch, AugmentConfig, BatchAugment, BatchMix
from cifarlit.data.loaders import ArrayDataset, keep_on_device, memory_loader
from cifarlit.utils.checkpoints import DATA_KEY


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 (or any image folder) with a stratified train/val split and the official test set held out.

    An image folder without ``test/`` gets a stratified test split carved from ``train/`` (``test_size``) before
    val is held out. Class names come from the folders and are stored in checkpoints, so predicting a folder of
    new images (``predict_dir``) needs only the checkpoint, not the training data. With ``stream`` set, the
    DataModule built is a :class:`StreamDataModule`. Nothing is read until ``prepare_data``/``setup``:

    >>> CIFAR10DataModule("~/data/cifar10", image_size=64, channels=1).image_shape
    (1, 64, 64)

    Args:
        data_dir: where the data lives: a folder holding ``cifar-10-batches-py`` (or the ``.tar.gz``), or an
            image folder ``train/<class>/*`` + ``test/<class>/*``. CIFAR-10 is downloaded here if nothing is.
        download: allow downloading CIFAR-10 when ``data_dir`` holds no dataset.
        val_size: fraction (0.2) or number (10000) of training images held out for validation, stratified.
        seed: seed of the train/val split and subsets only, so the training seed never moves val images.
        train_subset: debug subset of the training split: a count (1, 16, ...) or a fraction in (0, 1) (0.1),
            drawn stratified from the split (after val is held out). ``null`` = all of it.
        val_subset: the same for the validation split.
        batch_size: images per training step.
        eval_batch_size: images per val/test/predict step (no gradients, so larger is cheaper).
        num_workers: DataLoader worker processes. 0 is fastest for in-memory data without albumentations.
        pin_memory: page-locked host memory for faster copies to a GPU.
        persistent_workers: keep workers alive between epochs (only with ``num_workers > 0``).
        augment: training-set augmentation (see :class:`cifarlit.data.augment.AugmentConfig`).
        cache: cache decoded image folders in ``data_dir/.cifarlit-cache.npz``.
        skip_unreadable: leave out image files that cannot be decoded (and say how many), instead of stopping
            with the list of them; for an image folder and for ``predict_dir``.
        on_device: keep the whole uint8 dataset on the training GPU (CIFAR-10 is 180 MB), so an epoch makes no
            host-to-device copies. ``auto`` does so when training on a GPU, with ``num_workers: 0`` and the
            batched augmentation, if the images take at most half of the GPU's free memory, and says so when they
            do not; ``true`` insists (an error if they cannot be). Ignored on the CPU.
        keep_classes: train, validate and test on these classes only (names), relabelled 0..k-1 in this order;
            the transfer-learning experiment uses it to split CIFAR-10 into two 5-class tasks.
        test_size: fraction or number of training images held out as the test split, stratified; used only
            by an image folder without ``test/``.
        predict_dir: a folder of unlabelled images (any size or mode, read flat) for ``cifarlit predict``;
            ``null`` predicts the test split. They are read at the size the checkpoint's model was trained at.
        image_size: the side of the square images the network sees. Images of an image folder are converted to
            ``channels``, their shorter side resized to this and the middle cut out (nothing is stretched);
            CIFAR-10's 32x32 batches are resized (with antialiasing) when this is not 32. The networks get the
            shape from here (``model.image_shape`` is linked to it).
        channels: 3 (RGB) or 1 (gray).
        stream: a dataset written by ``cifarlit prepare`` (a folder, or its copy at an ``s3://``-style URL):
            train, val and test are streamed from its LitData chunks instead of held in memory, for datasets
            larger than RAM (:class:`StreamDataModule`). ``data_dir`` is then unused.
        mean: per-channel mean (0-1 scale) that inputs are normalized with; ``null`` computes it from the training
            split. A pretrained backbone wants its pre-training's (timm's ``pretrained_cfg['mean']``, e.g. ImageNet's
            [0.485, 0.456, 0.406]); set it and ``std`` together.
        std: per-channel standard deviation to go with ``mean`` (ImageNet's [0.229, 0.224, 0.225]).
    """

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        val_size: int | float = 0.2,
        seed: int = 42,
        train_subset: int | float | None = None,
        val_subset: int | float | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        augment: AugmentConfig | None = None,
        cache: bool = True,
        skip_unreadable: bool = False,
        on_device: bool | Literal["auto"] = "auto",
        keep_classes: list[str] | None = None,
        test_size: int | float = 0.2,
        predict_dir: str | None = None,
        image_size: int = 32,
        channels: Literal[1, 3] = 3,
        stream: str | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        super().__init__()
        if stream is not None and type(self) is CIFAR10DataModule:
            # `data.stream` picks the streamed DataModule: one `data:` section (and one signature) serves both
            self.__class__ = StreamDataModule
        self.augment = augment or AugmentConfig()
        self.save_hyperparameters(ignore=["augment"])
        for option in ("val_size", "test_size", "train_subset", "val_subset"):
            self.hparams[option] = split.count_or_fraction(self.hparams[option])
        # As a plain dict, so checkpoints stay loadable with torch.load(weights_only=True).
        self.hparams["augment"] = dataclasses.asdict(self.augment)
        self.data_dir = Path(data_dir).expanduser()
        self.fixed_stats = split.fixed_stats(mean, std, channels)
        self._check_options()
        self._check_source()
        self.batch_augment = BatchAugment(self.augment)
        self.batch_mix: BatchMix | None = None  # built in setup, once the class count is known
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.split_fingerprint = ""
        self._classes: tuple[str, ...] | None = None  # the checkpoint's, once one is loaded
        self._trained_shape: tuple[int, int, int] | None = None  # likewise

    def _check_options(self) -> None:
        """Refuse option values that cannot work, before LightningCLI builds a model for them."""
        hp = self.hparams
        for option in ("batch_size", "eval_batch_size"):
            if hp[option] < 1:
                raise DataError(f"data.{option}={hp[option]} is not valid: use a positive number of images per batch.")
        shapes.check_image_size(hp.image_size)
        if hp.num_workers < 0:
            raise DataError(f"data.num_workers={hp.num_workers} is not valid: use 0 (main process) or more.")
        if hp.on_device is True and hp.num_workers > 0:
            raise DataError(
                f"data.on_device=true needs data.num_workers=0 (got {hp.num_workers}): workers cannot index GPU "
                "memory; use data.on_device auto or false with workers."
            )
        if hp.on_device is True and self.augment_on_host:
            raise DataError(
                "data.on_device=true cannot be used with data.augment.backend=albumentations, which augments each "
                "image on the CPU: use data.augment.backend batched (it runs on the GPU), or data.on_device auto."
            )
        split.check_split_size(hp.val_size, "data.val_size")
        split.check_split_size(hp.test_size, "data.test_size")

    def _check_source(self) -> None:
        """Refuse an image size whose images would not fit in memory, before a model is built for it."""
        if self.hparams.predict_dir is None:
            sources.check_fits(self.data_dir, self.hparams.image_size, self.hparams.channels)

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, in label order: the loaded checkpoint's, else the data's (folder names or CIFAR-10's),
        narrowed to ``keep_classes``."""
        return self._classes if self._classes is not None else self._data_classes()

    def _data_classes(self) -> tuple[str, ...]:
        return sources.class_names(self.data_dir, self.hparams.keep_classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the images the network sees: the loaded checkpoint's, else the options'
        (LightningCLI links it into ``model.image_shape``)."""
        return self._trained_shape or (self.hparams.channels, self.hparams.image_size, self.hparams.image_size)

    @property
    def num_classes(self) -> int:
        """Number of classes, known before any image is decoded (LightningCLI links it into the model)."""
        return len(self.classes)

    @property
    def source(self) -> str:
        """Where the images come from, as the messages name it."""
        return str(self.data_dir)

    def prepare_data(self) -> None:
        predicting = self.trainer is not None and self.trainer.predicting
        if (predicting and self.hparams.predict_dir is not None) or hasattr(self, "train_set"):
            return  # the checkpoint holds all a prediction needs; testing after fit would only read it all again
        # Runs on one process per node: download/extract/decode-and-cache once, never racing between ranks.
        sources.ensure_available(self.data_dir, self.hparams.download)
        self._raw = self._load()  # decodes and caches image folders

    def _load(self) -> sources.RawData:
        channels, size, _ = self.image_shape
        return sources.load(self.data_dir, self.hparams.cache, self.hparams.skip_unreadable, size, channels)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" and self.hparams.predict_dir is not None:
            return  # read in predict_dataloader, once the checkpoint has said at which size
        if hasattr(self, "train_set"):
            return
        summary = self._setup_splits()
        self.batch_mix = BatchMix(self.augment, len(self.classes))
        self._affine(self._device())  # copied to the device now, not by the first batch (a copy makes the host wait)
        rank_zero_info(f"data: {summary}, {len(self.classes)} classes, split {self.split_fingerprint}")

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _setup_splits(self) -> str:
        """The train/val/test datasets and the training split's statistics; returns the sizes, for the log."""
        # Rank 0 already loaded in prepare_data; other ranks (and direct setup() calls) read the cache.
        raw = getattr(self, "_raw", None) or self._load()
        self._raw = None
        if self.hparams.keep_classes is not None:
            raw = sources.select_classes(raw, self.classes)
        hp, carve_test = self.hparams, len(raw.test_y) == 0  # an image folder without test/
        train_idx, val_idx, test_idx = split.split_positions(
            raw.train_y, carve_test, hp.val_size, hp.test_size, hp.seed, self.data_dir
        )
        x = torch.from_numpy(raw.train_x).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
        y = torch.from_numpy(raw.train_y)
        pick = lambda t, idx: t.index_select(0, torch.from_numpy(idx))  # noqa: E731 -- not t[idx]: benchmarks/tricks.py
        # Normalization statistics come from the training split only: val and test stay unseen.
        self.mean, self.std = self.fixed_stats or split.channel_stats(pick(x, train_idx))
        if hp.train_subset is not None:
            train_idx = train_idx[split.subset(raw.train_y[train_idx], hp.train_subset, hp.seed, "data.train_subset")]
        if hp.val_subset is not None:
            val_idx = val_idx[split.subset(raw.train_y[val_idx], hp.val_subset, hp.seed, "data.val_subset")]
        self.train_idx, self.val_idx = train_idx, val_idx
        self.test_idx = test_idx  # positions in train/ of a carved test split; None for an official one
        self.split_fingerprint = split.split_fingerprint(train_idx, val_idx, raw.fingerprint, test_idx)
        transform = AlbumentationsBatch(self.augment, hp.seed, self.image_shape) if self.augment_on_host else None
        self.train_set = ArrayDataset(pick(x, train_idx), pick(y, train_idx), transform)
        self.val_set = ArrayDataset(pick(x, val_idx), pick(y, val_idx))
        if carve_test:
            self.test_set = ArrayDataset(pick(x, test_idx), pick(y, test_idx))
        else:
            test_x = torch.from_numpy(raw.test_x).permute(0, 3, 1, 2).contiguous()
            self.test_set = ArrayDataset(test_x, torch.from_numpy(raw.test_y))
        datasets = (self.train_set, self.val_set, self.test_set)
        if keep_on_device(datasets, self._device(), hp.on_device, hp.num_workers > 0 or self.augment_on_host):
            for ds in datasets:
                ds.x, ds.y = ds.x.to(self._device()), ds.y.to(self._device())
        carved = f" (carved from {self.data_dir / 'train'}: no test/ folder)" if carve_test else ""
        return f"{len(self.train_set)} train / {len(self.val_set)} val / {len(self.test_set)} test images{carved}"

    @property
    def augment_on_host(self) -> bool:
        """albumentations augments uint8 images in the loader, on the CPU."""
        return self.augment.preset != "none" and self.augment.backend == "albumentations"

    def _setup_predict_folder(self) -> None:
        folder = Path(self.hparams.predict_dir).expanduser()
        channels, size, _ = self.image_shape
        x, self.predict_ids = sources.load_unlabelled_folder(folder, self.hparams.skip_unreadable, size, channels)
        x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
        self.predict_set = ArrayDataset(x, torch.arange(len(x)))  # no labels: positions stand in for them
        rank_zero_info(f"predict: {len(x)} images from {self.hparams.predict_dir}")

    def _split_loader(self, dataset, shuffle: bool, batch_size: int) -> DataLoader:
        """The loader of a split: training batches shuffled (``shuffle``), or val/test in order."""
        return self._memory_loader(dataset, shuffle, batch_size)

    def _memory_loader(self, dataset: ArrayDataset, shuffle: bool, batch_size: int) -> DataLoader:
        """Whole batches of in-memory images: shuffled (``shuffle``), or every image once in order."""
        hp = self.hparams
        return memory_loader(dataset, shuffle, batch_size, hp.num_workers, hp.pin_memory, hp.persistent_workers)

    def train_dataloader(self) -> DataLoader:
        return self._split_loader(self.train_set, True, self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._split_loader(self.val_set, False, self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        if len(self.test_set) == 0:
            raise DataError(f"{self.data_dir} has no test split: add {self.data_dir}/test/<class>/* images.")
        return self._split_loader(self.test_set, False, self.hparams.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        if self.hparams.predict_dir is None:
            self.predict_ids = [str(i) for i in range(len(self.test_set))]
            return self.test_dataloader()
        if self.mean is None:  # restored from the checkpoint before Lightning asks for this loader
            raise DataError(
                "predicting data.predict_dir needs a trained model's normalization statistics: pass "
                "--ckpt_path with a checkpoint written by `cifarlit fit`."
            )
        if not hasattr(self, "predict_set"):
            self._setup_predict_folder()
        return self._memory_loader(self.predict_set, False, self.hparams.eval_batch_size)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        x, y = batch
        if x.device == device and y.device == device:  # data.on_device, or training on the CPU: nothing to copy
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """uint8 ``(B, C, H, W)`` on the device -> augmented (training only), normalized float; a training batch
        may then be mixed (MixUp / CutMix), its labels becoming ``(B, num_classes)`` probabilities."""
        x, y = batch
        training = self.trainer is not None and self.trainer.training
        x = self.to_input(x, augment=training and self.augment.backend == "batched")
        return self.batch_mix(x, y) if training and self.batch_mix else (x, y)

    def to_input(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """uint8 images -> the float, normalized input the model sees (augmented if asked)."""
        scale, shift, scale_unit = self._affine(x.device)
        if augment:  # the augmentations work on [0, 1] images
            x = self.batch_augment(x.float().div_(255)).mul_(scale_unit)
        else:
            x = x.float().mul_(scale)
        # In place, one multiply and one add with (1, C, 1, 1) operands: `(x / 255 - mean) / std` makes three
        # passes and takes a slower broadcasting path (benchmarks/tricks.py).
        return x.add_(shift)

    def _affine(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_uint8 * scale + shift) == (x / 255 - mean) / std, cached per device, and scale for [0, 1] images."""
        key = (str(device), self.mean.data_ptr())
        if getattr(self, "_affine_key", None) != key:
            scale, shift = (t.to(device) for t in split.normalizer(self.mean, self.std))
            self._affine_cache = (scale, shift, scale * 255)
            self._affine_key = key
        return self._affine_cache

    def state_dict(self) -> dict:
        # Stored in every checkpoint: predicting later must not need the training data to recompute them.
        return {
            "mean": self.mean,
            "std": self.std,
            "split_fingerprint": self.split_fingerprint,
            "classes": list(self.classes),
            "image_shape": list(self.image_shape),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.mean, self.std = state_dict["mean"], state_dict["std"]
        if "image_shape" in state_dict:  # checkpoints from before the size was an option are 3x32x32
            shape = tuple(state_dict["image_shape"])
            if hasattr(self, "train_set"):  # the data is read at the options' size: it must be the trained one
                shapes.check_trained_shape(shape, self.image_shape, "the checkpoint")
            self._trained_shape = shape
        if "classes" not in state_dict:  # checkpoints from before class names were stored
            return
        classes = tuple(state_dict["classes"])
        if hasattr(self, "train_set") and classes != self.classes:
            raise DataError(
                f"the checkpoint was trained on the classes {list(classes)}, but {self.source} has "
                f"{list(self.classes)}: test on data with the same class folders."
            )
        self._classes = classes


class StreamDataModule(CIFAR10DataModule):
    """The same DataModule with train, val and test streamed from ``data.stream``'s LitData chunks (written by
    ``cifarlit prepare``) instead of held in memory; ``CIFAR10DataModule(stream=...)`` builds one.

    The split, its statistics and the class names come with the stream. The options that pick images in memory
    (``train_subset``, ``val_subset``, ``keep_classes``), ``on_device: true`` and the albumentations backend are
    refused; ``predict_dir`` reads its folder as the in-memory DataModule does.
    """

    # Lightning files a DataModule's state in checkpoints under its class's __qualname__: this one's goes under
    # the in-memory DataModule's, so a checkpoint trained either way serves the other (predicting a folder, export).
    __qualname__ = DATA_KEY

    def __reduce__(self):  # pickled by its own class, which its __qualname__ does not name
        return _new_stream_module, (), self.__dict__

    def _check_source(self) -> None:
        """Refuse the options that need the images in memory."""
        from cifarlit.data import stream  # imports LitData: only for a stream

        stream.check_options(self.hparams, self.augment_on_host)

    @cached_property
    def info(self):
        """What the stream's ``cifarlit-stream.json`` says (read once)."""
        from cifarlit.data import stream

        return stream.read_info(self.hparams.stream)

    def _data_classes(self) -> tuple[str, ...]:
        return self.info.classes

    @property
    def source(self) -> str:
        return f"data.stream={self.hparams.stream!r}"

    def prepare_data(self) -> None:
        """Nothing to prepare: ``cifarlit prepare`` wrote the stream once."""

    def _setup_splits(self) -> str:
        """LitData datasets of the prepared splits; the statistics and class names come with them."""
        from cifarlit.data import stream

        self.train_set, self.val_set, self.test_set = stream.open_splits(self.hparams, self.info)
        self.mean, self.std = self.fixed_stats or (self.info.mean, self.info.std)
        self.split_fingerprint = self.info.split_fingerprint
        self.stream_sizes = sizes = self.info.sizes  # the whole splits' (under DDP len() is this process's share)
        return f"streaming {sizes['train']} train / {sizes['val']} val / {sizes['test']} test images from {self.source}"

    def _split_loader(self, dataset, shuffle: bool, batch_size: int) -> DataLoader:
        from cifarlit.data import stream_loader

        # epochs the trainer has finished: right even before a resumed run's counters are settled
        epoch = lambda: self.trainer.fit_loop.epoch_progress.current.processed if self.trainer else 0  # noqa: E731
        workers, pin = self.hparams.num_workers, self.hparams.pin_memory
        return stream_loader.loader(dataset, self.info.shape, batch_size, workers, pin, epoch, len(self.info.classes))


def _new_stream_module() -> StreamDataModule:
    return StreamDataModule.__new__(StreamDataModule)

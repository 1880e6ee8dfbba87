"""CIFAR10DataModule: stratified train/val split, debug subsets, batched uint8 loading and augmentation.

The whole dataset is held in memory as uint8 ``(N, 3, 32, 32)`` tensors. The loader hands out whole batches by
index slicing (``__getitems__``), uint8 crosses to the device (4x fewer bytes than float32), and the float
conversion, augmentation and normalization run there on the whole batch in ``on_after_batch_transfer``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from cifarlit.data import sources
from cifarlit.data.augment import AlbumentationsBatch, AugmentConfig, BatchAugment, BatchMix
from cifarlit.data.loaders import ArrayDataset, EvalBatchSampler, TrainBatchSampler, whole_batch, worker_init
from cifarlit.data.sources import DataError


def _subset_indices(labels: np.ndarray, size: int | float, seed: int, option: str) -> np.ndarray:
    """Stratified subset of ``size`` (a count or a fraction) of the positions in ``labels``."""
    n = len(labels)
    if isinstance(size, float):
        if not 0 < size < 1:
            raise DataError(f"{option}={size} is not a valid fraction: use a number in (0, 1) or a count >= 1.")
        count = max(1, round(size * n))
    else:
        count = int(size)
        if not 1 <= count <= n:
            raise DataError(f"{option}={size} is not a valid count: use 1..{n} (the split's size) or a fraction.")
    if count == n:
        return np.arange(n)
    n_classes = len(np.unique(labels))
    if count < n_classes:
        rank_zero_info(
            f"{option}={size} is fewer samples than the {n_classes} classes, so it cannot be stratified; "
            f"drawing {count} at random."
        )
        return np.sort(np.random.default_rng(seed).choice(n, count, replace=False))
    keep, _ = train_test_split(np.arange(n), train_size=count, stratify=labels, random_state=seed)
    return np.sort(keep)


def _stratified_split(labels: np.ndarray, size: int | float, seed: int, option: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``labels`` split into (kept, held out), with ``size`` (a count or a fraction) held out."""
    n, n_classes = len(labels), len(np.unique(labels))
    if isinstance(size, int) and not n_classes <= size <= n - n_classes:
        raise DataError(
            f"{option}={size} does not fit the {n} training images: a stratified split needs "
            f"{n_classes}..{n - n_classes} (at least one image per class on each side)."
        )
    try:
        keep, held = train_test_split(np.arange(n), test_size=size, stratify=labels, random_state=seed)
    except ValueError as err:  # e.g. a fraction that leaves fewer held-out images than classes
        raise DataError(f"{option}={size} cannot split {n} images into {n_classes} classes: {err}") from None
    return np.sort(keep), np.sort(held)


def _count_or_fraction(size: int | float | None) -> int | float | None:
    """A size is a count (a whole number >= 1) or a fraction in (0, 1). A whole float counts too: 16.0 is 16
    images (a config parser may turn the 16 of ``int | float`` into 16.0), and 1.0 one image, not all of them."""
    if isinstance(size, float) and size >= 1 and size.is_integer():
        return int(size)
    return size


def _check_split_size(size: int | float, option: str) -> None:
    if isinstance(size, float) and not 0 < size < 1:
        raise DataError(f"{option}={size} is not valid: use a fraction in (0, 1), e.g. 0.2, or a count.")
    if isinstance(size, int) and size < 1:
        raise DataError(f"{option}={size} is not valid: use a count >= 1 or a fraction in (0, 1).")


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 (or any image folder) with a stratified train/val split and the official test set held out.

    An image folder without ``test/`` gets a stratified test split carved from ``train/`` (``test_size``) before
    val is held out. Class names come from the folders and are stored in checkpoints, so predicting a folder of
    new images (``predict_dir``) needs only the checkpoint, not the training data.

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
            larger than RAM (see :mod:`cifarlit.data.stream`). ``data_dir`` is then unused.
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
        self.augment = augment or AugmentConfig()
        self.save_hyperparameters(ignore=["augment"])
        for option in ("val_size", "test_size", "train_subset", "val_subset"):
            self.hparams[option] = _count_or_fraction(self.hparams[option])
        val_size, test_size = self.hparams.val_size, self.hparams.test_size
        # As a plain dict, so checkpoints stay loadable with torch.load(weights_only=True).
        self.hparams["augment"] = dataclasses.asdict(self.augment)
        self.data_dir = Path(data_dir).expanduser()
        for option, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise DataError(f"data.{option}={value} is not valid: use a positive number of images per batch.")
        if image_size < 8:
            raise DataError(
                f"data.image_size={image_size} is not valid: use 8 or more pixels (the default networks halve the "
                "size three times)."
            )
        if stream is None and predict_dir is None:  # here, before LightningCLI builds a model for that size
            sources.check_fits(self.data_dir, image_size, channels)
        if on_device is True and num_workers > 0:
            raise DataError(
                f"data.on_device=true needs data.num_workers=0 (got {num_workers}): workers cannot index GPU memory; "
                "use data.on_device auto or false with workers."
            )
        if on_device is True and self.augment_on_host:
            raise DataError(
                "data.on_device=true cannot be used with data.augment.backend=albumentations, which augments each "
                "image on the CPU: use data.augment.backend batched (it runs on the GPU), or data.on_device auto."
            )
        self.fixed_stats = _fixed_stats(mean, std, channels)
        if num_workers < 0:
            raise DataError(f"data.num_workers={num_workers} is not valid: use 0 (main process) or more.")
        _check_split_size(val_size, "data.val_size")
        _check_split_size(test_size, "data.test_size")
        if stream is not None:
            from cifarlit.data import stream as streams  # imports LitData: only for a stream

            streams.check_options(self.hparams, self.augment_on_host)
        self.batch_augment = BatchAugment(self.augment)
        self.batch_mix: BatchMix | None = None  # built in setup, once the class count is known
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.split_fingerprint = ""
        self._classes: tuple[str, ...] | None = None  # the checkpoint's, once one is loaded
        self._trained_shape: tuple[int, int, int] | None = None  # likewise

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, in label order: the loaded checkpoint's, else the data's (folder names or CIFAR-10's),
        narrowed to ``keep_classes``."""
        if self._classes is not None:
            return self._classes
        if self.hparams.stream is not None:
            return self._stream_info().classes
        available = sources.class_names(self.data_dir)
        keep = self.hparams.keep_classes
        if keep is None:
            return available
        unknown = [c for c in keep if c not in available]
        if unknown or len(set(keep)) != len(keep) or len(keep) < 2:
            raise DataError(
                f"data.keep_classes={list(keep)} is not valid: name at least 2 distinct classes of {list(available)}."
            )
        return tuple(keep)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the images the network sees: the loaded checkpoint's, else the options'
        (LightningCLI links it into ``model.image_shape``)."""
        if self._trained_shape is not None:
            return self._trained_shape
        return (self.hparams.channels, self.hparams.image_size, self.hparams.image_size)

    @property
    def num_classes(self) -> int:
        """Number of classes, known before any image is decoded (LightningCLI links it into the model)."""
        return len(self.classes)

    def _predicting_folder(self) -> bool:
        return self.hparams.predict_dir is not None and self.trainer is not None and self.trainer.predicting

    def prepare_data(self) -> None:
        if self._predicting_folder():  # the checkpoint holds all a prediction needs from the training data
            return
        if hasattr(self, "train_set"):  # testing after fit: loading again would only repeat the data's messages
            return
        if self.hparams.stream is not None:  # prepared once by `cifarlit prepare`
            return
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
        if self.hparams.stream is not None:
            self._setup_stream()
            return
        # Rank 0 already loaded in prepare_data; other ranks (and direct setup() calls) read the cache.
        raw = getattr(self, "_raw", None) or self._load()
        self._raw = None
        if self.hparams.keep_classes is not None:
            raw = sources.select_classes(raw, self.classes)
        seed = self.hparams.seed
        min_per_class = np.bincount(raw.train_y).min() if len(raw.train_y) else 0
        carve_test = len(raw.test_y) == 0  # an image folder without test/
        if min_per_class < (3 if carve_test else 2):
            raise DataError(
                f"the training set in {self.data_dir} has a class with {min_per_class} image(s); a stratified "
                f"train/val{'/test' if carve_test else ''} split needs at least {3 if carve_test else 2} per class."
            )
        pool = np.arange(len(raw.train_y))  # positions in raw.train_*, so indices always name dataset files
        test_idx = None
        if carve_test:
            keep, held = _stratified_split(raw.train_y, self.hparams.test_size, seed, "data.test_size")
            pool, test_idx = pool[keep], pool[held]
        keep, held = _stratified_split(raw.train_y[pool], self.hparams.val_size, seed, "data.val_size")
        train_idx, val_idx = pool[keep], pool[held]
        x = torch.from_numpy(raw.train_x).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)
        y = torch.from_numpy(raw.train_y)
        # Normalization statistics come from the training split only: val and test stay unseen.
        self.mean, self.std = self.fixed_stats or channel_stats(x.index_select(0, torch.from_numpy(train_idx)))
        if self.hparams.train_subset is not None:
            keep = _subset_indices(raw.train_y[train_idx], self.hparams.train_subset, seed, "data.train_subset")
            train_idx = train_idx[keep]
        if self.hparams.val_subset is not None:
            keep = _subset_indices(raw.train_y[val_idx], self.hparams.val_subset, seed, "data.val_subset")
            val_idx = val_idx[keep]
        self.train_idx, self.val_idx = train_idx, val_idx
        self.split_fingerprint = split_fingerprint(train_idx, val_idx, raw.fingerprint, test_idx)
        transform = None
        if self.augment_on_host:
            transform = AlbumentationsBatch(self.augment, seed=seed, shape=self.image_shape)
        pick = lambda t, idx: t.index_select(0, torch.from_numpy(idx))  # noqa: E731 -- not t[idx]: benchmarks/tricks.py
        self.train_set = ArrayDataset(pick(x, train_idx), pick(y, train_idx), transform)
        self.val_set = ArrayDataset(pick(x, val_idx), pick(y, val_idx))
        if carve_test:
            self.test_set = ArrayDataset(pick(x, test_idx), pick(y, test_idx))
        else:
            test_x = torch.from_numpy(raw.test_x).permute(0, 3, 1, 2).contiguous()
            self.test_set = ArrayDataset(test_x, torch.from_numpy(raw.test_y))
        self.test_idx = test_idx  # positions in train/ of a carved test split; None for an official one
        self.batch_mix = BatchMix(self.augment, len(self.classes))
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self._keep_on(device):
            for ds in (self.train_set, self.val_set, self.test_set):
                ds.x, ds.y = ds.x.to(device), ds.y.to(device)
        self._affine(device)  # copied to the device now, not by the first batch (a copy makes the host wait)
        carved = f" (carved from {self.data_dir / 'train'}: no test/ folder)" if carve_test else ""
        rank_zero_info(
            f"data: {len(self.train_set)} train / {len(self.val_set)} val / {len(self.test_set)} test images{carved}, "
            f"{len(raw.classes)} classes, split {self.split_fingerprint}"
        )

    def _stream_info(self):
        """What ``data.stream``'s ``cifarlit-stream.json`` says (read once)."""
        if getattr(self, "_stream", None) is None:
            from cifarlit.data import stream

            self._stream = stream.read_info(self.hparams.stream)
        return self._stream

    def _setup_stream(self) -> None:
        """LitData datasets of the prepared splits; the statistics and class names come with them."""
        from cifarlit.data import stream

        info = self._stream_info()
        self.train_set, self.val_set, self.test_set = stream.open_splits(self.hparams, info)
        self.mean, self.std = self.fixed_stats or (info.mean, info.std)
        self.split_fingerprint = info.split_fingerprint
        self.stream_sizes = info.sizes  # the whole splits' (under DDP a stream's len() is this process's share)
        self._affine(self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu"))
        rank_zero_info(
            f"data: streaming {info.sizes['train']} train / {info.sizes['val']} val / {info.sizes['test']} test "
            f"images from {self.hparams.stream}, {len(info.classes)} classes, split {self.split_fingerprint}"
        )

    def _keep_on(self, device: torch.device) -> bool:
        """Whether the datasets move to ``device``, by ``data.on_device`` (see the class docstring)."""
        want = self.hparams.on_device
        if device.type == "cpu" or want is False:
            return False
        if want == "auto" and (self.hparams.num_workers > 0 or self.augment_on_host):
            return False
        need = sum(t.nbytes for ds in (self.train_set, self.val_set, self.test_set) for t in (ds.x, ds.y))
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
        if free is None or need <= free / 2:
            return True
        gib = f"{need / 2**30:.1f} GiB of images, {free / 2**30:.1f} GiB free on {device}"
        if want is True:
            raise DataError(f"data.on_device=true: {gib}; use data.on_device auto or false to keep them in RAM.")
        rank_zero_info(f"data.on_device=auto: {gib}, so the images stay in RAM and each batch is copied over.")
        return False

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

    def _loader(self, dataset: ArrayDataset, shuffle: bool, batch_size: int) -> DataLoader:
        """Training batches shuffled (``shuffle``), or every image once in order for val/test/predict."""
        workers = self.hparams.num_workers
        if workers > 0:
            # Leave the workers their cores: oversubscribed torch threads are the slowest thing on 2 cores.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
        if self.hparams.stream is not None:
            from cifarlit.data import stream

            shape, pin = self._stream_info().shape, self.hparams.pin_memory
            # epochs the trainer has finished: right even before a resumed run's counters are settled
            epoch = lambda: self.trainer.fit_loop.epoch_progress.current.processed if self.trainer else 0  # noqa: E731
            return stream.loader(dataset, shape, batch_size, workers, pin, epoch)
        sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        return DataLoader(
            dataset,
            batch_sampler=(TrainBatchSampler if shuffle else EvalBatchSampler)(sampler, batch_size, drop_last=False),
            collate_fn=whole_batch,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory and dataset.x.device.type == "cpu",
            persistent_workers=self.hparams.persistent_workers and workers > 0,
            worker_init_fn=worker_init if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        if len(self.test_set) == 0:
            raise DataError(f"{self.data_dir} has no test split: add {self.data_dir}/test/<class>/* images.")
        return self._loader(self.test_set, False, self.hparams.eval_batch_size)

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
        return self._loader(self.predict_set, False, self.hparams.eval_batch_size)

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
            scale, shift = (t.to(device) for t in normalizer(self.mean, self.std))
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
            if hasattr(self, "train_set") and shape != self.image_shape:
                raise DataError(
                    f"the checkpoint was trained on images of shape {list(shape)} (channels, height, width), but "
                    f"data.image_size/data.channels give {list(self.image_shape)}: set them as in training."
                )
            self._trained_shape = shape
        if "classes" not in state_dict:  # checkpoints from before class names were stored
            return
        classes = tuple(state_dict["classes"])
        if hasattr(self, "train_set") and classes != self.classes:
            raise DataError(
                f"the checkpoint was trained on the classes {list(classes)}, but {self.data_dir} has "
                f"{list(self.classes)}: test on data with the same class folders."
            )
        self._classes = classes


def _fixed_stats(
    mean: list[float] | None, std: list[float] | None, channels: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``data.mean``/``data.std`` as tensors, or None to compute them from the training split."""
    if mean is None and std is None:
        return None
    ok = mean is not None and std is not None and len(mean) == len(std) == channels
    if not ok or not all(0 <= m <= 1 for m in mean) or not all(0 < v <= 1 for v in std):
        raise DataError(
            f"data.mean={mean} / data.std={std} are not valid: give both, {channels} values each, means in [0, 1] "
            f"and stds in (0, 1] (the 0-1 scale, e.g. ImageNet's [0.485, 0.456, 0.406] / [0.229, 0.224, 0.225])."
        )
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def normalizer(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)``, each ``(1, C, 1, 1)``, with ``x_uint8 * scale + shift == (x / 255 - mean) / std``: one
    multiply-add per pixel. The training data and the exported model both normalize with it.

    >>> scale, shift = normalizer(torch.tensor([0.5]), torch.tensor([0.25]))
    >>> (torch.tensor([255.0]).view(1, 1, 1, 1) * scale + shift).item()
    2.0
    """
    std = std.view(1, -1, 1, 1).float()
    return 1 / (255 * std), -mean.view(1, -1, 1, 1).float() / std


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std on the 0-1 scale of uint8 images ``(N, C, H, W)``, exact.

    A 256-bin histogram per channel gives both moments in float64 without a float copy of the images
    (40,000 CIFAR images would be 490 MB as float32).
    """
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(x.shape[1]):
        # uint8 straight into bincount: 0.17 s for 40,000 images here, 0.96 s through an int64 copy
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        p = hist / hist.sum()
        m = (p * levels).sum()
        mean.append(m)
        std.append(((p * (levels - m) ** 2).sum()).sqrt())
    return torch.stack(mean).float(), torch.stack(std).clamp_min(1e-3).float()  # 1e-3: constant channel stays finite


def split_fingerprint(
    train_idx: np.ndarray, val_idx: np.ndarray, data_fingerprint: str, test_idx: np.ndarray | None = None
) -> str:
    """A short id of which images are train and val (and test, when carved from train), and of their files."""
    import hashlib

    h = hashlib.sha1(data_fingerprint.encode())
    h.update(np.ascontiguousarray(train_idx, dtype=np.int64).tobytes())
    h.update(b"|")
    h.update(np.ascontiguousarray(val_idx, dtype=np.int64).tobytes())
    if test_idx is not None:
        h.update(b"|")
        h.update(np.ascontiguousarray(test_idx, dtype=np.int64).tobytes())
    return h.hexdigest()[:12]

"""Serving in-memory uint8 images a whole batch at a time.

A batch is one ``index_select`` on the image tensor, picked by a tensor of indices: no ``__getitem__`` per
image, no collate, no Python list of ints, and no advanced indexing (``x[idx]``), which is many times slower
(benchmarks/tricks.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sized

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from cifarlit.data import DataError


class ArrayDataset(Dataset):
    """uint8 images ``(N, 3, H, W)`` and labels served a batch at a time.

    PyTorch's fetcher calls ``__getitems__`` with the batch sampler's whole batch of indices (a tensor from
    :class:`TensorBatchSampler`, or a list), so a batch is one indexing op.
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long).to(self.x.device)  # no-op for a sampler's device slice
        x = self.x.index_select(0, idx)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.y.index_select(0, idx)


class TensorBatchSampler(BatchSampler):
    """``BatchSampler`` that yields each batch as a slice of one index tensor per epoch.

    The order is exactly the wrapped sampler's: for a ``RandomSampler`` the same ``randperm`` it would draw
    from the same generator (so seeding and resuming behave as with PyTorch's own sampler), for a
    ``SequentialSampler`` ``0..N-1``, for anything else (Lightning's ``DistributedSampler`` under DDP) the
    indices it yields. Every image appears once per epoch. When the dataset lives on a GPU the index tensor is
    moved there once per epoch, so a step makes no host-to-device copy (a per-step copy is a host sync).

    Keeps ``BatchSampler``'s signature so Lightning can re-create it around a ``DistributedSampler``.
    """

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = self._order()
        device = _dataset_device(self.sampler)
        if device is not None and device.type == "cuda":
            # From page-locked memory without waiting: a plain copy would make the host wait for the GPU.
            order = order.pin_memory().to(device, non_blocking=True)
        elif device is not None and device.type != "cpu":
            order = order.to(device)
        yield from self._batches(order)

    def _batches(self, order: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batches = order.split(self.batch_size)
        if self.drop_last and len(order) % self.batch_size:
            batches = batches[:-1]
        return batches

    def _order(self) -> torch.Tensor:
        sampler = self.sampler
        if type(sampler) is SequentialSampler:
            return torch.arange(len(sampler))
        if type(sampler) is RandomSampler and sampler.generator is None and not sampler.replacement:
            if sampler.num_samples == len(sampler.data_source):  # a whole permutation, as one randperm
                # What RandomSampler.__iter__ draws (a fresh generator seeded from torch's global RNG), kept as
                # one tensor instead of a Python int per image.
                seed = int(torch.empty((), dtype=torch.int64).random_().item())
                generator = torch.Generator()
                generator.manual_seed(seed)
                return torch.randperm(len(sampler.data_source), generator=generator)
        return torch.as_tensor(list(iter(sampler)), dtype=torch.long)


class TrainBatchSampler(TensorBatchSampler):
    """The training batches: a last batch of a single image is left out of the epoch (another image is left out
    each epoch, as the order changes), since BatchNorm cannot normalize one image in training mode. Lightning
    re-creates this class, with this behaviour, around the ``DistributedSampler`` of each process under DDP."""

    def _batches(self, order: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batches = super()._batches(order)
        return batches[:-1] if self._drops_one(len(order)) else batches

    def _drops_one(self, n: int) -> bool:
        """Whether the last batch is a partial one of a single image (batch_size 1 is the user's own choice)."""
        return not self.drop_last and self.batch_size > 1 and n > self.batch_size and n % self.batch_size == 1

    def __len__(self) -> int:
        return super().__len__() - self._drops_one(len(self.sampler))


class EvalBatchSampler(TensorBatchSampler):
    """Validation, test and predict batches: every image exactly once, also under DDP.

    Lightning's ``DistributedSampler`` pads the split to a multiple of the process count by repeating images,
    which would count those twice in the metrics and the per-class report. Here each process takes every
    ``world``-th image from its rank on, unpadded; all processes make the same number of batches (one collective
    per forward pass of a BatchNorm network under DDP must line up), of at most ``batch_size`` images.
    """

    def _order(self) -> torch.Tensor:
        sampler = self.sampler
        if isinstance(sampler, DistributedSampler) and not sampler.shuffle:
            return torch.arange(sampler.rank, len(sampler.dataset), sampler.num_replicas)
        return super()._order()

    def _batches(self, order: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not isinstance(self.sampler, DistributedSampler):
            return super()._batches(order)
        return order.tensor_split(len(self))

    def __len__(self) -> int:
        sampler = self.sampler
        if not isinstance(sampler, DistributedSampler):
            return super().__len__()
        largest = -(-len(sampler.dataset) // sampler.num_replicas)  # the first ranks' share
        return max(1, -(-largest // self.batch_size))


def _dataset_device(sampler: Sized) -> torch.device | None:
    dataset = getattr(sampler, "data_source", None) or getattr(sampler, "dataset", None)
    x = getattr(dataset, "x", None)
    return x.device if isinstance(x, torch.Tensor) else None


def memory_loader(
    dataset: ArrayDataset, shuffle: bool, batch_size: int, num_workers: int, pin_memory: bool, persistent: bool
) -> DataLoader:
    """Whole batches of ``dataset``: shuffled for training (``shuffle``), or every image once in order."""
    share_cores(num_workers)
    sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_sampler=(TrainBatchSampler if shuffle else EvalBatchSampler)(sampler, batch_size, drop_last=False),
        collate_fn=whole_batch,
        num_workers=num_workers,
        pin_memory=pin_memory and dataset.x.device.type == "cpu",
        persistent_workers=persistent and num_workers > 0,
        worker_init_fn=worker_init if num_workers > 0 else None,
    )


def keep_on_device(datasets: tuple[ArrayDataset, ...], device: torch.device, want, on_host: bool) -> bool:
    """Whether the ``datasets`` move to ``device``, by ``data.on_device`` (``want``: ``auto``, True or False);
    ``on_host``: the loader reads them on the CPU (workers, or a per-image augmentation there)."""
    if device.type == "cpu" or want is False or (want == "auto" and on_host):
        return False
    need = sum(t.nbytes for ds in datasets for t in (ds.x, ds.y))
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    if free is None or need <= free / 2:
        return True
    gib = f"{need / 2**30:.1f} GiB of images, {free / 2**30:.1f} GiB free on {device}"
    if want is True:
        raise DataError(f"data.on_device=true: {gib}; use data.on_device auto or false to keep them in RAM.")
    from lightning.pytorch.utilities import rank_zero_info  # here: importing Lightning takes seconds

    rank_zero_info(f"data.on_device=auto: {gib}, so the images stay in RAM and each batch is copied over.")
    return False


def share_cores(num_workers: int) -> None:
    """Leave DataLoader workers their cores: oversubscribed torch threads are the slowest thing on 2 cores."""
    if num_workers > 0:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - num_workers))


def whole_batch(batch):
    """collate_fn for batches that ``__getitems__`` already assembled (module level so workers can pickle it)."""
    return batch


def worker_init(worker_id: int) -> None:
    # One thread per worker: each worker's own thread pool would compete with the main process's for the cores.
    torch.set_num_threads(1)
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, ArrayDataset) and info.dataset.transform is not None:
        # torch gives each worker of each epoch its own seed, derived from the seeded main process.
        info.dataset.transform.reseed(torch.initial_seed() % 2**32)

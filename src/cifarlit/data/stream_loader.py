"""Batches of a stream's split: every image once per epoch, and as many batches on every DDP process.

Under DDP each process streams its own part (Lightning's ``DistributedSampler`` never wraps an iterable dataset):
LitData shares the split out image by image, and :func:`batch_plan` gives every DataLoader worker of every process
its batches. Each epoch's order is LitData's for that epoch, seeded by the training seed; a chunk that cannot be
read ends the run in one sentence.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, IterableDataset

from cifarlit.data import DataError, litdata_adapter
from cifarlit.data.litdata_adapter import StreamingDataset
from cifarlit.data.loaders import share_cores, worker_init
from cifarlit.data.stream import HOW_TO_PREPARE, META_NAME


def collate(
    items: list[tuple[bytes, int]], shape: tuple[int, int, int], num_classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image bytes, label)`` items -> uint8 ``(B, C, H, W)`` images and int64 labels, one copy of the pixels.
    With ``num_classes``, a label outside ``0..num_classes - 1`` (a damaged or crafted chunk) is refused here, on
    the CPU, rather than indexing past the loss's classes on the device."""
    x = torch.frombuffer(bytearray().join(image for image, _ in items), dtype=torch.uint8)
    if x.numel() != len(items) * math.prod(shape):
        raise DataError(f"streamed images are not of the shape {list(shape)} that {META_NAME} records")
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    if num_classes is not None and labels.numel() and not (0 <= labels.min() and labels.max() < num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
        raise DataError(
            f"a streamed label is {bad}, outside 0..{num_classes - 1} for the {num_classes} classes that "
            f"{META_NAME} records"
        )
    return x.view(len(items), *shape), labels


def batch_plan(dataset: StreamingDataset, num_workers: int, batch_size: int) -> list[list[int]]:
    """The batch sizes of each DataLoader worker of this process, for one epoch.

    LitData shares the split out image by image (its "batch" set to 1, nothing dropped) between the processes
    and their workers. Each worker slot then makes as many batches as the fullest share of that slot on any
    process needs, splitting its own share evenly (at most ``batch_size`` images a batch): every image is used
    once, and every process makes the same number of steps, which DDP needs (a process with one batch more
    would wait forever for the others at its gradient all-reduce). Without DDP an epoch is
    ``ceil(n / batch_size)`` batches as with the in-memory loaders, of equal sizes rather than full ones plus
    a remainder, so none holds a single image (BatchNorm cannot normalize one in training mode).
    """
    workers = max(1, num_workers)
    shares, world_size, rank = litdata_adapter.worker_shares(dataset, workers)  # process-major
    plan = []
    for slot in range(workers):
        share = shares[slot::workers]  # this worker slot on each process
        batches = max(1, -(-max(share) // batch_size))
        if min(share) < batches:
            raise DataError(
                f"a split of {sum(shares)} images cannot be shared between {world_size} process(es) x "
                f"{workers} worker(s) in {batches} batch(es) each: use fewer processes or data.num_workers."
            )
        plan.append([len(part) for part in torch.arange(share[rank]).tensor_split(batches)])
    return plan


class _Batches(IterableDataset):
    """A worker's share of a split (LitData's), in the batches planned for that worker."""

    def __init__(
        self, dataset: StreamingDataset, plan: list[list[int]], shape: tuple[int, int, int], num_classes: int
    ) -> None:
        self.dataset, self.plan, self.shape, self.num_classes = dataset, plan, shape, num_classes

    def __len__(self) -> int:
        return sum(len(sizes) for sizes in self.plan)

    def __iter__(self):
        items = iter(self.dataset)  # LitData picks this worker's share, in this epoch's order
        worker, share = litdata_adapter.worker_share(self.dataset)
        sizes = self.plan[worker]
        if sum(sizes) != share:  # the plan must be LitData's own
            raise RuntimeError(f"LitData gave this worker {share} images, not {sum(sizes)}")
        try:
            for size in sizes:
                yield collate([next(items) for _ in range(size)], self.shape, self.num_classes)
        finally:
            litdata_adapter.close_open_chunk(self.dataset)  # else the main process gains open files every epoch


class StreamLoader(DataLoader):
    """Batches of one split of a stream, one epoch per iteration; ``epoch()``, asked as each epoch starts, seeds
    that epoch's order (the DataModule passes the number of epochs the trainer has finished, which a resumed
    run restores: it reads what the uninterrupted run read)."""

    def __init__(self, batches: _Batches, batch_size: int, epoch: Callable[[], int], **kwargs) -> None:
        super().__init__(batches, batch_size=None, **kwargs)
        self.images_per_batch, self.epoch = batch_size, epoch

    def __iter__(self):
        batches = self.dataset
        batches.dataset.set_epoch(self.epoch() + 1)  # LitData counts epochs from 1
        batches.plan = batch_plan(batches.dataset, self.num_workers, self.images_per_batch)  # this epoch's shares
        return _reading(super().__iter__(), batches.dataset)  # the workers start now, with this order and plan


def _reading(batches, dataset: StreamingDataset):
    """``batches``, with a chunk that cannot be read as it was checked (one of object storage, or one changed
    since) ending the run in one sentence instead of a traceback (from a worker: its last line)."""
    try:
        yield from batches
    except Exception as err:  # LitData, its downloaders and DataLoader workers raise many types
        url, path = litdata_adapter.location(dataset)
        last = (str(err).strip().splitlines() or [""])[-1]
        raise DataError(
            f"data.stream: {url or path} cannot be read ({err.__class__.__name__}: {last}); the stream is damaged or "
            f"incomplete: {HOW_TO_PREPARE} again."
        ) from None


def loader(
    dataset: StreamingDataset, shape: tuple[int, int, int], batch_size: int, num_workers: int, pin_memory: bool,
    epoch: Callable[[], int] = lambda: 0, num_classes: int | None = None,
) -> StreamLoader:  # fmt: skip
    """Training batches (a shuffled ``dataset``), or val/test/predict batches read in this process, in the stored
    order (predict's ids are positions in it). Workers start afresh each epoch: persistent ones would keep the
    previous epoch's order."""
    num_workers = num_workers if dataset.shuffle else 0
    share_cores(num_workers)
    plan = batch_plan(dataset, num_workers, batch_size)
    return StreamLoader(
        _Batches(dataset, plan, shape, num_classes),
        batch_size,
        epoch,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=worker_init if num_workers > 0 else None,
    )

"""Streaming train/val/test from LitData chunks written by ``cifarlit prepare``: datasets larger than memory.

A prepared stream is a folder (or a copy of it in object storage: ``s3://``, ``gs://``, ...) holding one LitData
dataset per split, ``train/``, ``val/`` and ``test/``, each item a uint8 ``(C, H, W)`` image (its raw bytes) and
its label, and ``cifarlit-stream.json``: the class names, the training split's normalization statistics, the
image shape, the split's options and sizes. ``prepare`` writes that file last and renames the finished folder
into place, so a folder without it is refused: a killed prepare is never trusted.

Nothing in a stream chooses code: LitData would pick each item field's decoder from a split's ``index.json``
(``pickle`` unpickles, ``pil`` hands bytes to Pillow) and rebuild its ``data_spec`` with pytree (which imports the
module a ``defaultdict`` names), and would join its chunk names and (for object storage) its ``updated_at`` to
folders. So every split's ``index.json`` must say exactly what ``prepare`` writes (:data:`INDEX_CONFIG`,
:data:`ITEM_SPEC`, chunk names ``chunk-R-N.bin``, a timestamp) before LitData reads it, a local split's chunks
must have the sizes and item layout it records, and LitData gets only the ``bytes`` and ``int`` decoders (the
others refuse), whatever a file says.

Training reads the chunks in LitData's shuffled order (the chunks' order, then blocks of ``SHUFFLE_BLOCK``
neighbouring images in each chunk, then the images in each block; ``prepare`` wrote the training images in a
seeded random order, so every block is a random sample of the classes), seeded by the training seed
(``seed_everything``) and the epoch. Only a few chunks are mapped at a
time, so memory does not grow with the dataset. Batches are uint8, and the DataModule's batched augmentation and
normalization run after the transfer, as for the in-memory data.

Under DDP each process streams its own part: LitData splits the split between the processes (Lightning's
``DistributedSampler`` never wraps an iterable dataset), image by image, and every process makes the same number
of batches (see :func:`batch_plan`): each image is used exactly once per epoch, in training as in val, test and
predict.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")  # LitData must never ask PyPI for a newer version

import numpy as np  # noqa: E402
import torch  # noqa: E402
from litdata import StreamingDataset  # noqa: E402
from litdata.streaming.downloader import get_downloader  # noqa: E402
from litdata.streaming.serializers import _SERIALIZERS, Serializer  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset  # noqa: E402

from cifarlit.data.loaders import worker_init  # noqa: E402
from cifarlit.data.sources import DataError  # noqa: E402

META_NAME = "cifarlit-stream.json"  # written last: a folder without it is not a finished stream
FORMAT = "cifarlit-stream"
VERSION = 1
SPLITS = ("train", "val", "test")
URL_PREFIXES = ("s3://", "gs://", "azure://", "r2://", "local:")  # LitData's object stores ("local:" for tests)
# Training order: the chunks shuffled, then blocks of this many neighbouring images inside each chunk, and the
# images inside each block. `prepare` wrote the images in a seeded random order, so every block is a random sample
# of the classes; a batch is drawn from one block of 1,024 (fixed by prepare) rather than from the whole split.
SHUFFLE_BLOCK = 1024
HOW_TO_PREPARE = "write one with `cifarlit prepare --data.data_dir <dataset> --output <folder>`"
INDEX_NAME = "index.json"
# What LitData's writer puts into a split's index.json for prepare's items, `(image bytes, label)`: the only
# index read. `chunk_bytes`/`chunk_size` (numbers) and `data_spec` (ITEM_SPEC) are checked on their own.
INDEX_CONFIG = {
    "compression": None, "compression_level": None, "compression_batch_size": None, "ipc_compression": None,
    "encryption": None, "item_loader": "PyTreeLoader", "data_format": ["bytes", "int"], "types": "json",
}  # fmt: skip
_LEAF = {"type": None, "context": None, "children_spec": []}
ITEM_SPEC = [1, {"type": "builtins.tuple", "context": "null", "children_spec": [_LEAF, _LEAF]}]  # (bytes, int)
CHUNK_KEYS = {"chunk_bytes", "chunk_size", "dim", "filename"}
CHUNK_NAME = re.compile(r"chunk-\d+-\d+\.bin")  # a plain name in the split's folder: no path, no `..`
UPDATED_AT = re.compile(r"\d+(\.\d+)?")  # a timestamp: LitData names an object store's cache folder after it
DECODERS = ("bytes", "int")  # the only LitData decoders a stream's items use


def is_url(stream: str) -> bool:
    return stream.startswith(URL_PREFIXES)


def split_location(stream: str, split: str) -> str:
    """Where a split's LitData dataset lives: a sub-folder, or the same path under the URL."""
    return f"{stream.rstrip('/')}/{split}" if is_url(stream) else str(Path(stream).expanduser() / split)


@dataclass(frozen=True)
class StreamInfo:
    """What ``cifarlit-stream.json`` records about a prepared stream."""

    classes: tuple[str, ...]
    mean: torch.Tensor
    std: torch.Tensor
    shape: tuple[int, int, int]  # (C, H, W) of every image
    sizes: dict[str, int]  # images per split, the training split with its repeats
    val_size: int | float
    test_size: int | float | None  # None: the dataset has its own test split
    seed: int
    split_fingerprint: str  # the in-memory path's, for the same data and options


def read_info(stream: str) -> StreamInfo:
    """The checked contents of ``stream``'s ``cifarlit-stream.json``; a DataError when it is not a finished stream."""
    option = f"data.stream={stream!r}"
    try:
        text = _read_meta(stream)
    except FileNotFoundError:
        raise DataError(
            f"{option} is not a prepared stream (it has no {META_NAME}, which `cifarlit prepare` writes last, so a "
            f"killed or partial prepare is refused): {HOW_TO_PREPARE}."
        ) from None
    except Exception as err:  # object stores raise many types (no access, no bucket, no network)
        raise DataError(f"{option}: cannot read {META_NAME} ({err.__class__.__name__}: {err}).") from None
    try:
        meta = json.loads(text)
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
        return StreamInfo(
            classes=tuple(str(c) for c in meta["classes"]),
            mean=torch.tensor(meta["mean"], dtype=torch.float32),
            std=torch.tensor(meta["std"], dtype=torch.float32),
            shape=_shape(meta["shape"]),
            sizes={split: int(meta["sizes"][split]) for split in SPLITS},
            val_size=meta["val_size"],
            test_size=meta["test_size"],
            seed=int(meta["seed"]),
            split_fingerprint=str(meta["split_fingerprint"]),
        )
    except Exception as err:  # a damaged or foreign file
        raise DataError(
            f"{option}: {META_NAME} is not a cifarlit {VERSION} stream description ({err.__class__.__name__}: "
            f"{err}); prepare it again with this version of cifarlit."
        ) from None


def _shape(value) -> tuple[int, int, int]:
    shape = tuple(value)
    if len(shape) != 3 or not all(type(s) is int and s > 0 for s in shape) or shape[0] not in (1, 3):
        raise ValueError(f"shape {value!r} is not (channels 1 or 3, height, width)")
    return shape


def _read_meta(stream: str) -> str:
    return _read_text(stream, META_NAME)


def _read_text(stream: str, name: str) -> str:
    """The text of ``name`` (a path under the stream): a local file, or one fetched by LitData's downloader."""
    if not is_url(stream):
        return (Path(stream).expanduser() / name).read_text()
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, Path(name).name)
        get_downloader(stream, tmp, []).download_file(f"{stream.rstrip('/')}/{name}", local)
        return Path(local).read_text()


def check_options(hparams, augment_on_host: bool) -> None:
    """Refuse the DataModule options that need the images in memory."""
    for option, instead in (
        ("train_subset", "debug on data.data_dir, or prepare a smaller dataset"),
        ("val_subset", "debug on data.data_dir, or prepare a smaller dataset"),
        ("keep_classes", "prepare a dataset folder with only those classes' sub-folders"),
    ):
        if hparams[option] is not None:
            raise DataError(
                f"data.{option}={hparams[option]} cannot be used with data.stream, which reads whole chunks, not "
                f"chosen images: {instead}."
            )
    if hparams.on_device is True:
        raise DataError(
            "data.on_device=true cannot be used with data.stream, which reads the images batch by batch: use "
            "data.on_device auto (ignored for a stream) or false."
        )
    if augment_on_host:
        raise DataError(
            "data.augment.backend=albumentations cannot be used with data.stream: use data.augment.backend batched "
            "(the same presets, on the whole batch after the transfer)."
        )


def check_split(
    stream: str, info: StreamInfo, val_size, test_size, seed: int, image_size: int = 32, channels: int = 3
) -> None:
    """The stream must hold the split this run asks for: the same options the in-memory path would split with,
    and images of the shape the network is built for."""
    asked = {"data.val_size": val_size, "data.seed": seed, "data.image_size": image_size, "data.channels": channels}
    written = {"data.val_size": info.val_size, "data.seed": info.seed, "data.image_size": info.shape[1],
               "data.channels": info.shape[0]}  # fmt: skip
    if info.test_size is not None:  # carved from train/: its size moves the split too
        asked["data.test_size"], written["data.test_size"] = test_size, info.test_size
    differ = [name for name in asked if asked[name] != written[name]]
    if differ:
        show = lambda d: ", ".join(f"{name}={d[name]}" for name in differ)  # noqa: E731
        raise DataError(
            f"data.stream={stream!r} was prepared with {show(written)}, but this run asks for {show(asked)}: pass "
            "the same options (or the same -c config) to `cifarlit prepare` and to this command."
        )


def check_index(text: str, where: str) -> list[dict]:
    """The chunks listed by a split's ``index.json`` (its ``text``), which must be exactly what ``prepare`` writes;
    a DataError naming ``where`` (the stream, split and file) otherwise."""

    def refuse(what: str) -> DataError:
        return DataError(
            f"{where} {what}, which is not what `cifarlit prepare` writes, so the split is not read: "
            f"{HOW_TO_PREPARE} again."
        )

    try:
        index = json.loads(text)
    except ValueError:
        raise refuse("is not JSON") from None
    if not isinstance(index, dict) or set(index) != {"chunks", "config", "updated_at"}:
        raise refuse(f"has the fields {sorted(index) if isinstance(index, dict) else type(index).__name__}")
    if not isinstance(index["updated_at"], str) or not UPDATED_AT.fullmatch(index["updated_at"]):
        raise refuse(f"declares updated_at {index['updated_at']!r}, not a timestamp")
    config, chunks = index["config"], index["chunks"]
    if not isinstance(config, dict) or set(config) != {*INDEX_CONFIG, "chunk_bytes", "chunk_size", "data_spec"}:
        raise refuse(f"has the config fields {sorted(config) if isinstance(config, dict) else config!r}")
    for key, value in INDEX_CONFIG.items():
        if config[key] != value or type(config[key]) is not type(value):
            raise refuse(f"declares {key} {config[key]!r} (prepare writes {value!r})")
    try:
        spec = json.loads(config["data_spec"])
    except (TypeError, ValueError):
        spec = config["data_spec"]
    if spec != ITEM_SPEC:
        raise refuse(f"declares the item structure {config['data_spec']!r}")
    if not _count(config["chunk_bytes"]) or not (config["chunk_size"] is None or _count(config["chunk_size"])):
        raise refuse("declares chunk sizes that are not counts")
    if not isinstance(chunks, list) or not chunks or not all(isinstance(c, dict) for c in chunks):
        raise refuse("lists no chunks")
    for chunk in chunks:
        if set(chunk) != CHUNK_KEYS or chunk["dim"] is not None:
            raise refuse(f"lists a chunk with the fields {sorted(chunk)}")
        if not isinstance(chunk["filename"], str) or not CHUNK_NAME.fullmatch(chunk["filename"]):
            raise refuse(f"names the chunk file {chunk['filename']!r} (prepare writes chunk-R-N.bin in the split)")
        if not (_count(chunk["chunk_bytes"]) and _count(chunk["chunk_size"])):
            raise refuse(f"gives {chunk['filename']} a size that is not a count")
    if len({chunk["filename"] for chunk in chunks}) != len(chunks):
        raise refuse("lists a chunk file twice")
    return chunks


def _count(value) -> bool:
    return type(value) is int and value > 0


def check_chunks(folder: Path, chunks: list[dict], shape: tuple[int, int, int], where: str) -> None:
    """Each chunk of a local split is a regular file of the size its index records, holding that many items of
    ``(C*H*W image bytes, int64 label)``: a missing, truncated or foreign chunk is refused here, in one sentence,
    rather than when training reaches it (LitData waits for the missing bytes, then raises)."""
    for chunk in chunks:
        try:
            what = _chunk_problem(folder / chunk["filename"], chunk, shape)
        except FileNotFoundError:
            what = "is missing"
        except OSError as err:
            what = f"cannot be read ({err.strerror})"
        if what:
            raise DataError(f"{where}: {chunk['filename']} {what}; the stream is damaged: {HOW_TO_PREPARE} again.")


def _chunk_problem(path: Path, chunk: dict, shape: tuple[int, int, int]) -> str | None:
    """What is wrong with one chunk file, by LitData's layout: a ``uint32`` item count, ``uint32[count + 1]``
    offsets, then per item a ``uint32`` size per field and the fields (here 3,072 bytes and an int64 for CIFAR)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):  # a pipe would block the reader forever
        return "is not a regular file"
    if st.st_size != chunk["chunk_bytes"]:
        return f"holds {st.st_size} bytes, but {INDEX_NAME} records {chunk['chunk_bytes']} (truncated?)"
    count = chunk["chunk_size"]
    with open(path, "rb") as f:
        header = f.read(4 * (count + 2))  # the count and the offsets; at most the file, whose size is known
    if len(header) != 4 * (count + 2) or int.from_bytes(header[:4], "little") != count:
        return f"does not hold the {count} items {INDEX_NAME} records"
    offsets = np.frombuffer(header[4:], "<u4").astype(np.int64)
    item = 2 * 4 + math.prod(shape) + 8
    if offsets[0] != len(header) or offsets[-1] != st.st_size or np.any(np.diff(offsets) != item):
        return f"does not hold images of shape {list(shape)} as {META_NAME} records"
    return None


def check_split_files(stream: str, split: str, info: StreamInfo) -> list[dict]:
    """Check a split's ``index.json`` (and, for a local stream, its chunks) before LitData reads any of them."""
    where = f"data.stream={stream!r}: {split}/{INDEX_NAME}"
    try:
        text = _read_text(stream, f"{split}/{INDEX_NAME}")
    except FileNotFoundError:
        raise DataError(
            f"data.stream={stream!r}: the {split} split cannot be read (it has no {INDEX_NAME}); the stream is "
            f"incomplete: {HOW_TO_PREPARE} again."
        ) from None
    except Exception as err:  # object stores raise many types; a local file may be unreadable or not UTF-8
        raise DataError(f"{where} cannot be read ({err.__class__.__name__}); {HOW_TO_PREPARE} again.") from None
    chunks = check_index(text, where)
    if not is_url(stream):
        check_chunks(Path(split_location(stream, split)), chunks, info.shape, f"data.stream={stream!r}: {split}")
    return chunks


class _Refused(Serializer):
    """Stands in for each LitData decoder a stream has no use for (``pickle`` runs code, ``pil`` and ``jpeg`` hand
    bytes to image libraries, ...): an index that named one would be refused here too, not decoded."""

    def __init__(self, name: str) -> None:
        self.name = name

    def setup(self, metadata) -> None:
        raise DataError(f"a stream's items use LitData's {DECODERS} decoders only, not {self.name!r}.")

    def serialize(self, data):
        raise DataError(f"cifarlit does not write {self.name!r} items.")

    deserialize = serialize

    def can_serialize(self, data) -> bool:
        return False


def decoders() -> dict[str, Serializer]:
    """LitData's serializer table with every decoder but :data:`DECODERS` refused (LitData adds its defaults for
    the names a table leaves out, so each is named)."""
    return {name: _Refused(name) for name in _SERIALIZERS if name not in DECODERS}


def open_split(stream: str, split: str, info: StreamInfo, shuffle: bool = False, seed: int = 0) -> StreamingDataset:
    """The LitData dataset of one split, its files checked (:func:`check_split_files`) and its size checked against
    the one ``prepare`` recorded."""
    location = split_location(stream, split)
    check_split_files(stream, split, info)
    # Training: LitData's block shuffle, with each block decoded at once (a full in-chunk permutation reads item
    # by item, ~1.8x the block's cost here: benchmarks/README.md, "Streaming").
    window = {"item_shuffle_window": SHUFFLE_BLOCK, "batch_decode": SHUFFLE_BLOCK} if shuffle else {}
    try:  # drop_last: see batch_plan
        dataset = StreamingDataset(location, shuffle=shuffle, seed=seed, serializers=decoders(), **window)
    except (ValueError, FileNotFoundError, AssertionError) as err:  # LitData's words for a missing or empty index
        raise DataError(
            f"data.stream={stream!r}: the {split} split cannot be read ({str(err).splitlines()[0]}); the stream is "
            f"incomplete: {HOW_TO_PREPARE} again."
        ) from None
    if is_url(stream):  # the copy in LitData's cache is the one its readers use: it must be the one checked
        cached = Path(dataset.input_dir.path) / INDEX_NAME
        check_index(cached.read_text(), f"data.stream={stream!r}: {split}/{INDEX_NAME} (LitData's copy {cached})")
    found = sum(end - start for start, end in dataset.region_of_interest)
    if found != info.sizes[split]:
        raise DataError(
            f"data.stream={stream!r}: the {split} split holds {found} images, but {META_NAME} says "
            f"{info.sizes[split]}: the stream is incomplete or mixed with another one; {HOW_TO_PREPARE} again."
        )
    return dataset


def open_splits(hparams, info: StreamInfo) -> tuple[StreamingDataset, StreamingDataset, StreamingDataset]:
    """The train (shuffled), val and test datasets of ``hparams.stream``, checked against the split asked for."""
    check_split(hparams.stream, info, hparams.val_size, hparams.test_size, hparams.seed, hparams.image_size,
                hparams.channels)  # fmt: skip
    train = open_split(hparams.stream, "train", info, shuffle=True, seed=shuffle_seed(hparams.seed))
    return train, open_split(hparams.stream, "val", info), open_split(hparams.stream, "test", info)


def collate(items: list[tuple[bytes, int]], shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image bytes, label)`` items -> uint8 ``(B, C, H, W)`` images and int64 labels, one copy of the pixels."""
    x = torch.frombuffer(bytearray().join(image for image, _ in items), dtype=torch.uint8)
    if x.numel() != len(items) * math.prod(shape):
        raise DataError(f"streamed images are not of the shape {list(shape)} that {META_NAME} records")
    return x.view(len(items), *shape), torch.tensor([label for _, label in items], dtype=torch.int64)


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
    dataset.set_drop_last(False)
    dataset.get_len(workers, 1)  # sets LitData's worker count and "batch" size, and builds its plan
    env = dataset.distributed_env
    _, intervals = dataset.shuffler.get_chunks_and_intervals_per_workers(env, workers, 1, dataset.current_epoch)
    shares = [sum(end - start for _, start, end, _ in worker) for worker in intervals]  # process-major
    plan = []
    for slot in range(workers):
        share = shares[slot::workers]  # this worker slot on each process
        batches = max(1, -(-max(share) // batch_size))
        if min(share) < batches:
            raise DataError(
                f"a split of {sum(shares)} images cannot be shared between {env.world_size} process(es) x "
                f"{workers} worker(s) in {batches} batch(es) each: use fewer processes or data.num_workers."
            )
        plan.append([len(part) for part in torch.arange(share[env.global_rank]).tensor_split(batches)])
    return plan


class _Batches(IterableDataset):
    """A worker's share of a split (LitData's), in the batches planned for that worker."""

    def __init__(self, dataset: StreamingDataset, plan: list[list[int]], shape: tuple[int, int, int]) -> None:
        self.dataset, self.plan, self.shape = dataset, plan, shape

    def __len__(self) -> int:
        return sum(len(sizes) for sizes in self.plan)

    def __iter__(self):
        items = iter(self.dataset)  # LitData picks this worker's share, in this epoch's order
        sizes = self.plan[self.dataset.worker_env.rank]
        if sum(sizes) != self.dataset.stop_length:  # the plan must be LitData's own
            raise RuntimeError(f"LitData gave this worker {self.dataset.stop_length} images, not {sum(sizes)}")
        try:
            for size in sizes:
                yield collate([next(items) for _ in range(size)], self.shape)
        finally:
            # LitData makes a new reader every epoch and leaves the old one's last chunk files open: without
            # this, a process reading in the main process (val, test, workers=0) gains open files every epoch.
            _close_chunks(self.dataset)


def _close_chunks(dataset: StreamingDataset) -> None:
    reader = getattr(getattr(dataset, "cache", None), "_reader", None)
    item_loader = getattr(reader, "_item_loader", None)
    if item_loader is not None:
        item_loader.close(0)  # LitData's loaders close whatever chunk is open, whichever index is named


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
        where = dataset.input_dir.url or dataset.input_dir.path
        last = (str(err).strip().splitlines() or [""])[-1]
        raise DataError(
            f"data.stream: {where} cannot be read ({err.__class__.__name__}: {last}); the stream is damaged or "
            f"incomplete: {HOW_TO_PREPARE} again."
        ) from None


def loader(
    dataset: StreamingDataset, shape: tuple[int, int, int], batch_size: int, num_workers: int, pin_memory: bool,
    epoch: Callable[[], int] = lambda: 0,
) -> StreamLoader:  # fmt: skip
    """Training batches (a shuffled ``dataset``), or val/test/predict batches read in this process, in the stored
    order (predict's ids are positions in it). Workers start afresh each epoch: persistent ones would keep the
    previous epoch's order."""
    num_workers = num_workers if dataset.shuffle else 0
    plan = batch_plan(dataset, num_workers, batch_size)
    return StreamLoader(
        _Batches(dataset, plan, shape),
        batch_size,
        epoch,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=worker_init if num_workers > 0 else None,
    )


def shuffle_seed(data_seed: int) -> int:
    """The training seed (``seed_everything``, which Lightning leaves in ``PL_GLOBAL_SEED`` for every process), or
    without one ``data.seed``: all processes of a DDP run must draw the same order."""
    return int(os.environ.get("PL_GLOBAL_SEED", data_seed))

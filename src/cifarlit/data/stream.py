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

Training reads the chunks in LitData's block-shuffled order (:data:`SHUFFLE_BLOCK`), seeded by the training
seed (``seed_everything``) and the epoch; only a few chunks are mapped at a time, so memory does not grow with the
dataset. :mod:`cifarlit.data.stream_loader` makes the batches (uint8, augmented and normalized after the transfer
as the in-memory ones), every image once per epoch and as many batches on every DDP process.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifarlit.data import DataError, litdata_adapter
from cifarlit.data.litdata_adapter import Serializer, StreamingDataset
from cifarlit.utils.checkpoints import MAX_SIDE, MIN_SIDE

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
    if len(shape) != 3 or not all(type(s) is int for s in shape) or shape[0] not in (1, 3):
        raise ValueError(f"shape {value!r} is not (channels 1 or 3, height, width)")
    if not all(MIN_SIDE <= side <= MAX_SIDE for side in shape[1:]):
        raise ValueError(f"shape {value!r} has sides outside {MIN_SIDE}..{MAX_SIDE}")
    return shape


def _read_meta(stream: str) -> str:
    return _read_text(stream, META_NAME)


def _read_text(stream: str, name: str) -> str:
    """The text of ``name`` (a path under the stream): a local file, or one fetched by LitData's downloader."""
    if not is_url(stream):
        return (Path(stream).expanduser() / name).read_text()
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, Path(name).name)
        litdata_adapter.download_file(stream, name, local)
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
    """LitData's serializer table with every decoder but :data:`DECODERS` refused."""
    return litdata_adapter.serializers(_Refused, DECODERS)


def open_split(stream: str, split: str, info: StreamInfo, shuffle: bool = False, seed: int = 0) -> StreamingDataset:
    """The LitData dataset of one split, its files checked (:func:`check_split_files`) and its size checked against
    the one ``prepare`` recorded."""
    location = split_location(stream, split)
    check_split_files(stream, split, info)
    # Training: LitData's block shuffle, with each block decoded at once (a full in-chunk permutation reads item
    # by item, which costs more: benchmarks/README.md, "Streaming").
    window = {"item_shuffle_window": SHUFFLE_BLOCK, "batch_decode": SHUFFLE_BLOCK} if shuffle else {}
    try:  # drop_last: see stream_loader.batch_plan
        dataset = StreamingDataset(location, shuffle=shuffle, seed=seed, serializers=decoders(), **window)
    except (ValueError, FileNotFoundError, AssertionError) as err:  # LitData's words for a missing or empty index
        raise DataError(
            f"data.stream={stream!r}: the {split} split cannot be read ({str(err).splitlines()[0]}); the stream is "
            f"incomplete: {HOW_TO_PREPARE} again."
        ) from None
    if is_url(stream):  # the copy in LitData's cache is the one its readers use: it must be the one checked
        cached = Path(litdata_adapter.location(dataset)[1]) / INDEX_NAME
        check_index(cached.read_text(), f"data.stream={stream!r}: {split}/{INDEX_NAME} (LitData's copy {cached})")
    found = litdata_adapter.stored_images(dataset)
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


def shuffle_seed(data_seed: int) -> int:
    """The training seed (``seed_everything``, which Lightning leaves in ``PL_GLOBAL_SEED`` for every process), or
    without one ``data.seed``: all processes of a DDP run must draw the same order."""
    return int(os.environ.get("PL_GLOBAL_SEED", data_seed))

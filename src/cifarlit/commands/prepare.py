"""`cifarlit prepare`: write a dataset once as LitData chunks, to train on it without holding it in memory.

    cifarlit prepare -c configs/default.yaml --data.data_dir ~/data/cifar10 --output ~/data/cifar10-stream
    cifarlit fit -c configs/default.yaml --data.stream ~/data/cifar10-stream

The splits are the in-memory path's: the same stratified train/val (and, for an image folder without ``test/``,
test) split for the same ``data.val_size``, ``data.test_size`` and ``data.seed`` (read from the ``-c`` configs
and the command line, as ``fit`` reads them), computed from the labels, which are listed without decoding an
image. LitData's workers then read the images one file at a time (CIFAR-10's pickle format: one batch file at a
time), so a folder larger than memory is never decoded at once; the training images are written in a seeded
random order, so that every chunk is a random sample of the classes. The training split's normalization
statistics come from one more pass over its chunks.

Everything is written into a hidden folder next to ``--output`` and renamed into place once complete, with
``cifarlit-stream.json`` (classes, statistics, image shape, split options and sizes) written last: a killed
prepare leaves no ``--output``, and the next prepare removes what it left.

``--output`` never touches the dataset: a folder that is, holds or lies inside ``data.data_dir`` (symbolic links
followed both ways) is refused, and an existing ``--output`` is replaced only when it is empty or a cifarlit
stream (a valid ``cifarlit-stream.json``) and ``--overwrite`` is given; a file, a link or any other folder is
refused in one sentence, before anything is read or written.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cifarlit.data import DataError, images, pickles, shapes, sources, split, stream
from cifarlit.data.stream_loader import collate
from cifarlit.utils import files

PARTIAL = "partial-"  # ".<output name>.partial-<host>-<pid>": the stream being written
OLD = "old-"  # ".<output name>.old-<host>-<pid>": the stream being replaced, removed once the new one is in place
UNREADABLE = "unreadable"  # a folder in the partial stream where the readers list the files they cannot decode
# 16 MB chunks: LitData maps a few chunks at a time (4 on a local disk), so this bounds the memory a stream adds
# to a run whatever the dataset's size (benchmarks/README.md, "Streaming"); each holds ~5,000 CIFAR images.
CHUNK_BYTES = "16MB"
STATS_BATCH = 1000  # images per batch of the pass that computes the training split's statistics


@dataclass
class Listing:
    """A dataset's labels and the jobs that read its images, listed without decoding any."""

    classes: tuple[str, ...]
    fingerprint: str  # the in-memory path's fingerprint of the same files
    train_labels: np.ndarray
    test_labels: np.ndarray | None  # None: no test split of its own, one is carved from train
    shape: tuple[int, int, int]  # (C, H, W) of every image
    source: str  # "folder" or "pickle"
    train_paths: list[str] = field(default_factory=list)  # an image folder's files, by position
    test_paths: list[str] = field(default_factory=list)
    batches: list[tuple[str, int]] = field(default_factory=list)  # pickle: (train batch file, its first position)
    test_batch: str = ""


def list_dataset(root: Path, size: int = images.CIFAR_SIZE, channels: int = 3) -> Listing:
    """Classes, labels and file fingerprint of an image folder or CIFAR-10's pickle batches, as the in-memory path
    sees them at ``size`` x ``size`` and ``channels`` (tests/test_stream.py checks that both give the same
    split)."""
    # only a batch of images is ever in memory here (_train_stats'), but it must fit
    sources.check_memory(STATS_BATCH, size, channels, 2, "one batch of the statistics pass", hint="")
    if sources.detect_format(root) == "pickle":
        folder = root / pickles.PICKLE_DIR
        return _list_pickle(folder, pickles.pickle_classes(folder), size, channels)
    listing = images.list_image_folder(root)
    train, test = listing.splits["train"], listing.splits.get("test")
    return Listing(
        classes=listing.classes,
        fingerprint=listing.fingerprint(size, channels),  # as sources.load_image_folder
        train_labels=listing.labels("train"),
        test_labels=None if test is None else listing.labels("test"),
        shape=(channels, size, size),
        source="folder",
        train_paths=[item[0] for item in train],
        test_paths=[item[0] for item in test or []],
    )


def _list_pickle(folder: Path, classes: tuple[str, ...], size: int, channels: int) -> Listing:
    files = pickles.batch_files(folder)
    labels, batches, start = [], [], 0
    for path in files:  # one batch file in memory at a time, for its labels
        y = pickles.read_batch(path, classes)[1]
        labels.append(y)
        batches.append((str(path), start))
        start += len(y)
    test_labels = pickles.read_batch(folder / "test_batch", classes)[1]
    pickles.check_every_class_trained(np.concatenate(labels), classes, folder)
    return Listing(
        classes=classes,
        fingerprint=sources.sized_fingerprint(pickles.pickle_fingerprint(folder, files), size, channels),
        train_labels=np.concatenate(labels),
        test_labels=test_labels,
        shape=(channels, size, size),
        source="pickle",
        batches=batches,
        test_batch=str(folder / "test_batch"),
    )


class _Reader:
    """LitData's ``fn``: one job -> ``(CHW uint8 image bytes, label)`` items. A job is an image file, or a pickle
    batch file with the positions to take from it. Files that cannot be decoded are listed, not written: the
    stream is then refused as a whole (LitData waits forever for a worker whose ``fn`` raises)."""

    def __init__(self, jobs: list[tuple], unreadable_dir: str, shape: tuple[int, int, int]) -> None:
        self.jobs, self.unreadable_dir = jobs, unreadable_dir
        self.channels, self.size = shape[0], shape[1]

    def __call__(self, job: int):
        path, what = self.jobs[job]
        if isinstance(what, list):  # a pickle batch: [(position in the file, label), ...]
            x = pickles.read_batch(Path(path))[0][[position for position, _ in what]]  # (n, 32, 32, 3)
            if x.shape[1:] != (self.size, self.size, self.channels):
                # one torch thread, as in DataLoader workers: a forked child inherits a dead OpenMP pool and hangs
                torch.set_num_threads(1)
                x = sources.resize_images(x, self.size, self.channels)  # as resize_raw does in memory
            for image, (_, label) in zip(x, what, strict=True):
                yield np.ascontiguousarray(image.transpose(2, 0, 1)).tobytes(), label
            return
        try:
            image = images.decode(path, self.size, self.channels)
        except Exception as err:  # PIL raises several types for damaged files
            with open(os.path.join(self.unreadable_dir, f"{os.getpid()}.txt"), "a") as f:
                # one JSON line: a name may hold tabs, newlines or bytes that are not UTF-8 (as \udcXX escapes)
                f.write(json.dumps([path, err.__class__.__name__]) + "\n")
            return
        yield np.ascontiguousarray(image.transpose(2, 0, 1)).tobytes(), what  # (H, W, C) -> (C, H, W)


def _jobs(listing: Listing, positions: np.ndarray, test: bool = False) -> list[tuple]:
    """Jobs that write the images at ``positions`` (of train, or of the official test set) in that order; a pickle
    batch is read once for all its images, in their order within ``positions``."""
    if listing.source == "folder":
        paths = listing.test_paths if test else listing.train_paths
        labels = listing.test_labels if test else listing.train_labels
        return [(paths[i], int(labels[i])) for i in positions]
    if test:
        return [(listing.test_batch, [(int(i), int(listing.test_labels[i])) for i in positions])]
    jobs = []
    ends = [start for _, start in listing.batches[1:]] + [len(listing.train_labels)]
    for (path, start), end in zip(listing.batches, ends, strict=True):
        mine = positions[(positions >= start) & (positions < end)]  # keeps the order of `positions`
        jobs.append((path, [(int(i - start), int(listing.train_labels[i])) for i in mine]))
    return jobs


def _write(jobs: list[tuple], out: Path, num_workers: int, chunk_bytes: str, shape: tuple[int, int, int]) -> None:
    import litdata

    (out.parent / UNREADABLE).mkdir(exist_ok=True)
    start = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"  # fork: no re-import per worker
    with contextlib.redirect_stdout(io.StringIO()):  # LitData's chatter; its progress bar is on stderr
        litdata.optimize(
            fn=_Reader(jobs, str(out.parent / UNREADABLE), shape),
            inputs=list(range(len(jobs))),
            output_dir=str(out),
            chunk_bytes=chunk_bytes,
            num_workers=max(1, min(num_workers, len(jobs))),
            reorder_files=False,
            keep_data_ordered=True,  # the images of val and test stay in their order: predict's ids are positions
            start_method=start,
            verbose=True,
        )


def _train_stats(train_dir: Path, shape: tuple[int, int, int]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0-1 scale) of the written training split, exact, as the in-memory split's
    (``split.channel_stats``), a batch at a time."""
    import functools

    from litdata import StreamingDataLoader, StreamingDataset

    loader = StreamingDataLoader(
        StreamingDataset(str(train_dir)), batch_size=STATS_BATCH, collate_fn=functools.partial(collate, shape=shape)
    )
    hist = torch.zeros(shape[0], 256, dtype=torch.int64)
    for x, _ in loader:
        hist += split.histograms(x)
    mean, std = split.stats_from_histograms(hist)
    return mean.tolist(), std.tolist()


def _remove_leftovers(output: Path) -> None:
    """The partial (and replaced) streams of prepares on this machine that were killed while writing ``output``."""
    sources.remove_leftovers(output.parent, (f".{output.name}.{PARTIAL}", ""), (f".{output.name}.{OLD}", ""))


def _up_to_date(output: Path, fingerprint: str, repeat: int) -> bool:
    """Whether ``output`` is a finished, undamaged stream of this split (with as many copies of train)."""
    try:
        meta = json.loads((output / stream.META_NAME).read_text())
        if meta.get("split_fingerprint") != fingerprint or meta.get("repeat") != repeat:
            return False
        info = stream.read_info(str(output))
        for split in stream.SPLITS:  # its indexes and chunks as `prepare` writes them
            chunks = stream.check_split_files(str(output), split, info)
            if sum(chunk["chunk_size"] for chunk in chunks) != info.sizes[split]:
                return False
    except (OSError, ValueError, AttributeError):  # DataError is a ValueError; AttributeError: JSON, not an object
        return False
    return True


def _refuse_inside(output: Path, data_dir: Path) -> None:
    """``--output`` must not be, hold or lie inside the dataset, as written or with symbolic links resolved."""
    data_dir = data_dir.expanduser()
    for out in (Path(os.path.normpath(output.absolute())), output.resolve()):
        for data in (Path(os.path.normpath(data_dir.absolute())), data_dir.resolve()):
            inside = "holds" if out in data.parents else "lies inside" if data in out.parents else ""
            how = "is" if out == data else inside
            if how:
                raise DataError(
                    f"--output {output} {how} data.data_dir {data_dir}{f' ({data})' if data != data_dir else ''}: "
                    "write the stream to a folder outside the dataset, which prepare never changes."
                )


def _check_replaceable(output: Path, overwrite: bool) -> None:
    """An existing ``--output`` may be replaced when it is an empty folder, or a cifarlit stream and ``overwrite``
    is given; anything else is refused (a file, a link, a folder of other things: nothing the user has is lost)."""
    if output.is_symlink() or not output.is_dir():
        kind = "a symbolic link" if output.is_symlink() else "a file"
        raise DataError(f"--output {output} is {kind}, not a stream folder, so prepare will not replace it: choose "
                        "another folder.")  # fmt: skip
    try:
        empty = not any(output.iterdir())
    except OSError:  # a folder that cannot be listed is not one to replace
        empty = False
    if empty:
        return
    try:
        stream.read_info(str(output))
    except DataError:
        raise DataError(
            f"--output {output} is a folder that is not a cifarlit stream (it has no valid {stream.META_NAME}), so "
            f"prepare will not replace it{' even with --overwrite' if overwrite else ''}: choose another folder."
        ) from None
    if not overwrite:
        raise DataError(
            f"--output {output} holds a stream of another split (or a damaged one): pass --overwrite to replace it, "
            "or choose another folder."
        )


def _check_options(output: Path, val_size, test_size, repeat: int, image_size: int, channels: int) -> None:
    """Refuse what prepare cannot write, before anything is read."""
    split.check_split_size(val_size, "data.val_size")
    split.check_split_size(test_size, "data.test_size")
    if stream.is_url(str(output)):
        raise DataError(
            f"--output {output}: prepare writes a local folder; copy it to object storage afterwards (its "
            f"{stream.META_NAME} last) and pass that URL as data.stream."
        )
    if repeat < 1:
        raise DataError(f"--repeat {repeat} is not valid: use 1 or more copies of the training split.")
    shapes.check_image_size(image_size)
    if channels not in (1, 3):
        raise DataError(f"data.channels={channels} is not valid: use 1 (gray) or 3 (RGB).")


def _plan(listing: Listing, positions: tuple, seed: int, repeat: int) -> dict[str, list[tuple]]:
    """The jobs that write each split: the training images in a seeded random order (a new one for each of the
    ``repeat`` copies, since LitData shuffles only the chunks and blocks within them), val and test in order."""
    train_idx, val_idx, test_idx = positions
    rng = np.random.default_rng(seed)
    train_order = np.concatenate([rng.permutation(train_idx) for _ in range(repeat)])
    if test_idx is None:  # the dataset's own test set, all of it
        test = _jobs(listing, np.arange(len(listing.test_labels)), test=True)
    else:
        test = _jobs(listing, test_idx)
    return {"train": _jobs(listing, train_order), "val": _jobs(listing, val_idx), "test": test}


def prepare(
    data_dir: Path, output: Path, val_size=0.2, test_size=0.2, seed: int = 42, download: bool = True,
    num_workers: int = 1, chunk_bytes: str = CHUNK_BYTES, repeat: int = 1, overwrite: bool = False,
    image_size: int = images.CIFAR_SIZE, channels: int = 3,
) -> Path:  # fmt: skip
    """Write ``data_dir``'s train/val/test split as a stream in ``output`` (see the module docstring)."""
    val_size, test_size = split.count_or_fraction(val_size), split.count_or_fraction(test_size)
    _check_options(output, val_size, test_size, repeat, image_size, channels)
    output = output.expanduser().absolute()
    _refuse_inside(output, data_dir)  # before the dataset is downloaded into data_dir
    if output.exists() and not output.is_symlink():  # a file or another folder: refused before any work
        _check_replaceable(output, overwrite=True)
    sources.ensure_available(data_dir, download)
    listing = list_dataset(data_dir, image_size, channels)
    carve_test = listing.test_labels is None
    positions = split.split_positions(listing.train_labels, carve_test, val_size, test_size, seed, data_dir)
    fingerprint = split.split_fingerprint(*positions[:2], listing.fingerprint, positions[2])
    if output.exists() or output.is_symlink():
        if _up_to_date(output, fingerprint, repeat) and not overwrite:
            print(f"prepare: {output} already holds this split ({fingerprint}); nothing to do.")
            return output
        _check_replaceable(output, overwrite)
    partial = output.parent / f".{output.name}.{PARTIAL}{files.owner()}"
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(output)
        partial.mkdir()
    except OSError as err:
        raise DataError(
            f"--output {output} cannot be written ({err.strerror or err.__class__.__name__}): pass a folder in a "
            "place you can write to."
        ) from None
    plan = _plan(listing, positions, seed, repeat)
    sizes = {name: sum(len(what) if isinstance(what, list) else 1 for _, what in jobs) for name, jobs in plan.items()}
    try:
        for name, jobs in plan.items():
            print(f"prepare: {name}: {sizes[name]} images -> {output / name}", flush=True)
            _write(jobs, partial / name, num_workers, chunk_bytes, listing.shape)
        _refuse_unreadable(partial / UNREADABLE, data_dir)
        shutil.rmtree(partial / UNREADABLE)
        mean, std = _train_stats(partial / "train", listing.shape)
        meta = {
            "format": stream.FORMAT, "version": stream.VERSION, "classes": list(listing.classes),
            "mean": mean, "std": std, "shape": list(listing.shape), "sizes": sizes, "repeat": repeat,
            "val_size": val_size, "test_size": test_size if carve_test else None, "seed": seed,
            "split_fingerprint": fingerprint, "data_dir": str(data_dir), "chunk_bytes": chunk_bytes,
        }  # fmt: skip
        (partial / stream.META_NAME).write_text(json.dumps(meta, indent=1) + "\n")  # last: it marks the stream done
        _publish(partial, output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # only still there when something failed
    print(f"prepare: done: {output} (split {fingerprint}); train with --data.stream {output}")
    return output


def _refuse_unreadable(folder: Path, data_dir: Path) -> None:
    found = [json.loads(line) for f in sorted(folder.glob("*.txt")) for line in f.read_text().splitlines()]
    rel = len(str(data_dir)) + 1
    unreadable = sorted((path[rel:] if path.startswith(str(data_dir)) else path, why) for path, why in found)
    if unreadable:
        images.report_unreadable(unreadable, str(data_dir), skip=False)  # raises, naming them


def _publish(partial: Path, output: Path) -> None:
    """Rename the finished stream into place (replacing an old one, which is removed only afterwards)."""
    old = None
    if output.exists() or output.is_symlink():
        _check_replaceable(output, overwrite=True)  # again: it may have changed while the stream was written
        old = output.parent / f".{output.name}.{OLD}{files.owner()}"
        os.replace(output, old)
    os.replace(partial, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(
    data: dict,
    output: Path,
    num_workers: int = min(8, os.cpu_count() or 1),
    chunk_bytes: str = CHUNK_BYTES,
    repeat: int = 1,
    overwrite: bool = False,
) -> int:
    """Write a dataset's train/val/test split as a LitData stream for `cifarlit fit --data.stream`.

    Args:
        data: the data options of fit (-c fit configs and --data.*): data_dir, download, val_size, test_size, seed,
            image_size and channels decide what is written; the others are a training's.
        output: the folder to write (then pass it as --data.stream).
        num_workers: LitData worker processes that decode and write (default: one per core, at most 8).
        chunk_bytes: LitData's chunk size.
        repeat: write the training split this many times (to measure a dataset N times larger;
            benchmarks/stream_cost.py).
        overwrite: replace an existing stream at --output (never the dataset, nor anything else).
    """
    prepare(
        Path(data["data_dir"]).expanduser(), Path(output), data["val_size"], data["test_size"], int(data["seed"]),
        bool(data["download"]), num_workers, chunk_bytes, repeat, overwrite, int(data["image_size"]),
        int(data["channels"]),
    )  # fmt: skip
    return 0

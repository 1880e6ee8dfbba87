"""Every use of LitData beyond its documented API, in one place (``tests/test_litdata_adapter.py`` checks each
still exists, so an upgrade that moves one fails there, loudly, rather than in a run).

The streams need a few things LitData does not offer publicly: its table of item decoders (to refuse all but the
two a stream uses), how it shares a split between processes and DataLoader workers (to plan equal batches), the
open chunk file of an old reader (to close it), its downloader (to read a stream's own files from object storage)
and where it copies an object store's chunks. ``pyproject.toml`` pins LitData below its next minor release.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")  # LitData must never ask PyPI for a newer version

from litdata import StreamingDataset  # noqa: E402
from litdata.streaming.downloader import get_downloader  # noqa: E402
from litdata.streaming.serializers import _SERIALIZERS, Serializer  # noqa: E402
from litdata.utilities import dataset_utilities  # noqa: E402

# Where LitData reads the folder it copies an object store's chunks into (set from LITDATA_CACHE_DIR when it is
# imported): tests point it into a temporary folder with ``monkeypatch.setattr(*CACHE_DIR_SETTING, path)``.
CACHE_DIR_SETTING = (dataset_utilities, "_LITDATA_CACHE_DIR")


def serializers(refused: type[Serializer], allowed: tuple[str, ...]) -> dict[str, Serializer]:
    """LitData's decoder table with every decoder but ``allowed`` replaced by ``refused(name)`` (LitData adds its
    defaults for the names a table leaves out, so each is named)."""
    return {name: refused(name) for name in _SERIALIZERS if name not in allowed}


def worker_shares(dataset: StreamingDataset, num_workers: int) -> tuple[list[int], int, int]:
    """How LitData shares ``dataset`` out image by image (its "batch" of 1, nothing dropped) between the processes
    and ``num_workers`` DataLoader workers this epoch: the images of each worker slot, process-major, with the world
    size and this process's rank."""
    dataset.set_drop_last(False)
    dataset.get_len(num_workers, 1)  # sets LitData's worker count and "batch" size, and builds its plan
    env = dataset.distributed_env
    _, intervals = dataset.shuffler.get_chunks_and_intervals_per_workers(env, num_workers, 1, dataset.current_epoch)
    return [sum(end - start for _, start, end, _ in worker) for worker in intervals], env.world_size, env.global_rank


def worker_share(dataset: StreamingDataset) -> tuple[int, int]:
    """``(rank of this DataLoader worker, images LitData gives it this epoch)``, inside an iteration."""
    return dataset.worker_env.rank, dataset.stop_length


def stored_images(dataset: StreamingDataset) -> int:
    """How many items the split's index lists in all (before any is shared out)."""
    return sum(end - start for start, end in dataset.region_of_interest)


def location(dataset: StreamingDataset) -> tuple[str | None, str]:
    """``(url, local path)`` of a split: the local path is LitData's copy of an object store's files."""
    return dataset.input_dir.url, dataset.input_dir.path


def close_open_chunk(dataset: StreamingDataset) -> None:
    """Close the chunk file the dataset's last reader left open: LitData makes a new reader every epoch and leaves
    the old one's last chunk open, so a process reading in the main process gains open files every epoch."""
    reader = getattr(getattr(dataset, "cache", None), "_reader", None)
    item_loader = getattr(reader, "_item_loader", None)
    if item_loader is not None:
        item_loader.close(0)  # LitData's loaders close whatever chunk is open, whichever index is named


def download_file(root_url: str, name: str, local: str) -> None:
    """Copy ``root_url/name`` from object storage to the local file ``local``."""
    get_downloader(root_url, os.path.dirname(local), []).download_file(f"{root_url.rstrip('/')}/{name}", local)

"""The LitData adapter: each piece of LitData that cifarlit uses beyond its public API is still there and does what
the streams rely on. A LitData upgrade that moves one fails here, naming it, instead of in a user's run."""

from __future__ import annotations

import inspect
import json
import os
import re
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

from cifarlit.commands import prepare
from cifarlit.data import litdata_adapter, stream, stream_loader

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_stream(pickle_root, tmp_path_factory) -> Path:
    """A stream as ``cifarlit prepare`` writes it: 160 train, 40 val, 50 test images of the pickle fixture."""
    return prepare.prepare(pickle_root, tmp_path_factory.mktemp("adapter") / "s", num_workers=1)


def test_the_installed_litdata_is_inside_the_pinned_range():
    pyproject = (REPO / "pyproject.toml").read_text()
    (line,) = re.findall(r'"(litdata[^"]*)"', pyproject)
    requirement = Requirement(line)
    assert requirement.specifier.contains(version("litdata")), f"litdata {version('litdata')} is outside {line}"
    assert any(spec.operator == "<" for spec in requirement.specifier), "private API is used: pin an upper bound"


def test_the_decoder_table_names_every_decoder_and_all_but_two_are_refused():
    table = litdata_adapter.serializers(stream._Refused, stream.DECODERS)
    assert {"pickle", "pil", "jpeg", "numpy"} <= set(table)  # the decoders that run code or hand bytes on
    assert not set(stream.DECODERS) & set(table) and all(isinstance(s, stream._Refused) for s in table.values())
    abstract = {name for name, member in vars(litdata_adapter.Serializer).items()
                if getattr(member, "__isabstractmethod__", False)}  # fmt: skip
    assert abstract <= {"serialize", "deserialize", "setup", "can_serialize"}  # what _Refused implements


def test_litdata_still_reads_the_cache_folder_and_downloads_by_these_names():
    module, name = litdata_adapter.CACHE_DIR_SETTING
    assert hasattr(module, name)  # tests point it at a temporary folder
    params = list(inspect.signature(litdata_adapter.get_downloader).parameters)
    assert params[:3] == ["remote_dir", "cache_dir", "chunks"]


def test_the_index_and_chunks_litdata_writes_are_what_the_checks_expect(small_stream):
    info = stream.read_info(str(small_stream))
    for split in stream.SPLITS:  # the format checks accept LitData's own writing, unchanged
        chunks = stream.check_split_files(str(small_stream), split, info)
        assert sum(chunk["chunk_size"] for chunk in chunks) == info.sizes[split]
        assert json.loads((small_stream / split / stream.INDEX_NAME).read_text())["config"]["data_format"] == [
            "bytes", "int"
        ]  # fmt: skip


@pytest.mark.parametrize("workers", [0, 2])
def test_the_shares_litdata_plans_are_the_ones_it_serves(small_stream, workers):
    info = stream.read_info(str(small_stream))
    dataset = stream.open_split(str(small_stream), "train", info, shuffle=True, seed=3)
    assert litdata_adapter.stored_images(dataset) == info.sizes["train"] == 160
    shares, world_size, rank = litdata_adapter.worker_shares(dataset, max(1, workers))
    assert (world_size, rank) == (1, 0) and sum(shares) == 160 and len(shares) == max(1, workers)
    url, path = litdata_adapter.location(dataset)
    assert url is None and Path(path) == small_stream / "train"
    loader = stream_loader.loader(dataset, info.shape, 16, workers, False)
    seen = torch.cat([y for _, y in loader])  # each worker checks its share against the plan (worker_share)
    assert len(seen) == 160


def open_chunk_files(folder: Path) -> int:
    """How many of LitData's chunk files in ``folder`` this process holds open."""
    names = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            names.append(os.readlink(fd))
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return sum(name.startswith(str(folder)) and name.endswith(".bin") for name in names)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_closing_the_open_chunk_releases_its_file(small_stream):
    info = stream.read_info(str(small_stream))
    dataset = stream.open_split(str(small_stream), "val", info)
    items = iter(dataset)
    next(items)  # a reader with a chunk open
    assert open_chunk_files(small_stream / "val") == 1
    litdata_adapter.close_open_chunk(dataset)
    assert open_chunk_files(small_stream / "val") == 0

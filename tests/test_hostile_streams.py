"""A prepared stream is data, never code, and `prepare` never removes what is not a stream.

Every split's ``index.json`` must say exactly what `cifarlit prepare` writes before LitData reads it: LitData would
otherwise pick each field's decoder from it (``pickle`` unpickles), import the module its ``data_spec`` names, or
join chunk names that leave the split's folder. The crafted payloads below are live (LitData alone runs them:
``test_the_crafted_payloads_are_live``), and each crafted index goes to every reader of a stream: the DataModule on
a folder and on object storage (LitData's ``local:`` store), ``prepare``'s check of an existing output, and
fit/validate/test/predict. Chunks that are missing, cut short, of another image shape or not files end in one
sentence, and ``prepare --output`` that is, holds or lies inside the dataset, or is anything but a stream, is
refused with every byte left where it was.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cifarlit.cli import cli_main
from cifarlit.commands import prepare as prepare_module
from cifarlit.data import litdata_adapter, stream
from cifarlit.data.datamodule import CIFAR10DataModule
from cifarlit.data.sources import DataError
from conftest import write_pickle_cifar
from helpers import REPO, RunsCode

DEFAULT = str(REPO / "configs" / "default.yaml")


def prepare(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prepare", *args])
    return exit_info.value.code


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """CIFAR-10's pickle layout with 6 training images a class: 48 train / 12 val / 20 test images."""
    return write_pickle_cifar(tmp_path_factory.mktemp("small"), per_class_train=6, per_class_test=2)


@pytest.fixture(scope="module")
def good_stream(small_data, tmp_path_factory) -> Path:
    """The one stream prepared for this module; each test changes a copy of it."""
    out = tmp_path_factory.mktemp("good") / "stream"
    assert prepare("--data.data_dir", str(small_data), "--output", str(out), "--num_workers", "1") == 0
    return out


@pytest.fixture
def copy(good_stream, tmp_path) -> Path:
    return Path(shutil.copytree(good_stream, tmp_path / "stream"))


# --- crafted indexes: LitData's chunk layout, written by hand ----------------------------------------------------


def chunk_file(items: list[list[bytes]]) -> bytes:
    """LitData's chunk: a uint32 item count, uint32 offsets (count + 1), then per item a uint32 size per field and
    the fields."""
    bodies = [struct.pack(f"<{len(fields)}I", *map(len, fields)) + b"".join(fields) for fields in items]
    offsets = np.cumsum([4 * (len(items) + 2)] + [len(body) for body in bodies])
    return struct.pack(f"<{len(items) + 2}I", len(items), *offsets) + b"".join(bodies)


def label(value: int) -> bytes:
    return np.int64(value).tobytes()


def image(shape=(3, 32, 32)) -> bytes:
    return bytes(int(np.prod(shape)))


def put_chunk(folder: Path, index: dict, items: list[list[bytes]]) -> None:
    """Replace the split's chunks with one chunk of ``items``."""
    for old in folder.glob("chunk-*.bin"):
        old.unlink()
    data = chunk_file(items)
    (folder / "chunk-0-0.bin").write_bytes(data)
    index["chunks"] = [{"chunk_bytes": len(data), "chunk_size": len(items), "dim": None, "filename": "chunk-0-0.bin"}]


class Payload:
    """What a crafted split may do: unpickle ``code`` (which touches ``marker``) or import ``module``."""

    def __init__(self, root: Path) -> None:
        self.marker = root / "code-ran"
        self.code = pickle.dumps(RunsCode(self.marker))
        self.module = f"cifarlit_payload_{uuid.uuid4().hex}"
        (root / "modules").mkdir(exist_ok=True)
        (root / "modules" / f"{self.module}.py").write_text(
            f"import pathlib\npathlib.Path({str(self.marker)!r}).touch()\nfactory = dict\n"
        )

    def ran(self) -> bool:
        return self.marker.exists() or self.module in sys.modules


LEAF = {"type": None, "context": None, "children_spec": []}


def pickled_items(index, folder, p):
    index["config"]["data_format"] = ["pickle", "int"]
    put_chunk(folder, index, [[p.code, label(0)]] * 4)


def pickled_labels(index, folder, p):
    index["config"]["data_format"] = ["bytes", "pickle"]
    put_chunk(folder, index, [[image(), p.code]] * 4)


def pickle_as_a_subtype(index, folder, p):
    index["config"]["data_format"] = ["bytes:pickle", "int"]
    put_chunk(folder, index, [[p.code, label(0)]] * 4)


def module_in_data_spec(index, folder, p):
    context = {"default_factory_module": p.module, "default_factory_name": "factory", "dict_context": [0, 1]}
    index["config"]["data_spec"] = json.dumps([1, {"type": "collections.defaultdict", "context": context,
                                                   "children_spec": [LEAF, LEAF]}])  # fmt: skip


def an_image_decoder(index, folder, p):
    index["config"]["data_format"] = ["pil", "int"]  # hands the bytes to Pillow


def three_formats(index, folder, p):
    index["config"]["data_format"] = ["bytes", "int", "pickle"]


def one_format(index, folder, p):
    index["config"]["data_format"] = ["bytes"]


def an_extra_field(index, folder, p):
    index["config"]["serializers"] = {"bytes": "pickle"}


def compressed(index, folder, p):
    index["config"]["compression"] = "zstd"


def chunk_above_the_split(index, folder, p):
    index["chunks"][0]["filename"] = "../../outside.bin"


def chunk_at_an_absolute_path(index, folder, p):
    index["chunks"][0]["filename"] = "/etc/hostname"


def chunk_in_a_subfolder(index, folder, p):
    index["chunks"][0]["filename"] = "sub/chunk-0-0.bin"


def a_cache_folder_above_the_cache(index, folder, p):
    index["updated_at"] = "../../outside"  # LitData would make this split's cache folder beside its cache


def a_cache_folder_at_an_absolute_path(index, folder, p):
    index["updated_at"] = str(folder.parent.parent / "outside")


def a_count_as_text(index, folder, p):
    index["chunks"][0]["chunk_size"] = str(index["chunks"][0]["chunk_size"])


def chunks_as_a_mapping(index, folder, p):
    index["chunks"] = index["chunks"][0]


def a_list(index, folder, p):
    return [index]


def not_json(index, folder, p):
    return "{'chunks': [chunk-0-0.bin]"


PAYLOADS = [pickled_items, pickled_labels, pickle_as_a_subtype, module_in_data_spec]
CRAFTED = [
    *PAYLOADS, an_image_decoder, three_formats, one_format, an_extra_field, compressed, chunk_above_the_split,
    chunk_at_an_absolute_path, chunk_in_a_subfolder, a_cache_folder_above_the_cache,
    a_cache_folder_at_an_absolute_path, a_count_as_text, chunks_as_a_mapping, a_list, not_json,
]  # fmt: skip


def craft(stream_dir: Path, variant: Callable, payload: Payload, split: str) -> None:
    """Apply ``variant`` to ``split``'s index.json (and chunks) of ``stream_dir``."""
    folder = stream_dir / split
    index = json.loads((folder / "index.json").read_text())
    result = variant(index, folder, payload)
    result = index if result is None else result
    (folder / "index.json").write_text(result if isinstance(result, str) else json.dumps(result))


def split_of(variant: Callable) -> str:
    """Each variant goes to another split, so that every split's index is shown to be checked."""
    return stream.SPLITS[CRAFTED.index(variant) % len(stream.SPLITS)]


@pytest.fixture
def payload(tmp_path, monkeypatch) -> Payload:
    p = Payload(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))  # importable, as a module in the working directory is
    yield p
    sys.modules.pop(p.module, None)


@pytest.fixture
def litdata_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(*litdata_adapter.CACHE_DIR_SETTING, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("variant", PAYLOADS, ids=lambda v: v.__name__)
def test_the_crafted_payloads_are_live(variant, copy, payload):
    from litdata import StreamingDataset

    craft(copy, variant, payload, "val")
    StreamingDataset(str(copy / "val"))[0]  # LitData alone, given the split: the payload runs
    assert payload.ran()


@pytest.mark.parametrize("reader", ["folder", "object storage", "prepare"])
@pytest.mark.parametrize("variant", CRAFTED, ids=lambda v: v.__name__)
def test_a_crafted_index_is_refused_before_litdata_reads_it(variant, reader, copy, payload, small_data,
                                                            litdata_cache, capsys):  # fmt: skip
    split = split_of(variant)
    craft(copy, variant, payload, split)
    if reader == "prepare":  # an existing output is checked before "nothing to do"
        assert prepare("--data.data_dir", str(small_data), "--output", str(copy)) == 2
        assert "holds a stream of another split (or a damaged one)" in one_error_line(capsys)
        assert not prepare_module._up_to_date(copy, stream.read_info(str(copy)).split_fingerprint, 1)
    else:
        location = f"local:{copy}" if reader == "object storage" else str(copy)
        with pytest.raises(DataError, match=rf"{split}/index\.json .*not what `cifarlit prepare` writes"):
            CIFAR10DataModule(stream=location).setup("fit")
    assert not payload.ran()
    assert {p.name for p in copy.parent.iterdir()} <= {"stream", "cache", "modules"}  # nothing written outside


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_every_subcommand_refuses_a_crafted_stream_in_one_sentence(subcommand, copy, payload, own_run, tmp_path,
                                                                   monkeypatch, capsys):  # fmt: skip
    variant = PAYLOADS[["fit", "validate", "test", "predict"].index(subcommand)]
    craft(copy, variant, payload, "test")  # the last split opened: the other two are read first
    monkeypatch.chdir(tmp_path)
    ckpt = [] if subcommand == "fit" else ["--ckpt_path", str(own_run.ckpt)]
    with pytest.raises(SystemExit) as exit_info:
        cli_main([subcommand, "-c", DEFAULT, "--data.stream", str(copy), "--trainer.max_epochs", "1", *ckpt])
    assert exit_info.value.code == 2
    assert "test/index.json" in one_error_line(capsys)
    assert not payload.ran()
    assert not list(tmp_path.rglob("*.csv")) and not list(tmp_path.rglob("*.ckpt"))


# --- damaged chunks --------------------------------------------------------------------------------------------


def missing(folder: Path, index: dict) -> None:
    (folder / "chunk-0-0.bin").unlink()


def truncated(folder: Path, index: dict) -> None:
    path = folder / "chunk-0-0.bin"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def cut_to_its_count(folder: Path, index: dict) -> None:
    path = folder / "chunk-0-0.bin"
    path.write_bytes(path.read_bytes()[:4])
    index["chunks"][0]["chunk_bytes"] = 4  # the index agrees: the layout does not


def another_shape(folder: Path, index: dict) -> None:
    """A chunk of 16x16 images, its index consistent with it: only cifarlit-stream.json's shape disagrees."""
    put_chunk(folder, index, [[image((3, 16, 16)), label(i % 10)] for i in range(index["chunks"][0]["chunk_size"])])


def a_pipe(folder: Path, index: dict) -> None:
    (folder / "chunk-0-0.bin").unlink()
    os.mkfifo(folder / "chunk-0-0.bin")  # LitData would wait on it forever


def a_folder(folder: Path, index: dict) -> None:
    (folder / "chunk-0-0.bin").unlink()
    (folder / "chunk-0-0.bin").mkdir()


DAMAGED = [missing, truncated, cut_to_its_count, another_shape, a_pipe, a_folder]


def damage(stream_dir: Path, variant: Callable, split: str) -> None:
    index = json.loads((stream_dir / split / "index.json").read_text())
    variant(stream_dir / split, index)
    (stream_dir / split / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("variant", DAMAGED, ids=lambda v: v.__name__)
def test_a_damaged_chunk_is_refused_in_one_sentence(variant, copy, small_data, capsys):
    split = stream.SPLITS[DAMAGED.index(variant) % len(stream.SPLITS)]
    damage(copy, variant, split)
    with pytest.raises(DataError, match=rf"data.stream='{copy}': {split}: chunk-0-0.bin .*the stream is damaged"):
        CIFAR10DataModule(stream=str(copy)).setup("fit")
    assert prepare("--data.data_dir", str(small_data), "--output", str(copy)) == 2  # not "nothing to do"
    assert "damaged" in one_error_line(capsys)


def test_a_damaged_chunk_ends_a_fit_in_one_sentence(copy, tmp_path, monkeypatch, capsys):
    damage(copy, truncated, "train")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "-c", DEFAULT, "--data.stream", str(copy), "--trainer.max_epochs", "1"])
    assert exit_info.value.code == 2
    assert "train: chunk-0-0.bin holds" in one_error_line(capsys)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_chunk_of_another_shape_in_object_storage_ends_in_one_sentence(workers, copy, litdata_cache):
    """Object storage's chunks arrive only while training reads them; a worker's error comes back as one line."""
    damage(copy, another_shape, "train")
    dm = CIFAR10DataModule(stream=f"local:{copy}", num_workers=workers, batch_size=16)
    dm.setup("fit")
    with pytest.raises(DataError) as error:
        next(iter(dm.train_dataloader()))
    message = str(error.value)
    assert "\n" not in message and f"local:{copy}/train cannot be read" in message
    assert "not of the shape [3, 32, 32]" in message


# --- prepare --overwrite never removes the dataset, or anything that is not a stream ------------------------------


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root``: a file's bytes, a link's target, or "folder"."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            found[key] = "folder"
        else:
            found[key] = path.read_bytes()
    return found


def is_data_dir(tmp, data):
    return data, data


def holds_data_dir(tmp, data):
    return data, data.parent


def inside_data_dir(tmp, data):
    return data, data / "stream"


def links_to_data_dir(tmp, data):
    (tmp / "link").symlink_to(data)
    return data, tmp / "link"


def inside_data_dir_through_a_link(tmp, data):
    (tmp / "link").symlink_to(data)
    return data, tmp / "link" / "cifar-10-batches-py"


def data_dir_links_to_it(tmp, data):
    (tmp / "link").symlink_to(data)
    return tmp / "link", data


def a_folder_of_user_files(tmp, data):
    (tmp / "work" / "train").mkdir(parents=True)
    (tmp / "work" / "notes.txt").write_text("mine")
    (tmp / "work" / "train" / "index.json").write_text("{}")  # looks like a split: still not a stream
    return data, tmp / "work"


def a_broken_stream_description(tmp, data):
    (tmp / "work").mkdir()
    (tmp / "work" / stream.META_NAME).write_text('{"format": "cifarlit-stream"')
    (tmp / "work" / "thesis.tex").write_text("mine")
    return data, tmp / "work"


def a_file(tmp, data):
    (tmp / "notes.txt").write_text("mine")
    return data, tmp / "notes.txt"


def a_link_to_a_stream(tmp, data):
    (tmp / "elsewhere").symlink_to(tmp / "kept", target_is_directory=True)
    return data, tmp / "elsewhere"


def home(tmp, data):
    (tmp / "home" / ".ssh").mkdir(parents=True)
    (tmp / "home" / ".ssh" / "id_ed25519").write_text("secret")
    (tmp / "home" / ".bashrc").write_text("export A=1")
    return data, Path("~")


OUTPUTS = [is_data_dir, holds_data_dir, inside_data_dir, links_to_data_dir, inside_data_dir_through_a_link,
           data_dir_links_to_it, a_folder_of_user_files, a_broken_stream_description, a_file, a_link_to_a_stream,
           home]  # fmt: skip


@pytest.mark.parametrize("variant", OUTPUTS, ids=lambda v: v.__name__)
def test_prepare_overwrite_removes_nothing_but_a_stream(variant, small_data, good_stream, tmp_path, monkeypatch,
                                                        capsys):  # fmt: skip
    root = tmp_path / "root"
    data = Path(shutil.copytree(small_data, root / "datasets" / "cifar"))
    kept = Path(shutil.copytree(good_stream, root / "kept"))  # a stream elsewhere, for the link that points at it
    meta = json.loads((kept / stream.META_NAME).read_text())
    (kept / stream.META_NAME).write_text(json.dumps({**meta, "split_fingerprint": "another"}))  # not up to date
    monkeypatch.setenv("HOME", str(root / "home"))
    monkeypatch.chdir(root)
    data_arg, output = variant(root, data)
    before = snapshot(root)
    for overwrite in ([], ["--overwrite"]):
        assert prepare("--data.data_dir", str(data_arg), "--output", str(output), *overwrite) == 2
        assert "--output" in one_error_line(capsys)
    assert snapshot(root) == before  # nothing removed, nothing written, no partial stream left


def test_prepare_overwrite_replaces_a_stream_and_fills_an_empty_folder(small_data, good_stream, tmp_path, capsys):
    old = Path(shutil.copytree(good_stream, tmp_path / "old"))
    meta = json.loads((old / stream.META_NAME).read_text())
    (old / stream.META_NAME).write_text(json.dumps({**meta, "split_fingerprint": "another"}))
    assert prepare("--data.data_dir", str(small_data), "--output", str(old)) == 2  # a stream: only on request
    assert "pass --overwrite" in one_error_line(capsys)
    assert prepare("--data.data_dir", str(small_data), "--output", str(old), "--overwrite") == 0
    assert stream.read_info(str(old)).split_fingerprint == meta["split_fingerprint"]
    (tmp_path / "empty").mkdir()
    assert prepare("--data.data_dir", str(small_data), "--output", str(tmp_path / "empty")) == 0
    CIFAR10DataModule(stream=str(tmp_path / "empty")).setup("fit")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "old"]  # no partial or replaced copy left


# --- labels: a chunk's labels must name the stream's classes --------------------------------------------------


@pytest.mark.parametrize("bad", ["negative", "the class count", "huge"])
@pytest.mark.parametrize("split", stream.SPLITS)
def test_a_streamed_label_outside_the_classes_is_refused_in_one_sentence(bad, split, copy):
    """A chunk whose index and layout are consistent, but one label is not a class of cifarlit-stream.json: the
    loss would index past its classes (a device-side assert on a GPU); each loader refuses the batch instead."""
    meta = json.loads((copy / stream.META_NAME).read_text())
    classes, shape = len(meta["classes"]), tuple(meta["shape"])
    value = {"negative": -1, "the class count": classes, "huge": 2**40}[bad]

    def wrong_label(folder: Path, index: dict) -> None:
        count = index["chunks"][0]["chunk_size"]
        put_chunk(
            folder, index, [[image(shape), label(value if i == count - 1 else i % classes)] for i in range(count)]
        )

    damage(copy, wrong_label, split)
    dm = CIFAR10DataModule(stream=str(copy), batch_size=4)
    dm.setup("fit" if split != "test" else "test")
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    with pytest.raises(DataError) as error:
        list(loader)
    message = str(error.value)
    assert "\n" not in message and f"a streamed label is {value}, outside 0..{classes - 1}" in message

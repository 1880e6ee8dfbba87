"""Hostile dataset files, generated here, fed to every path that reads their kind: `fit` (the DataModule's
prepare_data and setup), `explore`, `prepare` (its listing and the decode jobs its workers run) and
`predict --data.predict_dir`, plus ``images.decode`` on a file object (what a server would call).

None of them runs another program, writes outside its folder, hangs or gives a traceback: each archive,
image, cache, batch file or name below is refused in one sentence naming it, left out with one line, or rebuilt
with one warning. One command-line call per class checks the sentence and exit status 2 end to end.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image, UnidentifiedImageError

from cifarlit.cli import cli_main, run_command
from cifarlit.commands import prepare
from cifarlit.data import archive as cifar_archive
from cifarlit.data import cache as decode_cache
from cifarlit.data import images, sources
from cifarlit.data.datamodule import CIFAR10DataModule
from cifarlit.data.sources import DataError
from cifarlit.training.trainer import CifarTrainer
from conftest import write_image_folder
from helpers import REPO

DEFAULT = str(REPO / "configs" / "default.yaml")
SIZE = 8  # the tiny folders' images, read at this size so nothing is resized


# --- the paths that read a dataset --------------------------------------------------------------------------------


def tiny_folder(root: Path, size: int = SIZE) -> Path:
    """``root/{train,test}/{a,b}/NNNN.png``: 3 training and 1 test image a class, which every reader accepts."""
    return write_image_folder(root, classes=("a", "b"), per_class_train=3, per_class_test=1, size=size)


def read_fit(root: Path, image_size: int = SIZE, channels: int = 3, val_size: int = 2, **options) -> int:
    """What `cifarlit fit` reads: the DataModule's prepare_data and setup. Returns the images it holds."""
    dm = CIFAR10DataModule(str(root), download=False, val_size=val_size, image_size=image_size, channels=channels,
                           **options)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    return len(dm.train_set) + len(dm.val_set) + len(dm.test_set)


def read_explore(root: Path, image_size: int = SIZE, channels: int = 3, val_size: int = 2, **options) -> int:
    """`cifarlit explore`, without a grid: returns the images it describes."""
    dm = CIFAR10DataModule(str(root), download=False, val_size=val_size, image_size=image_size, channels=channels,
                           **options)  # fmt: skip
    trainer = CifarTrainer(logger=False, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
    return sum(split["samples"] for split in trainer.explore(None, dm, samples_per_class=0).values())


def read_prepare(root: Path, image_size: int = SIZE, channels: int = 3) -> int:
    """What `cifarlit prepare` reads: its listing, then every decode job as its LitData workers run them (without
    LitData, which the end-to-end tests run). Returns the images the jobs give."""
    sources.ensure_available(root, download=False)
    listing = prepare.list_dataset(root, image_size, channels)
    jobs = prepare._jobs(listing, np.arange(len(listing.train_labels)))
    if listing.test_labels is not None:
        jobs += prepare._jobs(listing, np.arange(len(listing.test_labels)), test=True)
    with tempfile.TemporaryDirectory() as unreadable:
        reader = prepare._Reader(jobs, unreadable, listing.shape)
        count = sum(len(list(reader(job))) for job in range(len(jobs)))
        prepare._refuse_unreadable(Path(unreadable), root)
    return count


def read_predict(folder: Path, image_size: int = SIZE, channels: int = 3, classes=("a", "b"), **options) -> int:
    """`cifarlit predict --data.predict_dir folder` with a checkpoint trained at ``image_size``: returns the images."""
    dm = CIFAR10DataModule(predict_dir=str(folder), **options)
    dm.setup("predict")
    dm.load_state_dict({"mean": torch.zeros(channels), "std": torch.ones(channels), "classes": list(classes),
                        "image_shape": [channels, image_size, image_size]})  # fmt: skip
    dm.predict_dataloader()
    return len(dm.predict_set)


# Each reader of an image folder, given the dataset's root (predict reads the flat folder root/train/a), and
# how many of a tiny folder's images it gives when one entry of train/a is left out.
FOLDER_READERS = {
    "fit": (read_fit, 8),
    "explore": (read_explore, 8),
    "prepare": (read_prepare, 8),
    "predict": (lambda root, **kw: read_predict(root / "train" / "a", **kw), 3),
}


def refusal(run, *args, **kwargs) -> str:
    """``run(...)``'s DataError message, which must be one sentence."""
    with pytest.raises(DataError) as err:
        run(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message and message.endswith("."), message
    return message


def cli(capsys, *args: str) -> tuple[int, str]:
    """`cifarlit ARGS` in this process: its exit status and its stderr."""
    sys.argv = ["cifarlit"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(list(args))
    return exit_info.value.code, capsys.readouterr().err


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and lines[-1].startswith("error: "), stderr
    return lines[-1]


# --- 4. an archive in data_dir writes nothing outside it ----------------------------------------------------------


P = sources.PICKLE_DIR
BIG = 150 * 2**20  # what the bomb and the lying header unpack to: a 1 MB archive must not become this


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def _stream_member(path: Path, name: str, declared: int, content: bytes, times: int) -> None:
    """A .tar.gz with one member whose header says ``declared`` bytes, followed by ``content * times``."""
    info = tarfile.TarInfo(f"{P}/{name}")
    info.size = declared
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(info.tobuf(tarfile.GNU_FORMAT))
        for _ in range(times):
            f.write(content)
        f.write(b"\0" * (512 - (len(content) * times) % 512 if (len(content) * times) % 512 else 0))
        f.write(b"\0" * 1024)


def hostile_archive(variant: str, path: Path) -> None:
    """Write ``path``, a cifar-10-python.tar.gz crafted as ``variant``; the ones that escape aim at the parent of
    the folder that holds it (``pwned``, or the contents of ``sentinel.txt``)."""
    if variant == "gzip-bomb":  # 150 MB of zeros in a file the header declares truly: ~150 kB compressed
        return _stream_member(path, "data_batch_1", BIG, b"\0" * 2**20, BIG // 2**20)
    if variant == "lying-header":  # the header says 1 kB, 150 MB follow
        return _stream_member(path, "data_batch_1", 1024, b"A" * 2**20, BIG // 2**20)
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, P, type=tarfile.DIRTYPE, mode=0o755)
        if variant == "symlink-chain":  # each link stays inside on its own; together they lead out (CVE-2025-4517)
            _add(tar, f"{P}/l1", type=tarfile.SYMTYPE, linkname=".")
            _add(tar, f"{P}/l2", type=tarfile.SYMTYPE, linkname="l1/../..")
            _add(tar, f"{P}/l2/pwned", b"written through the links")
        elif variant == "hardlink":  # a link to the file outside, then a write through it
            _add(tar, f"{P}/readme.html", type=tarfile.LNKTYPE, linkname="../sentinel.txt")
            _add(tar, f"{P}/readme.html", b"overwritten")
        elif variant == "absolute-path":
            _add(tar, str(path.parent.parent / "pwned"), b"written by absolute name")
        elif variant == "dotdot-path":
            _add(tar, f"{P}/../../pwned", b"written by ..")
        elif variant == "device":
            _add(tar, f"{P}/data_batch_1", type=tarfile.CHRTYPE, devmajor=1, devminor=5)  # /dev/zero
        elif variant == "fifo":  # a batch file that would block its reader forever
            _add(tar, f"{P}/data_batch_1", type=tarfile.FIFOTYPE)
        elif variant == "too-many-entries":
            for i in range(cifar_archive.ARCHIVE_MAX_MEMBERS + 1):
                _add(tar, f"{P}/f{i}", b"")
        else:
            raise ValueError(variant)


ESCAPING = ["symlink-chain", "hardlink", "absolute-path", "dotdot-path"]
ARCHIVES = [*ESCAPING, "device", "fifo", "gzip-bomb", "lying-header", "too-many-entries"]


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """The two archives of 150 MB, compressed once (a second each); the other variants are written per test."""
    base = tmp_path_factory.mktemp("bombs")
    for variant in ("gzip-bomb", "lying-header"):
        hostile_archive(variant, base / variant)
    return {variant: base / variant for variant in ("gzip-bomb", "lying-header")}


def data_dir_with(variant: str, tmp_path: Path, bombs: dict[str, Path]) -> Path:
    """``tmp_path/parent/data`` holding the ``variant`` archive, next to ``parent/sentinel.txt``."""
    root = tmp_path / "parent" / "data"
    root.mkdir(parents=True)
    if variant in bombs:
        shutil.copy(bombs[variant], root / cifar_archive.ARCHIVE)
    else:
        hostile_archive(variant, root / cifar_archive.ARCHIVE)
    (root.parent / "sentinel.txt").write_text("keep")
    return root


def assert_nothing_unpacked(root: Path) -> None:
    assert sorted(p.name for p in root.parent.iterdir()) == ["data", "sentinel.txt"]  # nothing written outside
    assert (root.parent / "sentinel.txt").read_text() == "keep"
    assert [p.name for p in root.iterdir()] == [cifar_archive.ARCHIVE]  # no dataset, no leftover


@pytest.mark.parametrize("variant", ESCAPING + ["device", "fifo"])
def test_the_archive_payloads_are_live(variant, bombs, tmp_path):
    """Unpacked as tarfile does without a filter, each one writes outside its folder or creates a file that is
    not a regular file: what cifarlit refuses below is a real attack."""
    if variant == "device" and os.geteuid() != 0:
        pytest.skip("only root may create a device file")
    root = data_dir_with(variant, tmp_path, bombs)
    with tarfile.open(root / cifar_archive.ARCHIVE) as tar:
        tar.extractall(root, filter="fully_trusted")
    if variant in ESCAPING:
        assert (root.parent / "pwned").exists() or (root.parent / "sentinel.txt").read_text() != "keep"
    else:
        assert not (root / P / "data_batch_1").is_file() and os.path.lexists(root / P / "data_batch_1")


def test_the_bombs_are_small_archives_that_unpack_to_150_mb(bombs):
    for path in bombs.values():
        assert path.stat().st_size < 2**20
        with gzip.open(path) as f:
            assert sum(len(block) for block in iter(lambda: f.read(2**24), b"")) > BIG  # noqa: B023


WHY_NOT_UNPACKED = {
    "symlink-chain": f"its entry '{P}/l1' is a link to '.', not a file or folder",
    "hardlink": f"its entry '{P}/readme.html' is a link to '../sentinel.txt'",
    "absolute-path": "its entry '/",
    "dotdot-path": f"its entry '{P}/../../pwned' points outside the folder it is unpacked into",
    "device": f"its entry '{P}/data_batch_1' is a character device",
    "fifo": f"its entry '{P}/data_batch_1' is a FIFO",
    "gzip-bomb": "it unpacks to more than 3.",  # 4 times its ~650 kB + 1 MB: counted as it unpacks
    "lying-header": "it has data after its last entry (a header that lies about a size)",
    "too-many-entries": f"it holds more than {cifar_archive.ARCHIVE_MAX_MEMBERS} entries",
}
ARCHIVE_READERS = {  # CIFAR-10's 10 classes: a validation split of 20
    "fit": lambda root, tmp: read_fit(root, val_size=20),
    "explore": lambda root, tmp: read_explore(root, val_size=20),
    "prepare": lambda root, tmp: prepare.prepare(root, tmp / "stream", num_workers=1),
}


def trust(archive: Path, monkeypatch) -> None:
    """Take ``archive``'s md5 for the release's, to reach the checks that follow the md5's."""
    monkeypatch.setattr(cifar_archive, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())


@pytest.mark.parametrize("reader", ARCHIVE_READERS)
@pytest.mark.parametrize("variant", ARCHIVES)
def test_a_hostile_archive_with_the_release_md5_is_refused_and_writes_nothing(variant, reader, bombs, tmp_path,
                                                                              monkeypatch):  # fmt: skip
    root = data_dir_with(variant, tmp_path, bombs)
    trust(root / cifar_archive.ARCHIVE, monkeypatch)
    message = refusal(ARCHIVE_READERS[reader], root, tmp_path)
    assert message.startswith(f"{root / cifar_archive.ARCHIVE} was not unpacked: {WHY_NOT_UNPACKED[variant]}")
    assert "delete it so it is downloaded again" in message
    assert_nothing_unpacked(root)
    assert not (tmp_path / "stream").exists()


@pytest.mark.parametrize("variant", ARCHIVES)
def test_a_hostile_archive_is_refused_by_its_md5_first(variant, bombs, tmp_path):
    root = data_dir_with(variant, tmp_path, bombs)
    message = refusal(read_fit, root)
    assert message.startswith(f"{root / cifar_archive.ARCHIVE} is not CIFAR-10's release (its md5 is ")
    assert_nothing_unpacked(root)


@pytest.mark.parametrize("entry", ["fifo", "link-to-nothing"])
@pytest.mark.parametrize("reader", ARCHIVE_READERS)
def test_an_archive_name_that_is_not_a_file_is_neither_read_nor_downloaded_into(entry, reader, tmp_path):
    root = tmp_path / "parent" / "data"
    root.mkdir(parents=True)
    (root.parent / "sentinel.txt").write_text("keep")
    if entry == "fifo":
        os.mkfifo(root / cifar_archive.ARCHIVE)  # reading it, or downloading into it, would wait forever
    else:
        os.symlink(tmp_path / "moved-away.tar.gz", root / cifar_archive.ARCHIVE)
    message = refusal(ARCHIVE_READERS[reader], root, tmp_path)
    assert message.startswith(f"{root / cifar_archive.ARCHIVE} is not a regular file, so it was neither read nor")
    assert_nothing_unpacked(root)


def write_archive(pickle_root: Path, root: Path) -> Path:
    root.mkdir(parents=True)
    with tarfile.open(root / cifar_archive.ARCHIVE, "w:gz") as tar:
        tar.add(pickle_root / P, arcname=P)
    (root.parent / "sentinel.txt").write_text("keep")
    return root


@pytest.mark.parametrize("reader", ARCHIVE_READERS)
def test_a_repacked_archive_is_refused_by_md5_with_the_way_to_use_it(reader, pickle_root, tmp_path, monkeypatch):
    root = write_archive(pickle_root, tmp_path / "parent" / "data")
    message = refusal(ARCHIVE_READERS[reader], root, tmp_path)
    digest = hashlib.md5((root / cifar_archive.ARCHIVE).read_bytes()).hexdigest()
    assert f"(its md5 is {digest}, the release's {cifar_archive.CIFAR10_MD5})" in message
    assert f"unpack it yourself and put its '{P}' folder in {root}" in message
    assert_nothing_unpacked(root)
    trust(root / cifar_archive.ARCHIVE, monkeypatch)  # the same archive with the release's md5 unpacks and trains
    assert ARCHIVE_READERS[reader](root, tmp_path) is not None
    assert sorted(p.name for p in root.iterdir()) == sorted([cifar_archive.ARCHIVE, P])


def test_a_hostile_archive_is_one_sentence_on_the_command_line(tmp_path, monkeypatch, capsys):
    root = data_dir_with("symlink-chain", tmp_path, {})
    monkeypatch.chdir(tmp_path)
    for command in ("fit", "prepare"):
        args = ["--output", str(tmp_path / "stream")] if command == "prepare" else ["-c", DEFAULT]
        code, stderr = cli(capsys, command, *args, "--data.data_dir", str(root))
        assert code == 2
        assert "is not CIFAR-10's release" in one_error_line(stderr)
    assert_nothing_unpacked(root)


# --- 5. no image is handed to another program ---------------------------------------------------------------------


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\nnewpath 0 0 moveto 8 8 lineto stroke\n%%EOF\n"


def dos_eps() -> bytes:
    """EPS behind the binary header of DOS EPS files (magic, offset and length of the PostScript, no previews)."""
    return struct.pack("<4sIIIIIIH", b"\xc5\xd0\xd3\xc6", 30, len(EPS), 0, 0, 0, 0, 0xFFFF) + EPS


def saved_as(format: str, **params) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (200, 30, 30)).save(buf, format, **params)
    return buf.getvalue()


# name in the class folder -> its bytes: PostScript that Pillow's EPS plugin would hand to Ghostscript, formats
# no plugin of Pillow reads, and raster formats it does read but which are not PNG, JPEG, BMP or WebP
HOSTILE_IMAGES = {
    "eps-named-png": ("x.png", lambda: EPS),
    "ps-named-jpg": ("x.jpg", lambda: EPS.replace(b" EPSF-3.0", b"")),
    "dos-eps-named-webp": ("x.webp", dos_eps),
    "eps-named-bmp": ("x.bmp", lambda: EPS),
    "pdf-named-png": ("x.png", lambda: saved_as("PDF")),
    "svg-named-png": ("x.png", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'),
    "tiff-named-png": ("x.png", lambda: saved_as("TIFF")),
    "ico-named-jpeg": ("x.jpeg", lambda: saved_as("ICO", sizes=[(SIZE, SIZE)])),
}
POSTSCRIPT = ["eps-named-png", "ps-named-jpg", "dos-eps-named-webp", "eps-named-bmp"]


@pytest.fixture
def ghostscript(tmp_path, monkeypatch) -> SimpleNamespace:
    """A `gs` first on PATH that leaves ``marker`` when it runs (in this process or any it starts), found afresh
    by Pillow; ``started`` records every program this process starts."""
    marker = tmp_path / "ghostscript-ran"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "gs").write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
    (tmp_path / "bin" / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # look for gs again, on this PATH
    started = []
    real = subprocess.Popen

    class Recorded(real):
        def __init__(self, args, *rest, **kwargs):
            started.append(args)
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Recorded)
    return SimpleNamespace(marker=marker, started=started)


@pytest.mark.parametrize("variant", POSTSCRIPT)
def test_the_postscript_payloads_are_live(variant, ghostscript, tmp_path):
    """Opened by Pillow without a list of formats, each runs the `gs` on PATH: what the readers must never do."""
    name, payload = HOSTILE_IMAGES[variant]
    (tmp_path / name).write_bytes(payload())
    with Image.open(tmp_path / name) as im, contextlib.suppress(Exception):  # our gs draws nothing: loading fails
        im.load()
    assert ghostscript.marker.exists() and ghostscript.started


@pytest.mark.parametrize("reader", FOLDER_READERS)
@pytest.mark.parametrize("variant", HOSTILE_IMAGES)
def test_an_image_no_listed_format_reads_runs_nothing_and_is_unreadable(variant, reader, ghostscript, tmp_path):
    root = tiny_folder(tmp_path / "data")
    name, payload = HOSTILE_IMAGES[variant]
    (root / "train" / "a" / name).write_bytes(payload())
    read, count = FOLDER_READERS[reader]
    message = refusal(read, root)
    shown = name if reader == "predict" else f"train/a/{name}"
    assert message.startswith("cannot read 1 image file in ") and f": {shown} (UnidentifiedImageError)" in message
    assert "read as PNG, JPEG, BMP or WebP only" in message
    if reader != "prepare":  # prepare has no skip_unreadable: it refuses
        assert read(root, skip_unreadable=True) == count  # all the folder's images but the hostile one
    assert not ghostscript.marker.exists() and ghostscript.started == []


@pytest.mark.parametrize("variant", HOSTILE_IMAGES)
def test_decode_of_a_file_object_reads_the_listed_formats_only(variant, ghostscript, folder_root):
    _, payload = HOSTILE_IMAGES[variant]
    with pytest.raises(UnidentifiedImageError):
        images.decode(io.BytesIO(payload()), SIZE)
    assert not ghostscript.marker.exists() and ghostscript.started == []
    good = next((folder_root / "train" / "cat").glob("*.png"))
    np.testing.assert_array_equal(images.decode(io.BytesIO(good.read_bytes())), images.decode(str(good)))


def test_postscript_in_a_folder_is_one_sentence_on_the_command_line(ghostscript, tmp_path, monkeypatch, capsys):
    root = tiny_folder(tmp_path / "data")
    (root / "train" / "b" / "cover.png").write_bytes(EPS)
    monkeypatch.chdir(tmp_path)
    for command in ("fit", "prepare"):  # prepare decodes in LitData's worker processes
        args = ["--output", str(tmp_path / "stream")] if command == "prepare" else ["-c", DEFAULT]
        code, stderr = cli(capsys, command, *args, "--data.data_dir", str(root), "--data.image_size", str(SIZE))
        assert code == 2
        assert "train/b/cover.png (UnidentifiedImageError)" in one_error_line(stderr)
    assert not ghostscript.marker.exists() and not (tmp_path / "stream").exists()


# --- 7. nothing hangs on an entry that is not a regular file ------------------------------------------------------


NOT_FILES = {  # variant -> what the line that leaves it out calls it
    "fifo": "FIFO",
    "link-to-fifo": "FIFO",
    "socket": "socket",
    "link-to-device": "character device",
    "folder": "folder",
}
HANG_TIMEOUT = 240  # seconds for every reader on every variant, in a process of its own; ~20 s when none hangs


def add_not_a_file(variant: str, folder: Path) -> str:
    """Put ``<variant>.png`` in ``folder``, an entry with an image's name that is not a regular file."""
    name = f"{variant}.png"
    if variant == "fifo":
        os.mkfifo(folder / name)  # opening it for reading waits for a writer: forever
    elif variant == "link-to-fifo":
        os.mkfifo(folder / ".pipe")  # no image name itself
        os.symlink(".pipe", folder / name)
    elif variant == "socket":
        here = os.getcwd()
        os.chdir(folder)  # bound by a short relative name: a socket's path has a limit of ~100 bytes
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(name)
        finally:
            os.chdir(here)
    elif variant == "link-to-device":
        os.symlink("/dev/zero", folder / name)  # never ends
    else:
        (folder / name).mkdir()
    return name


def probe_not_files(base: str) -> None:
    """Run in its own process by the fixture below, which kills it should it hang: every folder reader on a tiny
    folder with each entry of :data:`NOT_FILES` in train/a, then `fit` and `prepare` on the command line with a
    FIFO; appends one JSON line per result to ``base/results.jsonl``, with the log lines it printed."""
    import logging

    logged: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            logged.append(record.getMessage())

    logging.getLogger("lightning.pytorch").addHandler(Keep())

    def record(variant: str, reader: str, run) -> None:
        logged.clear()
        try:
            result = {"images": run()}
        except BaseException as err:  # noqa: BLE001 -- SystemExit of the command line included
            result = {"error": f"{type(err).__name__}: {err}"}
        with open(Path(base) / "results.jsonl", "a") as f:
            f.write(json.dumps({"variant": variant, "reader": reader, **result, "log": list(logged)}) + "\n")

    for variant in NOT_FILES:
        for reader, (read, _) in FOLDER_READERS.items():
            root = tiny_folder(Path(base) / variant / reader)
            add_not_a_file(variant, root / "train" / "a")
            record(variant, reader, lambda: read(root))  # noqa: B023 -- called at once
    root = tiny_folder(Path(base) / "cli")
    add_not_a_file("fifo", root / "train" / "a")
    os.chdir(base)
    options = ["--data.data_dir", str(root), "--data.image_size", str(SIZE), "--data.val_size", "2"]
    sys.argv = ["cifarlit"]
    record("fifo", "fit-cli", lambda: cli_main(["fit", "-c", DEFAULT, *options, "--trainer.max_epochs", "1"]).trainer
           .state.finished)  # fmt: skip
    record("fifo", "prepare-cli", lambda: run_command("prepare", [*options, "--output", str(Path(base) / "stream"),
                                                        "--num_workers", "1"]))  # fmt: skip


@pytest.fixture(scope="module")
def not_files(tmp_path_factory) -> SimpleNamespace:
    """The results of :func:`probe_not_files`, run in a process of its own session, killed with what it started
    after :data:`HANG_TIMEOUT` seconds: a reader that hangs fails the tests below instead of hanging them."""
    base = tmp_path_factory.mktemp("not-files")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    script = f"import test_hostile_data as t; t.probe_not_files({str(base)!r})"
    run = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        _, stderr = run.communicate(timeout=HANG_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)  # LitData's workers too
        _, stderr = run.communicate()
    results = base / "results.jsonl"
    lines = results.read_text().splitlines() if results.exists() else []
    found = {(r["variant"], r["reader"]): r for r in map(json.loads, lines)}
    return SimpleNamespace(results=found, stderr=stderr)


def result_of(not_files: SimpleNamespace, variant: str, reader: str) -> dict:
    result = not_files.results.get((variant, reader))
    assert result is not None, (
        f"{reader} on {variant} gave no result within {HANG_TIMEOUT} s: it hangs. " + (not_files.stderr[-3000:])
    )
    return result


@pytest.mark.parametrize("reader", FOLDER_READERS)
@pytest.mark.parametrize("variant", NOT_FILES)
def test_an_entry_that_is_not_a_file_is_left_out_with_one_line_and_never_opened(variant, reader, not_files):
    result = result_of(not_files, variant, reader)
    assert result.get("images") == FOLDER_READERS[reader][1], result  # the folder's images, that entry left out
    lines = [line for line in result["log"] if "so never opened" in line]
    assert len(lines) == 1 and f"{variant}.png ({NOT_FILES[variant]})" in lines[0], result["log"]
    assert lines[0].startswith("left out 1 entry in ") and "is not a regular file" in lines[0]


def test_a_fifo_in_a_class_folder_does_not_stop_fit_or_prepare_on_the_command_line(not_files):
    assert result_of(not_files, "fifo", "fit-cli")["images"] is True  # trained and tested
    assert result_of(not_files, "fifo", "prepare-cli")["images"] == 0  # the exit status
    for reader in ("fit-cli", "prepare-cli"):
        assert any("train/a/fifo.png (FIFO)" in line for line in result_of(not_files, "fifo", reader)["log"])


DANGLING = {"to-nothing": "FileNotFoundError", "to-itself": "OSError"}


def add_dangling(variant: str, folder: Path) -> str:
    name = f"link-{variant}.png"
    os.symlink("moved-away.png" if variant == "to-nothing" else name, folder / name)
    return name


@pytest.mark.parametrize("reader", FOLDER_READERS)
@pytest.mark.parametrize("variant", DANGLING)
def test_a_link_that_leads_nowhere_is_an_unreadable_image(variant, reader, tmp_path):
    root = tiny_folder(tmp_path / "data")
    name = add_dangling(variant, root / "train" / "a")
    read, count = FOLDER_READERS[reader]
    message = refusal(read, root)
    shown = name if reader == "predict" else f"train/a/{name}"
    assert message.startswith("cannot read 1 image file in ") and f": {shown} ({DANGLING[variant]})" in message
    assert not (root / decode_cache.CACHE_NAME).exists()  # a refused folder gets no cache
    if reader != "prepare":
        assert read(root, skip_unreadable=True) == count


def test_a_link_that_leads_nowhere_is_one_sentence_on_the_command_line(tmp_path, monkeypatch, capsys):
    root = tiny_folder(tmp_path / "data")
    add_dangling("to-nothing", root / "train" / "b")
    monkeypatch.chdir(tmp_path)
    code, stderr = cli(capsys, "fit", "-c", DEFAULT, "--data.data_dir", str(root), "--data.image_size", str(SIZE))
    assert code == 2 and "train/b/link-to-nothing.png (FileNotFoundError)" in one_error_line(stderr)
    assert sorted(p.name for p in root.iterdir()) == [decode_cache.LOCK_NAME, "test", "train"]  # and no cache


# --- 8. no wrong result without a word: caches, 16-bit images, batches.meta -----------------------------------------


def rewrite_cache(path: Path, change) -> None:
    """Rewrite the decode cache at ``path`` with ``change(arrays)`` applied, keeping its (matching) fingerprint."""
    with np.load(path) as z:
        arrays = dict(z)
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def claims_a_billion_images(path: Path) -> None:
    """A cache whose train_x header says 10^9 images (192 GB) and holds a few bytes: numpy would allocate it."""
    with zipfile.ZipFile(path, "a") as z:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (10**9, SIZE, SIZE, 3)})  # fmt: skip
        z.writestr("train_x.npy", header.getvalue() + b"\0" * 64)  # a second member of that name: numpy reads it


CACHES = {  # variant -> how it differs from what the folder gives
    "smaller-images": lambda path: rewrite_cache(path, lambda a: a.update(train_x=a["train_x"][:, :4, :4])),
    "float-images": lambda path: rewrite_cache(path, lambda a: a.update(train_x=a["train_x"].astype(np.float32))),
    "int32-labels": lambda path: rewrite_cache(path, lambda a: a.update(train_y=a["train_y"].astype(np.int32))),
    "label-out-of-range": lambda path: rewrite_cache(path, lambda a: a["train_y"].__setitem__(0, 99)),
    "labels-swapped": lambda path: rewrite_cache(path, lambda a: a.update(train_y=1 - a["train_y"])),
    "one-image-short": lambda path: rewrite_cache(
        path, lambda a: a.update(train_x=a["train_x"][:-1], train_y=a["train_y"][:-1])
    ),
    "other-class-names": lambda path: rewrite_cache(path, lambda a: a.update(classes=np.array(["cat", "dog"]))),
    "unreadable-file-not-there": lambda path: rewrite_cache(
        path, lambda a: a.update(unreadable=np.array(["train/a/ghost.png"]), unreadable_why=np.array(["OSError"]))
    ),
    "a-billion-images": claims_a_billion_images,
}
CACHE_READERS = {"fit": read_fit, "explore": read_explore}  # predict and prepare never read the cache


@pytest.mark.parametrize("reader", CACHE_READERS)
@pytest.mark.parametrize("variant", CACHES)
def test_a_cache_that_does_not_match_its_folder_is_rebuilt_with_one_warning(variant, reader, tmp_path, monkeypatch):
    root = tiny_folder(tmp_path / "data")
    expected = sources.load(root, size=SIZE)  # decodes and writes the cache
    CACHES[variant](root / decode_cache.CACHE_NAME)
    with pytest.warns(UserWarning) as warned:
        assert CACHE_READERS[reader](root) == 8
    mine = [str(w.message) for w in warned if decode_cache.CACHE_NAME in str(w.message)]
    assert len(mine) == 1 and "does not match the folder it claims to cache (" in mine[0], mine
    assert mine[0].endswith("decoding the images again.")
    monkeypatch.setattr(images, "decode", lambda *args: pytest.fail("decoded although the cache was rebuilt"))
    again = sources.load(root, size=SIZE)  # the rebuilt cache is used
    for key in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(again, key), getattr(expected, key))
    assert again.classes == expected.classes


def gray16(mode: str) -> tuple[Image.Image, np.ndarray]:
    """An 8x8 16-bit gray ramp 0..65535 in ``mode`` (mid-gray 32768 among the values), and its 8-bit values."""
    values = np.append(np.linspace(0, 65535, SIZE * SIZE - 1), 32768).astype(np.int64).reshape(SIZE, SIZE)
    layout = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]  # as a decoder hands them over
    image = Image.frombytes(mode, (SIZE, SIZE), values.astype(layout).tobytes())
    return image, np.rint(values / 257).astype(np.uint8)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I"])
def test_16_bit_gray_is_scaled_not_clipped(mode):
    image, expected = gray16(mode)
    assert expected[-1, -1] == 128  # mid-gray, which clipping made 255
    np.testing.assert_array_equal(np.asarray(images.eight_bits(image)), expected)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("reader", ["fit", "prepare", "predict", "file object"])
def test_16_bit_pngs_read_as_8_bit_by_every_reader(reader, channels, tmp_path):
    """PNG keeps 16-bit gray as I;16 whatever the mode saved; each reader must give round(v / 257)."""
    image, expected = gray16("I;16")
    root = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                image.save(root / split / cls / f"{i}.png")
    expected = np.repeat(expected[:, :, None], channels, axis=2)
    if reader == "fit":
        x = sources.load(root, size=SIZE, channels=channels).train_x  # what fit's and explore's DataModule holds
    elif reader == "prepare":
        listing = prepare.list_dataset(root, SIZE, channels)
        job = prepare._jobs(listing, np.arange(1))
        data, _ = next(prepare._Reader(job, str(tmp_path), listing.shape)(0))
        x = np.frombuffer(data, np.uint8).reshape(1, channels, SIZE, SIZE).transpose(0, 2, 3, 1)
    elif reader == "predict":
        dm = CIFAR10DataModule(predict_dir=str(root / "train" / "a"))
        dm.setup("predict")
        dm.load_state_dict({"mean": torch.zeros(channels), "std": torch.ones(channels), "classes": ["a", "b"],
                            "image_shape": [channels, SIZE, SIZE]})  # fmt: skip
        dm.predict_dataloader()
        x = dm.predict_set.x.permute(0, 2, 3, 1).numpy()
    else:
        x = images.decode(io.BytesIO((root / "train" / "a" / "0.png").read_bytes()), SIZE, channels)[None]
    assert len(x) >= 1
    for decoded in x:
        np.testing.assert_array_equal(decoded, expected)


def pickle_variant(pickle_root: Path, root: Path, variant: str) -> str:
    """A copy of ``pickle_root`` with ``variant`` done to it; returns the name of the file the refusal must name."""
    shutil.copytree(pickle_root, root)
    folder = root / P
    names = list(sources.CIFAR10_CLASSES)
    meta = {
        "meta-9-names": names[:9],  # the labels go to 9
        "meta-11-names": [*names, "unicorn"],  # no image is a unicorn
        "meta-numbers": list(range(10)),
        "meta-duplicate": [*names[:9], names[0]],
        "meta-one-string": ",".join(names),
    }
    if variant in meta:
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": meta[variant]}))
        return "data_batch_" if variant == "meta-9-names" else "batches.meta"
    victim = folder / ("test_batch" if variant == "label-negative" else "data_batch_2")
    with open(victim, "rb") as f:
        entry = pickle.load(f)
    if variant == "label-10":
        entry["labels"][0] = 10
    elif variant == "label-negative":
        entry["labels"][0] = -1
    elif variant == "label-fraction":
        entry["labels"] = [label + 0.5 for label in entry["labels"]]
    elif variant == "pixel-300":
        entry["data"] = entry["data"].astype(np.int64)
        entry["data"][0, 0] = 300
    victim.write_bytes(pickle.dumps(entry))
    return victim.name


PICKLE_VARIANTS = ["meta-9-names", "meta-11-names", "meta-numbers", "meta-duplicate", "meta-one-string", "label-10",
                   "label-negative", "label-fraction", "pixel-300"]  # fmt: skip
PICKLE_READERS = {  # what sizes the model (the class names, read before any image), and what reads the images
    "class names": lambda root: sources.class_names(root),
    "fit": lambda root: read_fit(root, val_size=20),
    "explore": lambda root: read_explore(root, val_size=20),
    "prepare": lambda root: prepare.list_dataset(root),
}
WHY_REFUSED = {
    "meta-9-names": "has label 9, but the 9 classes (airplane, automobile, bird, ...) are labelled 0..8",
    "meta-11-names": "names 11 classes, but no training batch has an image of class 10 ('unicorn')",
    "meta-numbers": "are not all names (non-empty strings)",
    "meta-duplicate": "are not 2 or more distinct names",
    "meta-one-string": "it has no list of label_names",
    "label-10": "has label 10, but the 10 classes",
    "label-negative": "has label -1, but the 10 classes",
    "label-fraction": "need as many whole-number labels, not float64",
    "pixel-300": "its pixels are int64, not bytes 0..255",
}
NAMES_ALONE_WRONG = ["meta-numbers", "meta-duplicate", "meta-one-string"]  # the others disagree with the labels


@pytest.mark.parametrize(
    ("variant", "reader"),
    [(v, r) for v in PICKLE_VARIANTS for r in PICKLE_READERS if r != "class names" or v in NAMES_ALONE_WRONG],
)
def test_batches_whose_names_and_labels_disagree_are_refused(variant, reader, pickle_root, tmp_path):
    named = pickle_variant(pickle_root, tmp_path / "data", variant)
    message = refusal(PICKLE_READERS[reader], tmp_path / "data")
    assert message.startswith(f"{tmp_path / 'data' / P / named}") and WHY_REFUSED[variant] in message
    assert message.endswith(f"delete the '{P}' folder so it is extracted or downloaded again.")


def test_a_label_out_of_range_is_one_sentence_on_the_command_line(pickle_root, tmp_path, monkeypatch, capsys):
    pickle_variant(pickle_root, tmp_path / "data", "label-10")
    monkeypatch.chdir(tmp_path)
    code, stderr = cli(capsys, "fit", "-c", DEFAULT, "--data.data_dir", str(tmp_path / "data"))
    assert code == 2
    assert "data_batch_2 has label 10, but the 10 classes (airplane, automobile, bird, ...) are labelled 0..9" in (
        one_error_line(stderr)
    )


# --- names that are not UTF-8 --------------------------------------------------------------------------------------


LATIN1 = os.fsdecode(b"caf\xe9")  # "café" as Latin-1 bytes: Python holds the byte as a lone surrogate


@pytest.mark.parametrize("reader", ["fit", "explore", "prepare"])
def test_a_class_folder_not_named_in_utf8_is_refused(reader, tmp_path):
    root = tiny_folder(tmp_path / "data")
    for split in ("train", "test"):
        os.rename(root / split / "b", root / split / LATIN1)
    message = refusal(FOLDER_READERS[reader][0], root)
    assert message.startswith(f"class folder {os.fsencode(root / 'train' / LATIN1)!r} is not named in UTF-8")
    assert "rename it" in message
    assert sorted(p.name for p in root.iterdir()) == ["test", "train"]  # nothing written


def test_a_file_to_predict_not_named_in_utf8_is_refused(tmp_path):
    root = tiny_folder(tmp_path / "data")
    folder = root / "train" / "a"
    shutil.copy(next(folder.glob("*.png")), folder / f"{LATIN1}.png")
    message = refusal(read_predict, folder)
    assert message.startswith(f"data.predict_dir='{folder}': the name of {os.fsencode(folder / f'{LATIN1}.png')!r}")
    assert "is not UTF-8, and it would be its id in the predictions CSV, which is UTF-8: rename it" in message


@pytest.mark.parametrize("reader", ["fit", "explore", "prepare"])
def test_image_files_not_named_in_utf8_train_and_are_named_when_unreadable(reader, tmp_path, monkeypatch):
    root = tiny_folder(tmp_path / "data")
    folder = root / "train" / "a"
    shutil.copy(next(folder.glob("*.png")), folder / f"{LATIN1}.png")  # they never reach a CSV: fine to train on
    read = FOLDER_READERS[reader][0]
    assert read(root) == 9
    (folder / f"{LATIN1}-2.png").write_bytes(b"not an image")
    message = refusal(read, root)  # prepare's workers hand the name over as JSON: every byte survives
    assert f"train/a/{LATIN1}-2.png (UnidentifiedImageError)" in message
    if reader != "prepare":  # the cache keeps it among the files left out, and reads it back
        assert read(root, skip_unreadable=True) == 9
        monkeypatch.setattr(images, "decode", lambda *args: pytest.fail("decoded although the cache is fresh"))
        assert refusal(read, root) == message


def test_predict_ids_round_trip_through_the_csv_or_are_refused(own_run, tmp_path, monkeypatch, capsys):
    """UTF-8 names of any script come back from the predictions CSV as they are on disk; a Latin-1 name is one
    sentence, with no CSV written."""
    folder = tmp_path / "new"
    folder.mkdir()
    source = next(own_run.data.glob("train/cat/*"))
    stems = ["café", "日本語", 'a,b "quoted"', "tab\there"]
    for stem in stems:
        shutil.copy(source, folder / f"{stem}{source.suffix}")
    monkeypatch.chdir(tmp_path)
    args = ["predict", "-c", DEFAULT, "--ckpt_path", str(own_run.ckpt), "--data.predict_dir", str(folder)]
    sys.argv = ["cifarlit"]
    cli_main([*args, "--output", str(tmp_path / "p.csv")])
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert sorted(row[0] for row in rows[1:]) == sorted(stems)
    shutil.copy(source, folder / f"{LATIN1}{source.suffix}")
    code, stderr = cli(capsys, *args, "--output", str(tmp_path / "q.csv"))
    assert code == 2 and "is not UTF-8, and it would be its id in the predictions CSV" in one_error_line(stderr)
    assert not (tmp_path / "q.csv").exists()


# --- image sizes whose arrays cannot fit in memory ------------------------------------------------------------------


GIB = 2**30
SIZE_READERS = {  # reader, how many times over it holds the images, and how many it counts
    "fit (pickle)": (lambda root, size: read_fit(root / "pickle", size, val_size=20), 3, 250),  # counted by size
    "sources.load (pickle)": (lambda root, size: len(sources.load(root / "pickle", size=size).train_y), 1, 250),
    "fit (folder)": (lambda root, size: read_fit(root / "folder", size), 3, 8),
    "explore": (lambda root, size: read_explore(root / "folder", size), 3, 8),
    "prepare": (lambda root, size: prepare.list_dataset(root / "folder", size), 2, prepare.STATS_BATCH),
    "predict": (lambda root, size: read_predict(root / "folder" / "train" / "a", size), 2, 3),
}


@pytest.mark.parametrize("reader", SIZE_READERS)
def test_an_image_size_that_cannot_fit_in_memory_is_refused_before_any_is_allocated(reader, pickle_root, tmp_path,
                                                                                   monkeypatch):  # fmt: skip
    shutil.copytree(pickle_root, tmp_path / "pickle")
    tiny_folder(tmp_path / "folder")
    monkeypatch.setattr(sources, "available_memory", lambda: GIB)
    read, copies, count = SIZE_READERS[reader]
    message = refusal(read, tmp_path, 100_000)
    assert message.startswith("data.image_size=100000 is too large for the memory here: ")
    assert f" ({count} images at 100000x100000x3, held {copies} times over) need " in message
    assert "and 1.0 GiB is available" in message
    largest = int(re.search(r"use data.image_size (\d+) or less", message).group(1))
    assert count * 3 * copies * largest**2 <= GIB < count * 3 * copies * (largest + 1) ** 2  # the largest that fits
    if reader != "prepare":  # for prepare the count is one batch: the folder is smaller
        assert read(tmp_path, min(largest, 64)) > 0


def test_an_image_size_of_100000_is_one_sentence_on_the_command_line(pickle_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for command in ("fit", "prepare"):
        args = ["--output", str(tmp_path / "stream")] if command == "prepare" else ["-c", DEFAULT]
        code, stderr = cli(capsys, command, *args, "--data.data_dir", str(pickle_root), "--data.image_size", "100000")
        assert code == 2
        assert "data.image_size=100000 is too large for the memory here" in one_error_line(stderr)
    assert not (tmp_path / "stream").exists()

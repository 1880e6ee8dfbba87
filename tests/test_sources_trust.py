"""Nothing read from disk is trusted: pickles cannot run code, damaged images are all reported at once, a
one-class folder is a data error, an interrupted run leaves nothing half-written, and concurrent runs decode once."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlit.data import archive as cifar_archive
from cifarlit.data import cache as decode_cache
from cifarlit.data import images, sources
from cifarlit.data.datamodule import CIFAR10DataModule
from cifarlit.data.sources import DataError
from conftest import write_image_folder, write_unlabelled_folder
from helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
DEFAULT = str(REPO / "configs" / "default.yaml")


def fit_cli(data_dir: Path, tmp_path: Path, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`cifarlit fit` on ``data_dir`` for one epoch that must fail; returns its exit code and stderr."""
    monkeypatch.chdir(tmp_path)  # lightning_logs/ goes here
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(data_dir), "--trainer.max_epochs", "1", *args)
    return exit_info.value.code, capsys.readouterr().err


def assert_one_error_line(stderr: str, *fragments: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


# --- CIFAR-10's pickle batches cannot run code -----------------------------------------------------------------


class RunsCode:
    """Unpickling this runs a shell command: what a crafted ``data_batch_1`` could do to whoever reads it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted_copy(pickle_root: Path, tmp_path: Path, victim: str) -> tuple[Path, Path]:
    """A copy of ``pickle_root`` whose ``victim`` file would create a marker file when unpickled."""
    root = tmp_path / "crafted"
    shutil.copytree(pickle_root, root)
    marker = tmp_path / "code-ran"
    payload = (
        {"data": RunsCode(marker), "labels": [0]} if victim != "batches.meta" else {"label_names": RunsCode(marker)}
    )
    path = root / sources.PICKLE_DIR / victim
    path.write_bytes(pickle.dumps(payload, protocol=2))  # the protocol of the official release
    # The fixture is live: plain pickle.load runs the command.
    pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()
    return root, marker


@pytest.mark.parametrize("victim", ["data_batch_1", "batches.meta"])
def test_a_batch_that_would_run_code_is_refused_by_the_datamodule(pickle_root, tmp_path, victim):
    root, marker = crafted_copy(pickle_root, tmp_path, victim)
    dm = CIFAR10DataModule(str(root), download=False)
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    assert not marker.exists()
    message = str(err.value)
    assert message.startswith(f"{root / sources.PICKLE_DIR / victim} holds Python objects")
    assert "run as code (posix.system)" in message and "not a CIFAR-10 batch" in message
    assert f"delete the '{sources.PICKLE_DIR}' folder" in message


@pytest.mark.parametrize("victim", ["data_batch_1", "batches.meta"])
def test_a_batch_that_would_run_code_is_refused_by_the_cli(pickle_root, tmp_path, monkeypatch, capsys, victim):
    root, marker = crafted_copy(pickle_root, tmp_path, victim)
    code, stderr = fit_cli(root, tmp_path, monkeypatch, capsys)
    assert not marker.exists()
    assert code == 2
    assert_one_error_line(stderr, str(root / sources.PICKLE_DIR / victim), "would run as code")


class Py2Pickler(pickle._Pickler):
    """Writes strings and bytes as Python 2's ``str`` (BINSTRING), as the official CIFAR-10 batches are written."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    """``obj`` as Python 2 with numpy 1.x pickled CIFAR-10: protocol 2, byte strings, ``numpy.core.multiarray``."""
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


@pytest.mark.parametrize(
    "dumps",
    [py2_pickle, lambda obj: pickle.dumps(obj, protocol=2), pickle.dumps, lambda obj: pickle.dumps(obj, protocol=5)],
    ids=["python2-release", "protocol2", "default-protocol", "protocol5"],
)
def test_batches_as_released_and_as_repickled_still_load(pickle_root, tmp_path, dumps):
    expected = sources.load(pickle_root)
    root = tmp_path / "repickled"
    shutil.copytree(pickle_root, root)
    for path in (root / sources.PICKLE_DIR).iterdir():
        with open(path, "rb") as f:
            entry = pickle.load(f)
        if "data" in entry:
            entry["batch_label"] = f"batch {path.name}"  # the release's other keys are plain strings
        path.write_bytes(dumps(entry))
    raw = sources.load(root)
    np.testing.assert_array_equal(raw.train_x, expected.train_x)
    np.testing.assert_array_equal(raw.train_y, expected.train_y)
    np.testing.assert_array_equal(raw.test_x, expected.test_x)
    assert raw.classes == expected.classes


# --- a folder needs two classes ------------------------------------------------------------------------------------


def test_a_folder_with_one_class_is_a_data_error_not_a_model_option(tmp_path, monkeypatch, capsys):
    root = write_image_folder(tmp_path / "one", classes=("cat",), per_class_train=6, per_class_test=2)
    code, stderr = fit_cli(root, tmp_path, monkeypatch, capsys)
    assert code == 2
    line = assert_one_error_line(stderr, f"{root / 'train'} has one class folder ('cat')", "at least 2")
    assert "num_classes" not in line


def test_a_folder_without_class_folders_is_a_data_error_not_a_model_option(tmp_path, monkeypatch, capsys):
    (tmp_path / "none" / "train").mkdir(parents=True)
    code, stderr = fit_cli(tmp_path / "none", tmp_path, monkeypatch, capsys)
    assert code == 2
    line = assert_one_error_line(stderr, f"{tmp_path / 'none' / 'train'} has no class folders")
    assert "num_classes" not in line


# --- unreadable images: all reported at once, or left out on request ------------------------------------------


def damage(root: Path, *names: str) -> list[str]:
    """Overwrite ``root/<name>`` with bytes no image reader accepts; returns the names."""
    for name in names:
        (root / name).write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return list(names)


def first_files(root: Path, split: str, count: int) -> list[str]:
    """The first ``count`` files of ``split``, relative to ``root``, in the order they are decoded."""
    files = sorted(p for p in (root / split).rglob("*.png"))
    return [str(p.relative_to(root)) for p in files[:count]]


THREE_DAMAGED = ("train/bird/0030.png", "train/dog/0061.png", "test/ship/0032.png")


def test_all_unreadable_images_are_named_in_one_error(fresh_folder, tmp_path, monkeypatch, capsys):
    damage(fresh_folder, *THREE_DAMAGED)
    code, stderr = fit_cli(fresh_folder, tmp_path, monkeypatch, capsys)
    assert code == 2
    line = assert_one_error_line(stderr, f"cannot read 3 image files in {fresh_folder}: ", "data.skip_unreadable=true")
    assert all(f"{name} (UnidentifiedImageError)" in line for name in THREE_DAMAGED)
    assert not (fresh_folder / decode_cache.CACHE_NAME).exists()  # a refused folder gets no cache


def test_the_error_names_the_first_five_unreadable_images_and_counts_the_rest(fresh_folder):
    names = damage(fresh_folder, *first_files(fresh_folder, "train", 7))
    with pytest.raises(DataError) as err:
        sources.load(fresh_folder)
    message = str(err.value)
    assert "cannot read 7 image files" in message and " and 2 more;" in message
    assert [name in message for name in names] == [True] * 5 + [False] * 2


def test_skipping_unreadable_images_keeps_the_labels_of_the_rest(fresh_folder, folder_root, caplog):
    damage(fresh_folder, *THREE_DAMAGED)
    raw = sources.load(fresh_folder, skip_unreadable=True)
    whole = sources.load(folder_root)
    files = {split: first_files(folder_root, split, 10**6) for split in ("train", "test")}
    keep = {split: [name not in THREE_DAMAGED for name in names] for split, names in files.items()}
    assert len(raw.train_y) == 118 and len(raw.test_y) == 39
    np.testing.assert_array_equal(raw.train_x, whole.train_x[keep["train"]])
    np.testing.assert_array_equal(raw.train_y, whole.train_y[keep["train"]])
    np.testing.assert_array_equal(raw.test_x, whole.test_x[keep["test"]])
    np.testing.assert_array_equal(raw.test_y, whole.test_y[keep["test"]])
    assert "data.skip_unreadable: left out 3 image files" in caplog.text


def test_fit_with_skip_unreadable_trains_on_the_rest_and_says_so_once(fresh_folder, tmp_path, monkeypatch, caplog):
    damage(fresh_folder, *THREE_DAMAGED)
    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(fresh_folder), "--trainer.max_epochs", "1",
                  "--data.skip_unreadable", "true")  # fmt: skip
    dm = cli.datamodule
    assert len(dm.train_set) + len(dm.val_set) == 118 and len(dm.test_set) == 39
    assert cli.trainer.state.finished
    assert caplog.text.count("data.skip_unreadable: left out 3 image files") == 1
    assert all(name in caplog.text for name in THREE_DAMAGED)


def test_a_cache_built_while_skipping_does_not_skip_without_the_option(fresh_folder, monkeypatch, caplog):
    damage(fresh_folder, *THREE_DAMAGED)
    skipped = sources.load(fresh_folder, skip_unreadable=True)
    assert (fresh_folder / decode_cache.CACHE_NAME).is_file()
    monkeypatch.setattr(images, "decode", lambda *args: pytest.fail("decoded although the cache is fresh"))
    with pytest.raises(DataError, match=r"cannot read 3 image files in .*data.skip_unreadable=true"):
        sources.load(fresh_folder)
    caplog.clear()
    again = sources.load(fresh_folder, skip_unreadable=True)  # from the cache, and says so again
    np.testing.assert_array_equal(again.train_x, skipped.train_x)
    np.testing.assert_array_equal(again.train_y, skipped.train_y)
    assert "data.skip_unreadable: left out 3 image files" in caplog.text


def test_unreadable_images_to_predict_are_named_or_left_out(tmp_path, caplog):
    truth = write_unlabelled_folder(tmp_path / "new")
    broken = damage(tmp_path / "new", "img01.png", "img04.jpg", "img07.png")
    assert {Path(name).stem for name in broken} <= set(truth)
    trained = {"mean": torch.zeros(3), "std": torch.ones(3), "classes": ["cat", "dog", "fish"]}  # a checkpoint's

    def predict_loader(**options):
        dm = CIFAR10DataModule(predict_dir=str(tmp_path / "new"), **options)
        dm.setup("predict")
        dm.load_state_dict(trained)  # what Lightning restores before it asks for the loader
        dm.predict_dataloader()
        return dm

    with pytest.raises(DataError) as err:
        predict_loader()
    message = str(err.value)
    assert message.startswith(f"cannot read 3 image files in data.predict_dir='{tmp_path / 'new'}': img01.png")
    assert "data.skip_unreadable=true" in message
    dm = predict_loader(skip_unreadable=True)
    assert dm.predict_ids == sorted(set(truth) - {"img01", "img04", "img07"})
    assert len(dm.predict_set) == len(truth) - 3
    assert "data.skip_unreadable: left out 3 image files" in caplog.text


# --- nothing half-written: a run killed while writing leaves nothing a later run trusts -------------------------


def killed_while(script: str, root: Path) -> subprocess.CompletedProcess:
    """Run ``script`` (which kills itself part-way through writing) on ``root`` in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}  # this checkout's cifarlit
    done = subprocess.run([sys.executable, "-c", script, str(root)], env=env, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    return done


CACHE_WRITE_KILLED = """
import io, os, signal, sys
from pathlib import Path
import numpy as np
import torch
from cifarlit.data import sources

write_whole = np.savez

def write_half_then_die(file, **arrays):
    whole = io.BytesIO()
    write_whole(whole, **arrays)
    file.write(whole.getvalue()[: len(whole.getvalue()) // 2])
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)

np.savez = write_half_then_die
sources.load(Path(sys.argv[1]))
"""


def test_a_cache_write_killed_half_way_is_neither_read_nor_in_the_way(fresh_folder, folder_root, monkeypatch):
    killed_while(CACHE_WRITE_KILLED, fresh_folder)
    (partial,) = fresh_folder.glob(f"{decode_cache.CACHE_NAME}.*.tmp")
    assert partial.stat().st_size > 0 and not (fresh_folder / decode_cache.CACHE_NAME).exists()
    decoded = []
    decode = images.decode
    monkeypatch.setattr(images, "decode", lambda path, *args: decoded.append(path) or decode(path, *args))
    raw = sources.load(fresh_folder)
    assert len(decoded) == 160  # decoded again: the half-written file was not taken for a cache
    expected = sources.load(folder_root)
    np.testing.assert_array_equal(raw.train_x, expected.train_x)
    np.testing.assert_array_equal(raw.test_y, expected.test_y)
    assert not partial.exists()  # the killed run's leftover is removed
    assert (fresh_folder / decode_cache.CACHE_NAME).is_file()


EXTRACTION_KILLED = """
import hashlib, os, signal, sys
from pathlib import Path
from cifarlit.data import archive, sources

root = Path(sys.argv[1])
archive.CIFAR10_MD5 = hashlib.md5((root / archive.ARCHIVE).read_bytes()).hexdigest()  # the fixture's, trusted
write = archive.write_member
written = []

def write_two_then_die(source, target):
    write(source, target)
    written.append(target)
    if len(written) == 2:  # the folder and two of its files are on disk
        os.kill(os.getpid(), signal.SIGKILL)

archive.write_member = write_two_then_die
sources.ensure_available(root, download=False)
"""


def write_archive(pickle_root: Path, root: Path) -> Path:
    """``root/cifar-10-python.tar.gz`` holding ``cifar-10-batches-py/``, as CIFAR-10's download does."""
    root.mkdir()
    with tarfile.open(root / cifar_archive.ARCHIVE, "w:gz") as tar:
        tar.add(pickle_root / sources.PICKLE_DIR, arcname=sources.PICKLE_DIR)
    return root


def trust(archive: Path, monkeypatch) -> None:
    """Take ``archive``'s md5 for the release's, as if it were CIFAR-10's own download."""
    monkeypatch.setattr(cifar_archive, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())


def test_an_extraction_killed_half_way_leaves_no_half_dataset(pickle_root, tmp_path, monkeypatch):
    root = write_archive(pickle_root, tmp_path / "archive")
    trust(root / cifar_archive.ARCHIVE, monkeypatch)
    elsewhere = root / f"{cifar_archive.EXTRACT_PREFIX}another-machine-1"  # maybe still running there: left alone
    elsewhere.mkdir()
    killed_while(EXTRACTION_KILLED, root)
    (partial,) = (p for p in root.glob(f"{cifar_archive.EXTRACT_PREFIX}*") if p != elsewhere)
    assert len(list(partial.rglob("*"))) == 3  # it did write part of the dataset, ...
    assert sources.detect_format(root) == "archive"  # ... but not where a later run would read it
    dm = CIFAR10DataModule(str(root), download=False)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 200 and len(dm.test_set) == 50
    np.testing.assert_array_equal(sources.load(root).train_x, sources.load(pickle_root).train_x)
    assert not partial.exists() and elsewhere.is_dir()


def test_an_archive_without_the_batches_folder_leaves_nothing_behind(tmp_path, monkeypatch):
    root = tmp_path / "archive"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not CIFAR-10")
    root.mkdir()
    with tarfile.open(root / cifar_archive.ARCHIVE, "w:gz") as tar:
        tar.add(tmp_path / "other", arcname="other")
    trust(root / cifar_archive.ARCHIVE, monkeypatch)  # past the md5 check, which would refuse it first
    with pytest.raises(DataError, match=rf"{cifar_archive.ARCHIVE} holds no '{sources.PICKLE_DIR}' folder"):
        sources.ensure_available(root, download=False)
    assert [p.name for p in root.iterdir()] == [cifar_archive.ARCHIVE]


# --- runs started together decode a new folder once -------------------------------------------------------------


LOAD_TOGETHER = """
import sys, time
from pathlib import Path
import numpy as np
import torch
from cifarlit.data import images, sources

root, out, me, other = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
decoded = []
decode = images.decode

def slow_decode(path, *args):
    decoded.append(path)
    time.sleep(0.01)  # the other run starts loading while this one decodes
    return decode(path, *args)

images.decode = slow_decode
(out / f"ready-{me}").touch()
while not (out / f"ready-{other}").exists():  # both load at the same moment
    time.sleep(0.005)
raw = sources.load(root)
np.savez(out / f"{me}.npz", train_x=raw.train_x, train_y=raw.train_y, test_x=raw.test_x, test_y=raw.test_y,
         decoded=len(decoded))
"""


def test_runs_started_together_decode_a_new_folder_once(fresh_folder, folder_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    runs = [
        subprocess.Popen([sys.executable, "-c", LOAD_TOGETHER, str(fresh_folder), str(tmp_path), me, other], env=env,
                         stderr=subprocess.PIPE, text=True)
        for me, other in (("a", "b"), ("b", "a"))
    ]  # fmt: skip
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stderr.read()
    a, b = (np.load(tmp_path / f"{me}.npz") for me in ("a", "b"))
    assert sorted([int(a["decoded"]), int(b["decoded"])]) == [0, 160]  # one decoded, the other read its cache
    expected = sources.load(folder_root)
    for key in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key], getattr(expected, key))


def test_a_folder_where_the_lock_cannot_be_created_still_loads(fresh_folder, folder_root, monkeypatch):
    # Root can write anywhere, so a read-only folder is imitated: creating the lock file fails as it would there.
    create = os.open

    def read_only_lock(path, flags, *args, **kwargs):
        if Path(path).name == decode_cache.LOCK_NAME:
            raise PermissionError(13, "Read-only file system", str(path))
        return create(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_lock)
    raw = sources.load(fresh_folder)
    np.testing.assert_array_equal(raw.train_x, sources.load(folder_root).train_x)
    assert not (fresh_folder / decode_cache.LOCK_NAME).exists()


# --- long one-time work shows progress -------------------------------------------------------------------------


def test_decoding_a_large_folder_shows_counts_on_rank_zero_only(fresh_folder, monkeypatch, capsys):
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(images, "PROGRESS_FROM", 100)  # the fixture's 120 training images count as large
    sources.load(fresh_folder, cache=False)
    err = capsys.readouterr().err
    assert "decoding images" in err and "/120 [" in err  # a bar with counts of the total (and rate, time left)
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # another process of a DDP run: silent
    sources.load(fresh_folder, cache=False)
    assert "decoding images" not in capsys.readouterr().err
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    monkeypatch.setattr(images, "PROGRESS_FROM", 1000)  # a small folder: done before a bar would help
    sources.load(fresh_folder, cache=False)
    assert "decoding images" not in capsys.readouterr().err

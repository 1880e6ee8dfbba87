"""Every file cifarlit writes appears whole or not at all: a killed or failing writer leaves the previous file
(or none) under the real name, and the next run writes it normally."""

from __future__ import annotations

import csv
import os
import stat
import subprocess
import sys

import pytest
import torch

from cifarlit.training.predict import write_csv
from cifarlit.utils.files import atomic_path, atomic_write

KILLED_MID_WRITE = """
import os, signal, sys
from cifarlit.utils.files import atomic_write
with atomic_write(sys.argv[1]) as f:
    f.write("id,label\\nhalf")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("before", [None, "id,label\nold,cat\n"])
def test_a_writer_killed_mid_write_leaves_the_previous_file(tmp_path, before):
    target = tmp_path / "predictions.csv"
    if before is not None:
        target.write_text(before)
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(target)], capture_output=True)
    assert killed.returncode == -9  # SIGKILL, mid-write
    assert (target.read_text() if target.exists() else None) == before  # never the half file
    assert len(list(tmp_path.glob(".predictions.csv.*.tmp"))) == 1  # what the killed writer left
    with atomic_write(target) as f:  # the next run is not disturbed by the leftover, and removes it
        f.write("id,label\nnew,dog\n")
    assert target.read_text() == "id,label\nnew,dog\n"
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]


def test_a_failing_writer_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_the_predictions_csv_is_whole_or_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "p.csv"
    target.write_text("id,label\nold,cat\n")

    class FailsOnSecondRow:
        def __init__(self, f) -> None:
            self.rows = 0

        def writerow(self, row) -> None:
            self.rows += 1
            if self.rows == 2:
                raise OSError("No space left on device")

    monkeypatch.setattr(csv, "writer", FailsOnSecondRow)
    with pytest.raises(OSError):
        write_csv(target, ["a", "b"], torch.tensor([[0.9, 0.1], [0.2, 0.8]]), ("cat", "dog"))
    assert target.read_text() == "id,label\nold,cat\n"


def test_a_failed_export_leaves_no_model_file(own_run, tmp_path, monkeypatch):
    from cifarlit.commands import export

    def half_then_fail(module, path):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a model")
        raise RuntimeError("killed")

    monkeypatch.setattr(torch.jit, "save", half_then_fail)
    with pytest.raises(RuntimeError):
        export.export(own_run.ckpt, "torchscript", tmp_path / "model.pt")
    assert list(tmp_path.glob("*model*")) == []


def private_writer(tmp) -> None:
    """A writer that creates its file 0600, as safetensors' ``save_file`` does."""
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))


def safetensors_writer(tmp) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp))


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


@pytest.mark.parametrize("writer", [private_writer, safetensors_writer])
def test_a_new_file_gets_the_permissions_open_would_give_it(tmp_path, umask, writer):
    # an exported model came out 0600: readable by its owner only, unlike every other file the run wrote
    target = tmp_path / "model.safetensors"
    with atomic_path(target) as tmp:
        writer(tmp)
    with open(tmp_path / "plain", "w"):
        pass
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~umask


def test_a_replaced_file_keeps_its_own_permissions(tmp_path):
    target = tmp_path / "predictions.csv"
    target.write_text("old")
    target.chmod(0o640)  # the user's choice, which a plain open("w") keeps
    with atomic_write(target) as f:
        f.write("new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o640

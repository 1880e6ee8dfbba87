"""Bad input gets one sentence naming the option or file and what would be valid; nothing on disk is lost."""

from __future__ import annotations

import os
import shutil

import lightning as L
import pytest
import torch

from cifarlit.data import cache as decode_cache
from cifarlit.data import sources
from cifarlit.data.datamodule import CIFAR10DataModule
from cifarlit.data.sources import DataError
from cifarlit.models.lit_mlp import LitMLP
from cifarlit.utils.errors import CifarlitError


def snapshot(root) -> dict:
    """Every file under root with its size and mtime: errors must leave all of them as they were."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def setup_dm(root, **kwargs) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(str(root), download=False, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_size": 0.0}, r"data.val_size=0.0 is not valid"),
        ({"val_size": 1.0}, r"data.val_size=1 does not fit the 200 training images"),  # 1.0 is a count
        ({"val_size": 500}, r"data.val_size=500 does not fit the 200 training images"),
        ({"val_size": 0}, r"data.val_size=0 is not valid"),
        ({"train_subset": 0}, r"data.train_subset=0 is not a valid count: use 1..160"),
        ({"train_subset": -3}, r"data.train_subset=-3 is not a valid count"),
        ({"train_subset": 161}, r"data.train_subset=161 is not a valid count"),
        ({"train_subset": 1.5}, r"data.train_subset=1.5 is not a valid fraction"),
        ({"val_subset": 0.0}, r"data.val_subset=0.0 is not a valid fraction"),
        ({"batch_size": 0}, r"data.batch_size=0 is not valid"),
        ({"num_workers": -1}, r"data.num_workers=-1 is not valid"),
    ],
)
def test_bad_data_options(pickle_root, kwargs, match):
    before = snapshot(pickle_root)
    with pytest.raises(DataError, match=match):
        setup_dm(pickle_root, **kwargs)
    assert snapshot(pickle_root) == before


@pytest.mark.parametrize("given", [16, 16.0])
def test_a_whole_number_is_a_count_even_as_a_float(pickle_root, given):
    # A config parser may hand `train_subset: 16` (typed int | float) over as 16.0: still 16 images, and 1.0 is
    # one image (the ladder's first rung), never "all of them".
    assert len(setup_dm(pickle_root, train_subset=given).train_set) == 16
    dm = setup_dm(pickle_root, train_subset=float(given) / 16, val_size=float(given) * 2)
    assert len(dm.train_set) == 1 and len(dm.val_set) == 32


def test_subset_smaller_than_the_class_count_is_drawn_at_random_and_says_so(pickle_root, caplog):
    dm = setup_dm(pickle_root, train_subset=3)
    assert len(dm.train_set) == 3
    assert "cannot be stratified" in caplog.text


def test_missing_and_empty_data_dirs(tmp_path):
    with pytest.raises(DataError, match="holds no dataset.*cifar-10-batches-py"):
        setup_dm(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no dataset"):
        setup_dm(tmp_path / "empty")


def test_unreadable_data_dir(tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir()
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # root can read anything, so fake the permission
    with pytest.raises(DataError, match="is not readable"):
        sources.ensure_available(tmp_path / "locked", download=True)


def test_class_folder_without_images(fresh_folder):
    for f in (fresh_folder / "train" / "cat").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"class folder .*train/cat has no images"):
        setup_dm(fresh_folder)


def test_corrupted_image_is_named(fresh_folder):
    victim = sorted((fresh_folder / "train" / "dog").iterdir())[3]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    before = snapshot(fresh_folder)
    with pytest.raises(DataError, match=rf"cannot read 1 image file in {fresh_folder}: train/dog/{victim.name}"):
        setup_dm(fresh_folder)
    after = snapshot(fresh_folder)
    after.pop(fresh_folder / decode_cache.LOCK_NAME, None)  # the empty lock file that decoding takes stays
    assert after == before  # the bad file is reported, not deleted


def test_mismatched_class_folders(fresh_folder):
    shutil.rmtree(fresh_folder / "test" / "frog")
    (fresh_folder / "test" / "toad").mkdir()
    with pytest.raises(DataError, match="class folders differ between .*train.*test"):
        setup_dm(fresh_folder)


def test_corrupted_pickle_batch_is_named(tmp_path, pickle_root):
    root = tmp_path / "copy"
    shutil.copytree(pickle_root, root)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match="data_batch_3 is not a valid CIFAR-10 batch"):
        setup_dm(root)
    assert batch.stat().st_size == 100


def test_bad_model_options_are_clear():
    for kwargs in ({"hidden_sizes": [0]}, {"dropout": 1.5}):
        with pytest.raises(CifarlitError, match="model."):
            LitMLP(**kwargs)
    assert LitMLP(hidden_sizes=[])(torch.zeros(2, 3, 32, 32)).shape == (2, 10)  # a linear model is allowed


class NaNAtStep(LitMLP):
    """Training goes wrong at a known step, as a too-high learning rate would make it: the network's outputs turn
    NaN there (and stay NaN, since the NaN reaches the weights)."""

    def forward(self, x):
        logits = super().forward(x)
        return logits * float("nan") if self.training and self.global_step == 4 else logits


@pytest.mark.parametrize("pack_steps", [256, 1])  # 1: the step is found in stacked tallies too
def test_nan_loss_stops_before_a_checkpoint_and_keeps_the_last_good_one(pack_steps, pickle_root, tmp_path, monkeypatch):
    from cifarlit.models import lit_mlp as model_module

    monkeypatch.setattr(model_module, "PACK_STEPS", pack_steps)
    L.seed_everything(0)
    dm = CIFAR10DataModule(str(pickle_root), download=False, batch_size=64)  # 3 steps per epoch
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(max_epochs=5, callbacks=[ckpt], logger=False, enable_progress_bar=False,
                        default_root_dir=tmp_path)  # fmt: skip
    with pytest.raises(CifarlitError, match=r"loss became nan at step 4 \(epoch 1\).*Lower the learning rate"):
        trainer.fit(NaNAtStep(), dm)
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert state["epoch"] == 0  # written after the first, finite epoch; not overwritten by the failure
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_checkpoint_errors_name_the_file(tmp_path, pickle_root):
    from cifarlit.utils.checkpoints import load_checkpoint as check_checkpoint

    truncated = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"net.layers.1.weight": torch.zeros(3)}, "hyper_parameters": {}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(CifarlitError, match=r"cut.ckpt cannot be read .*truncated"):
        check_checkpoint(truncated)
    foreign = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(3)}}, foreign)
    with pytest.raises(CifarlitError, match="other.ckpt is not a cifarlit checkpoint"):
        check_checkpoint(foreign)
    with pytest.raises(CifarlitError, match="missing.ckpt does not exist"):
        check_checkpoint(tmp_path / "missing.ckpt")


def test_missing_test_batch(tmp_path, pickle_root):
    root = tmp_path / "copy"
    shutil.copytree(pickle_root, root)
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match="must contain data_batch_1..5 and test_batch"):
        setup_dm(root)

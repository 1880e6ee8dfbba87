"""Your own images: any number of classes, sizes and modes; class names flow from the folders to every output."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifarlit.data.datamodule import CIFAR10DataModule
from cifarlit.data.sources import DataError
from conftest import MIXED, write_mixed_folder
from helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
DEFAULT = str(REPO / "configs" / "default.yaml")
CLASSES = tuple(MIXED)  # cat: 20x20 grayscale PNG, dog: 40x48 RGB JPEG, fish: 32x32 RGBA PNG


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def no_test_folder(tmp_path_factory) -> Path:
    """30 training images per class and no test/ folder."""
    return write_mixed_folder(tmp_path_factory.mktemp("notest") / "images", per_class_train=30, per_class_test=0)


def setup_dm(root: Path, **kwargs) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(str(root), download=False, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


# --- fit and test on a folder ------------------------------------------------------------------------------------


def test_class_names_and_count_come_from_the_folders(own_run):
    model, dm = own_run.cli.model, own_run.cli.datamodule
    assert dm.classes == CLASSES
    assert model.hparams.num_classes == 3 and model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    assert dm.train_set.x.shape[1:] == (3, 32, 32)  # gray, RGB and RGBA files of three sizes, all RGB 32x32
    assert own_run.cli.trainer.callback_metrics["test/acc"] > 0.9  # the fixture classes are learnable


def test_checkpoint_stores_class_names_and_statistics(own_run):
    state = torch.load(own_run.ckpt, weights_only=True)["CIFAR10DataModule"]  # loadable without pickle code
    assert state["classes"] == list(CLASSES)
    assert state["mean"].shape == state["std"].shape == (3,)


def test_confusion_matrix_and_per_class_accuracy_use_the_class_names(own_run):
    rows = read_csv(own_run.run_dir / "confusion_matrix.csv")
    assert rows[0] == ["true\\predicted", *CLASSES]
    assert [r[0] for r in rows[1:]] == list(CLASSES)
    counts = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    assert counts.sum() == 12 and counts.sum(1).tolist() == [4, 4, 4]  # the whole test/ folder, by true class
    per_class = {r["class"]: r for r in csv.DictReader(open(own_run.run_dir / "per_class_accuracy.csv"))}
    assert set(per_class) == set(CLASSES)
    for i, name in enumerate(CLASSES):
        assert int(per_class[name]["correct"]) == counts[i, i]
        assert float(per_class[name]["accuracy"]) == pytest.approx(counts[i, i] / 4, abs=1e-4)
    metrics = own_run.cli.trainer.callback_metrics
    assert float(metrics["test/acc_dog"]) == pytest.approx(counts[1, 1] / 4)
    assert np.trace(counts) / 12 == pytest.approx(float(metrics["test/acc"]))  # the same predictions as test/acc
    events = EventAccumulator(str(own_run.run_dir), size_guidance={"images": 0}).Reload()
    assert "test/confusion_matrix" in events.Tags()["images"]
    assert {f"test/acc_{c}" for c in CLASSES} <= set(events.Tags()["scalars"])


# --- a folder without test/ --------------------------------------------------------------------------------------


def test_missing_test_folder_carves_a_stratified_disjoint_test_split(no_test_folder):
    dm = setup_dm(no_test_folder)  # test_size 0.2, then val_size 0.2 of the rest
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (57, 15, 18)
    assert np.bincount(dm.test_set.y.numpy()).tolist() == [6, 6, 6]
    assert np.bincount(dm.val_set.y.numpy()).tolist() == [5, 5, 5]
    parts = [set(dm.train_idx.tolist()), set(dm.val_idx.tolist()), set(dm.test_idx.tolist())]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(range(90))
    again = setup_dm(no_test_folder)
    assert np.array_equal(again.test_idx, dm.test_idx) and again.split_fingerprint == dm.split_fingerprint
    other = setup_dm(no_test_folder, test_size=9)  # a count works too, and moves the split
    assert len(other.test_set) == 9 and np.bincount(other.test_set.y.numpy()).tolist() == [3, 3, 3]
    assert other.split_fingerprint != dm.split_fingerprint


def test_test_size_is_ignored_when_the_folder_has_a_test_split(tmp_path):
    root = write_mixed_folder(tmp_path / "images", per_class_train=10, per_class_test=2)
    dm = setup_dm(root, test_size=0.5)
    assert len(dm.test_set) == 6 and dm.test_idx is None
    assert len(dm.train_set) + len(dm.val_set) == 30


@pytest.mark.parametrize(
    ("test_size", "match"),
    [
        (0.0, r"data.test_size=0.0 is not valid"),
        (1.0, r"data.test_size=1 does not fit the 90 training images"),  # a whole number is a count
        (0, r"data.test_size=0 is not valid"),
        (89, r"data.test_size=89 does not fit the 90 training images: .* needs 3..87"),
    ],
)
def test_bad_test_size_names_the_option(no_test_folder, test_size, match):
    with pytest.raises(DataError, match=match):
        setup_dm(no_test_folder, test_size=test_size)


def test_too_few_images_per_class_to_carve_a_test_split(tmp_path):
    root = write_mixed_folder(tmp_path / "images", per_class_train=2, per_class_test=0)
    with pytest.raises(DataError, match=r"has a class with 2 image\(s\); a stratified train/val/test split needs"):
        setup_dm(root)


def test_fit_then_test_on_a_folder_without_test_split(no_test_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(no_test_folder), "--trainer.max_epochs", "2",
                  "--data.test_size", "0.1")  # fmt: skip
    run_dir = Path(cli.trainer.log_dir)
    counts = [[int(v) for v in r[1:]] for r in read_csv(run_dir / "confusion_matrix.csv")[1:]]
    assert np.array(counts).sum() == 9  # 10% of 90, carved from train/
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["test_size"] == 9 and info["test_carved_from_train"] is True and info["classes"] == list(CLASSES)


# --- the rest of the workflow on a folder --------------------------------------------------------------------


def test_explore_reports_the_folder_classes(no_test_folder, tmp_path, capsys):
    run_cli("explore", "-c", DEFAULT, "--data.data_dir", str(no_test_folder), "--format", "json",
            "--grid_path", str(tmp_path / "grid.png"))  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["class_names"] == list(CLASSES)
    assert [report["splits"][s]["samples"] for s in ("train", "val", "test")] == [57, 15, 18]
    assert report["splits"]["test"]["class_counts"] == dict.fromkeys(CLASSES, 6)


def test_the_debug_ladder_passes_on_a_folder(no_test_folder, tmp_path, monkeypatch):
    from cifarlit.training.callbacks import OverfitCheck

    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "-c", DEFAULT, "-c", str(REPO / "configs" / "debug" / "one_batch.yaml"),
                  "--data.data_dir", str(no_test_folder))  # fmt: skip
    check = next(cb for cb in cli.trainer.callbacks if isinstance(cb, OverfitCheck))
    assert check.passed is True, check.message


def test_testing_a_checkpoint_on_other_classes_is_refused(own_run, tmp_path, monkeypatch, capsys):
    other = tmp_path / "other"
    shutil.copytree(own_run.data, other)
    (other / "train" / "fish").rename(other / "train" / "bird")
    (other / "test" / "fish").rename(other / "test" / "bird")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("test", "-c", DEFAULT, "--data.data_dir", str(other), "--ckpt_path", str(own_run.ckpt))
    assert exit_info.value.code == 2
    assert "trained on the classes ['cat', 'dog', 'fish'], but" in capsys.readouterr().err

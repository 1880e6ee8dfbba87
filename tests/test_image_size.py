"""Any image size: `data.image_size` and `data.channels` replace CIFAR-10's 32x32 RGB everywhere, from decoding
through the networks, augmentation, predict and export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlit.cli import cli_main
from cifarlit.data import DataError, images, sources, stream
from cifarlit.utils import checkpoints
from cifarlit.utils.checkpoints import MAX_SIDE, MIN_SIDE
from cifarlit.utils.errors import CifarlitError
from conftest import write_image_folder, write_unlabelled_folder
from helpers import REPO, run_cli

DEFAULT = str(REPO / "configs" / "default.yaml")


@pytest.fixture(scope="module")
def run64(tmp_path_factory):
    """A fit (then test) on a folder of 64x64 images at data.image_size 64; returns (cli, folder, tmp dir)."""
    base = tmp_path_factory.mktemp("size64")
    folder = write_image_folder(base / "images", size=64)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        cli = run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(folder), "--data.image_size", "64",
                      "--data.augment.preset", "course", "--trainer.max_epochs", "2")  # fmt: skip
    cli.best = str((base / cli.trainer.checkpoint_callback.best_model_path).resolve())
    return cli, folder, base


def test_a_64_pixel_folder_trains_at_its_size(run64):
    cli, _, _ = run64
    assert cli.datamodule.train_set.x.shape[1:] == (3, 64, 64)
    assert tuple(cli.model.hparams.image_shape) == (3, 64, 64)  # linked from the data
    assert cli.model.net.layers[1].in_features == 3 * 64 * 64
    assert cli.trainer.callback_metrics["test/acc"] > 0.3


def test_the_export_of_a_64_pixel_model_takes_64_pixel_images(run64, capsys):
    cli, _, base = run64
    out = base / "model64.pt"
    with pytest.raises(SystemExit) as done:
        cli_main(["export", "--ckpt_path", cli.best, "--format",
                  "torchscript", "--output", str(out)])  # fmt: skip
    assert done.value.code == 0
    model = torch.jit.load(str(out))
    probs = model(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    with pytest.raises(RuntimeError):
        model(torch.zeros(2, 32, 32, 3, dtype=torch.uint8))  # the trained size, not CIFAR-10's


def test_predict_reads_new_images_at_the_trained_size(run64, tmp_path, monkeypatch):
    cli, _, _ = run64
    new = tmp_path / "new"
    write_unlabelled_folder(new)  # 20x20, 40x48 and 32x32 images
    monkeypatch.chdir(tmp_path)
    predicted = run_cli("predict", "-c", DEFAULT, "--ckpt_path", cli.best,
                        "--data.predict_dir", str(new), "--output", str(tmp_path / "p.csv"))  # fmt: skip
    assert predicted.datamodule.predict_set.x.shape[1:] == (3, 64, 64)  # the config alone says 32
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 9


def test_testing_at_another_size_than_training_is_one_sentence(run64, tmp_path, monkeypatch, capsys):
    cli, folder, _ = run64
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        cli_main(["test", "-c", DEFAULT, "--data.data_dir", str(folder), "--ckpt_path",
                  cli.best])  # fmt: skip
    assert done.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "trained on images of shape [3, 64, 64]" in last and "[3, 32, 32]" in last


def test_an_image_is_resized_by_its_shorter_side_and_its_middle_kept(tmp_path):
    image = np.zeros((48, 144, 3), np.uint8)  # height 48, width 144: red | green | blue squares
    image[:, :48, 0], image[:, 48:96, 1], image[:, 96:, 2] = 255, 255, 255
    Image.fromarray(image).save(tmp_path / "wide.png")
    x = images.decode(str(tmp_path / "wide.png"), size=32)
    assert x.shape == (32, 32, 3)
    assert x[:, :, 1].mean() > 250 and x[:, :, 0].mean() < 5 and x[:, :, 2].mean() < 5  # the middle, not squashed
    gray = images.decode(str(tmp_path / "wide.png"), size=16, channels=1)
    assert gray.shape == (16, 16, 1) and abs(int(gray.mean()) - round(0.587 * 255)) <= 2  # green's luma


def test_gray_images_train_with_one_input_channel(folder_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(folder_root), "--data.channels", "1",
                  "--data.augment.preset", "course", "--model.net", "cifarlit.models.nets.SmallCNN",
                  "--trainer.max_epochs", "1")  # fmt: skip
    assert cli.datamodule.train_set.x.shape[1:] == (1, 32, 32) and len(cli.datamodule.mean) == 1
    assert cli.model.net.features[0].in_channels == 1
    assert torch.isfinite(cli.trainer.callback_metrics["test/loss"])


def test_cifar_batches_are_resized_to_the_asked_size(pickle_root):
    raw = sources.load(pickle_root, size=48)
    assert raw.train_x.shape[1:] == (48, 48, 3) and raw.test_x.shape[1:] == (48, 48, 3)
    native = sources.load(pickle_root)
    assert native.train_x.shape[1:] == (32, 32, 3)
    # the same pictures: the mean colour of each image survives resizing
    np.testing.assert_allclose(raw.train_x.mean((1, 2)), native.train_x.mean((1, 2)), atol=2)


@pytest.mark.parametrize("command", ["fit", "prepare"])
def test_an_image_size_too_small_for_the_networks_is_one_sentence(command, pickle_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    where = ["--output", str(tmp_path / "stream")] if command == "prepare" else ["-c", DEFAULT]
    with pytest.raises(SystemExit) as done:
        cli_main([command, *where, "--data.data_dir", str(pickle_root), "--data.image_size", "4"])
    assert done.value.code == 2
    assert f"data.image_size=4 is not valid: use {MIN_SIDE} or more pixels" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no stream, no run folder


@pytest.mark.parametrize("side", [MIN_SIDE - 1, MAX_SIDE + 1])
def test_a_checkpoint_or_a_stream_claiming_a_side_no_command_reads_is_refused(side, tmp_path):
    shape = [3, side, side]
    with pytest.raises(CifarlitError, match=rf"sides of {MIN_SIDE}\.\.{MAX_SIDE}"):
        checkpoints.check_data_state({"image_shape": shape}, {"image_shape": shape}, "--ckpt_path x.ckpt")
    meta = {"format": stream.FORMAT, "version": stream.VERSION, "classes": ["a", "b"], "mean": [0.5] * 3,
            "std": [0.2] * 3, "shape": shape, "sizes": dict.fromkeys(stream.SPLITS, 4), "val_size": 0.2,
            "test_size": None, "seed": 42, "split_fingerprint": "0"}  # fmt: skip
    (tmp_path / stream.META_NAME).write_text(json.dumps(meta))
    with pytest.raises(DataError, match=rf"has sides outside {MIN_SIDE}\.\.{MAX_SIDE}"):
        stream.read_info(str(tmp_path))
    meta["shape"] = [3, MIN_SIDE, MIN_SIDE]  # the same file at the smallest side is a stream
    (tmp_path / stream.META_NAME).write_text(json.dumps(meta))
    assert stream.read_info(str(tmp_path)).shape == (3, MIN_SIDE, MIN_SIDE)

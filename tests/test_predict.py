"""`cifarlit predict`: a CSV of class names for a folder of new images or the test split, from a checkpoint alone."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from conftest import MIXED, write_unlabelled_folder
from helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
DEFAULT = str(REPO / "configs" / "default.yaml")
CLASSES = list(MIXED)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def predict(own_run, tmp_path, *args: str):
    return run_cli(
        "predict", "-c", DEFAULT, "--ckpt_path", str(own_run.ckpt),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "lightning_logs"), *args,
    )  # fmt: skip


@pytest.fixture(scope="module")
def new_images(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A flat folder of 9 unlabelled images (20x20 gray PNG, 40x48 JPEG, 32x32 RGBA PNG) and their true classes."""
    folder = tmp_path_factory.mktemp("new") / "unlabelled"
    return folder, write_unlabelled_folder(folder)


def test_predict_a_folder_with_the_training_data_gone(own_run, new_images, tmp_path, monkeypatch, capsys):
    folder, truth = new_images
    assert not own_run.gone.exists()  # trained from there, then moved away: only the checkpoint is left
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "submission.csv"
    predict(own_run, tmp_path, "--data.predict_dir", str(folder), "--output", str(out))
    rows = read_rows(out)
    assert list(rows[0]) == ["id", "label"]
    assert [r["id"] for r in rows] == sorted(truth)  # file-name stems, in name order
    assert {r["label"] for r in rows} <= set(CLASSES)
    assert [r["label"] for r in rows] == [truth[r["id"]] for r in rows]  # the fixture classes are learnable
    assert f"predictions for 9 images: {out}" in capsys.readouterr().out


def test_probability_columns_sum_to_one_and_agree_with_the_label(own_run, new_images, tmp_path, monkeypatch):
    folder, _ = new_images
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "p.csv"
    predict(own_run, tmp_path, "--data.predict_dir", str(folder), "--output", str(out), "--probabilities", "true")
    rows = read_rows(out)
    assert list(rows[0]) == ["id", "label", *(f"prob_{c}" for c in CLASSES)]
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in CLASSES]
        assert sum(probs) == pytest.approx(1, abs=1e-5)
        assert CLASSES[probs.index(max(probs))] == row["label"]


def test_predictions_match_the_module_on_the_same_images(own_run, new_images, tmp_path, monkeypatch):
    """The CSV's numbers are the LightningModule's, normalized with the checkpoint's statistics."""
    from cifarlit.data.datamodule import CIFAR10DataModule
    from cifarlit.data.sources import load_unlabelled_folder
    from cifarlit.models.lit_mlp import LitMLP

    folder, _ = new_images
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "p.csv"
    predict(own_run, tmp_path, "--data.predict_dir", str(folder), "--output", str(out), "--probabilities", "true")
    module = LitMLP.load_from_checkpoint(own_run.ckpt, map_location="cpu").eval()
    dm = CIFAR10DataModule()
    dm.load_state_dict(torch.load(own_run.ckpt, weights_only=True)["CIFAR10DataModule"])
    x, _ = load_unlabelled_folder(folder)
    with torch.no_grad():
        expected = module(dm.to_input(torch.from_numpy(x).permute(0, 3, 1, 2))).softmax(-1)
    got = torch.tensor([[float(r[f"prob_{c}"]) for c in CLASSES] for r in read_rows(out)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_default_output_is_the_run_directory(own_run, new_images, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli = predict(own_run, tmp_path, "--data.predict_dir", str(new_images[0]))
    path = Path(cli.trainer.log_dir) / "predictions.csv"
    assert len(read_rows(path)) == 9
    assert (path.parent / "config.yaml").is_file()  # next to the config that produced it
    assert str(path) in capsys.readouterr().out


def test_without_a_logger_the_csv_goes_to_the_checkpoints_run(own_run, new_images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = own_run.run_dir / "predictions.csv"
    try:
        predict(own_run, tmp_path, "--data.predict_dir", str(new_images[0]), "--trainer.logger", "false")
        assert len(read_rows(path)) == 9
        assert not list(tmp_path.iterdir())  # never the working directory
    finally:
        path.unlink(missing_ok=True)


def test_predict_the_test_split_of_an_image_folder(own_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "test.csv"
    predict(own_run, tmp_path, "--data.data_dir", str(own_run.data), "--output", str(out))
    rows = read_rows(out)
    assert [r["id"] for r in rows] == [str(i) for i in range(12)]  # the index in the test split
    # the test split is test/cat/*, test/dog/*, test/fish/*, 4 each, in that order
    correct = sum(r["label"] == CLASSES[i // 4] for i, r in enumerate(rows))
    acc = float(own_run.cli.trainer.callback_metrics["test/acc"])
    assert correct == round(acc * 12)  # the same predictions as `test` scored


def test_the_console_script_exits_0_after_a_successful_command(own_run, new_images, tmp_path, monkeypatch, capsys):
    """What pip's `cifarlit` wrapper does: sys.exit(<the [project.scripts] function>())."""
    import importlib
    import re
    import sys

    target = re.search(r'^cifarlit = "([\w.]+):(\w+)"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    entry = getattr(importlib.import_module(target.group(1)), target.group(2))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cifarlit", "predict", "-c", DEFAULT, "--ckpt_path", str(own_run.ckpt),
                                      "--data.predict_dir", str(new_images[0]), "--output", "p.csv"])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(entry())
    assert exit_info.value.code is None  # exit status 0, and nothing printed to stderr by sys.exit
    assert "CifarCLI object" not in capsys.readouterr().err


def test_predict_reads_the_checkpoint_once_and_test_twice(own_run, new_images, tmp_path, monkeypatch):
    """Predict builds its module from the file the CLI read and checked; test lets Lightning restore it (a second
    read). LightningCLI's own read for the hyperparameters is replaced (CifarCLI._parse_ckpt_path): a Lightning
    release that reads the file elsewhere makes these counts, and this test, fail."""
    from lightning.pytorch.cli import LightningCLI

    assert callable(getattr(LightningCLI, "_parse_ckpt_path", None))  # the private hook cifarlit overrides
    reads, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: reads.append(Path(getattr(f, "path", f)).resolve())
                        or load(f, *a, **k))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    predict(own_run, tmp_path, "--data.predict_dir", str(new_images[0]), "--output", str(tmp_path / "p.csv"))
    assert reads == [own_run.ckpt.resolve()]
    assert len(read_rows(tmp_path / "p.csv")) == 9
    reads.clear()
    run_cli("test", "-c", DEFAULT, "--ckpt_path", str(own_run.ckpt), "--data.data_dir", str(own_run.data),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "lightning_logs"))  # fmt: skip
    assert reads == [own_run.ckpt.resolve()] * 2


def test_tta_is_a_model_option_of_test_predict_and_the_test_after_fit(own_run, tmp_path, monkeypatch):
    from cifarlit.models.lit_mlp import LitMLP

    monkeypatch.chdir(tmp_path)
    common = ("-c", DEFAULT, "--data.data_dir", str(own_run.data), "--ckpt_path", str(own_run.ckpt))
    plain = run_cli("test", *common).trainer.callback_metrics["test/loss"]
    tested = run_cli("test", *common, "--model.tta", "flip")
    assert tested.model.tta == "flip" and tested.trainer.callback_metrics["test/loss"] != plain
    probs = run_cli("predict", *common, "--model.tta", "flip", "--probabilities", "true", "--output",
                    str(tmp_path / "p.csv"))  # fmt: skip
    assert probs.model.tta == "flip"
    flipped = torch.tensor([[float(r[f"prob_{c}"]) for c in CLASSES] for r in read_rows(tmp_path / "p.csv")])
    run_cli("predict", *common, "--probabilities", "true", "--output", str(tmp_path / "q.csv"))
    unflipped = torch.tensor([[float(r[f"prob_{c}"]) for c in CLASSES] for r in read_rows(tmp_path / "q.csv")])
    assert not torch.allclose(flipped, unflipped)  # the CSV's numbers are the flipped ones
    seen, scores = [], LitMLP.scores
    monkeypatch.setattr(LitMLP, "scores", lambda self, x: seen.append(self.tta) or scores(self, x))
    fit = run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(own_run.data), "--trainer.max_epochs", "1",
                  "--model.tta", "flip")  # fmt: skip
    assert seen and set(seen) == {"flip"}  # the test after fit scored every batch with its mirror
    retested = run_cli("test", "-c", DEFAULT, "--data.data_dir", str(own_run.data), "--ckpt_path",
                       fit.trainer.checkpoint_callback.best_model_path)  # fmt: skip
    assert retested.model.tta == "none"  # a run's choice: not taken from the checkpoint


# --- mistakes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d, "is not a folder"),
        (lambda d: d.mkdir(), "has no images"),
        (lambda d: (d / "cat").mkdir(parents=True), "images in sub-folders are not read"),
        (lambda d: (d.mkdir(), (d / "notes.txt").write_text("x")), "has no images (.png"),
    ],
    ids=["missing", "empty", "only-subfolders", "no-image-files"],
)
def test_bad_predict_dir_is_one_sentence(make, expected, own_run, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "new"
    make(folder)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        predict(own_run, tmp_path, "--data.predict_dir", str(folder))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: data.predict_dir={str(folder)!r}" in err and expected in err


def test_two_files_with_one_id_are_refused(own_run, new_images, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "dup"
    shutil.copytree(new_images[0], folder)
    shutil.copy(next(folder.glob("*.png")), folder / (next(folder.glob("*.jpg")).stem + ".png"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        predict(own_run, tmp_path, "--data.predict_dir", str(folder))
    assert "which is their id in the predictions CSV: rename one" in capsys.readouterr().err


def test_predict_under_ddp_is_refused_before_anything_runs(
    own_run, new_images, tmp_path, monkeypatch, capsys, one_process_ddp
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        predict(
            own_run,
            tmp_path,
            "--data.predict_dir",
            str(new_images[0]),
            "--trainer.strategy",
            "ddp",
            "--trainer.devices",
            "2",
            "--trainer.accelerator",
            "cpu",
            "--output",
            str(tmp_path / "p.csv"),
        )
    assert exit_info.value.code == 2
    assert "predict writes one CSV from one process" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("ckpt", [None, "last"])
def test_predict_needs_a_checkpoint_file(ckpt, new_images, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("predict", "-c", DEFAULT, "--data.predict_dir", str(new_images[0]),
                *(["--ckpt_path", ckpt] if ckpt else []))  # fmt: skip
    assert exit_info.value.code == 2
    assert "predict needs --ckpt_path with a checkpoint file" in capsys.readouterr().err

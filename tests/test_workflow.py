"""The workflow commands on fixture data: explore, the debug ladder's verdicts, compare."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifarlit.cli import cli_main, run_command
from cifarlit.data.datamodule import CIFAR10DataModule
from cifarlit.models.lit_mlp import LitMLP
from cifarlit.training.callbacks import OverfitCheck
from cifarlit.utils.errors import CifarlitError, report
from helpers import run_cli


def compare_main(argv: list[str]) -> int:
    """``cifarlit compare ARGV`` in this process: its exit status, a refusal reported as the CLI reports it."""
    try:
        return run_command("compare", argv)
    except CifarlitError as err:
        return report(err)


REPO = Path(__file__).resolve().parents[1]
DEFAULT = str(REPO / "configs" / "default.yaml")


# --- explore -----------------------------------------------------------------------------------------------------


def test_explore_json_reports_every_split(pickle_root, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    run_cli(
        "explore",
        "-c",
        DEFAULT,
        "--data.data_dir",
        str(pickle_root),
        "--format",
        "json",
        "--grid_path",
        str(grid),
    )
    report = json.loads(capsys.readouterr().out)
    train, val, test = (report["splits"][s] for s in ("train", "val", "test"))
    assert (train["samples"], val["samples"], test["samples"]) == (160, 40, 50)
    assert train["channels"] == 3 and train["resolution"] == [32, 32] and train["dtype"] == "uint8"
    assert 0 <= train["min"] < train["max"] <= 255
    assert set(train["class_counts"].values()) == {16} and train["balanced"] is True
    assert report["class_names"][0] == "airplane" and len(train["mean"]) == len(train["std"]) == 3
    assert grid.stat().st_size > 1000


def test_explore_table_and_tensorboard_grid(folder_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_cli("explore", "-c", DEFAULT, "--data.data_dir", str(folder_root), "--log_grid", "true",
            "--trainer.logger.init_args.name", "explore")  # fmt: skip
    out = capsys.readouterr().out
    for word in (
        "samples",
        "channels",
        "resolution",
        "dtype",
        "mean",
        "std",
        "balanced",
        "airplane",
        "sample grid",
    ):
        assert word in out
    run = next((tmp_path / "lightning_logs" / "explore").glob("version_*"))
    assert (run / "explore.png").is_file() and f"sample grid: {(run / 'explore.png').relative_to(tmp_path)}" in out
    assert not list(tmp_path.glob("*.png"))  # nothing in the working directory
    events = EventAccumulator(str(run)).Reload()
    assert "explore/samples" in events.Tags()["images"]


# --- the debug ladder --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rung", ["one_sample", "one_batch"])
def test_ladder_rungs_pass_on_a_working_pipeline(rung, pickle_root, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "-c", DEFAULT, "-c", str(REPO / "configs" / "debug" / f"{rung}.yaml"),
                  "--data.data_dir", str(pickle_root))  # fmt: skip
    check = next(cb for cb in cli.trainer.callbacks if isinstance(cb, OverfitCheck))
    assert check.passed is True, check.message
    assert check.message.startswith("PASS")
    assert not (tmp_path / "lightning_logs" / f"debug_{rung}" / "version_0" / "checkpoints").exists()


def test_ladder_fails_with_a_learning_rate_of_zero(pickle_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "-c", DEFAULT, "-c", str(REPO / "configs" / "debug" / "one_batch.yaml"),
                "--data.data_dir", str(pickle_root), "--model.optimizer.init_args.lr", "0")  # fmt: skip
    assert exit_info.value.code == 1


class ShuffledLabels(CIFAR10DataModule):
    """A classic pipeline bug: labels shuffled independently of the images, afresh every batch."""

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = super().on_after_batch_transfer(batch, dataloader_idx)
        return x, y[torch.randperm(len(y))]


def test_ladder_fails_when_labels_are_shuffled_apart_from_images(pickle_root, tmp_path):
    L.seed_everything(0)
    dm = ShuffledLabels(str(pickle_root), download=False, train_subset=16, batch_size=16)
    check = OverfitCheck()
    trainer = L.Trainer(max_epochs=100, limit_val_batches=0, callbacks=[check], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(LitMLP(), dm)
    assert check.passed is False
    assert check.message.startswith("FAIL") and "labels" in check.message and "learning rate" in check.message


# --- compare -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_runs(pickle_root, tmp_path_factory):
    """Two runs: 'long' (3 epochs, tested) and 'short' (2 epochs, never tested)."""
    root = tmp_path_factory.mktemp("runs")
    for name, epochs, test in (("long", 3, "true"), ("short", 2, "false")):
        run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(pickle_root), "--trainer.max_epochs", str(epochs),
                "--trainer.logger.init_args.save_dir", str(root / "lightning_logs"),
                "--trainer.logger.init_args.name", name, "--test_after_fit", test)  # fmt: skip
    return root / "lightning_logs"


def curves_png(path: Path, runs: int) -> None:
    """``path`` is a PNG of the learning curves with a line in each of the first ``runs`` colours of the plot's
    cycle (tab10: run i in colour i) and none in the next, so each run, and only those, is drawn."""
    import matplotlib
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        image.verify()  # a complete, undamaged PNG
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 500
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    tab10 = [tuple(round(255 * c) for c in matplotlib.colormaps["tab10"](i)[:3]) for i in range(runs + 1)]
    drawn = [int((pixels == colour).all(axis=1).sum()) for colour in tab10]
    assert all(n > 100 for n in drawn[:runs]) and drawn[runs] == 0, f"pixels per run colour (one more last): {drawn}"


def table_rows(text: str) -> dict[str, dict[str, str]]:
    """The markdown table's rows by run name, each as {column header: cell}."""
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header, rule, body = cells[0], cells[1], cells[2:]
    assert all(set(cell) == {"-"} for cell in rule) and len(rule) == len(header)
    rows = {row[0]: dict(zip(header, row, strict=True)) for row in body}
    assert len(rows) == len(body), "one row per run"
    return rows


def row_from_events(run_dir: Path) -> dict[str, str]:
    """What the table should say of a run, from its TensorBoard event files."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    val_acc = [e.value for e in scalars["val/acc"]]
    fit_seconds = round(scalars["val/acc"][-1].wall_time - events.FirstEventTimestamp())  # start to last validation
    return {
        "epochs": str(len(val_acc)),
        "final train/acc": f"{scalars['train/acc'][-1].value:.4f}",
        "final val/acc": f"{val_acc[-1]:.4f}",
        "best val/acc": f"{max(val_acc):.4f}",
        "best val/loss": f"{min(e.value for e in scalars['val/loss']):.4f}",
        "test/acc": f"{scalars['test/acc'][-1].value:.4f}" if "test/acc" in scalars else "-",
        "fit time": f"{fit_seconds // 60}m{fit_seconds % 60:02d}s",
    }


def test_a_run_links_its_hyperparameters_to_its_curves_without_a_placeholder_point(finished_runs):
    from cifarlit.training.callbacks import event_writer

    events = EventAccumulator(str(finished_runs / "long" / "version_0"), size_guidance={"scalars": 0}).Reload()
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")  # TensorBoard's HPARAMS tab has the run
    assert len(events.Scalars("val/acc")) == 3  # one point per epoch: no placeholder value in the curve
    with pytest.raises(RuntimeError, match="update event_writer"):  # a torch that renamed the writer fails loudly
        event_writer(object())


def test_compare_writes_curves_and_table(finished_runs, tmp_path, capsys):
    png, table = tmp_path / "curves.png", tmp_path / "table.md"
    code = compare_main([str(finished_runs / "*" / "version_*"), "--output", str(png), "--table", str(table)])
    assert code == 0
    rows = table_rows(table.read_text())
    assert list(rows) == ["long", "short"]  # the glob's order, which is the curves' colour order
    curves_png(png, runs=2)
    for name, row in rows.items():
        assert row == {"run": name, **row_from_events(finished_runs / name / "version_0")}
    assert rows["long"]["epochs"] == "3" and rows["short"]["epochs"] == "2"  # as the runs were fitted
    assert rows["short"]["test/acc"] == "-" and rows["long"]["test/acc"] != "-"  # only 'long' was tested
    assert table_rows(capsys.readouterr().out) == rows  # the same table on stdout


def test_compare_expands_a_logs_folder(finished_runs, tmp_path, capsys):
    png = tmp_path / "c.png"
    assert compare_main([str(finished_runs), "--output", str(png)]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert list(rows) == ["long", "short"]
    for name, row in rows.items():
        assert row == {"run": name, **row_from_events(finished_runs / name / "version_0")}
    curves_png(png, runs=2)


def test_compare_rejects_a_folder_without_event_files(tmp_path, capsys):
    (tmp_path / "empty_run").mkdir()
    assert compare_main([str(tmp_path / "empty_run"), "--output", str(tmp_path / "c.png")]) == 2
    assert "no TensorBoard event files" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_compare_through_the_cli(finished_runs, tmp_path, capsys):
    png = tmp_path / "c.png"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["compare", str(finished_runs / "long" / "version_0"), "--output", str(png)])
    assert exit_info.value.code == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows == {"long": {"run": "long", **row_from_events(finished_runs / "long" / "version_0")}}
    curves_png(png, runs=1)


def test_compare_writes_next_to_the_runs_unless_told_otherwise(finished_runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    try:
        assert compare_main([str(finished_runs / "*" / "version_*")]) == 0
        assert (finished_runs / "compare.png").is_file()  # the folder holding both runs
        assert f"curves: {finished_runs.resolve() / 'compare.png'}" in capsys.readouterr().out
        assert not list(tmp_path.iterdir())  # nothing in the working directory
    finally:
        (finished_runs / "compare.png").unlink(missing_ok=True)


def test_compare_plots_accuracy_against_wall_clock_time(finished_runs, tmp_path, monkeypatch, capsys):
    import matplotlib.axes

    from cifarlit.commands.compare import read_run

    drawn = []
    plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda ax, x, y, **kw: drawn.append((list(x), list(y), kw))
                        or plot(ax, x, y, **kw))  # fmt: skip
    png = tmp_path / "time.png"
    assert compare_main([str(finished_runs / "long" / "version_0"), "--output", str(png), "--x", "time"]) == 0
    events = EventAccumulator(str(finished_runs / "long" / "version_0"), size_guidance={"scalars": 0}).Reload()
    seconds = [e.wall_time - events.FirstEventTimestamp() for e in events.Scalars("val/acc")]
    val_acc = [e.value for e in events.Scalars("val/acc")]
    assert read_run(finished_runs / "long" / "version_0")["_seconds/val/acc"] == seconds
    assert (seconds, val_acc) in [(x, y) for x, y, _ in drawn]  # val/acc against the seconds since the start
    curves_png(png, runs=1)

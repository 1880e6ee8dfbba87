"""``cifarlit fit --find_lr true`` / ``--find_batch_size true``: Lightning's finders run before the fit, and what
they find is what the run trains with, records and resumes with; their steps and temporary checkpoints are left
nowhere."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch import Callback

from cifarlit.cli import build_cli, cli_main
from cifarlit.models.lit_mlp import LitMLP
from cifarlit.models.schedules import WarmupCosineLR
from cifarlit.training import finders
from helpers import REPO, OomNet

DEFAULT = str(REPO / "configs" / "default.yaml")
CONFIG_LR = 0.001  # configs/default.yaml's Adam


class StartWeights(Callback):
    """The weights, the step count and the batch size the real training starts from."""

    def on_train_start(self, trainer, pl_module):
        self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.step = trainer.global_step
        self.tallied = {name: float(metric.weight) for name, metric in pl_module.metrics.items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch = getattr(self, "batch", len(batch[1]))


def train_loss_points(run_dir: Path) -> int:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return len(events.Scalars("train/loss"))


def test_the_found_rate_is_printed_plotted_used_recorded_and_resumed(pickle_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    start = StartWeights()
    args = ["--data.data_dir", str(pickle_root), "--test_after_fit", "false"]
    cli = build_cli(["fit", "-c", DEFAULT, *args, "--trainer.max_epochs", "2", "--find_lr", "true"], callbacks=[start])
    out = capsys.readouterr().out
    printed = re.findall(r"^find_lr: the run trains at lr (\S+) .*; plot: (\S+)$", out, re.MULTILINE)
    assert len(printed) == 1, out  # one line
    lr, run_dir = cli.model.lr, Path(cli.trainer.log_dir)
    assert lr == pytest.approx(float(printed[0][0]), rel=1e-3) and lr != CONFIG_LR
    plot = run_dir / finders.PLOT
    assert Path(printed[0][1]) == plot and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the optimizer that trained, the checkpoint's optimizer state and hyperparameters, config.yaml, hparams.yaml
    assert [g["lr"] for g in cli.trainer.optimizers[0].param_groups] == [lr]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == lr
    assert last["hyper_parameters"]["optimizer"]["init_args"]["lr"] == lr
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["optimizer"]["init_args"]["lr"] == lr and config["find_lr"] is False
    assert yaml.safe_load((run_dir / "hparams.yaml").read_text())["optimizer"]["init_args"]["lr"] == lr
    # the finder's ~100 steps: not in the weights training starts from, the step count or the logged epochs
    L.seed_everything(42)
    assert all(torch.equal(start.weights[k], v) for k, v in LitMLP().state_dict().items())
    assert start.step == 0 and train_loss_points(run_dir) == 2
    assert set(start.tallied.values()) == {0.0}  # the epoch metrics hold none of the finder's losses
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lightning_logs"]
    assert not [p for p in tmp_path.rglob("*lr_find*") if p.name != finders.PLOT]  # its checkpoint is gone
    # the run's config.yaml resumes at the found rate (find_lr: false in it, so it is not refused)
    resumed = build_cli(["fit", "-c", str(run_dir / "config.yaml"), "--ckpt_path", "last", "--trainer.max_epochs", "3"])
    assert [g["lr"] for g in resumed.trainer.optimizers[0].param_groups] == [lr]
    assert "find_lr:" not in capsys.readouterr().out


def test_a_schedule_is_built_from_the_found_rate():
    sgd = functools.partial(torch.optim.SGD, lr=0.5, momentum=0.9)
    one_cycle = LitMLP(optimizer=sgd, lr_scheduler=functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.5))
    warmup = LitMLP(optimizer=sgd, lr_scheduler=WarmupCosineLR)
    for model in (one_cycle, warmup):
        assert model.lr == 0.5
        model.lr = 0.02
        optimizer = model.optimizer(model.parameters())
        scheduler = model.lr_scheduler(optimizer, total_steps=10)
        assert optimizer.defaults["lr"] == model.lr == 0.02 and optimizer.defaults["momentum"] == 0.9
        assert model.hparams["optimizer"]["init_args"]["lr"] == 0.02
        peak = max(max(scheduler.get_last_lr()), *(scheduler.step() or scheduler.get_last_lr()[0] for _ in range(9)))
        assert peak == pytest.approx(0.02, rel=0.05)  # the schedule peaks at the found rate, not at 0.5
    assert one_cycle.hparams["lr_scheduler"]["init_args"]["max_lr"] == 0.02  # OneCycleLR sets the rate itself


REFUSED = {
    "resume": (["--ckpt_path", "{ckpt}"], "cannot be used with --ckpt_path"),
    "batch size on resume": (["--find_batch_size", "true", "--ckpt_path", "{ckpt}"], "cannot be used with --ckpt_path"),
    "fast_dev_run": (["--trainer.fast_dev_run", "1"], "drop --trainer.fast_dev_run"),
    "several devices": (["--trainer.devices", "2", "--trainer.accelerator", "cpu"], "runs on one device"),
    "several nodes": (["--trainer.num_nodes", "2"], "runs on one device"),
    "CyclicLR": (
        ["--model.lr_scheduler", "torch.optim.lr_scheduler.CyclicLR", "--model.lr_scheduler.init_args.base_lr",
         "0.001", "--model.lr_scheduler.init_args.max_lr", "0.1"],
        "CyclicLR sets the rate from base_lr and max_lr",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_the_finder_cannot_honour_is_refused_before_anything_runs(case, own_run, tmp_path, monkeypatch, capsys):
    args, expected = REFUSED[case]
    args = [a.format(ckpt=own_run.ckpt) for a in args]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "-c", DEFAULT, "--data.data_dir", str(own_run.data), "--find_lr", "true", *args])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert (
        lines[-1].startswith(("error: --find_lr true", "error: --find_batch_size true"))
        and expected in lines[-1]
        and "Traceback" not in lines
    )
    assert not any(tmp_path.iterdir())  # refused before a run folder was claimed


def test_the_batch_size_found_is_trained_with_recorded_and_the_rate_found_for_it(
    pickle_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(finders, "check_device", lambda trainer: None)  # the CPU runs out of nothing: OomNet does
    start = StartWeights()
    cli = build_cli(["fit", "-c", DEFAULT, "--data.data_dir", str(pickle_root), "--test_after_fit", "false",
                     "--trainer.max_epochs", "1", "--data.batch_size", "16", "--model.net", "helpers.OomNet",
                     "--model.net.init_args.limit", "100", "--find_batch_size", "true", "--find_lr", "true"],
                    callbacks=[start])  # fmt: skip
    out = capsys.readouterr().out
    # 16, 32 and 64 fit, 128 > 100 "runs out of memory": 64, and the rate is then found with batches of 64
    assert re.search(r"^find_batch_size: the run trains with batches of 64 \(.*the config said 16\)", out, re.M)
    assert out.index("find_batch_size:") < out.index("find_lr:")
    assert cli.datamodule.hparams.batch_size == start.batch == 64
    config = yaml.safe_load((Path(cli.trainer.log_dir) / "config.yaml").read_text())
    assert config["data"]["batch_size"] == 64 and config["find_batch_size"] is False
    L.seed_everything(42)
    fresh = LitMLP(net=functools.partial(OomNet, limit=100)).state_dict()
    assert all(torch.equal(start.weights[k], v) for k, v in fresh.items()) and start.step == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lightning_logs"]
    assert not [p for p in tmp_path.rglob("*") if "scale_batch_size" in p.name or p.name.startswith(".finder")]


def test_the_batch_size_finder_is_refused_on_the_cpu(pickle_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "-c", DEFAULT, "--data.data_dir", str(pickle_root), "--trainer.accelerator", "cpu",
                  "--find_batch_size", "true"])  # fmt: skip
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: --find_batch_size true") and "on the CPU" in last
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing trained, nothing written

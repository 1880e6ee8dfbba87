"""The command line: every config runs, fit -> test writes curves and checkpoints, mistakes read as sentences."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import CONFIGS, config_args, run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_every_config_runs_a_fast_dev_run(config, pickle_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if config.name.startswith("finetune"):  # starts from the checkpoint that pretrain.yaml writes: run that first
        run_cli(
            "fit", *config_args(config.parent / "pretrain.yaml"), "--data.data_dir", str(pickle_root),
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--test_after_fit", "false",
        )  # fmt: skip
        assert (tmp_path / "lightning_logs" / "transfer" / "pretrained.ckpt").is_file()
    cli = run_cli(
        "fit", *config_args(config), "--data.data_dir", str(pickle_root), "--data.download", "false",
        "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu",
    )  # fmt: skip
    assert cli.trainer.state.finished
    assert "train/loss" in cli.trainer.callback_metrics


def test_fit_then_test_writes_curves_checkpoints_and_config(pickle_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(
        "fit", "-c", str(REPO / "configs" / "default.yaml"), "--data.data_dir", str(pickle_root),
        "--trainer.max_epochs", "3", "--trainer.accelerator", "cpu", "--trainer.logger.init_args.name", "e2e",
    )  # fmt: skip
    run_dir = Path(cli.trainer.log_dir).resolve()
    assert run_dir == tmp_path.resolve() / "lightning_logs" / "e2e" / "version_0"
    assert (run_dir / "config.yaml").is_file()
    ckpts = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(name.startswith("epoch") for name in ckpts)
    events = EventAccumulator(str(run_dir)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"} <= tags
    assert len(events.Scalars("val/acc")) == 3  # one point per epoch
    assert cli.trainer.callback_metrics["test/acc"] > 0.5  # the fixture classes are learnable


def test_a_checkpoint_alone_rebuilds_the_model(pickle_root, tmp_path):
    script = f"""
import sys, torch
from cifarlit.cli import cli_main
sys.argv = ["cifarlit"]
cli = cli_main(["fit", "-c", {str(REPO / "configs" / "default.yaml")!r}, "--data.data_dir", {str(pickle_root)!r},
                "--trainer.max_epochs", "1", "--model.hidden_sizes", "[32]", "--model.optimizer", "torch.optim.SGD",
                "--model.optimizer.init_args.lr", "0.05", "--test_after_fit", "false"])
torch.save(cli.model(torch.ones(2, 3, 32, 32)), "expected.pt")
print(cli.trainer.checkpoint_callback.best_model_path)
"""
    first = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = first.stdout.strip().splitlines()[-1]
    check = (
        "import torch; from cifarlit.model import LitMLP; "
        f"m = LitMLP.load_from_checkpoint({ckpt!r}, map_location='cpu').eval(); "
        "assert m.hparams.hidden_sizes == [32]; "
        "assert isinstance(m.configure_optimizers(), torch.optim.SGD); "
        "print(torch.equal(m(torch.ones(2, 3, 32, 32)), torch.load('expected.pt')))"
    )
    second = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.strip() == "True"  # a fresh process, no data on disk needed


def test_monitor_keys_in_configs_are_logged_metrics():
    logged = {f"{stage}/{metric}" for stage in ("train", "val") for metric in ("loss", "acc")}
    for config in CONFIGS:
        text = (REPO / config).read_text()
        for key in re.findall(r"monitor:\s*([\w/]+)", text):
            assert key in logged, f"{config}: monitor {key!r} is not a logged metric"


def test_print_config_and_linked_num_classes(folder_root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            "fit",
            "-c",
            str(REPO / "configs" / "default.yaml"),
            "--data.data_dir",
            str(folder_root),
            "--print_config",
        )
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["hidden_sizes"] == [100, 100]
    assert "num_classes" not in printed["model"]  # linked from the data, not repeated in YAML


def subprocess_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "cifarlit", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_console_script_and_module_are_the_same(tmp_path):
    script = Path(sys.executable).with_name("cifarlit")
    a = subprocess.run([script, "fit", "--help"], capture_output=True, text=True, cwd=tmp_path)
    b = subprocess_cli("fit", "--help", cwd=tmp_path)
    assert a.returncode == b.returncode == 0
    options = lambda text: set(re.findall(r"--[\w.]+", text))  # noqa: E731 -- usage lines wrap differently
    assert options(a.stdout) == options(b.stdout)
    assert "--data.train_subset" in b.stdout and "--model.optimizer" in b.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.hiden_sizes", "[10]"], "hiden_sizes"),
        (["--data.batch_size", "many"], "batch_size"),
        (["--model.optimizer", "torch.optim.NoSuchOpt"], "NoSuchOpt"),
        (["--data.data_dir", "{missing}", "--data.download", "false"], "holds no dataset"),
        (["--data.batch_size", "0"], "data.batch_size=0"),
        (["--data.val_size", "1.5"], "data.val_size=1.5"),
        (["--model.hidden_sizes", "[100, 0]"], "hidden_sizes=[100, 0]"),
    ],
)
def test_user_mistakes_are_one_clear_message(args, expected, pickle_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{missing}", str(tmp_path / "nowhere")) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "--data.data_dir", str(pickle_root), "--trainer.fast_dev_run", "true", *args)
    assert exit_info.value.code != 0
    assert expected in capsys.readouterr().err


def test_a_mistake_in_a_real_process_prints_no_traceback(tmp_path):
    result = subprocess_cli(
        "fit", "--data.data_dir", str(tmp_path / "nowhere"), "--data.download", "false", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: data.data_dir=")
    assert "Traceback" not in result.stderr


def test_no_network_fails_fast_with_what_to_put_where(tmp_path, monkeypatch):
    import socket

    from cifarlit import sources

    def unreachable(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(sources.DataError, match="cannot be reached.*cifar-10-batches-py.*ROOT/train/<class>"):
        sources.ensure_available(tmp_path / "empty", download=True)
    assert not (tmp_path / "empty").exists()  # nothing half-made left behind


def test_ema_of_weights_from_the_command_line(pickle_root, tmp_path, monkeypatch):
    import torch
    from lightning.pytorch.callbacks import EMAWeightAveraging

    monkeypatch.chdir(tmp_path)
    cli = run_cli(
        "fit", "-c", str(REPO / "configs" / "default.yaml"), "--data.data_dir", str(pickle_root),
        "--trainer.max_epochs", "2", "--test_after_fit", "false",
        "--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging", "--trainer.callbacks.decay", "0.9",
    )  # fmt: skip
    (ema,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, EMAWeightAveraging)]
    averaged = dict(ema._average_model.module.named_parameters())
    for name, param in cli.model.named_parameters():  # training ends with the averaged weights in the model
        torch.testing.assert_close(param, averaged[name])
    assert cli.trainer.callback_metrics["val/acc"] > 0.3


def test_nesterov_sgd_and_gradient_clipping_from_the_command_line(pickle_root, tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)

    def fit(*extra):
        return run_cli(
            "fit", "-c", str(REPO / "configs" / "default.yaml"), "--data.data_dir", str(pickle_root),
            "--trainer.fast_dev_run", "1", "--model.optimizer", "torch.optim.SGD",
            "--model.optimizer.init_args.lr", "1.0", "--model.optimizer.init_args.momentum", "0.9",
            "--model.optimizer.init_args.nesterov", "true", *extra,
        )  # fmt: skip

    import lightning as L

    from cifarlit.model import LitMLP

    L.seed_everything(42)
    before = LitMLP().state_dict()  # seed_everything: 42 in the config makes every run start from these
    clipped = fit("--trainer.gradient_clip_val", "1e-6")
    (optimizer,) = clipped.trainer.optimizers
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"] is True
    step = torch.cat([(p - before[k]).flatten() for k, p in clipped.model.state_dict().items() if "weight" in k])
    assert step.norm() <= 2e-6  # one SGD step of lr 1 moves the weights by at most the clipped gradient norm
    free = fit()
    step = torch.cat([(p - before[k]).flatten() for k, p in free.model.state_dict().items() if "weight" in k])
    assert step.norm() > 1e-3


@pytest.mark.parametrize(("extra", "fused"), [((), True), (("--model.optimizer.init_args.fused", "false"), False)])
def test_the_default_config_trains_with_fused_adam_unless_told_not_to(extra, fused, pickle_root, tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "-c", str(REPO / "configs" / "default.yaml"), "--data.data_dir", str(pickle_root),
                  "--trainer.fast_dev_run", "1", *extra)  # fmt: skip
    (optimizer,) = cli.trainer.optimizers
    assert isinstance(optimizer, torch.optim.Adam) and bool(optimizer.defaults["fused"]) is fused
    assert optimizer.defaults["lr"] == 0.001  # the config's arguments still apply


def _logger_config(save_dir, version=None):
    from jsonargparse import Namespace

    init_args = Namespace(save_dir=str(save_dir), name="run", version=version)
    logger = Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger", init_args=init_args)
    return Namespace(trainer=Namespace(logger=logger))


def test_every_run_claims_its_own_folder_before_anything_is_built(tmp_path, monkeypatch):
    from cifarlit import runs

    first, second = _logger_config(tmp_path), _logger_config(tmp_path)
    runs.claim_run_dir(first)
    runs.claim_run_dir(second)  # started "at the same time": the first folder already exists
    assert (first.trainer.logger.init_args.version, second.trainer.logger.init_args.version) == (0, 1)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["version_0", "version_1"]
    (tmp_path / "run" / "version_7").mkdir()
    third = _logger_config(tmp_path)
    runs.claim_run_dir(third)
    assert third.trainer.logger.init_args.version == 8
    given = _logger_config(tmp_path, version=3)
    runs.claim_run_dir(given)
    assert given.trainer.logger.init_args.version == 3 and not (tmp_path / "run" / "version_3").exists()
    monkeypatch.setattr(runs.rank_zero_only, "rank", 1)  # a DDP worker: rank 0 claims, Lightning shares it
    worker = _logger_config(tmp_path)
    runs.claim_run_dir(worker)
    assert worker.trainer.logger.init_args.version is None


def test_a_fit_writes_into_the_folder_it_claimed(pickle_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lightning_logs" / "claimed" / "version_0").mkdir(parents=True)  # e.g. another run's, just made
    cli = run_cli("fit", "-c", str(REPO / "configs" / "default.yaml"), "--data.data_dir", str(pickle_root),
                  "--trainer.max_epochs", "1", "--trainer.logger.init_args.name", "claimed")  # fmt: skip
    assert Path(cli.trainer.log_dir).name == "version_1"
    assert not any((tmp_path / "lightning_logs" / "claimed" / "version_0").iterdir())

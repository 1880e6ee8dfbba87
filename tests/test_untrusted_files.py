"""Files from disk are data, never code: a crafted checkpoint or weights file is refused in one sentence before
anything in it runs, wherever it enters (fit/validate/test/predict --ckpt_path, export, model.init_from), and
cifarlit's own checkpoints, from the CLI or from Python, load as tensors and plain values only."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from cifarlit.cli import cli_main
from cifarlit.data.datamodule import CIFAR10DataModule
from cifarlit.models.lit_mlp import LitMLP
from cifarlit.models.nets import SmallCNN
from helpers import REPO, RunsCode, run_cli

DEFAULT = str(REPO / "configs" / "default.yaml")


@pytest.fixture
def crafted(own_run, tmp_path) -> tuple[Path, Path, Path]:
    """(a checkpoint of a real run with a payload in its hyperparameters, a state dict with one, the marker)."""
    marker = tmp_path / "code-ran"
    ckpt = torch.load(own_run.ckpt, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["note"] = RunsCode(marker)
    torch.save(ckpt, tmp_path / "crafted.ckpt")
    state = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    torch.save({**state, "extra": RunsCode(marker)}, tmp_path / "crafted_weights.pt")
    return tmp_path / "crafted.ckpt", tmp_path / "crafted_weights.pt", marker


def refused(capsys, args: list[str]) -> str:
    """Runs `cifarlit ARGS`, expects exit status 2 and returns its one-line error."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_a_crafted_checkpoint_runs_nothing_in_any_subcommand(subcommand, crafted, own_run, tmp_path, monkeypatch,
                                                              capsys):  # fmt: skip
    ckpt, _, marker = crafted
    monkeypatch.chdir(tmp_path)
    message = refused(capsys, [subcommand, "-c", DEFAULT, "--data.data_dir", str(own_run.data), "--ckpt_path",
                               str(ckpt)])  # fmt: skip
    assert f"--ckpt_path {ckpt} holds Python objects that reading it would run as code" in message
    assert "posix.system" in message
    assert not marker.exists()


def test_a_crafted_checkpoint_runs_nothing_on_export(crafted, capsys):
    ckpt, _, marker = crafted
    message = refused(capsys, ["export", "--ckpt_path", str(ckpt), "--format", "torchscript"])
    assert f"--ckpt_path {ckpt} holds Python objects" in message
    assert not marker.exists() and not ckpt.with_suffix(".pt").exists()


@pytest.mark.parametrize("which", ["checkpoint", "state dict"])
def test_crafted_init_from_files_run_nothing(which, crafted, own_run, tmp_path, monkeypatch, capsys):
    ckpt, weights, marker = crafted
    path = ckpt if which == "checkpoint" else weights
    monkeypatch.chdir(tmp_path)
    message = refused(capsys, ["fit", "-c", DEFAULT, "--data.data_dir", str(own_run.data), "--model.init_from",
                               str(path), "--trainer.max_epochs", "1"])  # fmt: skip
    assert message.startswith(f"error: model.init_from={path} holds Python objects")
    assert not marker.exists()


def test_weights_only_false_is_refused(own_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    message = refused(capsys, ["test", "-c", DEFAULT, "--data.data_dir", str(own_run.data), "--ckpt_path",
                               str(own_run.ckpt), "--weights_only", "false"])  # fmt: skip
    assert "--weights_only false is not supported" in message


def test_a_module_built_in_python_writes_a_checkpoint_of_plain_values(pickle_root, tmp_path):
    model = LitMLP(net=partial(SmallCNN, widths=[8, 16]), optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, CIFAR10DataModule(str(pickle_root), download=False))
    path = trainer.checkpoint_callback.best_model_path
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]  # no pickled classes in it
    assert hparams["net"] == {"class_path": "cifarlit.models.nets.SmallCNN", "init_args": {"widths": [8, 16]}}
    rebuilt = LitMLP.load_from_checkpoint(path, weights_only=True)
    assert isinstance(rebuilt.net, SmallCNN)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values(), strict=True)
    )
    optimizer = rebuilt.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.05


def test_a_factory_that_is_not_plain_values_is_left_out_of_the_hyperparameters():
    model = LitMLP(optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    assert "optimizer" not in model.hparams and model.hparams["lr_scheduler"] is None
    assert model.hparams["_instantiator"] == "lightning.pytorch.cli.instantiate_module"


def test_the_cli_tests_its_best_checkpoint_reading_weights_only(pickle_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = []
    original = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(pickle_root), "--trainer.max_epochs", "1")
    assert seen and all(flag is True for flag in seen)  # Lightning's own read of the best checkpoint included

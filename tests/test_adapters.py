"""Every undocumented library behaviour cifarlit relies on, checked against the installed library: an upgrade that
changes one fails here, naming it, instead of somewhere inside a run (utils/lightning_adapter.py,
utils/jsonargparse_adapter.py; pyproject.toml keeps both libraries below the next release that could change them)."""

from __future__ import annotations

import inspect
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from cifarlit.models.lit_mlp import LitMLP
from cifarlit.models.nets import SmallCNN
from cifarlit.utils import checkpoint_state, lightning_adapter
from cifarlit.utils.jsonargparse_adapter import factory_parts
from cifarlit.utils.lightning_adapter import built_by_cli, instantiate_module


class Probe(L.LightningModule):
    """Records what ``built_by_cli`` says right after ``save_hyperparameters``, as LitMLP asks it."""

    def __init__(self, width: int = 3, optimizer: type = torch.optim.SGD) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.seen = built_by_cli(self.hparams)


def cli(model_class: type, *args: str) -> LightningCLI:
    return LightningCLI(model_class, run=False, args=list(args), trainer_defaults={"logger": False})


# --- Lightning ---------------------------------------------------------------------------------------------------


def test_load_from_checkpoint_accepts_exactly_the_instantiators_cifarlit_writes_and_allows():
    from lightning.pytorch.core.saving import _ALLOWED_INSTANTIATORS

    assert set(lightning_adapter.INSTANTIATORS) == set(_ALLOWED_INSTANTIATORS)
    module, _, name = lightning_adapter.INSTANTIATOR.rpartition(".")
    assert inspect.isfunction(getattr(__import__(module, fromlist=[name]), name))


def test_only_lightningcli_hands_a_module_its_hyperparameters_with_the_instantiator(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    built = cli(Probe, "--model.width", "5").model
    assert built.seen and built.hparams["width"] == 5  # the config, as LightningCLI gave it
    assert not Probe(width=5).seen  # built in Python: the arguments themselves
    assert not instantiate_module(Probe, {"width": 5}).seen  # load_from_checkpoint's way: arguments again


def test_a_module_built_by_lightningcli_keeps_its_config_as_hyperparameters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = cli(LitMLP, "--model.optimizer=torch.optim.SGD", "--model.optimizer.lr=0.1").model
    assert built_by_cli(model.hparams)
    assert model.hparams["optimizer"]["class_path"] == "torch.optim.SGD"
    assert model.hparams_initial["optimizer"] == model.hparams["optimizer"]  # what loggers write: the same


def test_instantiate_module_builds_a_checkpoints_network_without_allocating_it():
    net = {"class_path": "cifarlit.models.nets.SmallCNN", "init_args": {"widths": [8, 16]}}
    hparams = {"net": net, "image_shape": [3, 4096, 4096], "_instantiator": lightning_adapter.INSTANTIATOR}
    with torch.device("meta"):
        module = instantiate_module(LitMLP, hparams)
    assert isinstance(module.net, SmallCNN) and all(p.is_meta for p in module.parameters())


def test_model_checkpoint_state_holds_the_keys_whose_paths_cifarlit_confines(tmp_path):
    # a new key could be a new path a resumed callback deletes: confine_paths must learn it first
    state = ModelCheckpoint(dirpath=tmp_path).state_dict()
    assert set(state) == lightning_adapter.MODEL_CHECKPOINT_KEYS
    assert all(isinstance(state[key], str) for key in lightning_adapter.MODEL_CHECKPOINT_PATHS)


def test_lightning_files_the_data_state_under_the_datamodules_class_name(own_run):
    from cifarlit.data.datamodule import CIFAR10DataModule

    saved = torch.load(own_run.ckpt, weights_only=True)
    assert checkpoint_state.DATA_KEY == CIFAR10DataModule.__qualname__
    assert set(saved[checkpoint_state.DATA_KEY]) >= {"mean", "std", "classes", "image_shape"}


# --- jsonargparse -------------------------------------------------------------------------------------------------


def test_the_factories_lightningcli_builds_are_read_as_class_and_arguments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ("--model.optimizer=torch.optim.SGD", "--model.optimizer.lr=0.1",
            "--model.lr_scheduler=torch.optim.lr_scheduler.StepLR", "--model.lr_scheduler.step_size=3")  # fmt: skip
    model = cli(LitMLP, *args).model
    cls, kwargs = factory_parts(model.optimizer)
    assert cls is torch.optim.SGD and kwargs["lr"] == 0.1
    cls, kwargs = factory_parts(model.lr_scheduler)
    assert cls is torch.optim.lr_scheduler.StepLR and kwargs["step_size"] == 3
    assert model.configure_optimizers()["optimizer"].defaults["fused"]  # read, so built with the fused kernel


def test_a_module_rebuilt_from_its_checkpoint_keeps_its_factories_in_its_hyperparameters():
    written = LitMLP(optimizer=partial(torch.optim.SGD, lr=0.05), net=partial(SmallCNN, widths=[8]))
    rebuilt = instantiate_module(LitMLP, dict(written.hparams))  # as load_from_checkpoint does
    assert factory_parts(rebuilt.optimizer)[0] is torch.optim.SGD
    for key in ("optimizer", "net"):  # so a checkpoint the rebuilt module writes rebuilds the same network
        assert rebuilt.hparams[key]["class_path"] == written.hparams[key]["class_path"]
        assert rebuilt.hparams[key]["init_args"].items() >= written.hparams[key]["init_args"].items()


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (torch.optim.Adam, (torch.optim.Adam, {})),
        (partial(torch.optim.SGD, lr=0.1), (torch.optim.SGD, {"lr": 0.1})),
        (lambda params: torch.optim.SGD(params, lr=0.1), None),  # code, not a class and arguments
        (partial(torch.optim.SGD, [], lr=0.1), None),  # a positional argument: not writable as init_args
        (partial(print, torch.optim.SGD, torch.optim.Adam), None),
    ],
)
def test_factories_written_in_python_are_read_the_same_way(factory, expected):
    assert factory_parts(factory) == expected

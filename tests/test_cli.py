"""The command line: every config runs, fit -> test writes curves and checkpoints, mistakes read as sentences."""

from __future__ import annotations

import importlib
import inspect
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import (
    BackboneFinetuning,
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    ProgressBar,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.strategies import StrategyRegistry
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from cifarlit.models.nets import ACTIVATIONS, MLP, NORMS
from cifarlit.training.callbacks import DEFAULTS, OverfitCheck, RunRecord
from helpers import CONFIGS, config_args, one_node, run_cli, skip_without_its_tracker

REPO = Path(__file__).resolve().parents[1]


# --- what a config sets, read back from the objects a run built -------------------------------------------------

# Trainer arguments that fast_dev_run replaces on the Trainer: for these the test reads what the Trainer was given.
FAST_DEV_RUN_SETS = {"max_epochs", "max_steps", "limit_train_batches", "limit_val_batches", "logger"}
PATH_KEYS = {"data_dir", "dirpath", "save_dir", "init_from"}
SIZE_KEYS = {"val_size", "train_subset", "val_subset"}  # data sizes: a count or a fraction


def merged_config(files: list[str], overrides: dict) -> dict:
    """The `-c` files merged as LightningCLI merges them (later keys win, lists replace lists, another class_path
    replaces the init_args of the one before), then ``overrides``."""

    def merge(base: dict, new: dict) -> dict:
        for key, value in new.items():
            both_dicts = isinstance(value, dict) and isinstance(base.get(key), dict)
            if both_dicts and value.get("class_path", base[key].get("class_path")) != base[key].get("class_path"):
                both_dicts = False
            base[key] = merge(base[key], value) if both_dicts else value
        return base

    merged: dict = {}
    for path in files:
        merge(merged, yaml.safe_load(Path(path).read_text()))
    return merge(merged, overrides)


def leaves(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    """``{"a": {"b": 1}, "c": [...]}`` -> ``[("a.b", 1), ("c", [...])]``: a list is one value."""
    out = []
    for key, value in tree.items():
        out += leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]
    return out


def resolve(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def attribute(obj, name: str):
    """An init argument as the object keeps it, as ``name`` or ``_name`` (Lightning keeps some private)."""
    if name in getattr(obj, "_wandb_init", {}):  # WandbLogger: its `name` property is the project, not this argument
        return obj._wandb_init[name]
    for attr in (name, f"_{name}"):
        if hasattr(obj, attr):
            return getattr(obj, attr)
    if name == "decay" and "avg_fn" in getattr(obj, "_kwargs", {}):  # EMAWeightAveraging keeps it in its update
        import torch

        moved = obj._kwargs["avg_fn"](torch.zeros(1), torch.ones(1), torch.tensor(1))  # one step from 0 toward 1
        return round(1 - float(moved), 6)
    raise AssertionError(f"a {type(obj).__name__} keeps no {name!r}: say where a run shows it")


def size(value):
    """A data size as the config means it: a whole number is a count (16.0 is 16 images), else a fraction."""
    return int(value) if isinstance(value, float) and value >= 1 and value.is_integer() else value


def normalize(value, key: str = ""):
    """Tuples as lists and paths resolved against the working directory, so equal settings compare equal."""
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v, k) for k, v in value.items()}
    if key.rpartition(".")[2] in PATH_KEYS and isinstance(value, (str, Path)):
        return Path(value).resolve()
    return value


def same(a, b) -> bool:
    """Equal and of the same types all the way down: a count of 16 images is not 16.0."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def pair_objects(objects: list, listed: list[dict], extras: bool = True) -> tuple[list[str], list[str]]:
    """(what the ``listed`` class_path/init_args entries ask for, what ``objects`` hold), each as ``Class(arg=value)``
    in the listed order: each entry is paired with an object of exactly its class, one with its values first. With
    ``extras`` the objects no entry asked for come last, as ``Class(...)``."""

    def values(obj, args: dict) -> dict:
        return {k: normalize(attribute(obj, k), k) for k in args}

    def text(cls: type, args: dict | None) -> str:
        return f"{cls.__name__}({'...' if args is None else ', '.join(f'{k}={v!r}' for k, v in args.items())})"

    left, wanted, seen = list(objects), [], []
    for entry in listed:
        cls, args = resolve(entry["class_path"]), normalize(entry.get("init_args") or {})
        wanted.append(text(cls, args))
        of_class = [obj for obj in left if type(obj) is cls]
        if of_class:
            pick = next((obj for obj in of_class if same(values(obj, args), args)), of_class[0])
            left.remove(pick)
            seen.append(text(cls, values(pick, args)))
    return wanted, seen + ([text(type(obj), None) for obj in left] if extras else [])


def expected_split_sizes(dm, data: dict) -> tuple[int, int]:
    """(train, val) images that ``data``'s val_size, train_subset and val_subset leave of the kept classes: a
    held-out fraction rounds up (scikit-learn's test_size), a subset fraction to the nearest count, at least 1."""
    from cifarlit.data import sources

    raw = sources.load(dm.data_dir)
    n = int(np.isin(raw.train_y, [raw.classes.index(c) for c in dm.classes]).sum())
    val_size = size(data.get("val_size", 0.2))
    held = val_size if isinstance(val_size, int) else math.ceil(val_size * n)

    def subset(wanted, pool: int) -> int:
        wanted = size(wanted)
        if wanted is None:
            return pool
        return wanted if isinstance(wanted, int) else max(1, round(wanted * pool))

    return subset(data.get("train_subset"), n - held), subset(data.get("val_subset"), held)


def mlp_layout(net: MLP) -> dict:
    """The MLP options as its layers show them."""
    layers = list(net.layers)
    return {
        "hidden_sizes": [m.out_features for m in layers if isinstance(m, nn.Linear)],
        "norm": next((name for name, cls in NORMS.items() if any(isinstance(m, cls) for m in layers)), "none"),
        "dropout": [m.p for m in layers if isinstance(m, nn.Dropout)],
        "activation": next((name for name, cls in ACTIVATIONS.items() if any(type(m) is cls for m in layers)), None),
    }


def data_readings(cli, name: str, value, merged: dict) -> list[tuple[str, object, object]]:
    dm = cli.datamodule
    if name.startswith("augment."):
        field = name.partition(".")[2]
        return [
            ("datamodule.hparams['augment']", dm.hparams["augment"][field], value),
            ("the batch augmentation's config", getattr(dm.batch_augment.cfg, field), value),
        ]
    out = [(f"datamodule.hparams[{name!r}]", dm.hparams[name], size(value) if name in SIZE_KEYS else value)]
    if name == "batch_size":
        out.append(("the training loader's batch size", dm.train_dataloader().batch_sampler.batch_size, value))
    elif name == "num_workers":
        out.append(("the training loader's workers", dm.train_dataloader().num_workers, value))
    elif name == "keep_classes":
        out.append(("datamodule.classes", list(dm.classes), value))
    elif name == "data_dir":
        out.append(("datamodule.data_dir", dm.data_dir, value))
    elif name in SIZE_KEYS:
        sizes = (len(dm.train_set), len(dm.val_set))
        out.append(("the (train, val) images", sizes, expected_split_sizes(dm, merged["data"])))
    return out


def model_readings(cli, name: str, value) -> list[tuple[str, object, object]]:
    model, trainer = cli.model, cli.trainer
    part, arg = name.partition(".")[0], name.partition(".init_args.")[2]
    if name == "net.class_path":
        return [("type(model.net)", type(model.net), resolve(value))]
    if part == "net":
        return [(f"model.hparams['net'] {arg}", model.hparams["net"]["init_args"][arg], value)]
    if part == "optimizer":
        assert len(trainer.optimizers) == 1, f"model.optimizer is set; the run has {len(trainer.optimizers)} optimizers"
        optimizer = trainer.optimizers[0]
        if name == "optimizer.class_path":
            return [("type(trainer.optimizers[0])", type(optimizer), resolve(value))]
        out = [(f"the optimizer's defaults[{arg!r}]", optimizer.defaults[arg], value)]
        one_cycle = any(type(c.scheduler).__name__ == "OneCycleLR" for c in trainer.lr_scheduler_configs)
        if arg == "lr" and not one_cycle:  # a scheduler moves the lr and keeps the configured one as initial_lr
            group = optimizer.param_groups[0]  # (OneCycleLR starts from its own max_lr / div_factor instead)
            out.append(("the first param group's starting lr", group.get("initial_lr", group["lr"]), value))
        return out
    if part == "lr_scheduler":
        schedulers = trainer.lr_scheduler_configs
        assert len(schedulers) == 1, f"model.lr_scheduler is set; the run has {len(schedulers)} schedulers"
        config = schedulers[0]
        if name == "lr_scheduler.class_path":
            return [("the scheduler's type", type(config.scheduler), resolve(value))]
        if hasattr(config.scheduler, arg):
            return [(f"the scheduler's {arg}", getattr(config.scheduler, arg), value)]
        return [(f"model.hparams['lr_scheduler'] {arg}", model.hparams["lr_scheduler"]["init_args"][arg], value)]
    out = [(f"model.hparams[{name!r}]", model.hparams[name], value)]
    if name == "tta":
        out.append(("model.tta", model.tta, value))
    if name in ("hidden_sizes", "norm", "dropout", "activation") and type(model.net) is MLP:
        want = value
        if name == "dropout" and not isinstance(value, list):  # one probability: after each hidden layer, if > 0
            want = [value] * len(model.hparams.hidden_sizes) if value > 0 else []
        out.append(("the MLP's layers", mlp_layout(model.net)[name], want))
    elif name == "scheduler_interval" and trainer.lr_scheduler_configs:
        out.append(("the scheduler's interval", trainer.lr_scheduler_configs[0].interval, value))
    elif name == "init_from":  # LitMLP.setup keeps a report of the weights it loaded
        out.append(("whether weights were loaded", hasattr(model, "init_report"), value is not None))
    return out


def trainer_readings(cli, name: str, value) -> list[tuple[str, object, object]]:
    trainer = cli.trainer
    option, _, rest = name.partition(".")
    if option in FAST_DEV_RUN_SETS:
        given = cli.config_init["fit.trainer"][option]
        if option != "logger":
            return [("the Trainer's argument (fast_dev_run replaces it)", given, value)]
        if rest == "class_path":
            return [("the logger given to the Trainer", type(given), resolve(value))]
        arg = rest.partition("init_args.")[2]
        return [(f"the logger's {arg}", attribute(given, arg), value)]
    if option == "callbacks":  # less the CLI's default callbacks and those Lightning adds (a summary, a bar)
        listed = tuple(resolve(entry["class_path"]) for entry in value)
        defaults = [cli.config_init["fit"][key] for key in DEFAULTS]
        added = [cb for cb in trainer.callbacks if isinstance(cb, (ModelSummary, ProgressBar))]
        wanted, seen = pair_objects(
            [cb for cb in trainer.callbacks if not any(cb is d for d in defaults)
             and (cb not in added or isinstance(cb, listed))], value,
        )  # fmt: skip
        return [("trainer.callbacks", seen, wanted)]
    if option == "plugins":
        wanted, seen = pair_objects([trainer.strategy.checkpoint_io, trainer.strategy.precision_plugin], value, False)
        return [("the strategy's plugins", seen, wanted)]
    if option == "strategy" and value in StrategyRegistry:  # a registered name: "ddp" is DDPStrategy(start_method=...)
        registered = StrategyRegistry[value]
        return [("the strategy's type", type(trainer.strategy), registered["strategy"])] + [
            (f"the strategy's {arg}", attribute(trainer.strategy, arg), want)
            for arg, want in registered["init_params"].items()
        ]
    if option == "deterministic" and value == "auto":  # bit-identical runs on the CPU
        value = trainer.strategy.root_device.type == "cpu"
    live = {
        "accelerator": ("the device", trainer.strategy.root_device.type),
        "devices": ("trainer.num_devices", trainer.num_devices),
        "deterministic": ("torch's deterministic algorithms", torch.are_deterministic_algorithms_enabled()),
        "float32_matmul_precision": ("torch's matmul precision", torch.get_float32_matmul_precision()),
        "enable_checkpointing": ("any checkpoint callback", bool(trainer.checkpoint_callbacks)),
    }
    where, got = live.get(option) or (f"trainer.{option}", attribute(trainer, option))
    return [(where, got, value)]


def default_callback_readings(cli, key: str, name: str, value) -> list[tuple[str, object, object]]:
    """A default callback's option (``early_stopping``, ``early_stopping.patience``, ``....init_args.patience``,
    ``....class_path``): the object the CLI built for it, and whether the run has it."""
    built = cli.config_init["fit"][key]
    kept = ("whether the run has it", any(cb is built for cb in cli.trainer.callbacks), value is not None)
    if not name:
        return [kept]
    arg = name.removeprefix("init_args.")
    if arg == "class_path":
        return [(f"the type of {key}", type(built), resolve(value)), kept[:2] + (True,)]
    return [(f"{key}'s {arg}", attribute(built, arg), value), kept[:2] + (True,)]


def readings(cli, key: str, value, merged: dict) -> list[tuple[str, object, object]]:
    """Where the run shows the config's ``key``: [(where, what it holds, what ``value`` asks of it)]. A key without
    a reading fails: a new option must say where a run shows it."""
    section, _, name = key.partition(".")
    if key == "seed_everything":
        return [("PL_GLOBAL_SEED", int(os.environ["PL_GLOBAL_SEED"]), value)]
    if key == "test_after_fit":  # acted on after a full fit only: under fast_dev_run the parsed value is all there is
        return [("the parsed config", cli.config.fit[key], value)]
    if section in DEFAULTS:
        return default_callback_readings(cli, section, name, value)
    if section == "data":
        return data_readings(cli, name, value, merged)
    if section == "model":
        return model_readings(cli, name, value)
    if section == "trainer":
        return trainer_readings(cli, name, value)
    raise AssertionError(f"no reading for {key}: say where a run shows it")


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_every_config_runs_a_fast_dev_run(config, pickle_root, tmp_path, monkeypatch, request):
    skip_without_its_tracker(config)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # set again only if the config's seed_everything is applied
    command_line = {"data": {"data_dir": str(pickle_root), "download": False},
                    "trainer": {"fast_dev_run": True, "accelerator": "cpu"}}  # fmt: skip
    several_nodes = one_node(config)
    if several_nodes:
        request.getfixturevalue("one_process_ddp")
        command_line["trainer"] |= {"num_nodes": 1, "devices": 1}
    if config.name.startswith("finetune"):  # starts from the checkpoint that pretrain.yaml writes: run that first
        run_cli(
            "fit", *config_args(config.parent / "pretrain.yaml"), "--data.data_dir", str(pickle_root),
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--test_after_fit", "false",
        )  # fmt: skip
        assert (tmp_path / "lightning_logs" / "transfer" / "pretrained.ckpt").is_file()
    if config.name.startswith("pretrained"):  # starts from the safetensors that pretrain_timm.yaml's export writes
        from cifarlit.models.pretrained import TimmNet, library_module
        from cifarlit.models.weights import write_safetensors

        (tmp_path / "lightning_logs" / "transfer").mkdir(parents=True)
        write_safetensors(library_module(TimmNet(5, name="regnetx_002"))[0],
                          tmp_path / "lightning_logs" / "transfer" / "pretrained_timm.safetensors", {})  # fmt: skip
    cli = run_cli(
        "fit", *config_args(config), "--data.data_dir", str(pickle_root), "--data.download", "false",
        "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu", *several_nodes,
    )  # fmt: skip
    assert cli.trainer.state.finished
    assert "train/loss" in cli.trainer.callback_metrics
    # Every key of the config chain (and of the command line) shows in the objects the run built.
    merged = merged_config(config_args(config)[1::2], command_line)
    for key, value in leaves(merged):
        for where, got, want in readings(cli, key, value, merged):
            assert same(normalize(got, key), normalize(want, key)), (
                f"{config}: {key}: {want!r} asked, {where} is {got!r}"
            )
    if "lr_scheduler" not in merged["model"]:
        assert not cli.trainer.lr_scheduler_configs, f"{config} sets no lr_scheduler, yet the run has one"
    if "net" not in merged["model"]:
        assert type(cli.model.net) is MLP, f"{config} names no model.net, yet the run trains a {type(cli.model.net)}"


# --- the callbacks each config runs with ---------------------------------------------------------------------------

ES5 = (EarlyStopping, {"monitor": "val/loss", "mode": "min", "patience": 5})
BEST = (ModelCheckpoint, {"monitor": "val/acc", "mode": "max", "filename": "epoch{epoch:02d}-val_acc{val/acc:.4f}",
                          "auto_insert_metric_name": False})  # fmt: skip
LAST = (ModelCheckpoint, {"filename": "last", "enable_version_counter": False})
LR_EPOCH = (LearningRateMonitor, {"logging_interval": "epoch"})
LR_SCHEDULER = (LearningRateMonitor, {})  # logging_interval None: at each scheduler's own interval
BAR = (TQDMProgressBar, {"refresh_rate": 50})
LIGHTNINGS_BAR = (RichProgressBar, {})  # what Lightning adds when a config has none


def early_stopping(patience: int):
    return (EarlyStopping, {**ES5[1], "patience": patience})


def best(**changes):
    return (ModelCheckpoint, {**BEST[1], **changes})


def last(**changes):
    return (ModelCheckpoint, {**LAST[1], **changes})


def backbone(epoch: int):
    return (BackboneFinetuning, {"unfreeze_backbone_at_epoch": epoch, "backbone_initial_ratio_lr": 0.1})


DEFAULT = [ES5, BEST, LAST, LR_EPOCH, BAR]
NO_STOPPING = [BEST, LAST, LR_SCHEDULER, BAR]
LADDER = [(OverfitCheck, {}), LIGHTNINGS_BAR]
TRANSFER = [early_stopping(8), BEST, LR_SCHEDULER, BAR]
PRETRAIN = [best(dirpath="lightning_logs/transfer", filename="pretrained", enable_version_counter=False), LR_SCHEDULER,
            BAR]  # fmt: skip
EMA = (EMAWeightAveraging, {"decay": 0.99})
# What each config ran with before the default callbacks moved into the CLI, where its YAML restated the list; the
# one difference: a checkpoint whose filename has no {metric} field (last.ckpt, pretrained.ckpt) now keeps the
# auto_insert_metric_name of its default, which only formats such fields.
EXPECTED_CALLBACKS = {
    "default": DEFAULT, "debug/one_batch": LADDER, "debug/one_sample": LADDER, "debug/subset": DEFAULT,
    "experiments/adam": DEFAULT, "experiments/batchnorm": DEFAULT, "experiments/rmsprop": DEFAULT,
    "experiments/sgd_momentum": DEFAULT, "experiments/steplr": DEFAULT, "scale/ddp_nodes": DEFAULT,
    "loggers/csv": DEFAULT, "loggers/mlflow": DEFAULT, "loggers/wandb_offline": DEFAULT,
    "experiments/baseline": NO_STOPPING, "experiments/weight_decay": NO_STOPPING, "experiments/dropout": NO_STOPPING,
    "experiments/more_data": NO_STOPPING, "experiments/augmentation": NO_STOPPING,
    "experiments/early_stopping": [ES5, BEST, LAST, LR_SCHEDULER, BAR],
    "experiments/final": [early_stopping(10), BEST, LAST, LR_EPOCH, BAR],
    "experiments/best_mlp": NO_STOPPING, "experiments/cnn": NO_STOPPING, "experiments/recipe_mlp_cpu": NO_STOPPING,
    "experiments/best_mlp_long": [best(save_weights_only=True), last(every_n_epochs=5), LR_SCHEDULER, BAR],
    "experiments/recipe_mlp_gpu": [best(save_weights_only=True), last(every_n_epochs=10), LR_SCHEDULER, BAR],
    "experiments/recipe_cnn_cpu": [BEST, LAST, EMA, LR_EPOCH, BAR],
    "experiments/recipe_cnn_gpu": [BEST, LAST, EMA, LR_EPOCH, BAR],
    "experiments/transfer/scratch": TRANSFER, "experiments/transfer/finetune": TRANSFER,
    "experiments/transfer/finetune_frozen": [backbone(3), *TRANSFER],
    "experiments/transfer/pretrain": PRETRAIN, "experiments/transfer/pretrain_timm": [best(
        dirpath="lightning_logs/transfer", filename="pretrained_timm", enable_version_counter=False), *PRETRAIN[1:]],
    "experiments/transfer/pretrained": [backbone(2), BEST, LR_SCHEDULER, BAR],
    "experiments/transfer/pretrained_all": [BEST, LR_SCHEDULER, BAR],
    "tune/mlp_subset": [BAR],
}  # fmt: skip


def describe(callbacks: list) -> list[str]:
    """Each callback as ``Class(arg=value, ...)`` with the plain values of its ``__init__`` arguments as it keeps
    them, sorted; without what Lightning adds itself (the model summary) and the CLI's run record."""

    def one(callback) -> str:
        names = [p for p in inspect.signature(type(callback).__init__).parameters if p not in ("self", "kwargs")]
        kept = {name: getattr(callback, attr) for name in names for attr in (name, f"_{name}")
                if hasattr(callback, attr)}  # fmt: skip
        plain = {k: v for k, v in kept.items() if isinstance(v, (bool, int, float, str, type(None)))}
        return f"{type(callback).__name__}({', '.join(f'{k}={v!r}' for k, v in sorted(plain.items()))})"

    return sorted(one(cb) for cb in callbacks if not isinstance(cb, (ModelSummary, RunRecord)))


def built(args: list[str], pickle_root, *extra: str):
    """The CLI's objects for ``args`` (a config's -c files), built but not run."""
    from cifarlit.cli import build_cli

    sys.argv = ["cifarlit"]  # LightningCLI warns when pytest's own arguments are there next to `args`
    return build_cli([*args, "--data.data_dir", str(pickle_root), "--trainer.accelerator", "cpu", *extra], run=False)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_each_config_has_its_callbacks(config, pickle_root, tmp_path, monkeypatch):
    skip_without_its_tracker(config)
    monkeypatch.chdir(tmp_path)  # pretrain's checkpoint folder is relative
    name = str(config.relative_to("configs").with_suffix(""))
    cli = built(config_args(config), pickle_root, *one_node(config))
    expected = [cls(**kwargs) for cls, kwargs in EXPECTED_CALLBACKS[name]]
    assert describe(cli.trainer.callbacks) == describe(expected)


@pytest.mark.parametrize(
    ("option", "without"),
    [("--trainer.enable_progress_bar", ProgressBar), ("--trainer.enable_checkpointing", ModelCheckpoint),
     ("--trainer.logger", LearningRateMonitor)],
)  # fmt: skip
def test_a_trainer_option_that_turns_a_feature_off_drops_its_default_callback(option, without, pickle_root, tmp_path):
    cli = built(["-c", str(REPO / "configs" / "default.yaml")], pickle_root, option, "false")
    assert not any(isinstance(cb, without) for cb in cli.trainer.callbacks)
    assert any(isinstance(cb, EarlyStopping) for cb in cli.trainer.callbacks)  # the others stay


def test_a_default_callback_is_tuned_or_switched_off_from_the_command_line(pickle_root, tmp_path):
    default = ["-c", str(REPO / "configs" / "default.yaml")]
    tuned = built(default, pickle_root, "--early_stopping.patience", "2", "--last_checkpoint", "null")
    (stopping,) = [cb for cb in tuned.trainer.callbacks if isinstance(cb, EarlyStopping)]
    assert stopping.patience == 2 and stopping.monitor == "val/loss"  # the rest of the default kept
    assert [cb.filename for cb in tuned.trainer.callbacks if isinstance(cb, ModelCheckpoint)] == [BEST[1]["filename"]]


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
        "import torch; from cifarlit.models.lit_mlp import LitMLP; "
        f"m = LitMLP.load_from_checkpoint({ckpt!r}, map_location='cpu').eval(); "
        "assert m.hparams.hidden_sizes == [32]; "
        "assert isinstance(m.configure_optimizers(), torch.optim.SGD); "
        "print(torch.equal(m(torch.ones(2, 3, 32, 32)), torch.load('expected.pt')))"
    )
    second = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.strip() == "True"  # a fresh process, no data on disk needed


def test_monitor_keys_in_configs_and_default_callbacks_are_logged_metrics():
    logged = {f"{stage}/{metric}" for stage in ("train", "val") for metric in ("loss", "acc")}
    monitors = {f"training.callbacks.DEFAULTS[{key!r}]": [args.get("monitor")] for key, (*_, args) in DEFAULTS.items()}
    for config in CONFIGS:
        monitors[str(config)] = re.findall(r"\bmonitor:[ \t]*([\w/]+)", (REPO / config).read_text())
    assert len(monitors) > len(DEFAULTS) and any(monitors.values())
    for where, keys in monitors.items():
        for key in keys:
            if key in (None, "null"):  # a checkpoint that watches nothing (last.ckpt) is valid
                continue
            assert key in logged, f"{where}: monitor {key!r} is not a logged metric"


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
        (["--model.hiden_sizes", "[10]"], "unrecognized arguments: --model.hiden_sizes"),
        (["--data.batch_size", "many"], "--data.batch_size 'many' is not valid: use a whole number."),
        (["--data.channels", "2"], "--data.channels '2' is not valid: use 1, 3."),
        (["--model.optimizer", "torch.optim.NoSuchOpt"], "torch.optim has no NoSuchOpt"),
        (["--early_stopping.patiense", "3"], "--early_stopping.patiense is not an option of --early_stopping"),
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
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err  # jsonargparse's errors too


def test_a_mistake_in_a_real_process_prints_no_traceback(tmp_path):
    result = subprocess_cli(
        "fit", "--data.data_dir", str(tmp_path / "nowhere"), "--data.download", "false", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: data.data_dir=")
    assert "Traceback" not in result.stderr


def test_no_network_fails_fast_with_what_to_put_where(tmp_path, monkeypatch):
    import socket

    from cifarlit.data import sources

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

    from cifarlit.models.lit_mlp import LitMLP

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
    from cifarlit.training import runs

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
    monkeypatch.setattr(runs.rank_zero_only, "rank", 0)
    monkeypatch.setenv("NODE_RANK", "1")  # the first process of the second machine, started by hand
    by_hand = _logger_config(tmp_path)
    runs.claim_run_dir(by_hand)
    assert by_hand.trainer.logger.init_args.version is None


def test_a_fit_writes_into_the_folder_it_claimed(pickle_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lightning_logs" / "claimed" / "version_0").mkdir(parents=True)  # e.g. another run's, just made
    cli = run_cli("fit", "-c", str(REPO / "configs" / "default.yaml"), "--data.data_dir", str(pickle_root),
                  "--trainer.max_epochs", "1", "--trainer.logger.init_args.name", "claimed")  # fmt: skip
    assert Path(cli.trainer.log_dir).name == "version_1"
    assert not any((tmp_path / "lightning_logs" / "claimed" / "version_0").iterdir())

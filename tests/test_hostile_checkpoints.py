"""Hostile checkpoints: generated variants of each class of crafted file, fed to every path that reads a checkpoint
(fit --ckpt_path, validate/test/predict --ckpt_path, export --ckpt_path, fit --ckpt_path last, model.init_from).

1. Restored ``ModelCheckpoint`` paths outside the run are dropped with one warning line: a resumed fit that saves
   new checkpoints removes nothing outside, and exits normally.
2. Hyperparameters are data: a ``class_path`` outside what cifarlit ships, a callable, a string where a class or
   function would be read, a mapping where one would be built, are refused naming the key, and nothing is imported.
3. Foreign structures (wrong types, malformed RNG states, a 100,000 x 100,000 image shape), ``--ckpt_path``
   keywords and invalid Trainer numbers end in one sentence, exit status 2, and nothing written.

Each crafted checkpoint is the session's real one (``own_run``), edited and saved again with ``torch.save``.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
from functools import partial
from pathlib import Path

import fsspec
import pytest
import torch
import yaml
from jsonargparse import Namespace
from torch import nn

from cifarlit.cli import cli_main
from cifarlit.models.lit_mlp import LitMLP
from cifarlit.models.nets import CifarResNet, SmallCNN
from cifarlit.models.schedules import WarmupCosineLR
from cifarlit.models.transfer import read_weights
from cifarlit.training import runs
from cifarlit.utils import checkpoints
from cifarlit.utils.errors import CifarlitError
from helpers import REPO, RunsCode, run_cli

DEFAULT = str(REPO / "configs" / "default.yaml")
MODULE = "hostile_mod"  # planted in the working directory (and on sys.path): importing it or calling it leaves a mark
MODULE_CODE = """import pathlib
pathlib.Path(__file__).with_name("imported").touch()
def called(*args, **kwargs):
    pathlib.Path(__file__).with_name("called").touch()
    return 1.0
class Thing:
    pass
"""


# --- building crafted files -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(own_run) -> dict:
    """The session run's best checkpoint, as a dict (each test edits a deep copy)."""
    return torch.load(own_run.ckpt, map_location="cpu", weights_only=True)


def craft(base: dict, folder: Path, edit, name: str = "crafted.ckpt") -> Path:
    """``base`` edited by ``edit(ckpt)`` and saved under ``folder``; returns the file."""
    ckpt = copy.deepcopy(base)
    edit(ckpt)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, folder / name)
    return folder / name


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """An empty working directory holding only ``hostile_mod.py``, importable (it is on sys.path): a checkpoint
    that got it imported or called leaves ``imported`` / ``called`` there."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / f"{MODULE}.py").write_text(MODULE_CODE)
    monkeypatch.syspath_prepend(str(cwd))
    monkeypatch.chdir(cwd)
    yield cwd
    sys.modules.pop(MODULE, None)


def assert_no_code_ran(cwd: Path) -> None:
    assert MODULE not in sys.modules
    assert sorted(os.listdir(cwd)) == [f"{MODULE}.py"]  # no marker, no run folder, nothing else written


def set_path(ckpt: dict, dotted: str, value) -> None:
    """``ckpt["hyper_parameters"]`` at ``net.init_args.widths`` set to ``value`` (mappings created on the way)."""
    *parents, last = dotted.split(".")
    node = ckpt["hyper_parameters"]
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[last] = value


# --- 2. hyperparameters name no code ----------------------------------------------------------------------------

# What a crafted class_path names: a module in the working directory, installed functions, __import__ in its
# forms, YAML tags, and values that are not a class name at all.
NAMES = {
    "module in cwd": f"{MODULE}.Thing",
    "function in cwd": f"{MODULE}.called",
    "installed function": "os.system",
    "__import__": "builtins.__import__",
    "__import__ call": f"__import__('{MODULE}').called()",
    "yaml tag": f"!!python/object/apply:{MODULE}.called []",
    "int": 5,
    "list": [f"{MODULE}.Thing"],
    "mapping": {"class_path": f"{MODULE}.Thing"},
}
# Where a class can be named: each factory, and nested inside init_args (a scalar, a list element, a mapping).
POSITIONS = {
    "net.class_path": "hyper_parameters.net.class_path",
    "optimizer.class_path": "hyper_parameters.optimizer.class_path",
    "lr_scheduler.class_path": "hyper_parameters.lr_scheduler.class_path",
}
NESTED = {
    "optimizer.init_args.lr": "hyper_parameters.optimizer.init_args.lr",
    "optimizer.init_args.betas": "hyper_parameters.optimizer.init_args.betas[0]",
    "norm": "hyper_parameters.norm",
}


def _class_variants() -> dict:
    variants = {}
    for position, key in POSITIONS.items():
        for label, value in NAMES.items():
            variants[f"{position} = {label}"] = ({position: value}, key)
    for position, key in NESTED.items():
        value = {"class_path": f"{MODULE}.Thing"}
        variants[f"{position} = a class"] = ({position: [value, 0.999] if "betas" in position else value}, key)
    return variants


CODE_VARIANTS = {
    **_class_variants(),
    # callables given as plain strings, where jsonargparse imports them
    "net = a function name": ({"net": f"{MODULE}.called"}, "hyper_parameters.net"),
    "optimizer = a function name": ({"optimizer": f"{MODULE}.called"}, "hyper_parameters.optimizer"),
    "optimizer lr = a function name": (
        {"optimizer.init_args.lr": f"{MODULE}.called"}, "hyper_parameters.optimizer.init_args.lr"),
    "LambdaLR lr_lambda = a function name": (
        {"lr_scheduler": {"class_path": "torch.optim.lr_scheduler.LambdaLR",
                          "init_args": {"lr_lambda": f"{MODULE}.called"}}},
        "hyper_parameters.lr_scheduler.init_args.lr_lambda"),
    "SmallCNN widths = a class": (
        {"net": {"class_path": "cifarlit.models.nets.SmallCNN",
                 "init_args": {"widths": [{"class_path": f"{MODULE}.Thing"}]}}},
        "hyper_parameters.net.init_args.widths[0]"),
    "hidden_sizes = a yaml tag": ({"hidden_sizes": f"!!python/object/apply:{MODULE}.called []"},
                                  "hyper_parameters.hidden_sizes"),
    # keys that steer how the module is built
    "_class_path": ({"_class_path": f"{MODULE}.Thing"}, "hyper_parameters._class_path"),
    "_instantiator": ({"_instantiator": f"{MODULE}.called"}, "hyper_parameters._instantiator"),
    "unknown argument": ({"note": "hello"}, "hyper_parameters.note"),
    "init_args not an argument": ({"optimizer.init_args.params": [1.0]}, "hyper_parameters.optimizer.init_args.params"),
    "init_args a string": ({"optimizer.init_args": f"{MODULE}.called"}, "hyper_parameters.optimizer.init_args"),
    "deeply nested": ({"optimizer.init_args.betas": [[[[[[[[[[0.9]]]]]]]]]]}, "hyper_parameters.optimizer.init_args"),
}  # fmt: skip


def edit_hparams(changes: dict):
    def edit(ckpt: dict) -> None:
        for dotted, value in changes.items():
            set_path(ckpt, dotted, copy.deepcopy(value))

    return edit


@pytest.mark.parametrize("variant", list(CODE_VARIANTS))
def test_hyperparameters_that_name_code_are_refused_naming_the_key(variant, base, hostile, tmp_path):
    changes, key = CODE_VARIANTS[variant]
    path = craft(base, tmp_path / "files", edit_hparams(changes))
    with pytest.raises(CifarlitError) as refused:
        checkpoints.load_checkpoint(path, LitMLP)
    message = str(refused.value)
    assert message.startswith(f"--ckpt_path {path} is refused: its {key}") and "\n" not in message
    state, _ = read_weights(path)  # model.init_from reads the weights, never the hyperparameters
    assert set(state) == {k[4:] for k in base["state_dict"]}
    assert_no_code_ran(hostile)


# The variants fed through each command (every variant goes through checkpoints.load_checkpoint above): a class in
# the working directory, and a function name where a callable argument is read.
CLI_CODE_VARIANTS = ["optimizer.class_path = module in cwd", "LambdaLR lr_lambda = a function name"]
CLI_PATHS = ["fit", "validate", "test", "predict", "export", "fit --ckpt_path last"]


def command(path: str, ckpt: Path, own_run, root: Path) -> list[str]:
    """The command line that reads ``ckpt`` through ``path``; ``fit --ckpt_path last`` finds it as the newest run's
    last.ckpt under ``root``."""
    if path == "export":
        return ["export", "--ckpt_path", str(ckpt), "--format", "torchscript"]
    common = ["-c", DEFAULT, "--data.data_dir", str(own_run.data), "--trainer.max_epochs", "9",
              "--trainer.logger.init_args.save_dir", str(root / "lightning_logs")]  # fmt: skip
    if path == "model.init_from":
        return ["fit", *common, "--model.init_from", str(ckpt)]
    if path == "fit --ckpt_path last":
        run = root / "lightning_logs" / "default" / "version_0" / "checkpoints"
        run.mkdir(parents=True)
        shutil.copy(ckpt, run / "last.ckpt")
        return ["fit", *common, "--ckpt_path", "last"]
    return [path, *common, "--ckpt_path", str(ckpt)]


def refused(capsys, args: list[str]) -> str:
    """Runs ``cifarlit ARGS``; expects exit status 2 and one `error:` line, and returns it."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def assert_nothing_written(root: Path, ckpt: Path, path: str) -> None:
    """No run folder but the planted one, nothing next to the checkpoint (an export), the planted one unchanged."""
    logs = root / "lightning_logs"
    planted = [logs / "default" / "version_0" / "checkpoints" / "last.ckpt"] if path.endswith("last") else []
    assert sorted(p for p in logs.rglob("*") if p.is_file()) == planted if logs.exists() else not planted
    assert all(p.read_bytes() == ckpt.read_bytes() for p in planted)
    assert os.listdir(ckpt.parent) == [ckpt.name]


@pytest.mark.parametrize("variant", CLI_CODE_VARIANTS)
@pytest.mark.parametrize("path", CLI_PATHS)
def test_every_command_refuses_hyperparameters_that_name_code(path, variant, base, own_run, hostile, tmp_path,
                                                               capsys):  # fmt: skip
    changes, key = CODE_VARIANTS[variant]
    ckpt = craft(base, tmp_path / "files", edit_hparams(changes))
    message = refused(capsys, command(path, ckpt, own_run, tmp_path))
    named = tmp_path / "lightning_logs/default/version_0/checkpoints/last.ckpt" if path.endswith("last") else ckpt
    assert message.startswith(f"error: --ckpt_path {named} is refused: its {key}")
    assert_nothing_written(tmp_path, ckpt, path)
    assert_no_code_ran(hostile)


def test_yaml_tags_in_string_options_stay_strings(base, hostile, tmp_path):
    tag = f"!!python/object/apply:{MODULE}.called []"
    path = craft(base, tmp_path / "files", edit_hparams({"scheduler_monitor": tag, "init_from": tag}))
    checkpoints.load_checkpoint(path, LitMLP)  # strings where the option is a string: plain data
    module = LitMLP.load_from_checkpoint(path, map_location="cpu", weights_only=True)  # what predict and export do
    assert module.hparams.scheduler_monitor == tag and module.hparams.init_from == tag
    assert_no_code_ran(hostile)


def test_the_classes_a_checkpoint_may_name_include_every_one_the_configs_name():
    named = set()
    for config in (REPO / "configs").rglob("*.yaml"):
        model = (yaml.safe_load(config.read_text()) or {}).get("model") or {}
        named |= {(key, value["class_path"]) for key, value in model.items() if isinstance(value, dict)}
    assert {key for key, _ in named} == {"net", "optimizer", "lr_scheduler"}
    allowed = checkpoints.allowed_classes(LitMLP.CHECKPOINT_MODULES)
    assert {path for _, path in named} <= set(allowed)
    assert "torch.optim.adam.Adam" in allowed and allowed["torch.optim.adam.Adam"] is torch.optim.Adam
    assert not any(cls.__module__.split(".")[0] not in ("cifarlit", "torch") for cls in allowed.values())


class OwnNet(nn.Module):
    """A user's own network: a checkpoint may name it only when the user's config does."""

    def __init__(self, num_classes: int, image_shape: tuple[int, int, int], width: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(image_shape[0] * image_shape[1] * image_shape[2], width))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def python_built(base: dict, module: LitMLP):
    def edit(ckpt: dict) -> None:
        ckpt["hyper_parameters"] = dict(module.hparams)
        ckpt["state_dict"] = module.state_dict()
        ckpt.pop("optimizer_states"), ckpt.pop("lr_schedulers")

    return edit


def test_cifarlits_own_classes_load_and_a_users_class_only_when_its_config_names_it(base, tmp_path):
    shape = base["hyper_parameters"]["image_shape"]
    own = LitMLP(num_classes=3, image_shape=shape, net=partial(SmallCNN, widths=[8, 16]),
                 optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9),
                 lr_scheduler=partial(WarmupCosineLR, total_steps=10))  # fmt: skip
    checkpoints.load_checkpoint(craft(base, tmp_path, python_built(base, own), "own.ckpt"), LitMLP)
    users = LitMLP(num_classes=3, image_shape=shape, net=partial(OwnNet, width=6))
    path = craft(base, tmp_path, python_built(base, users), "users.ckpt")
    class_path = f"{OwnNet.__module__}.OwnNet"
    with pytest.raises(CifarlitError, match=rf"hyper_parameters.net.class_path names '{class_path}', not a class"):
        checkpoints.load_checkpoint(path, LitMLP)
    checkpoints.load_checkpoint(path, LitMLP, trusted={"net": class_path})  # the user named it: accepted


# --- classes that moved into packages (#22): refused naming the new place; rename_moved writes a copy ---------


def with_old_names(module: LitMLP, keys: tuple[str, ...]):
    """``python_built`` with the class paths of ``keys`` as checkpoints written before the move name them."""

    def edit(ckpt: dict) -> None:
        python_built(None, module)(ckpt)
        ckpt["hyper_parameters"] = copy.deepcopy(ckpt["hyper_parameters"])  # the module's own stay as they are
        for key in keys:
            ckpt["hyper_parameters"][key]["class_path"] = module.hparams[key]["class_path"].replace("models.", "")

    return edit


def moved_module(base: dict, net) -> LitMLP:
    shape = base["hyper_parameters"]["image_shape"]
    return LitMLP(num_classes=3, image_shape=shape, net=net, lr_scheduler=partial(WarmupCosineLR, total_steps=10))


@pytest.mark.parametrize(
    ("net", "keys"),
    [
        (partial(SmallCNN, widths=[8, 16]), ("net",)),
        (partial(CifarResNet, widths=[4, 8, 8, 8]), ("net",)),
        (partial(SmallCNN, widths=[8]), ("lr_scheduler",)),
        (partial(SmallCNN, widths=[8]), ("net", "lr_scheduler")),
    ],
)
def test_a_class_that_moved_is_refused_naming_where_it_is_now(net, keys, base, hostile, tmp_path):
    module = moved_module(base, net)
    path = craft(base, tmp_path / "files", with_old_names(module, keys), "old.ckpt")
    old = torch.load(path, weights_only=True)["hyper_parameters"][keys[0]]["class_path"]
    new = module.hparams[keys[0]]["class_path"]
    assert old.startswith("cifarlit.") and not old.startswith("cifarlit.models.")
    with pytest.raises(CifarlitError, match=rf"names {old}, which moved to {new} in this version of cifarlit"):
        checkpoints.load_checkpoint(path, LitMLP)
    before = path.read_bytes()
    renamed = checkpoints.rename_moved(path)
    assert path.read_bytes() == before and renamed == path.with_name("old-renamed.ckpt")  # the file stays as it was
    checkpoints.load_checkpoint(renamed, LitMLP)  # checked like any checkpoint
    rebuilt = LitMLP.load_from_checkpoint(renamed, map_location="cpu", weights_only=True)
    assert type(rebuilt.net) is type(module.net)
    assert all(
        torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), module.state_dict().values(), strict=True)
    )
    assert_no_code_ran(hostile)


@pytest.mark.parametrize(
    "name", ["cifarlit.nets.os", "cifarlit.nets.Hostile", "cifarlit.model.LitMLP", "cifarlit.schedules.LambdaLR",
             f"{MODULE}.Thing", "cifarlit.nets.SmallCNN.__init__"],
)  # fmt: skip
def test_only_the_classes_that_moved_are_renamed(name, base, hostile, tmp_path):
    module = moved_module(base, partial(SmallCNN, widths=[8]))
    path = craft(base, tmp_path / "files", with_old_names(module, ("lr_scheduler",)), "old.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["net"]["class_path"] = name
    torch.save(ckpt, path)
    renamed = checkpoints.rename_moved(path, tmp_path / "out" / "renamed.ckpt")
    hparams = torch.load(renamed, weights_only=True)["hyper_parameters"]
    assert hparams["net"]["class_path"] == name  # not in the map: left as it was
    assert hparams["lr_scheduler"]["class_path"] == "cifarlit.models.schedules.WarmupCosineLR"
    with pytest.raises(CifarlitError, match=r"hyper_parameters.net.class_path names '.*', not a class cifarlit"):
        checkpoints.load_checkpoint(renamed, LitMLP)  # the generic refusal: nothing says it moved
    assert_no_code_ran(hostile)


def test_the_command_line_names_where_a_moved_class_is_now(base, own_run, hostile, tmp_path, capsys):
    module = moved_module(base, partial(SmallCNN, widths=[8]))
    path = craft(base, tmp_path / "files", with_old_names(module, ("net",)), "old.ckpt")
    message = refused(capsys, command("test", path, own_run, tmp_path))
    assert message == (
        f"error: --ckpt_path {path} is refused: its hyper_parameters.net.class_path names cifarlit.nets.SmallCNN, "
        "which moved to cifarlit.models.nets.SmallCNN in this version of cifarlit, so the file cannot be rebuilt as "
        "it is; write a copy under the new names with cifarlit.utils.checkpoints.rename_moved(path) and pass that, "
        f"or pass {checkpoints.CHECKPOINT_HELP}."
    )
    assert_nothing_written(tmp_path, path, "test")
    assert_no_code_ran(hostile)


# --- 3. foreign structures: one sentence ------------------------------------------------------------------------


def put(key: str, value):
    """An edit that sets ``ckpt[key]`` (dotted: into the mapping or list there) to ``value``."""

    def edit(ckpt: dict) -> None:
        *parents, last = key.split(".")
        node = ckpt
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = copy.deepcopy(value)

    return edit


def drop(key: str):
    return lambda ckpt: ckpt.pop(key)


def both_shapes(shape):
    def edit(ckpt: dict) -> None:
        ckpt["hyper_parameters"]["image_shape"] = list(shape)
        ckpt["CIFAR10DataModule"]["image_shape"] = list(shape)

    return edit


RNG = "cifarlit_rng_states"
DATA = "CIFAR10DataModule"
STRUCTURE_VARIANTS = {
    **{f"hyper_parameters a {type(v).__name__}": (put("hyper_parameters", v), "hyper_parameters")
       for v in ([1, 2], "lr=0.1", 7, None)},
    **{f"data state a {type(v).__name__}": (put(DATA, v), DATA) for v in ([1, 2], "cat,dog", 7, None)},
    "data mean a string": (put(f"{DATA}.mean", "0.5"), f"{DATA}.mean"),
    "data std of another shape": (put(f"{DATA}.std", torch.ones(3, 3)), f"{DATA}.std"),
    "data std zero": (put(f"{DATA}.std", torch.zeros(3)), f"{DATA}.std"),
    "data classes a number": (put(f"{DATA}.classes", 5), f"{DATA}.classes"),
    "data classes of another count": (put(f"{DATA}.classes", ["a", "b"]), f"{DATA}.classes"),
    "data image_shape a string": (put(f"{DATA}.image_shape", "3x32x32"), f"{DATA}.image_shape"),
    "data image_shape 100000^2": (put(f"{DATA}.image_shape", [3, 100_000, 100_000]), f"{DATA}.image_shape"),
    "image_shape 100000^2 in both": (both_shapes([3, 100_000, 100_000]), "hyper_parameters.image_shape"),
    "image_shape with 7 channels": (both_shapes([7, 32, 32]), "hyper_parameters.image_shape"),
    "rng states a string": (put(RNG, "seed"), RNG),
    "rng state None": (put(f"{RNG}.0", None), f"{RNG}[0]"),
    "rng torch float32": (put(f"{RNG}.0.torch", torch.zeros(5056)), f"{RNG}[0].torch"),
    "rng torch too short": (put(f"{RNG}.0.torch", torch.zeros(16, dtype=torch.uint8)), f"{RNG}[0].torch"),
    "rng torch 2-d": (put(f"{RNG}.0.torch", torch.zeros(2, 2528, dtype=torch.uint8)), f"{RNG}[0].torch"),
    "rng cuda strings": (put(f"{RNG}.0.cuda", ["gpu0"]), f"{RNG}[0].cuda"),
    "rng cuda huge": (put(f"{RNG}.0.cuda", [torch.zeros(10**6, dtype=torch.uint8)]), f"{RNG}[0].cuda"),
    "rng numpy keys short": (put(f"{RNG}.0.numpy.1", torch.zeros(10, dtype=torch.int64)), f"{RNG}[0].numpy"),
    "rng numpy keys float": (put(f"{RNG}.0.numpy.1", torch.zeros(624)), f"{RNG}[0].numpy"),
    "rng numpy another generator": (put(f"{RNG}.0.numpy.0", "PCG64"), f"{RNG}[0].numpy"),
    "rng python short": (put(f"{RNG}.0.python", (3, (1, 2, 3), None)), f"{RNG}[0].python"),
    "rng python version 2": (put(f"{RNG}.0.python", (2, (0,) * 624 + (624,), None)), f"{RNG}[0].python"),
    "rng python index past the end": (put(f"{RNG}.0.python", (3, (0,) * 624 + (625,), None)), f"{RNG}[0].python"),
    "rng python version a tensor": (put(f"{RNG}.0.python", (torch.tensor([3, 3]), (0,) * 625, None)),
                                    f"{RNG}[0].python"),
    "rng numpy gauss flag a tensor": (put(f"{RNG}.0.numpy.3", torch.tensor([0, 1])), f"{RNG}[0].numpy"),
    "image_shape a string": (put("hyper_parameters.image_shape", "32"), "hyper_parameters.image_shape"),
    "callbacks a list": (put("callbacks", [1, 2]), "callbacks"),
    "loops a string": (put("loops", "fit"), "loops"),
    "optimizer states a mapping": (put("optimizer_states", {"a": 1}), "optimizer_states"),
    "epoch negative": (put("epoch", -3), "epoch"),
    "weights not tensors": (lambda ckpt: ckpt["state_dict"].update({"net.head.bias": [0.0] * 3}), "state_dict"),
    "no lightning version": (drop("pytorch-lightning_version"), "pytorch-lightning_version"),
    "lightning version garbage": (put("pytorch-lightning_version", "banana"), "pytorch-lightning_version"),
}  # fmt: skip


# hyperparameters whose network cannot be what the file holds: refused before anything big is allocated
def no_class_names(key: str, value):
    def edit(ckpt: dict) -> None:
        ckpt["hyper_parameters"][key] = value
        ckpt[DATA].pop("classes")

    return edit


SHAPE_VARIANTS = {
    "hidden layer of 10^9 units": (put("hyper_parameters.hidden_sizes", [10**9]), "describe another network"),
    "another hidden width": (put("hyper_parameters.hidden_sizes", [100, 50]), "describe another network"),
    "another class count": (no_class_names("num_classes", 10), "describe another network"),
    "another network": (
        put("hyper_parameters.net", {"class_path": "cifarlit.models.nets.SmallCNN"}),
        "describe another",
    ),
    "hidden_sizes a string": (put("hyper_parameters.hidden_sizes", "100,100"), "hyper_parameters.hidden_sizes"),
    "dropout a mapping": (put("hyper_parameters.dropout", {"p": 0.1}), "do not build a LitMLP"),
    "one class": (no_class_names("num_classes", 1), "model.num_classes=1 is not valid"),
}


@pytest.mark.parametrize("variant", list(STRUCTURE_VARIANTS))
def test_foreign_structures_are_one_sentence_naming_the_part(variant, base, tmp_path):
    edit, key = STRUCTURE_VARIANTS[variant]
    path = craft(base, tmp_path, edit)
    with pytest.raises(CifarlitError) as refused:
        checkpoints.load_checkpoint(path, LitMLP)
    message = str(refused.value)
    assert message.startswith(f"--ckpt_path {path} is not a checkpoint cifarlit can restore: its {key} is ")
    assert "\n" not in message and message.endswith(".")
    if key.startswith(DATA):  # model.init_from reads the data's class names: the same check, in its words
        with pytest.raises(CifarlitError, match=rf"^model.init_from={path} is not a checkpoint .* its {key} is "):
            read_weights(path)


@pytest.mark.parametrize("variant", list(SHAPE_VARIANTS))
def test_hyperparameters_must_describe_the_weights_in_the_file(variant, base, tmp_path):
    edit, expected = SHAPE_VARIANTS[variant]
    path = craft(base, tmp_path, edit)
    with pytest.raises(CifarlitError, match=f"^--ckpt_path {path}") as refused:
        checkpoints.load_checkpoint(path, LitMLP)
    assert expected in str(refused.value) and "\n" not in str(refused.value)


# Through each command: hyperparameters of the wrong type and an image shape of 100,000 x 100,000; malformed RNG
# states through the two that resume; model.init_from reads the weights and the data's class names only.
CLI_STRUCTURE_CASES = [
    *((path, variant) for variant in ("hyper_parameters a list", "image_shape 100000^2 in both") for path in CLI_PATHS),
    ("fit", "rng torch float32"), ("fit --ckpt_path last", "rng torch float32"),
    ("model.init_from", "image_shape 100000^2 in both"), ("model.init_from", "data state a str"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "variant"), CLI_STRUCTURE_CASES)
def test_every_command_refuses_foreign_structures_in_one_sentence(path, variant, base, own_run, hostile, tmp_path,
                                                                   capsys):  # fmt: skip
    edit, key = STRUCTURE_VARIANTS[variant]
    ckpt = craft(base, tmp_path / "files", edit)
    message = refused(capsys, command(path, ckpt, own_run, tmp_path))
    named = tmp_path / "lightning_logs/default/version_0/checkpoints/last.ckpt" if path.endswith("last") else ckpt
    option = f"model.init_from={ckpt}" if path == "model.init_from" else f"--ckpt_path {named}"
    assert message.startswith(f"error: {option} is not a checkpoint cifarlit can restore: its ")
    assert key in message or path == "model.init_from"
    assert_nothing_written(tmp_path, ckpt, path)
    assert_no_code_ran(hostile)


def test_a_payload_in_last_ckpt_is_refused_when_resumed_with_last(base, own_run, hostile, tmp_path, capsys):
    payload = RunsCode(hostile / "imported")  # (not deep-copied: copying it would run it)
    ckpt = craft(base, tmp_path / "files", lambda ckpt: ckpt["hyper_parameters"].update(note=payload))
    message = refused(capsys, command("fit --ckpt_path last", ckpt, own_run, tmp_path))
    assert "last.ckpt holds Python objects that reading it would run as code" in message
    assert_nothing_written(tmp_path, ckpt, "fit --ckpt_path last")
    assert_no_code_ran(hostile)


# --- keywords of --ckpt_path, and Trainer numbers ---------------------------------------------------------------


def config_for(root: Path, version=None, logger=True) -> Namespace:
    """A parsed config's trainer part as runs.checkpoint_file reads it."""
    init = Namespace(save_dir=str(root / "lightning_logs"), name="default", version=version)
    tensorboard = Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger", init_args=init)
    return Namespace(trainer=Namespace(logger=tensorboard if logger else False, default_root_dir=str(root)))


def plant_run(root: Path, version: int, own_run, edit=None) -> Path:
    """``root/lightning_logs/default/version_N/checkpoints`` with the session's best and last checkpoints, the
    ModelCheckpoint paths in last.ckpt pointing into that folder (after ``edit`` of its monitoring state)."""
    folder = root / "lightning_logs" / "default" / f"version_{version}" / "checkpoints"
    folder.mkdir(parents=True)
    best = folder / own_run.ckpt.name
    shutil.copy(own_run.ckpt, best)
    last = torch.load(own_run.ckpt, weights_only=True)
    for state in last["callbacks"].values():
        if "best_model_path" in state and state["monitor"]:
            state["best_model_path"] = str(best)
            if edit:
                edit(state)
    torch.save(last, folder / "last.ckpt")
    return folder


def test_last_and_best_mean_files_of_the_newest_run_and_are_checked_like_any(own_run, tmp_path):
    plant_run(tmp_path, 0, own_run)
    newest = plant_run(tmp_path, 3, own_run)
    config = config_for(tmp_path)
    assert runs.checkpoint_file("last", "test", config) == str(newest / "last.ckpt")
    assert runs.checkpoint_file("best", "test", config) == str(newest / own_run.ckpt.name)
    pinned = runs.checkpoint_file("last", "test", config_for(tmp_path, version=0))  # logger.init_args.version 0
    assert pinned == str(tmp_path / "lightning_logs/default/version_0/checkpoints/last.ckpt")
    assert runs.checkpoint_file("some/file.ckpt", "test", config) == "some/file.ckpt"
    for number in (2, 10):
        (tmp_path / f"hpc_ckpt_{number}.ckpt").touch()
    assert runs.checkpoint_file("hpc", "fit", config) == str(tmp_path / "hpc_ckpt_10.ckpt")


OUTSIDE_BEST = {
    ".. after the folder": lambda folder: f"{folder}/../../../elsewhere/best.ckpt",
    "absolute elsewhere": lambda folder: str(folder.parents[2] / "elsewhere" / "best.ckpt"),
    "another protocol": lambda folder: f"local://{folder}/{next(folder.glob('epoch*.ckpt')).name}",
}


@pytest.mark.parametrize("where", list(OUTSIDE_BEST))
def test_best_is_refused_when_last_ckpt_names_a_file_outside_its_folder(where, own_run, tmp_path):
    folder = plant_run(tmp_path, 0, own_run)
    (folder.parents[2] / "elsewhere").mkdir()
    shutil.copy(own_run.ckpt, folder.parents[2] / "elsewhere" / "best.ckpt")  # a real checkpoint, outside the run
    last = torch.load(folder / "last.ckpt", weights_only=True)
    for state in last["callbacks"].values():
        if state.get("monitor"):
            state["best_model_path"] = OUTSIDE_BEST[where](folder)
    torch.save(last, folder / "last.ckpt")
    with pytest.raises(CifarlitError, match=r"^--ckpt_path best: .*last.ckpt names no best checkpoint inside"):
        runs.checkpoint_file("best", "test", config_for(tmp_path))


def test_last_without_a_run_starts_a_fit_afresh(tmp_path, capsys):
    assert runs.checkpoint_file("last", "fit", config_for(tmp_path)) is None
    assert "--ckpt_path last: no last.ckpt in" in capsys.readouterr().err


KEYWORDS = {
    "registry": "(Lightning's model registry) is not supported",
    "registry:cifar:v2": "(Lightning's model registry) is not supported",
    "hpc": "--ckpt_path hpc found no hpc_ckpt_N.ckpt in",
    "best": "--ckpt_path best found no last.ckpt in",
    "last": "--ckpt_path last found no last.ckpt in",
}


@pytest.mark.parametrize("keyword", list(KEYWORDS))
def test_ckpt_path_keywords_resolve_or_are_one_sentence(keyword, own_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    message = refused(capsys, ["test", "-c", DEFAULT, "--data.data_dir", str(own_run.data), "--ckpt_path", keyword])
    assert KEYWORDS[keyword] in message
    assert os.listdir(tmp_path) == []


# (option, what the command line gives, what is valid): through the command line, as jsonargparse types them
TRAINER_NUMBERS = {
    "max_epochs": ("-5", "use a whole number >= 0, or -1 for no limit"),
    "accumulate_grad_batches": ("0", "use a whole number >= 1"),
    "limit_val_batches": ("1.5", "a fraction in [0, 1]"),
    "val_check_interval": ("0", "a fraction of an epoch in (0, 1]"),
    "devices": ("0", "a count >= 1, -1 for all"),
    "fast_dev_run": ("-1", "true, false or a number of batches >= 0"),
}
# and the rest as parsed values
PARSED_TRAINER_NUMBERS = {
    "max_steps": -3, "min_epochs": -1, "min_steps": -4, "check_val_every_n_epoch": 0, "log_every_n_steps": -1,
    "num_sanity_val_steps": -2, "reload_dataloaders_every_n_epochs": -1, "num_nodes": 0, "gradient_clip_val": -0.5,
    "overfit_batches": 1.5, "limit_train_batches": -1, "limit_test_batches": -0.5, "limit_predict_batches": 2.0,
    "devices": -2, "val_check_interval": 1.5,
}  # fmt: skip


@pytest.mark.parametrize("option", list(TRAINER_NUMBERS))
def test_invalid_trainer_numbers_are_one_sentence(option, own_run, tmp_path, monkeypatch, capsys):
    value, valid = TRAINER_NUMBERS[option]
    monkeypatch.chdir(tmp_path)
    message = refused(capsys, ["fit", "-c", DEFAULT, "--data.data_dir", str(own_run.data), f"--trainer.{option}",
                               value])  # fmt: skip
    assert message.startswith(f"error: trainer.{option}=") and f"{value}" in message and valid in message
    assert os.listdir(tmp_path) == []


def test_every_checked_trainer_number_names_its_option_value_and_range():
    from cifarlit.training.trainer import check_numbers as check_trainer_numbers

    for option, value in PARSED_TRAINER_NUMBERS.items():
        with pytest.raises(CifarlitError, match=rf"^trainer.{option}={value} is not valid: use .+\.$"):
            check_trainer_numbers(Namespace(**{option: value}))
    fine = {
        "max_epochs": -1,
        "max_steps": 10,
        "limit_val_batches": 0,
        "limit_train_batches": 0.25,
        "devices": "auto",
        "val_check_interval": "00:00:10:00",
        "fast_dev_run": True,
        "log_every_n_steps": 0,
        "num_nodes": 2,
    }
    check_trainer_numbers(Namespace(**fine))  # fmt: skip


# --- 1. restored paths never delete outside the run -------------------------------------------------------------


def stray_paths(folder: Path, outside: Path) -> dict[str, str]:
    """Crafted paths for a ModelCheckpoint state of a run whose checkpoints are in ``folder``: each reaches
    ``outside`` (a folder holding ``victim.ckpt``) or something that is not a checkpoint file of the run."""
    (folder / "link").symlink_to(outside, target_is_directory=True)
    (folder / "a_folder.ckpt").mkdir()
    (folder / "link_file.ckpt").symlink_to(outside / "victim.ckpt")
    return {
        "local://": f"local://{outside}/victim.ckpt",
        "file://": f"file://{outside}/victim.ckpt",
        "file:": f"file:{outside}/victim.ckpt",
        "s3://": "s3://bucket/run/victim.ckpt",
        "memory://": "memory://sentinel/victim.ckpt",
        "chained": f"simplecache::file://{outside}/victim.ckpt",
        "absolute elsewhere": str(outside / "victim.ckpt"),
        ".. after the folder": f"{folder}/../../../../{outside.name}/victim.ckpt",
        "symlinked folder inside": f"{folder}/link/victim.ckpt",
        "symlinked file inside": f"{folder}/link_file.ckpt",
        "a directory inside": f"{folder}/a_folder.ckpt",
        "the folder itself": str(folder),
        "not a string": 5,
    }


FIELDS = ["best_model_path", "last_model_path", "kth_best_model_path", "best_k_models"]


def with_path(state: dict, field: str, path) -> dict:
    """``state`` with ``path`` in ``field``; in best_k_models next to the state's own entries, kept consistent."""
    state = copy.deepcopy(state)
    if field in ("best_k_models", "kth_best_model_path"):
        state["best_k_models"][path] = torch.tensor(0.0)
    if field != "best_k_models":
        state[field] = path
    return state


@pytest.fixture
def run_folder(base, tmp_path):
    """A run's checkpoint folder (the session's checkpoint in it), a folder outside with a victim, and a
    ModelCheckpoint set up on that folder, with the state of the monitoring callback of ``base`` pointing into it."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.ckpt").write_text("keep me")
    callback = ModelCheckpoint(dirpath=str(folder), monitor="val/acc", mode="max")
    key, state = next((k, s) for k, s in base["callbacks"].items() if s.get("monitor"))
    inside = str(folder / "epoch00.ckpt")
    state = {**copy.deepcopy(state), "dirpath": str(folder), "best_model_path": inside, "kth_best_model_path": inside,
             "best_k_models": {inside: torch.tensor(0.5)}, "last_model_path": ""}  # fmt: skip
    return folder, outside, callback, {callback.state_key: state}


def test_restored_paths_outside_the_run_are_dropped_with_one_warning(run_folder, capsys):
    folder, outside, callback, states = run_folder
    variants = stray_paths(folder, outside)
    for field in FIELDS:
        for label, path in variants.items():
            checkpoint = {"callbacks": {k: with_path(s, field, path) for k, s in states.items()}}
            checkpoints.confine_paths(checkpoint, [callback])
            assert checkpoint["callbacks"] == {}, f"{field} = {label} was kept"
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("warning: the checkpoint's ModelCheckpoint state names")
    kept = {"callbacks": copy.deepcopy(states)}
    checkpoints.confine_paths(kept, [callback])  # paths inside the run's own folder: restored as they are
    assert kept["callbacks"] == states and capsys.readouterr().err == ""


@pytest.mark.parametrize("where", ["protocols", "relative and symlinked"])
def test_a_resumed_fit_removes_nothing_outside_its_run(where, own_run, tmp_path, monkeypatch, capsys):
    """A real resumed fit that saves new checkpoints, whose restored ModelCheckpoint states name paths outside:
    Lightning would remove each "previous" one recursively. Every sentinel outside survives, the run finishes."""
    monkeypatch.chdir(tmp_path)
    save_dir = str(tmp_path / "lightning_logs")
    run = tmp_path / "lightning_logs" / "default" / "version_0"
    shutil.copytree(own_run.run_dir, run)
    folder = run / "checkpoints"
    outside = tmp_path / "outside"
    (outside / "data").mkdir(parents=True)
    (outside / "data" / "keep.txt").write_text("precious")
    memory = fsspec.filesystem("memory")
    memory.pipe("/sentinel/keep.txt", b"precious")
    if where == "protocols":
        strays = [f"local://{outside}/data", "memory://sentinel", f"file://{outside}/data"]
    else:
        (folder / "link").symlink_to(outside, target_is_directory=True)
        strays = [f"{folder}/../../../../outside/data", f"{folder}/link/data", os.path.relpath(outside / "data")]
    ckpt = torch.load(folder / "last.ckpt", weights_only=True)
    monitoring = [s for s in ckpt["callbacks"].values() if s.get("monitor")][0]
    plain = [s for s in ckpt["callbacks"].values() if "best_model_path" in s and not s.get("monitor")][0]
    for state in (monitoring, plain):
        state["dirpath"] = str(folder)  # the same folder: Lightning restores every field
    score = torch.tensor(0.0)  # below any val/acc: the next epoch replaces it, and removes the "previous" k-th best
    monitoring.update(best_k_models={strays[0]: score}, kth_best_model_path=strays[0], best_model_path=strays[0],
                      best_model_score=score, last_model_path=strays[2])  # fmt: skip
    plain.update(best_model_path=strays[1], last_model_path=strays[2])  # save_top_k=1: removes the previous best
    torch.save(ckpt, folder / "crafted.ckpt")
    epochs = str(ckpt["epoch"] + 3)  # three more epochs: new best and last checkpoints replace "previous" ones
    cli = run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(own_run.data), "--trainer.max_epochs", epochs,
                  "--trainer.logger.init_args.save_dir", save_dir, "--ckpt_path", str(folder / "crafted.ckpt"),
                  "--test_after_fit", "false")  # fmt: skip
    assert cli.trainer.log_dir == str(run)  # resumed into its own run, and saved new checkpoints there
    assert torch.load(folder / "last.ckpt", weights_only=True)["epoch"] > ckpt["epoch"]
    assert (outside / "data" / "keep.txt").read_text() == "precious"
    assert memory.cat("/sentinel/keep.txt") == b"precious"
    assert (folder / "last.ckpt").is_file() and len(list(folder.glob("epoch*.ckpt"))) >= 1
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "outside this run's checkpoint folder" in warnings[0]
    memory.rm("/sentinel", recursive=True)

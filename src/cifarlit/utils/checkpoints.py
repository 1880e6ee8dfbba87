"""Reading checkpoints and weights files: tensors and plain values, never code, and every part checked before use.

A ``.ckpt`` or a ``torch.save``'d file is a pickle, and unpickling an object runs whatever its ``__reduce__``
names: a crafted file runs code the moment it is read. Every such file cifarlit reads goes through :func:`load`,
which uses ``torch.load(weights_only=True)``: it rebuilds tensors and plain Python values (numbers, strings,
lists, dicts) only, and refuses anything else with one sentence. Lightning's own reads are told the same (the
CLI sets ``weights_only: true``), and cifarlit writes its hyperparameters as plain values, so its own
checkpoints always load this way.

Plain values can still steer code, so :func:`load_checkpoint` checks what they say before anything acts on them:

- **hyperparameters** are handed to jsonargparse (LightningCLI merges them into the config; ``load_from_checkpoint``
  rebuilds the module from them), which imports whatever a ``class_path`` or a callable-typed value names and calls
  callable arguments. A checkpoint may name only the classes cifarlit ships for that option
  (:func:`allowed_classes` of the module class's ``CHECKPOINT_MODULES``) or the class the user's own config
  names, and no callable at all; its values must then build a network of exactly the shapes of the file's
  weights, built on the meta device so that a crafted ``image_shape`` of 100,000 x 100,000 allocates nothing;
- **the data module's state, the RNG states and Lightning's containers** must have the types and shapes cifarlit
  writes, so a foreign file gets one sentence instead of a traceback halfway through a restore;
- **paths**: a resumed ``ModelCheckpoint`` later deletes its "previous" best, last and k-th best files recursively;
  :func:`confine_paths` drops any restored bookkeeping whose paths leave the run's own checkpoint folder.
"""

from __future__ import annotations

import collections.abc
import copy
import inspect
import os
import pickle
import re
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch

from cifarlit.utils.errors import CifarlitError

CHECKPOINT_HELP = "a checkpoint written by `cifarlit fit` (lightning_logs/<name>/version_N/checkpoints/*.ckpt)"
INSTANTIATORS = ("lightning.pytorch.cli.instantiate_module", "pytorch_lightning.cli.instantiate_module")
DATA_KEY = "CIFAR10DataModule"  # the DataModule's state in a checkpoint: Lightning files it by class __qualname__
RNG_KEY = "cifarlit_rng_states"  # LitMLP.on_save_checkpoint: one dict of model.rng_states() per process
MAX_SIDE = 4096  # the largest image side a checkpoint may claim: one 4096 x 4096 RGB image is 48 MiB as uint8
MIN_SIDE = 8  # the smallest image side of data.image_size and of a checkpoint: the default nets halve it 3 times
MAX_DEPTH = 8  # nesting of a hyperparameter value; cifarlit's own go 4 deep (optimizer.init_args.betas[0])
MAX_VALUES = 10_000  # values in all hyperparameters together; cifarlit's own hold fewer than 100
PLAIN = (bool, int, float, str, type(None), list, tuple, dict)


def load(path: Path, name: str | None = None, expected: str = CHECKPOINT_HELP) -> Any:
    """The contents of ``path`` (on the CPU), read with ``weights_only=True``. ``name`` is how the error messages
    call the file, with the option it came from (default ``--ckpt_path <path>``); ``expected`` says what to pass
    instead."""
    name = name or f"--ckpt_path {path}"
    if not path.is_file():
        raise CifarlitError(f"{name} does not exist; pass {expected}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):  # e.g. a truncated old-style pickle
            raise _unreadable(name, err, expected) from None
        raise CifarlitError(
            f"{name} holds Python objects that reading it would run as code ({_culprit(err)}), so it is "
            f"refused: cifarlit reads tensors and plain values only; pass {expected}."
        ) from None
    except Exception as err:  # torch raises several types for damaged or foreign files
        raise _unreadable(name, err, expected) from None


def load_checkpoint(
    path: Path, model_class: type | None = None, name: str | None = None, trusted: Mapping[str, str] | None = None
) -> dict:
    """A cifarlit checkpoint: the network's ``net.*`` weights and the hyperparameters that rebuild it, with every
    part checked (:func:`check_restorable`); given the ``model_class`` it rebuilds, the hyperparameters too
    (:func:`check_hyperparameters`, :func:`check_network`). ``trusted`` maps an option (``net``) to the class path
    the user's own config names for it, which the file may then name as well."""
    name = name or f"--ckpt_path {path}"
    ckpt = load(path, name)
    state = ckpt.get("state_dict", {}) if isinstance(ckpt, dict) else {}
    has_net = isinstance(state, dict) and any(str(k).startswith("net.") for k in state)
    if not has_net or "hyper_parameters" not in ckpt:
        raise CifarlitError(
            f"{name} is not a cifarlit checkpoint (no LitMLP weights and hyperparameters in it); pass "
            f"{CHECKPOINT_HELP}."
        )
    check_restorable(ckpt, name)
    if model_class is not None:
        check_hyperparameters(ckpt["hyper_parameters"], model_class, name, trusted)
        check_network(ckpt, model_class, name)
    return ckpt


# --- the parts Lightning and cifarlit restore -------------------------------------------------------------------


def check_restorable(ckpt: dict, name: str) -> None:
    """Refuse, in one sentence, a checkpoint part that a restore would fail on or misread: Lightning's containers,
    the hyperparameters' and the DataModule's image shape and classes, and the RNG states."""
    containers = {"state_dict": dict, "hyper_parameters": dict, "callbacks": dict, "loops": dict,
                  "optimizer_states": list, "lr_schedulers": list}  # fmt: skip
    for key, kind in containers.items():
        if key in ckpt and not isinstance(ckpt[key], kind):
            raise _foreign(name, key, ckpt[key], f"a {kind.__name__}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt.get("state_dict", {}).items()):
        raise _foreign(name, "state_dict", "entries other than named tensors", "a mapping of names to tensors")
    for key in ("callbacks", "loops"):
        if not all(isinstance(k, str) and isinstance(v, dict) for k, v in ckpt.get(key, {}).items()):
            raise _foreign(name, key, "entries other than named mappings", "a mapping of names to states")
    for key in ("optimizer_states", "lr_schedulers"):
        if not all(isinstance(v, dict) for v in ckpt.get(key, [])):
            raise _foreign(name, key, "entries other than mappings", "a list of states")
    for key in ("epoch", "global_step"):
        if key in ckpt and not (_is_int(ckpt[key]) and ckpt[key] >= 0):
            raise _foreign(name, key, ckpt[key], "a count >= 0")
    version = ckpt.get("pytorch-lightning_version")  # Lightning migrates older files, which cifarlit never wrote
    major = re.match(r"(\d+)\.\d+", version) if isinstance(version, str) else None
    if major is None or int(major.group(1)) < 2:
        raise _foreign(name, "pytorch-lightning_version", version, "the Lightning (2.0 or later) that wrote it")
    hparams = ckpt.get("hyper_parameters", {})
    if "image_shape" in hparams:
        _check_shape(hparams["image_shape"], "hyper_parameters.image_shape", name)
    if DATA_KEY in ckpt:
        check_data_state(ckpt[DATA_KEY], hparams, name)
    if RNG_KEY in ckpt:
        _check_rng_states(ckpt[RNG_KEY], name)


def check_data_state(state: Any, hparams: dict, name: str) -> None:
    """The DataModule's ``state_dict()``: normalization statistics, class names and image shape, as data.py writes
    them (and as the checkpoint's ``hparams`` say)."""
    if not isinstance(state, dict):
        raise _foreign(name, DATA_KEY, state, "the data's statistics, classes and image shape as a mapping")
    trained = hparams.get("image_shape")
    shape = trained if _valid_shape(trained) else None
    if "image_shape" in state:
        shape = state["image_shape"]
        _check_shape(shape, f"{DATA_KEY}.image_shape", name)
        if isinstance(trained, list | tuple) and list(trained) != list(shape):
            raise _foreign(name, f"{DATA_KEY}.image_shape", shape, f"hyper_parameters.image_shape {trained}")
    channels = shape[0] if shape is not None else 3  # checkpoints from before the shape was stored are RGB
    for key in ("mean", "std"):
        value = state.get(key)
        if value is None:  # absent: export says so in its own words; fit and test compute them again
            continue
        if not (isinstance(value, torch.Tensor) and value.is_floating_point() and value.shape == (channels,)):
            raise _foreign(name, f"{DATA_KEY}.{key}", value, f"a float tensor of one value per channel ({channels})")
        if not torch.isfinite(value).all() or (key == "std" and not (value > 0).all()):
            raise _foreign(name, f"{DATA_KEY}.{key}", value, "finite values (and a std above 0)")
    classes = state.get("classes")
    if classes is not None:
        if not (isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes)):
            raise _foreign(name, f"{DATA_KEY}.classes", classes, "a list of class names")
        if _is_int(hparams.get("num_classes")) and len(classes) != hparams["num_classes"]:
            raise _foreign(name, f"{DATA_KEY}.classes", classes, f"{hparams['num_classes']} names (num_classes)")
    if not isinstance(state.get("split_fingerprint", ""), str):
        raise _foreign(name, f"{DATA_KEY}.split_fingerprint", state["split_fingerprint"], "a string")


def _check_shape(shape: Any, where: str, name: str) -> None:
    if not _valid_shape(shape):
        raise _foreign(
            name, where, shape, f"(channels, height, width) with 1 or 3 channels and sides of {MIN_SIDE}..{MAX_SIDE}"
        )


def _valid_shape(shape: Any) -> bool:
    ok = isinstance(shape, list | tuple) and len(shape) == 3 and all(_is_int(n) for n in shape)
    return ok and shape[0] in (1, 3) and all(MIN_SIDE <= n <= MAX_SIDE for n in shape[1:])


def _check_rng_states(states: Any, name: str) -> None:
    """The RNG states of ``model.rng_states()``, one per process: exactly the types and sizes torch, NumPy and
    Python take back, so restoring them cannot fail (or be fed a huge tensor) halfway through a restore."""
    states = [states] if isinstance(states, dict) else states
    if not isinstance(states, (list, tuple)) or len(states) > 65_536:
        raise _foreign(name, RNG_KEY, states, "a list of one state per process")
    torch_size = torch.get_rng_state().shape
    for rank, state in enumerate(states):
        where = f"{RNG_KEY}[{rank}]"
        if not isinstance(state, dict) or not {"torch", "cuda", "numpy", "python"} <= set(state):
            raise _foreign(name, where, state, "a mapping with torch, cuda, numpy and python states")
        if not _is_bytes(state["torch"], torch_size):
            raise _foreign(name, f"{where}.torch", state["torch"], f"a uint8 tensor of {torch_size[0]} bytes")
        cuda = state["cuda"]
        if not isinstance(cuda, (list, tuple)) or len(cuda) > 1024 or not all(_is_bytes(s) for s in cuda):
            raise _foreign(name, f"{where}.cuda", cuda, "a list of small uint8 tensors, one per GPU")
        numpy_state = state["numpy"]
        ok = isinstance(numpy_state, (list, tuple)) and len(numpy_state) == 5
        if ok:
            kind, keys, pos, has_gauss, cached = numpy_state
            ok = (kind == "MT19937" and isinstance(keys, torch.Tensor) and keys.dtype == torch.int64
                  and keys.shape == (624,) and bool(((keys >= 0) & (keys < 2**32)).all()) and _is_int(pos)
                  and 0 <= pos <= 624 and _is_int(has_gauss) and has_gauss in (0, 1)
                  and isinstance(cached, int | float))  # fmt: skip
        if not ok:
            raise _foreign(name, f"{where}.numpy", numpy_state, "NumPy's MT19937 state (name, 624 keys, pos, gauss)")
        python = state["python"]
        ok = isinstance(python, list | tuple) and len(python) == 3 and _is_int(python[0]) and python[0] == 3
        if ok:
            internal, gauss = python[1], python[2]
            ok = (isinstance(internal, (list, tuple)) and len(internal) == 625
                  and all(_is_int(n) and 0 <= n < 2**32 for n in internal) and internal[-1] <= 624
                  and (gauss is None or isinstance(gauss, float)))  # fmt: skip
        if not ok:
            raise _foreign(name, f"{where}.python", python, "Python's random.getstate() (3, 625 numbers, gauss)")


def _is_bytes(value: Any, shape: torch.Size | None = None) -> bool:
    ok = isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1
    return ok and (value.shape == shape if shape is not None else value.numel() <= 1024)


# --- hyperparameters: data that must not name code --------------------------------------------------------------


@cache
def allowed_classes(modules: tuple[types.ModuleType, ...]) -> dict[str, type]:
    """Every class a checkpoint may name, by dotted name: the public classes of ``modules`` (a module class's
    ``CHECKPOINT_MODULES``), each under the name its module shows and the one it is defined under
    (``torch.optim.Adam`` and ``torch.optim.adam.Adam``, as LitMLP writes a factory built in Python). Which of them
    an option accepts follows from the option's type (see :func:`_factories`)."""
    found = {}
    for module in modules:
        root = module.__name__.split(".")[0]
        for attr, obj in vars(module).items():
            if isinstance(obj, type) and not attr.startswith("_") and obj.__module__.split(".")[0] == root:
                found[f"{module.__name__}.{attr}"] = obj
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def check_hyperparameters(hparams: Any, model_class: type, name: str, trusted: Mapping[str, str] | None = None) -> None:
    """Refuse hyperparameters that would make jsonargparse import or call code, before anything is imported.

    Every key must be an argument of ``model_class``. An argument typed as a factory (a callable returning a class,
    e.g. ``optimizer``) must be ``{class_path, init_args}`` naming a class of :func:`allowed_classes` (of
    ``model_class.CHECKPOINT_MODULES``) that the type accepts, or the class ``trusted`` gives for it; its
    ``init_args`` must be arguments of that class. Every other value must be plain data: a string only where the
    type is a string or a literal choice and nothing that could be code, no mapping that names a class, at most
    :data:`MAX_DEPTH` deep.
    """
    _check_size(hparams, name)
    hints, factories = _hints(model_class), _factories(model_class)
    arguments = inspect.signature(model_class).parameters
    for key, value in hparams.items():
        where = f"hyper_parameters.{key}" if isinstance(key, str) else f"hyper_parameters[{_short(key)}]"
        if key == "_instantiator":
            if value not in INSTANTIATORS:
                raise _refused(name, where, f"names {_short(value)}, not Lightning's instantiate_module")
        elif not isinstance(key, str) or key not in arguments or key.startswith("_"):
            raise _refused(name, where, f"is not an argument of {model_class.__name__}")
        elif key in factories:
            allowed = allowed_classes(getattr(model_class, "CHECKPOINT_MODULES", ()))
            _check_factory(value, key, factories[key], allowed, (trusted or {}).get(key), name)
        else:
            _check_value(value, hints.get(key, Any), where, name)


def _check_factory(
    value: Any, key: str, factory: tuple[int, tuple[type, ...]], shipped: dict, trusted: str | None, name: str
) -> None:
    where, (given, returns) = f"hyper_parameters.{key}", factory
    if value is None:
        return
    if not isinstance(value, dict) or not set(value) <= {"class_path", "init_args"}:
        raise _refused(name, where, f"is {_short(value)}, not the {{class_path, init_args}} of a class")
    path = value.get("class_path")
    allowed = {n: c for n, c in shipped.items() if issubclass(c, returns) and c not in returns}
    cls = allowed.get(path) if isinstance(path, str) else None
    if cls is None and isinstance(path, str) and path == trusted:
        cls = _imported_class(path)
    if cls is None:
        raise _refused(
            name, f"{where}.class_path", f"names {_short(path)}, not a class cifarlit ships for model.{key}",
            f", or if you trust the file, name that class in your own config (--model.{key}.class_path)",
        )  # fmt: skip
    init = value.get("init_args") or {}
    if not isinstance(init, dict):
        raise _refused(name, f"{where}.init_args", f"is {_short(init)}, not a mapping of argument names to values")
    parameters = list(inspect.signature(cls).parameters.values())[given:]  # the first ones come from LitMLP
    accepted = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    hints = _hints(cls)
    for arg, arg_value in init.items():
        at = f"{where}.init_args.{arg}"
        if arg not in accepted:
            raise _refused(name, at, f"is not an argument {cls.__name__} takes from a config")
        _check_value(arg_value, hints.get(arg, Any), at, name)


def _check_value(value: Any, hint: Any, where: str, name: str) -> None:
    """Plain data for an argument typed ``hint``; a string only where no import path or class could be read."""
    code = _admits_code(hint)
    strings = not code and _admits_str(hint)

    def walk(item: Any, at: str) -> None:
        if item is None or isinstance(item, (bool, int, float)):
            return
        if isinstance(item, str):
            if not strings:  # jsonargparse reads a string there as an import path (or YAML)
                where_code = "which would be imported as code there"
                expected = where_code if code else f"where {_type_name(hint)} is expected"
                raise _refused(name, at, f"is the string {_short(item)}, {expected}")
        elif isinstance(item, (list, tuple)):
            for i, element in enumerate(item):
                walk(element, f"{at}[{i}]")
        elif isinstance(item, dict):
            if code or "class_path" in item:  # a mapping there is read as a class to import and build
                raise _refused(name, at, "is a mapping, which would be imported and built as a class there")
            for k, element in item.items():
                if not isinstance(k, str):
                    raise _refused(name, at, f"has the key {_short(k)}, not a name")
                walk(element, f"{at}.{k}")
        else:
            raise _refused(name, at, f"is a {type(item).__name__}, not a plain value")

    walk(value, where)


def check_network(ckpt: dict, model_class: type, name: str) -> None:
    """Refuse hyperparameters that do not build a module of exactly the file's tensor shapes: built on the meta
    device, with LightningCLI's own instantiator (what ``load_from_checkpoint`` uses), so nothing is allocated."""
    from lightning.pytorch.cli import instantiate_module

    hparams = copy.deepcopy(ckpt["hyper_parameters"])
    hparams.pop("_instantiator", None)
    if "compile" in hparams:
        hparams["compile"] = False  # torch.compile only wraps the network: its tensors stay the same
    for factory in hparams.values():  # pretrained weights are not fetched for this: the file's replace them
        init = factory.get("init_args") if isinstance(factory, dict) else None
        if isinstance(init, dict) and "weights" in init:
            init["weights"] = None
    try:
        with torch.device("meta"):
            module = instantiate_module(model_class, hparams)
    except CifarlitError as err:
        raise CifarlitError(f"{name} holds hyperparameters cifarlit refuses: {str(err).rstrip('.')}.") from None
    except Exception as err:  # jsonargparse's type errors, or a network's own refusal
        detail = re.sub(r"\s+", " ", str(err)).replace('"module.', '"hyper_parameters.')[:300]
        raise CifarlitError(
            f"{name}: its hyper_parameters do not build a {model_class.__name__} ({type(err).__name__}: {detail}); "
            f"pass {CHECKPOINT_HELP}."
        ) from None
    built = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    differ = sorted(k for k in built.keys() | found.keys() if built.get(k) != found.get(k))
    if differ:
        detail = "; ".join(
            f"{k}: {found.get(k, 'absent')} in the file, {built.get(k, 'absent')} built" for k in differ[:2]
        )
        raise CifarlitError(
            f"{name}: its hyper_parameters describe another network than the weights it holds ({len(differ)} "
            f"tensors differ, {detail}), so the file is damaged or was edited; pass {CHECKPOINT_HELP}."
        )


def _check_size(hparams: Any, name: str) -> None:
    if not isinstance(hparams, dict):
        raise _foreign(name, "hyper_parameters", hparams, "a mapping of option names to values")
    stack, count = [(hparams, 1, "hyper_parameters")], 0
    while stack:  # not recursive: a crafted nesting must not exhaust the interpreter's stack
        value, depth, where = stack.pop()
        children = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        count += 1 + len(children)
        if depth > MAX_DEPTH or count > MAX_VALUES:
            raise CifarlitError(
                f"{name} is refused: its {where} is nested more than {MAX_DEPTH} deep or the hyper_parameters hold "
                f"more than {MAX_VALUES} values, which no cifarlit checkpoint does; pass {CHECKPOINT_HELP}."
            )
        for key, child in children:
            if isinstance(child, dict | list | tuple):
                stack.append((child, depth + 1, f"{where}.{key}" if isinstance(value, dict) else f"{where}[{key}]"))


def _factories(model_class: type) -> dict[str, tuple[int, tuple[type, ...]]]:
    """The arguments typed as factories, e.g. ``optimizer: Callable[[Iterable], Optimizer]``: for each, how many
    arguments the module passes itself (the parameters) and the classes it must build (Optimizer)."""
    found = {}
    for key, hint in _hints(model_class).items():
        for part in _members(hint):
            if typing.get_origin(part) is collections.abc.Callable and typing.get_args(part):
                given, returns = typing.get_args(part)
                found[key] = (len(given), tuple(t for t in _members(returns) if isinstance(t, type)))
    return found


def _hints(cls: type) -> dict[str, Any]:
    """``cls.__init__``'s resolved annotations; none when they cannot be resolved (then every argument is read as
    "anything", the strictest reading)."""
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:
        return {}


def _members(hint: Any) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(m for arg in typing.get_args(hint) for m in _members(arg))
    return (hint,)


CONTAINERS = (list, tuple, dict, set, frozenset, collections.abc.Sequence, collections.abc.Mapping,
              collections.abc.Iterable)  # fmt: skip


def _admits_code(hint: Any) -> bool:
    """Whether jsonargparse may read a value of type ``hint`` as something to import: a callable, a class, ``Any``
    (also an argument without annotation) or a union or container holding one."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return False
    if origin in (typing.Union, types.UnionType) or origin in CONTAINERS:
        return any(_admits_code(arg) for arg in typing.get_args(hint) if arg is not Ellipsis)
    return hint not in PLAIN


def _admits_str(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return any(isinstance(arg, str) for arg in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType) or origin in CONTAINERS:
        return any(_admits_str(arg) for arg in typing.get_args(hint))
    return hint is str


def _imported_class(path: str) -> type | None:
    """The class at ``path`` if its module is already imported (the user's config named it), without importing."""
    module, _, attr = path.rpartition(".")
    obj = getattr(sys.modules.get(module), attr, None)
    return obj if isinstance(obj, type) else None


# --- paths restored into ModelCheckpoint ------------------------------------------------------------------------


def confine_paths(checkpoint: dict, callbacks: Iterable, warn: bool = True) -> None:
    """Drop, before Lightning restores it, each ``ModelCheckpoint``'s state whose paths leave its own folder.

    A resumed ModelCheckpoint removes its "previous" best, last and k-th best files with ``fs.rm(recursive=True)``
    when it saves new ones, and checks first only that a local path lies under its folder as written: another
    protocol (``local://``, ``memory://``), ``..`` after the folder or a symlink in it reaches anything. A path is
    kept when it is a local ``.ckpt`` path whose real path (symlinks and ``..`` resolved) lies inside the callback's
    folder and is not a directory; otherwise that callback starts its bookkeeping afresh (nothing is removed) and
    ``warn`` prints one line.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    states = checkpoint.get("callbacks")
    if not isinstance(states, dict):
        return
    dropped = []
    for callback in callbacks:
        key = callback.state_key if isinstance(callback, ModelCheckpoint) else None
        if key in states and callback.dirpath is not None:
            stray = _stray_path(states[key], str(callback.dirpath))
            if stray is not None:
                del states[key]
                dropped.append(stray)
    if dropped and warn:
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        if rank_zero_only.rank == 0:
            print(
                f"warning: the checkpoint's ModelCheckpoint state names {_short(dropped[0])} outside this run's "
                f"checkpoint folder ({len(dropped)} callback(s)); that state was dropped, so nothing outside is "
                "removed and the best/last/top-k bookkeeping starts afresh.",
                file=sys.stderr,
            )


def _stray_path(state: Any, folder: str) -> Any:
    """The first path (or malformed part) of a ModelCheckpoint state that must not be trusted; None if none."""
    if not isinstance(state, dict) or not isinstance(state.get("best_model_path"), str):
        return state
    models = state.get("best_k_models", {})
    if not isinstance(models, dict) or not all(isinstance(v, torch.Tensor) for v in models.values()):
        return "best_k_models"
    kth = state.get("kth_best_model_path", "")
    if kth and kth not in models:  # Lightning pops it from best_k_models when the top k is full
        return kth
    for key in ("best_model_score", "current_score", "kth_value"):
        if state.get(key) is not None and not isinstance(state[key], torch.Tensor):
            return key
    paths = [state["best_model_path"], state.get("last_model_path", ""), kth, *models]
    return next((p for p in paths if p != "" and not inside(p, folder)), None)


def inside(path: Any, folder: str) -> bool:
    """Whether ``path`` is a ``.ckpt`` file path that stays inside ``folder`` once resolved (not the folder, not a
    directory). For a local folder: no protocol, real path under the folder's real path. For a remote folder
    (``s3://...``): under it as written, without ``..``."""
    if not isinstance(path, str) or not path.endswith(".ckpt"):
        return False
    if _has_protocol(folder):
        return path.startswith(folder.rstrip("/") + "/") and ".." not in path.split("/")
    if _has_protocol(path):
        return False
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real.startswith(root + os.sep) and not os.path.isdir(real)


def _has_protocol(path: str) -> bool:
    """``s3://``, ``local://``, ``file:``, ``a::b``: anything fsspec would route or rewrite, not a plain path."""
    drive = os.name == "nt" and re.match(r"^[A-Za-z]:[\\/]", path)
    return bool(not drive and (re.match(r"^[\w+.-]+:", path) or "::" in path))


# --- messages ---------------------------------------------------------------------------------------------------


def _refused(name: str, where: str, problem: str, hint: str = "") -> CifarlitError:
    return CifarlitError(
        f"{name} is refused: its {where} {problem}, and a checkpoint's hyperparameters are data that may not name "
        f"code; pass {CHECKPOINT_HELP}{hint}."
    )


def _foreign(name: str, where: str, value: Any, expected: str) -> CifarlitError:
    return CifarlitError(
        f"{name} is not a checkpoint cifarlit can restore: its {where} is {_short(value)}, not {expected}; "
        f"pass {CHECKPOINT_HELP}."
    )


def _short(value: Any) -> str:
    """A value for a message: one line, at most 80 characters."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else f"a {type(value).__name__}"
    if isinstance(value, (list, tuple)) and len(repr(value)) <= 80:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(hint: Any) -> str:
    """``list[int]``, ``float | list[float]``, ``Tensor``: a type as a message shows it, without module paths."""
    plain_class = isinstance(hint, type) and typing.get_origin(hint) is None
    return hint.__name__ if plain_class else re.sub(r"\b[\w.]+\.(\w+)", r"\1", str(hint))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unreadable(name: str, err: Exception, expected: str) -> CifarlitError:
    return CifarlitError(
        f"{name} cannot be read ({err.__class__.__name__}); it may be truncated by a crash or not be a "
        f"PyTorch file: pass {expected}, e.g. another checkpoint from the same folder such as last.ckpt."
    )


def _culprit(err: Exception) -> str:
    """What torch's refusal names, e.g. ``posix.system``, or a short generic phrase."""
    found = re.search(r"GLOBAL (\S+)", str(err))
    return f"it names {found.group(1)}" if found else "objects other than tensors and plain values"

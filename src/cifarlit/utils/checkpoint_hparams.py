"""A checkpoint's hyperparameters: data that must not name code, and that must build the file's own network.

LightningCLI merges a checkpoint's hyperparameters into the config and ``load_from_checkpoint`` rebuilds the module
from them, both through jsonargparse, which imports whatever a ``class_path`` or a callable-typed value names and
calls callable arguments. So before either reads them, :func:`check_hyperparameters` allows a checkpoint to name
only the classes cifarlit ships for that option (:func:`allowed_classes` of the module class's
``CHECKPOINT_MODULES``) or the class the user's own config names, and no callable at all; :func:`check_network`
then builds the network they describe on the meta device (nothing allocated, however large the claimed image) and
compares its tensor shapes with the file's.

Classes that moved when cifarlit's modules were grouped into packages (``cifarlit.nets.SmallCNN`` is now
``cifarlit.models.nets.SmallCNN``) are refused by a sentence that names the new place: the old module paths no
longer import, so a checkpoint written before cannot be rebuilt as it is (``checkpoints.rename_moved`` writes a
copy under the new names).
"""

from __future__ import annotations

import collections.abc
import copy
import inspect
import re
import sys
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal

import torch

from cifarlit.utils.checkpoint_state import CHECKPOINT_HELP, foreign, short
from cifarlit.utils.errors import CifarlitError
from cifarlit.utils.lightning_adapter import INSTANTIATOR_KEY, INSTANTIATORS, instantiate_module

MAX_DEPTH = 8  # nesting of a hyperparameter value; cifarlit's own go 4 deep (optimizer.init_args.betas[0])
MAX_VALUES = 10_000  # values in all hyperparameters together; cifarlit's own hold fewer than 100
PLAIN = (bool, int, float, str, type(None), list, tuple, dict)
CONTAINERS = (list, tuple, dict, set, frozenset, collections.abc.Sequence, collections.abc.Mapping,
              collections.abc.Iterable)  # fmt: skip
# The classes a checkpoint may name that lived in flat modules until cifarlit's modules moved into packages
# (issue #22): old class path -> new one. Only these are recognised as moved; any other name is just refused.
MOVED = {f"cifarlit.{module}.{name}": f"cifarlit.models.{module}.{name}" for module, names in (
    ("nets", ("MLP", "SmallCNN", "ResidualMLP", "CifarResNet", "TorchvisionNet", "GlobalPool", "Residual")),
    ("schedules", ("WarmupCosineLR",))) for name in names}  # fmt: skip


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
        where = f"hyper_parameters.{key}" if isinstance(key, str) else f"hyper_parameters[{short(key)}]"
        if key == INSTANTIATOR_KEY:
            if value not in INSTANTIATORS:
                raise _refused(name, where, f"names {short(value)}, not Lightning's instantiate_module")
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
        raise _refused(name, where, f"is {short(value)}, not the {{class_path, init_args}} of a class")
    path = value.get("class_path")
    allowed = {n: c for n, c in shipped.items() if issubclass(c, returns) and c not in returns}
    cls = allowed.get(path) if isinstance(path, str) else None
    if cls is None and isinstance(path, str) and path == trusted:
        cls = _imported_class(path)
    if cls is None and isinstance(path, str) and MOVED.get(path) in allowed:
        raise _moved(name, f"{where}.class_path", path, MOVED[path])
    if cls is None:
        raise _refused(
            name, f"{where}.class_path", f"names {short(path)}, not a class cifarlit ships for model.{key}",
            f", or if you trust the file, name that class in your own config (--model.{key}.class_path)",
        )  # fmt: skip
    init = value.get("init_args") or {}
    if not isinstance(init, dict):
        raise _refused(name, f"{where}.init_args", f"is {short(init)}, not a mapping of argument names to values")
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
                raise _refused(name, at, f"is the string {short(item)}, {expected}")
        elif isinstance(item, (list, tuple)):
            for i, element in enumerate(item):
                walk(element, f"{at}[{i}]")
        elif isinstance(item, dict):
            if code or "class_path" in item:  # a mapping there is read as a class to import and build
                raise _refused(name, at, "is a mapping, which would be imported and built as a class there")
            for k, element in item.items():
                if not isinstance(k, str):
                    raise _refused(name, at, f"has the key {short(k)}, not a name")
                walk(element, f"{at}.{k}")
        else:
            raise _refused(name, at, f"is a {type(item).__name__}, not a plain value")

    walk(value, where)


def check_network(ckpt: dict, model_class: type, name: str) -> None:
    """Refuse hyperparameters that do not build a module of exactly the file's tensor shapes: built on the meta
    device, with LightningCLI's own instantiator (what ``load_from_checkpoint`` uses), so nothing is allocated."""
    hparams = copy.deepcopy(ckpt["hyper_parameters"])
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
        raise foreign(name, "hyper_parameters", hparams, "a mapping of option names to values")
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


def _refused(name: str, where: str, problem: str, hint: str = "") -> CifarlitError:
    return CifarlitError(
        f"{name} is refused: its {where} {problem}, and a checkpoint's hyperparameters are data that may not name "
        f"code; pass {CHECKPOINT_HELP}{hint}."
    )


def _moved(name: str, where: str, path: str, new: str) -> CifarlitError:
    return CifarlitError(
        f"{name} is refused: its {where} names {path}, which moved to {new} in this version of cifarlit, so the "
        f"file cannot be rebuilt as it is; write a copy under the new names with "
        f"cifarlit.utils.checkpoints.rename_moved(path) and pass that, or pass {CHECKPOINT_HELP}."
    )


def _type_name(hint: Any) -> str:
    """``list[int]``, ``float | list[float]``, ``Tensor``: a type as a message shows it, without module paths."""
    plain_class = isinstance(hint, type) and typing.get_origin(hint) is None
    return hint.__name__ if plain_class else re.sub(r"\b[\w.]+\.(\w+)", r"\1", str(hint))

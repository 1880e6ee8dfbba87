"""The config's factories (``model.optimizer``, ``model.lr_scheduler``, ``model.net``) as ``LitMLP`` uses them:
the optimizer built with torch's fused kernel, a schedule's ``total_steps`` filled in from the run's length, and
each written into the hyperparameters as plain ``class_path``/``init_args``.

A factory is what the config names: a class, ``functools.partial(cls, **kwargs)`` built in Python, or
jsonargparse's callable (:func:`cifarlit.utils.jsonargparse_adapter.factory_parts` reads all three).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cifarlit.utils.jsonargparse_adapter import factory_parts
from cifarlit.utils.lightning_adapter import INSTANTIATOR, INSTANTIATOR_KEY

FACTORIES = ("optimizer", "lr_scheduler", "net")  # the hyperparameters that are classes to build, not values


def build_optimizer(factory: Callable, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The configured optimizer, with torch's fused kernel when it has one and the config does not say otherwise.

    Fused is the same update rule in one kernel per tensor instead of ~10 elementwise ops: faster on the CPU
    (benchmarks/tricks.py) and the fastest variant on a GPU too. ``fused: false`` in ``init_args`` turns it off.
    """
    cls, given = factory_parts(factory) or (None, {})
    if cls is not None and "fused" in inspect.signature(cls).parameters and given.get("fused") is None:
        if not given.get("foreach") and not given.get("differentiable"):  # torch refuses these with fused
            try:
                return factory(params, fused=True)
            except RuntimeError:  # a device or dtype without a fused kernel: the default implementation
                pass
    return factory(params)


def needs_total_steps(factory: Callable) -> bool:
    """Whether ``factory`` builds a schedule that needs the run's length (``OneCycleLR``, ``WarmupCosineLR``) and
    the config leaves it unset, so that the module fills ``total_steps`` in."""
    cls, given = factory_parts(factory) or (None, {})
    if cls is None or "total_steps" not in inspect.signature(cls).parameters:
        return False
    return given.get("total_steps") is None and given.get("epochs") is None


def write_plain(hparams: dict) -> None:
    """Write the factories among ``hparams`` as LightningCLI's ``class_path``/``init_args``, as a config gives
    them; leave out one that cannot be written so (a lambda, a partial with objects in it), which
    ``load_from_checkpoint`` then needs passed again."""
    for key in FACTORIES:
        value = hparams.get(key)
        if value is None or isinstance(value, dict):
            continue
        parts = factory_parts(value)
        if parts is None or not is_plain(parts[1]):
            hparams.pop(key)
        else:
            cls, kwargs = parts
            hparams[key] = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": kwargs}
    hparams[INSTANTIATOR_KEY] = INSTANTIATOR


def is_plain(value: Any) -> bool:
    """Whether ``value`` is numbers, strings, None, and lists and string-keyed mappings of them."""
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


def rate_argument(scheduler: Callable | None) -> str | None:
    """The argument of ``scheduler`` that sets the learning rate itself, whatever the optimizer's ``lr`` says
    (``OneCycleLR``'s ``max_lr``); None for a schedule that scales the optimizer's ``lr`` (``StepLR``,
    ``WarmupCosineLR``, ...) and for none. Raises ``ValueError`` for one that sets it from two arguments
    (``CyclicLR``'s ``base_lr`` and ``max_lr``): one rate cannot say what both should be."""
    cls = (factory_parts(scheduler) or (None, {}))[0] if scheduler is not None else None
    arguments = inspect.signature(cls).parameters if cls is not None else {}
    if "base_lr" in arguments and "max_lr" in arguments:
        raise ValueError(f"{cls.__name__} sets the rate from base_lr and max_lr")
    return "max_lr" if "max_lr" in arguments else None


def learning_rate(optimizer: Callable, scheduler: Callable | None) -> float | None:
    """The rate a run trains at: the schedule's own (:func:`rate_argument`), else the optimizer's ``lr`` (its
    class's default when the config leaves it out); None when the factories do not say."""
    argument = rate_argument(scheduler)
    factory, key = (scheduler, argument) if argument else (optimizer, "lr")
    cls, given = factory_parts(factory) or (None, {})
    if key in given:
        return given[key]
    default = inspect.signature(cls).parameters.get(key) if cls is not None else None
    return default.default if default is not None and isinstance(default.default, (int, float)) else None


def with_learning_rate(optimizer: Callable, scheduler: Callable | None, lr: float) -> tuple[Callable, Callable | None]:
    """The optimizer and schedule factories that train at ``lr``: the optimizer's ``lr`` and, for a schedule that
    sets the rate itself, its :func:`rate_argument` (``max_lr``), so the schedule is built from it too."""
    argument = rate_argument(scheduler)
    if argument:
        scheduler = functools.partial(scheduler, **{argument: lr})
    return functools.partial(optimizer, lr=lr), scheduler


def write_learning_rate(model: Any, lr: float, argument: str | None) -> None:
    """Write ``lr`` into a model's config or hyperparameters (a mapping or jsonargparse ``Namespace`` whose
    ``optimizer``/``lr_scheduler`` are ``class_path``/``init_args``), where :func:`with_learning_rate` puts it."""
    for key, name in (("optimizer", "lr"), ("lr_scheduler", argument)):
        section = model.get(key) if name else None
        if section is not None and section.get("init_args") is not None:
            section["init_args"][name] = lr

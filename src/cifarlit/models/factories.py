"""The config's factories (``model.optimizer``, ``model.lr_scheduler``, ``model.net``) as ``LitMLP`` uses them:
the optimizer built with torch's fused kernel, a schedule's ``total_steps`` filled in from the run's length, and
each written into the hyperparameters as plain ``class_path``/``init_args``.

A factory is what the config names: a class, ``functools.partial(cls, **kwargs)`` built in Python, or
jsonargparse's callable (:func:`cifarlit.utils.jsonargparse_adapter.factory_parts` reads all three).
"""

from __future__ import annotations

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

"""What cifarlit relies on in jsonargparse beyond its documented API, in one place: the shape of the factory it
builds for an argument typed as a callable that returns a class (``optimizer: OptimizerCallable``).

jsonargparse documents only that such a value is a callable which builds the configured class. cifarlit also
reads which class and which arguments: to build an optimizer fused unless the config says otherwise, to fill in a
scheduler's ``total_steps``, and to write the factory back as plain ``class_path``/``init_args`` in a module's
hyperparameters. jsonargparse builds it as ``functools.partial(instantiator, cls, **init_args)`` (its instantiator
itself a partial, which ``functools.partial`` flattens into ``func`` and a first argument); a factory built
in Python is the class itself or ``functools.partial(cls, **kwargs)``. ``tests/test_adapters.py`` checks the form
on the installed jsonargparse through LightningCLI and ``load_from_checkpoint``, and pyproject.toml keeps
jsonargparse below its next major release.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


def factory_parts(factory: Any) -> tuple[type, dict[str, Any]] | None:
    """The class ``factory`` builds and the keyword arguments it passes, for a factory that builds a class from
    keywords only: the class itself, ``partial(cls, **kwargs)`` or jsonargparse's ``partial(instantiator, cls,
    **init_args)``. None for anything else (a lambda, a function, a partial with positional arguments)."""
    if inspect.isclass(factory):
        return factory, {}
    if not isinstance(factory, functools.partial):
        return None
    if inspect.isclass(factory.func) and not factory.args:
        return factory.func, dict(factory.keywords)
    *instantiator, cls = factory.args or (None,)
    if inspect.isclass(cls) and len(instantiator) <= 1 and not any(map(inspect.isclass, (factory.func, *instantiator))):
        return cls, dict(factory.keywords)  # jsonargparse's: functools.partial flattens its nested partials
    return None

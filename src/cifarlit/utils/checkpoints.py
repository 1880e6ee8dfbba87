"""Reading checkpoints and weights files: tensors and plain values, never code, and every part checked before use.

A ``.ckpt`` or a ``torch.save``'d file is a pickle, and unpickling an object runs whatever its ``__reduce__``
names: a crafted file runs code the moment it is read. Every such file cifarlit reads goes through :func:`load`,
which uses ``torch.load(weights_only=True)``: it rebuilds tensors and plain Python values (numbers, strings,
lists, dicts) only, and refuses anything else with one sentence. Lightning's own reads are told the same (the
CLI sets ``weights_only: true``), and cifarlit writes its hyperparameters as plain values, so its own
checkpoints always load this way.

Plain values can still steer code, so :func:`load_checkpoint` checks what they say before anything acts on them,
in two modules this one gathers:

- :mod:`cifarlit.utils.checkpoint_hparams`: **hyperparameters** are handed to jsonargparse, which imports what a
  ``class_path`` names; a checkpoint may name only the classes cifarlit ships for that option, or the one the
  user's own config names, and its values must build a network of exactly the shapes of the file's weights (built
  on the meta device, so a crafted ``image_shape`` of 100,000 x 100,000 allocates nothing);
- :mod:`cifarlit.utils.checkpoint_state`: **the data module's state, the RNG states and Lightning's containers**
  must have the types and shapes cifarlit writes, and the **paths** a resumed ``ModelCheckpoint`` would later
  delete must lie inside its own folder.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cifarlit.utils.checkpoint_hparams import MOVED, allowed_classes, check_hyperparameters, check_network
from cifarlit.utils.checkpoint_state import (
    CHECKPOINT_HELP,
    DATA_KEY,
    MAX_SIDE,
    MIN_SIDE,
    RNG_KEY,
    check_data_state,
    check_restorable,
    confine_paths,
    inside,
)
from cifarlit.utils.errors import CifarlitError
from cifarlit.utils.files import atomic_path

__all__ = [
    "CHECKPOINT_HELP", "DATA_KEY", "MAX_SIDE", "MIN_SIDE", "RNG_KEY", "allowed_classes", "check_data_state",
    "check_hyperparameters", "check_network", "check_restorable", "confine_paths", "inside", "load",
    "load_checkpoint", "rename_moved",
]  # fmt: skip


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


def rename_moved(path: str | Path, output: str | Path | None = None) -> Path:
    """Write a copy of the checkpoint ``path`` whose hyperparameters name the classes that moved into packages by
    their new names (``cifarlit.nets.SmallCNN`` -> ``cifarlit.models.nets.SmallCNN``), and nothing else changed;
    returns the copy, ``output`` or ``<name>-renamed.ckpt`` beside the file. The file itself is left as it was,
    and the copy is checked like any other checkpoint when it is used.

    Only the explicit moves of :data:`~cifarlit.utils.checkpoint_hparams.MOVED` are renamed, where cifarlit wrote
    them (an option's ``class_path``): any other name stays as it was, to be refused as before.
    """
    path = Path(path)
    name = f"rename_moved({str(path)!r})"
    ckpt = load(path, name)
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict):
        raise CifarlitError(f"{name}: the file holds no hyperparameters to rename; pass {CHECKPOINT_HELP}.")
    for value in hparams.values():
        if isinstance(value, dict) and isinstance(value.get("class_path"), str) and value["class_path"] in MOVED:
            value["class_path"] = MOVED[value["class_path"]]
    output = Path(output) if output is not None else path.with_name(f"{path.stem}-renamed.ckpt")
    with atomic_path(output) as tmp:
        torch.save(ckpt, tmp)
    return output


def _unreadable(name: str, err: Exception, expected: str) -> CifarlitError:
    return CifarlitError(
        f"{name} cannot be read ({err.__class__.__name__}); it may be truncated by a crash or not be a "
        f"PyTorch file: pass {expected}, e.g. another checkpoint from the same folder such as last.ckpt."
    )


def _culprit(err: Exception) -> str:
    """What torch's refusal names, e.g. ``posix.system``, or a short generic phrase."""
    found = re.search(r"GLOBAL (\S+)", str(err))
    return f"it names {found.group(1)}" if found else "objects other than tensors and plain values"

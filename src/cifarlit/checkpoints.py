"""Reading checkpoints and weights files: tensors and plain values, never code.

A ``.ckpt`` or a ``torch.save``'d file is a pickle, and unpickling an object runs whatever its ``__reduce__``
names: a crafted file runs code the moment it is read. Every such file cifarlit reads goes through :func:`load`,
which uses ``torch.load(weights_only=True)``: it rebuilds tensors and plain Python values (numbers, strings,
lists, dicts) only, and refuses anything else with one sentence. Lightning's own reads are told the same (the
CLI sets ``weights_only: true``), and cifarlit writes its hyperparameters as plain values, so its own
checkpoints always load this way.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from cifarlit.errors import CifarlitError

CHECKPOINT_HELP = "a checkpoint written by `cifarlit fit` (lightning_logs/<name>/version_N/checkpoints/*.ckpt)"


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


def load_checkpoint(path: Path, name: str | None = None) -> dict:
    """A cifarlit checkpoint: the network's ``net.*`` weights and the hyperparameters that rebuild it."""
    name = name or f"--ckpt_path {path}"
    ckpt = load(path, name)
    state = ckpt.get("state_dict", {}) if isinstance(ckpt, dict) else {}
    if not any(str(key).startswith("net.") for key in state) or "hyper_parameters" not in ckpt:
        raise CifarlitError(
            f"{name} is not a cifarlit checkpoint (no LitMLP weights and hyperparameters in it); pass "
            f"{CHECKPOINT_HELP}."
        )
    return ckpt


def _unreadable(name: str, err: Exception, expected: str) -> CifarlitError:
    return CifarlitError(
        f"{name} cannot be read ({err.__class__.__name__}); it may be truncated by a crash or not be a "
        f"PyTorch file: pass {expected}, e.g. another checkpoint from the same folder such as last.ckpt."
    )


def _culprit(err: Exception) -> str:
    """What torch's refusal names, e.g. ``posix.system``, or a short generic phrase."""
    found = re.search(r"GLOBAL (\S+)", str(err))
    return f"it names {found.group(1)}" if found else "objects other than tensors and plain values"

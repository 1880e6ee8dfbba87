"""What a checkpoint restores, checked before anything restores it: Lightning's containers, the DataModule's
state, the RNG states, and the paths a resumed ``ModelCheckpoint`` trusts.

A checkpoint read with ``weights_only=True`` holds tensors and plain values only, but of any type and shape: a
foreign or crafted file gets one sentence here (:func:`check_restorable`) instead of a traceback halfway through a
restore, or a huge tensor fed to ``torch.set_rng_state``. A resumed ``ModelCheckpoint`` later deletes its
"previous" best, last and k-th best files recursively, so :func:`confine_paths` drops any restored bookkeeping
whose paths leave the run's own checkpoint folder.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from typing import Any

import torch

from cifarlit.utils.errors import CifarlitError
from cifarlit.utils.lightning_adapter import MODEL_CHECKPOINT_PATHS

CHECKPOINT_HELP = "a checkpoint written by `cifarlit fit` (lightning_logs/<name>/version_N/checkpoints/*.ckpt)"
DATA_KEY = "CIFAR10DataModule"  # the DataModule's state in a checkpoint: Lightning files it by class __qualname__
RNG_KEY = "cifarlit_rng_states"  # LitMLP.on_save_checkpoint: one dict of rng.rng_states() per process
MAX_SIDE = 4096  # the largest image side a checkpoint may claim: one 4096 x 4096 RGB image is 48 MiB as uint8
MIN_SIDE = 8  # the smallest image side of data.image_size and of a checkpoint: the default nets halve it 3 times


def check_restorable(ckpt: dict, name: str) -> None:
    """Refuse, in one sentence, a checkpoint part that a restore would fail on or misread: Lightning's containers,
    the hyperparameters' and the DataModule's image shape and classes, and the RNG states."""
    containers = {"state_dict": dict, "hyper_parameters": dict, "callbacks": dict, "loops": dict,
                  "optimizer_states": list, "lr_schedulers": list}  # fmt: skip
    for key, kind in containers.items():
        if key in ckpt and not isinstance(ckpt[key], kind):
            raise foreign(name, key, ckpt[key], f"a {kind.__name__}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt.get("state_dict", {}).items()):
        raise foreign(name, "state_dict", "entries other than named tensors", "a mapping of names to tensors")
    for key in ("callbacks", "loops"):
        if not all(isinstance(k, str) and isinstance(v, dict) for k, v in ckpt.get(key, {}).items()):
            raise foreign(name, key, "entries other than named mappings", "a mapping of names to states")
    for key in ("optimizer_states", "lr_schedulers"):
        if not all(isinstance(v, dict) for v in ckpt.get(key, [])):
            raise foreign(name, key, "entries other than mappings", "a list of states")
    for key in ("epoch", "global_step"):
        if key in ckpt and not (is_int(ckpt[key]) and ckpt[key] >= 0):
            raise foreign(name, key, ckpt[key], "a count >= 0")
    version = ckpt.get("pytorch-lightning_version")  # Lightning migrates older files, which cifarlit never wrote
    major = re.match(r"(\d+)\.\d+", version) if isinstance(version, str) else None
    if major is None or int(major.group(1)) < 2:
        raise foreign(name, "pytorch-lightning_version", version, "the Lightning (2.0 or later) that wrote it")
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
        raise foreign(name, DATA_KEY, state, "the data's statistics, classes and image shape as a mapping")
    trained = hparams.get("image_shape")
    shape = trained if _valid_shape(trained) else None
    if "image_shape" in state:
        shape = state["image_shape"]
        _check_shape(shape, f"{DATA_KEY}.image_shape", name)
        if isinstance(trained, list | tuple) and list(trained) != list(shape):
            raise foreign(name, f"{DATA_KEY}.image_shape", shape, f"hyper_parameters.image_shape {trained}")
    channels = shape[0] if shape is not None else 3  # checkpoints from before the shape was stored are RGB
    for key in ("mean", "std"):
        value = state.get(key)
        if value is None:  # absent: export says so in its own words; fit and test compute them again
            continue
        if not (isinstance(value, torch.Tensor) and value.is_floating_point() and value.shape == (channels,)):
            raise foreign(name, f"{DATA_KEY}.{key}", value, f"a float tensor of one value per channel ({channels})")
        if not torch.isfinite(value).all() or (key == "std" and not (value > 0).all()):
            raise foreign(name, f"{DATA_KEY}.{key}", value, "finite values (and a std above 0)")
    classes = state.get("classes")
    if classes is not None:
        if not (isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes)):
            raise foreign(name, f"{DATA_KEY}.classes", classes, "a list of class names")
        if is_int(hparams.get("num_classes")) and len(classes) != hparams["num_classes"]:
            raise foreign(name, f"{DATA_KEY}.classes", classes, f"{hparams['num_classes']} names (num_classes)")
    if not isinstance(state.get("split_fingerprint", ""), str):
        raise foreign(name, f"{DATA_KEY}.split_fingerprint", state["split_fingerprint"], "a string")


def _check_shape(shape: Any, where: str, name: str) -> None:
    if not _valid_shape(shape):
        raise foreign(
            name, where, shape, f"(channels, height, width) with 1 or 3 channels and sides of {MIN_SIDE}..{MAX_SIDE}"
        )


def _valid_shape(shape: Any) -> bool:
    ok = isinstance(shape, list | tuple) and len(shape) == 3 and all(is_int(n) for n in shape)
    return ok and shape[0] in (1, 3) and all(MIN_SIDE <= n <= MAX_SIDE for n in shape[1:])


def _check_rng_states(states: Any, name: str) -> None:
    """The RNG states of ``rng.rng_states()``, one per process: exactly the types and sizes torch, NumPy and
    Python take back, so restoring them cannot fail (or be fed a huge tensor) halfway through a restore."""
    states = [states] if isinstance(states, dict) else states
    if not isinstance(states, (list, tuple)) or len(states) > 65_536:
        raise foreign(name, RNG_KEY, states, "a list of one state per process")
    torch_size = torch.get_rng_state().shape
    for rank, state in enumerate(states):
        where = f"{RNG_KEY}[{rank}]"
        if not isinstance(state, dict) or not {"torch", "cuda", "numpy", "python"} <= set(state):
            raise foreign(name, where, state, "a mapping with torch, cuda, numpy and python states")
        if not _is_bytes(state["torch"], torch_size):
            raise foreign(name, f"{where}.torch", state["torch"], f"a uint8 tensor of {torch_size[0]} bytes")
        cuda = state["cuda"]
        if not isinstance(cuda, (list, tuple)) or len(cuda) > 1024 or not all(_is_bytes(s) for s in cuda):
            raise foreign(name, f"{where}.cuda", cuda, "a list of small uint8 tensors, one per GPU")
        if not _is_numpy_state(state["numpy"]):
            expected = "NumPy's MT19937 state (name, 624 keys, pos, gauss)"
            raise foreign(name, f"{where}.numpy", state["numpy"], expected)
        if not _is_python_state(state["python"]):
            expected = "Python's random.getstate() (3, 625 numbers, gauss)"
            raise foreign(name, f"{where}.python", state["python"], expected)


def _is_numpy_state(state: Any) -> bool:
    """``np.random.get_state()`` as ``rng_states`` stores it: name, 624 int64 keys, position, gauss flag, cache."""
    if not (isinstance(state, (list, tuple)) and len(state) == 5):
        return False
    kind, keys, pos, has_gauss, cached = state
    return (kind == "MT19937" and isinstance(keys, torch.Tensor) and keys.dtype == torch.int64
            and keys.shape == (624,) and bool(((keys >= 0) & (keys < 2**32)).all()) and is_int(pos)
            and 0 <= pos <= 624 and is_int(has_gauss) and has_gauss in (0, 1)
            and isinstance(cached, int | float))  # fmt: skip


def _is_python_state(state: Any) -> bool:
    """``random.getstate()``: version 3, 625 numbers (the last one a position), the cached gauss or None."""
    if not (isinstance(state, list | tuple) and len(state) == 3 and is_int(state[0]) and state[0] == 3):
        return False
    internal, gauss = state[1], state[2]
    return (isinstance(internal, (list, tuple)) and len(internal) == 625
            and all(is_int(n) and 0 <= n < 2**32 for n in internal) and internal[-1] <= 624
            and (gauss is None or isinstance(gauss, float)))  # fmt: skip


def _is_bytes(value: Any, shape: torch.Size | None = None) -> bool:
    ok = isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1
    return ok and (value.shape == shape if shape is not None else value.numel() <= 1024)


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
                f"warning: the checkpoint's ModelCheckpoint state names {short(dropped[0])} outside this run's "
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
    paths = [*(state.get(key, "") for key in MODEL_CHECKPOINT_PATHS), *models]
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


# --- messages -----------------------------------------------------------------------------------------------------


def foreign(name: str, where: str, value: Any, expected: str) -> CifarlitError:
    return CifarlitError(
        f"{name} is not a checkpoint cifarlit can restore: its {where} is {short(value)}, not {expected}; "
        f"pass {CHECKPOINT_HELP}."
    )


def short(value: Any) -> str:
    """A value for a message: one line, at most 80 characters."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else f"a {type(value).__name__}"
    if isinstance(value, (list, tuple)) and len(repr(value)) <= 80:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

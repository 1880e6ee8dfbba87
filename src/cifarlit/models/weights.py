"""Weights files: reading a network's tensors from ``.safetensors`` or a PyTorch file, and writing safetensors.

Two formats come in. A ``.safetensors`` file (timm's and the Hub's ``model.safetensors``, or
``cifarlit export --format safetensors``) is a JSON header and raw tensor bytes: reading it cannot run code,
and the safetensors library checks the header against the file (too short, too large, offsets past the end) before
any tensor is touched. A ``.pth``/``.pt``/``.ckpt`` file is a pickle, so it goes through
:func:`cifarlit.utils.checkpoints.load` (``weights_only=True``). Both end as the same :class:`WeightsFile`.

A network built inside :func:`deferred` (``LitMLP`` builds its ``model.net`` so) does not read its ``weights``
option when constructed: ``LitMLP.setup`` applies them when a fit starts, as it does ``model.init_from``. So a
checkpoint that is resumed, tested, predicted with or exported never needs the weights file or the network again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cifarlit.utils import checkpoints
from cifarlit.utils.errors import CifarlitError

WEIGHTS_HELP = (
    "a .ckpt from an earlier run, a .safetensors file (timm's or the Hub's model.safetensors, or one written by "
    "`cifarlit export --format safetensors`) or a file written by torch.save(model.state_dict(), path)"
)
SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")

_deferred: ContextVar[bool] = ContextVar("cifarlit_weights_deferred", default=False)


@dataclass
class WeightsFile:
    state: dict[str, torch.Tensor]  # the network's tensors, a LightningModule's ``net.`` prefix removed
    classes: list[str] | None = None  # the class names its head was trained on, when the file says
    metadata: dict[str, str] = field(default_factory=dict)  # a safetensors file's header metadata


def looks_like_file(weights: str) -> bool:
    """Whether a ``weights`` option names a file (a path or a weights suffix) rather than a pretrained tag."""
    return "/" in weights or "\\" in weights or weights.lower().endswith(SUFFIXES) or Path(weights).is_file()


def read(path: Path, option: str = "model.init_from") -> WeightsFile:
    """The tensors in ``path`` (``.safetensors``, or a PyTorch file read with ``weights_only=True``); ``option`` is
    how error messages name where the path came from."""
    name = f"{option}={path}"
    if path.suffix == ".safetensors":
        return _read_safetensors(path, name)
    obj = checkpoints.load(path, name, WEIGHTS_HELP)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    tensors = (
        isinstance(state, dict)
        and bool(state)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    )
    if not tensors:
        raise CifarlitError(f"{name} holds no state_dict of named tensors; pass {WEIGHTS_HELP}.")
    if any(k.startswith("net.") for k in state):
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    classes = None
    if checkpoints.DATA_KEY in obj:  # a cifarlit checkpoint: its class names decide whether the head is kept
        hparams = obj.get("hyper_parameters")
        try:  # the check --ckpt_path makes, in this option's words
            checkpoints.check_data_state(obj[checkpoints.DATA_KEY], hparams if isinstance(hparams, dict) else {}, name)
        except CifarlitError as err:
            raise CifarlitError(str(err).replace(checkpoints.CHECKPOINT_HELP, WEIGHTS_HELP)) from None
        classes = obj[checkpoints.DATA_KEY].get("classes")
    return WeightsFile(state, list(classes) if classes else None)


def _read_safetensors(path: Path, name: str) -> WeightsFile:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise CifarlitError(f"{name} does not exist; pass {WEIGHTS_HELP}.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:  # validates the header against the file
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CifarlitError(
            f"{name} is not a readable safetensors file ({err}); it may be truncated or hold something else: "
            f"pass {WEIGHTS_HELP}."
        ) from None
    if not state:
        raise CifarlitError(f"{name} holds no tensors; pass {WEIGHTS_HELP}.")
    return WeightsFile(state, _classes(metadata.get("classes"), name), metadata)


def _classes(text: str | None, name: str) -> list[str] | None:
    if text is None:
        return None
    try:
        classes = json.loads(text)
    except json.JSONDecodeError:
        classes = None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise CifarlitError(
            f"{name} has 'classes' metadata that is not a JSON list of names ({text[:60]!r}); pass {WEIGHTS_HELP}."
        )
    return classes


def write_safetensors(module: nn.Module, path: Path, metadata: dict[str, object]) -> None:
    """``module``'s state_dict as ``path``, with ``metadata`` (each value stored as JSON unless it is a string)."""
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors that share memory (tied weights, views), and the file holds plain copies
    state = {key: value.detach().cpu().contiguous().clone() for key, value in module.state_dict().items()}
    text = {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    save_file(state, str(path), metadata={"format": "pt", **text})  # "format": what the Hub's readers look for


@contextmanager
def deferred() -> Iterator[None]:
    """Networks built inside this block leave their ``weights`` for ``load_weights()`` (see the module docstring)."""
    token = _deferred.set(True)
    try:
        yield
    finally:
        _deferred.reset(token)


def deferring() -> bool:
    """Whether a network being built now should leave its ``weights`` for later."""
    return _deferred.get()

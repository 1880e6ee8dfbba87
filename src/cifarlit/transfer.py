"""``model.init_from``: start a network from another run's weights, re-creating the head when classes differ.

The file may be a cifarlit/Lightning checkpoint (its ``state_dict`` has ``net.`` prefixes) or a plain
``state_dict`` saved with ``torch.save`` (e.g. torchvision's downloaded weights). Only the classifier head may
differ in shape; any other difference means a different architecture and is an error, never a silent partial load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cifarlit import checkpoints
from cifarlit.errors import CifarlitError

WEIGHTS_HELP = "a .ckpt from an earlier run or a file written by torch.save(model.state_dict(), path)"


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)  # the head: its shape depends on the class count
    skipped: list[str] = field(default_factory=list)  # tensors in the file that were not used
    reason: str = ""  # why the head was re-created when its shape fits

    def __str__(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors"]
        if self.reinitialised:
            parts.append(
                f"re-initialised {', '.join(self.reinitialised)}" + (f" ({self.reason})" if self.reason else "")
            )
        if self.skipped:
            parts.append(f"skipped {', '.join(self.skipped)} from the file")
        return "; ".join(parts)


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """The network's tensors (the LightningModule's ``net.`` prefix removed) and, for a cifarlit checkpoint, the
    class names its head was trained on."""
    name = f"model.init_from={path}"
    obj = checkpoints.load(path, name, WEIGHTS_HELP)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    tensors = isinstance(state, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    )
    if not tensors:
        raise CifarlitError(f"{name} holds no state_dict of named tensors; pass {WEIGHTS_HELP}.")
    if any(k.startswith("net.") for k in state):
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    classes = None
    if checkpoints.DATA_KEY in obj:  # a cifarlit checkpoint: its class names decide whether the head is kept
        hparams = obj.get("hyper_parameters")
        try:  # the check --ckpt_path makes, in init_from's words
            checkpoints.check_data_state(obj[checkpoints.DATA_KEY], hparams if isinstance(hparams, dict) else {}, name)
        except CifarlitError as err:
            raise CifarlitError(str(err).replace(checkpoints.CHECKPOINT_HELP, WEIGHTS_HELP)) from None
        classes = obj[checkpoints.DATA_KEY].get("classes")
    return state, list(classes) if classes else None


def load_into(net: nn.Module, path: Path, head_name: str, classes: list[str] | None = None) -> LoadReport:
    """Copy ``path``'s tensors into ``net``; re-create the head when its shape differs, or when the file names
    other classes than ``classes`` (5 animals -> 5 vehicles: same shape, but each output means something else).
    Returns what was done."""
    source, source_classes = read_weights(path)
    target = net.state_dict()
    source = _align_prefix(source, target)
    in_head = lambda key: key.startswith(head_name + ".")  # noqa: E731
    report = LoadReport()
    mismatched = [k for k in target if k in source and source[k].shape != target[k].shape]
    missing = [k for k in target if k not in source]
    unexpected = [k for k in source if k not in target]
    bad = [k for k in mismatched + missing + unexpected if not in_head(k)]
    if bad:
        detail = "; ".join(
            f"{k}: {tuple(source[k].shape)} in the file vs {tuple(target[k].shape)} here"
            if k in mismatched
            else f"{k}: {'not in the file' if k in missing else 'not in this network'}"
            for k in bad[:4]
        )
        raise CifarlitError(
            f"model.init_from={path} does not fit this network outside its head '{head_name}' ({len(bad)} tensors, "
            f"{detail}); use the same model.net (and init_args) as the run that wrote it."
        )
    head_differs = any(in_head(k) for k in mismatched + missing)
    if classes is not None and source_classes is not None and list(classes) != source_classes:
        head_differs = True
        report.reason = f"the file's head is for {source_classes}, this run's data has {list(classes)}"
    for key in target:
        if in_head(key) and head_differs:
            report.reinitialised.append(key)  # keeps the freshly initialised head of the new class count
        else:
            target[key] = source[key]
            report.loaded.append(key)
    report.skipped = [k for k in source if k not in report.loaded]
    net.load_state_dict(target)
    return report


def _align_prefix(source: dict, target: dict) -> dict:
    """Match a torchvision file (``conv1.weight``) to a wrapped network (``model.conv1.weight``) or vice versa."""
    if set(source) & set(target):
        return source
    for prefix in {k.split(".", 1)[0] + "." for k in target}:
        added = {prefix + k: v for k, v in source.items()}
        if set(added) & set(target):
            return added
    return source

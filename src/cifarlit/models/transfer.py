"""``model.init_from``: start a network from another run's weights, re-creating the head when classes differ.

The file may be a cifarlit/Lightning checkpoint (its ``state_dict`` has ``net.`` prefixes), a plain
``state_dict`` saved with ``torch.save`` (e.g. torchvision's downloaded weights) or a ``.safetensors`` file (timm's,
the Hub's, or ``cifarlit export --format safetensors``), all read by :func:`cifarlit.models.weights.read`. Only the
classifier head may differ in shape; any other difference means a different architecture and is an error, never a
silent partial load. A network's own ``weights`` option (``TimmNet``, ``TorchvisionNet``) is applied the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cifarlit.models import weights
from cifarlit.utils.errors import CifarlitError


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


def read_weights(path: Path, option: str = "model.init_from") -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """The network's tensors (the LightningModule's ``net.`` prefix removed) and, when the file says, the class
    names its head was trained on."""
    found = weights.read(path, option)
    return found.state, found.classes


def load_into(
    net: nn.Module,
    path: Path,
    head_name: str,
    classes: list[str] | None = None,
    option: str = "model.init_from",
    renewed: tuple[str, ...] = (),
) -> LoadReport:
    """Copy ``path``'s tensors into ``net``; re-create the head when its shape differs, or when the file names
    other classes than ``classes`` (5 animals -> 5 vehicles: same shape, but each output means something else).
    ``option`` names where the path came from in messages; see :func:`load_state` for ``renewed``. Returns what
    was done."""
    source, source_classes = read_weights(path, option)
    return load_state(net, source, head_name, f"{option}={path}", classes, source_classes, renewed)


def load_state(
    net: nn.Module,
    source: dict[str, torch.Tensor],
    head_name: str,
    origin: str,
    classes: list[str] | None = None,
    source_classes: list[str] | None = None,
    renewed: tuple[str, ...] = (),
) -> LoadReport:
    """:func:`load_into` for tensors already read; ``origin`` names them in messages. ``renewed`` names modules
    besides the head that this network builds differently from the file's (TorchvisionNet's 3x3 stem for small
    images): like the head, they keep their fresh initialisation when their shapes differ."""
    target = net.state_dict()
    source = _align_prefix(source, target)
    groups = (head_name, *renewed)
    group = lambda key: next((g for g in groups if key.startswith(g + ".")), None)  # noqa: E731
    report = LoadReport()
    mismatched = [k for k in target if k in source and source[k].shape != target[k].shape]
    missing = [k for k in target if k not in source]
    unexpected = [k for k in source if k not in target]
    # in the network's order, so "the first" is the earliest layer that does not fit
    bad = [k for k in target if (k not in source or k in mismatched) and group(k) is None]
    bad += [k for k in unexpected if group(k) is None]
    if bad:
        k = bad[0]
        detail = (
            f"{tuple(source[k].shape)} in the file vs {tuple(target[k].shape)} here"
            if k in mismatched
            else ("not in the file" if k in missing else "not in this network")
        )
        raise CifarlitError(
            f"{origin} does not fit this network outside its head '{head_name}' ({len(bad)} tensors differ, the "
            f"first {k}: {detail}); use the same model.net (and init_args) as the run or model that wrote it."
        )
    differs = {group(k) for k in mismatched + missing if group(k) is not None}
    first = next((k for k in mismatched if group(k) is not None), None)
    if first is not None:
        report.reason = f"{first}: {tuple(source[first].shape)} in the file vs {tuple(target[first].shape)} here"
    if classes is not None and source_classes is not None and list(classes) != source_classes:
        differs.add(head_name)
        report.reason = f"the file's head is for {source_classes}, this run's data has {list(classes)}"
    for key in target:
        if group(key) in differs:
            report.reinitialised.append(key)  # keeps the fresh initialisation (the head: of the new class count)
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

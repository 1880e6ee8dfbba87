"""Pretrained backbones: any timm model by name (:class:`TimmNet`), offline first.

``--model.net cifarlit.models.pretrained.TimmNet --model.net.init_args.name resnet18`` builds
``timm.create_model(name, num_classes=..., in_chans=...)``; ``--model.net.init_args.weights`` starts it from a
local file (``.safetensors``: timm's or the Hub's ``model.safetensors``, or ``cifarlit export --format
safetensors``; or a ``torch.save``'d state_dict) or from timm's pretrained weights (``pretrained``, or a tag such as
``a1_in1k``), which timm downloads into the Hugging Face cache. Offline, a missing download is one sentence that
says which file to put where. A head of another class count is re-created (one line says so); weights of another
architecture are refused, naming the first tensor that does not fit.

Normalization and input size are the data's options, not the net's: a pretrained backbone wants its inputs as it
saw them in pre-training (``pretrained_cfg``'s mean, std and input size), so a config that fine-tunes one sets
``data.mean``, ``data.std`` and ``data.image_size`` to those (``configs/experiments/transfer/pretrained.yaml``).
The statistics then travel in checkpoints and exports like any run's, and the net stays a plain timm model whose
weights timm reads back.

>>> net = TimmNet(5, (3, 32, 32), name="resnet10t")
>>> net(torch.zeros(2, 3, 32, 32)).shape, net.head_name
(torch.Size([2, 5]), 'model.fc')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarlit.models import weights as weights_files
from cifarlit.models.nets import TorchvisionNet, _replace_global_pools
from cifarlit.models.transfer import LoadReport, load_into, load_state
from cifarlit.utils.errors import CifarlitError

OPTION = "model.net.init_args.weights"


class TimmNet(nn.Module):
    """Any timm model by name (``resnet18``, ``resnet10t``, ``convnext_atto``, ``efficientnet_b0``, ...).

    Args:
        num_classes: output classes; timm builds the classifier with this many.
        image_shape: ``(C, H, W)`` of the inputs; ``C`` is timm's ``in_chans`` (its pretrained first conv is
            adapted to 1 channel), ``H, W`` the ``img_size`` of models that need one (ViTs).
        name: a timm model name, optionally with a pretrained tag (``resnet18.a1_in1k``): the tag's
            ``pretrained_cfg`` tells the mean, std and input size the weights were trained with.
        weights: ``null`` (random initialisation); a local file (``.safetensors``, ``.pth``/``.pt`` state_dict,
            a cifarlit ``.ckpt``); or ``pretrained`` / a tag (``a1_in1k``) for timm's pretrained weights (downloaded
            into the Hugging Face cache). Built by ``LitMLP``, they are applied when a fit starts.
        kwargs: more ``timm.create_model`` arguments, e.g. ``{drop_rate: 0.2, drop_path_rate: 0.1}``.
    """

    def __init__(
        self,
        num_classes: int,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        name: str = "resnet18",
        weights: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import timm

        if "." in name and timm.is_model(name) and not timm.list_pretrained(name):
            tags = [t.partition(".")[2] for t in timm.list_pretrained(name.partition(".")[0] + ".*")]
            raise CifarlitError(f"model.net.init_args.name={name!r} has an unknown pretrained tag; use one of {tags}.")
        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5]
            raise CifarlitError(
                f"model.net.init_args.name={name!r} is not a timm model; use a name from timm.list_models(), "
                f"e.g. {close or ['resnet18', 'resnet10t', 'convnext_atto']}."
            )
        tag = weights and not weights_files.looks_like_file(weights)
        self.tagged = _pretrained_name(name, weights) if tag else None  # e.g. resnet18.a1_in1k
        extra = dict(kwargs or {})
        cfg = timm.models.get_pretrained_cfg(self.tagged or name)
        if cfg is not None and cfg.fixed_input_size:  # e.g. ViTs: the position embeddings fix the size
            extra.setdefault("img_size", tuple(image_shape[1:]))
        # with the tag, so pretrained_cfg describes the weights that will be loaded
        self.model = timm.create_model(self.tagged or name, num_classes=num_classes, in_chans=image_shape[0], **extra)
        classifier = self.model.get_classifier()
        self.head_name = "model." + next(n for n, m in self.model.named_modules() if m is classifier)
        _replace_global_pools(self.model)  # deterministic CUDA backward (see cifarlit.models.nets.GlobalPool)
        # channels_last, as cifarlit.models.nets.SmallCNN: oneDNN's faster layout on the CPU (grouped convs most), and
        # what tensor cores want
        self.model.to(memory_format=torch.channels_last)
        self.name, self.weights, self.image_shape, self.create_kwargs = name, weights, tuple(image_shape), extra
        if weights and not weights_files.deferring():
            self.load_weights()

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's description of the weights: ``mean``, ``std``, ``input_size``, ``classifier``, ..."""
        return dict(self.model.pretrained_cfg)

    def load_weights(self, classes: list[str] | None = None) -> LoadReport | None:
        """Copy ``weights`` in (a head of another class count keeps its fresh initialisation); returns what was
        done, or None without ``weights``."""
        if not self.weights:
            return None
        if self.tagged is None:
            return load_into(self, Path(self.weights), self.head_name, classes, OPTION)
        state = _timm_pretrained_state(self.tagged, self.image_shape[0], self.create_kwargs)
        return load_state(self, state, self.head_name, f"{OPTION}={self.weights}", classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def _pretrained_name(name: str, weights: str) -> str:
    """``resnet18`` + ``pretrained`` -> ``resnet18.a1_in1k`` (timm's default tag); + ``a2_in1k`` -> that tag."""
    import timm

    arch, _, tag = name.partition(".")
    tags = timm.list_pretrained(f"{arch}.*")
    default = timm.models.get_pretrained_cfg(arch) if tags else None
    wanted = (tag or (default.tag if default else "")) if weights == "pretrained" else weights
    if f"{arch}.{wanted}" in tags and tag in ("", wanted):
        return f"{arch}.{wanted}"
    valid = ["pretrained", *(t.partition(".")[2] for t in tags)]
    raise CifarlitError(
        f"{OPTION}={weights!r} is neither a weights file (.safetensors, .pth, .pt, .ckpt) nor a pretrained tag of "
        f"{name}: pass a file path" + (f" or one of {valid}." if tags else f" ({arch} has no pretrained weights).")
    )


def _timm_pretrained_state(tagged: str, in_chans: int, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """timm's pretrained tensors of ``tagged`` (from its cache, or downloaded there), first conv adapted to
    ``in_chans``."""
    import timm

    try:
        return timm.create_model(tagged, pretrained=True, in_chans=in_chans, **kwargs).state_dict()
    except OSError as err:  # huggingface_hub's "not in the cache and offline", URLError: no internet
        raise CifarlitError(where_to_put(tagged, err)) from None


def where_to_put(tagged: str, err: Exception) -> str:
    """The sentence that says which file to put where when timm's weights of ``tagged`` cannot be downloaded."""
    import timm

    cfg = timm.models.get_pretrained_cfg(tagged)
    reason = type(err).__name__
    if cfg.hf_hub_id:  # timm reads the Hub first when a model has an id there
        from huggingface_hub import constants

        folder = Path(constants.HF_HUB_CACHE) / ("models--" + cfg.hf_hub_id.split("@")[0].replace("/", "--"))
        return (
            f"timm's {tagged} weights are not in the Hugging Face cache and cannot be downloaded here ({reason}): on "
            f"a machine with internet run `hf download {cfg.hf_hub_id} model.safetensors` and pass that file with "
            f"--{OPTION} PATH, or copy that machine's cache folder {folder.name} to {folder}."
        )
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        f"timm's {tagged} weights cannot be downloaded here ({reason}): on a machine with internet fetch {cfg.url} "
        f"and put it into $TORCH_HOME/hub/checkpoints (here {folder}), or pass the file with --{OPTION} PATH."
    )


def library_module(net: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """The module whose tensors a library reads back (the timm or torchvision model inside cifarlit's wrapper,
    keys as that library names them), and metadata naming its architecture."""
    if isinstance(net, TimmNet):
        architecture = net.pretrained_cfg.get("architecture") or net.name.partition(".")[0]
        return net.model, {"library": "timm", "architecture": architecture, "timm_name": net.name}
    if isinstance(net, TorchvisionNet):
        return net.model, {"library": "torchvision", "architecture": net.name, "renewed": list(net.renewed)}
    return net, {"library": "cifarlit", "architecture": f"{type(net).__module__}.{type(net).__qualname__}"}

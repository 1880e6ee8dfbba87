"""The networks: plain ``nn.Module`` classes that ``LitMLP`` trains, chosen in the config with ``model.net``.

Every network is built as ``Net(num_classes, image_shape, **init_args)``: the LightningModule supplies the first
two (from the data), the config the rest. Each names its classifier head (``head_name``) so transfer learning
knows which tensors to re-create when the number of classes changes, and everything else is the backbone.

>>> SmallCNN(10, (3, 32, 32))(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}
NORMS = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


class MLP(nn.Module):
    """Flatten, then ``Linear -> [norm] -> activation -> [Dropout]`` per hidden layer, then a linear head.

    Flattening lives here, not in the data, so CNNs receive ``(B, C, H, W)`` from the same pipeline.

    Args:
        num_classes: output classes.
        image_shape: ``(C, H, W)`` of the inputs.
        hidden_sizes: width of each hidden layer; ``[]`` gives a linear model. The lecture's net is [100, 100].
        norm: ``batch`` (BatchNorm1d), ``layer`` (LayerNorm) or ``none`` after each hidden linear layer.
        dropout: dropout after each hidden layer: one probability for all, or one per layer.
        activation: one of relu, gelu, silu, tanh, leaky_relu.

    >>> mlp = MLP(10, (3, 32, 32), [100, 100])  # the lecture's net: 3072 inputs -> 100 -> 100 -> 10 classes
    >>> [layer.out_features for layer in mlp.modules() if isinstance(layer, nn.Linear)]
    [100, 100, 10]
    """

    head_name = "head"

    def __init__(
        self,
        num_classes: int,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        hidden_sizes: list[int] = [100, 100],  # noqa: B006 -- jsonargparse reads the default from the signature
        norm: Literal["none", "batch", "layer"] = "none",
        dropout: float | list[float] = 0.0,
        activation: Literal["relu", "gelu", "silu", "tanh", "leaky_relu"] = "relu",
    ) -> None:
        super().__init__()
        drops = dropout if isinstance(dropout, list) else [dropout] * len(hidden_sizes)
        c, h, w = image_shape
        layers: list[nn.Module] = [nn.Flatten()]  # (B, 3, 32, 32) -> (B, 3072)
        width = c * h * w
        for size, p in zip(hidden_sizes, drops, strict=True):
            layers.append(nn.Linear(width, size, bias=norm != "batch"))  # BN's shift makes the bias redundant
            if norm != "none":
                layers.append(NORMS[norm](size))
            layers.append(ACTIVATIONS[activation]())
            if p > 0:
                layers.append(nn.Dropout(p))
            width = size
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))


class GlobalPool(nn.Module):
    """Global max or mean over height and width, ``(B, C, H, W) -> (B, C, 1, 1)``.

    The same as ``nn.AdaptiveMaxPool2d(1)`` / ``nn.AdaptiveAvgPool2d(1)``, built from plain reductions: the
    adaptive pools have no deterministic CUDA backward, so ``trainer.deterministic: true`` refuses them on a GPU.

    >>> GlobalPool("mean")(torch.arange(8.0).view(1, 2, 2, 2)).flatten().tolist()
    [1.5, 5.5]
    """

    def __init__(self, mode: Literal["max", "mean"] = "max") -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax((2, 3), keepdim=True) if self.mode == "max" else x.mean((2, 3), keepdim=True)


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm that follows has its own shift.
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """A few ``(conv3x3-BN-ReLU) x convs_per_stage -> 2x2 max-pool`` stages, global max-pool, linear head.

    With the default widths [32, 64, 128] a 32x32 image becomes 4x4x128 before pooling; about 10 M
    multiply-adds per image (the README has its epoch times).

    Args:
        num_classes: output classes.
        image_shape: ``(C, H, W)`` of the inputs (any H, W: the global pool makes the head size-independent).
        widths: channels of each stage; each stage halves the resolution.
        convs_per_stage: conv-BN-ReLU layers per stage (2 is ~4x the multiply-adds of 1 at the default widths).
        dropout: dropout before the head.
    """

    head_name = "head"

    def __init__(
        self,
        num_classes: int,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        widths: list[int] = [32, 64, 128],  # noqa: B006
        convs_per_stage: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = image_shape[0]
        for width in widths:
            for i in range(convs_per_stage):
                layers += conv_bn(c_in if i == 0 else width, width)
            layers.append(nn.MaxPool2d(2))
            c_in = width
        layers += [GlobalPool("max"), nn.Flatten()]  # (B, C, h, w) -> (B, C)
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)
        # channels_last: faster for these convs on the CPU (oneDNN, benchmarks/tricks.py) and what tensor cores want.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.contiguous(memory_format=torch.channels_last)))


class ResidualMLP(nn.Module):
    """An MLP of pre-norm inverted-bottleneck residual blocks, after Bachmann et al. (2023), "Scaling MLPs".

    Flatten, a linear embedding to ``width``, then ``depth`` blocks ``x + W2(GELU(W1(LayerNorm(x))))`` with
    ``W1: width -> expansion * width`` and ``W2`` back, a final LayerNorm and the head. The skips and the norm let
    it grow deep where a plain MLP stops improving.

    Args:
        num_classes: output classes.
        image_shape: ``(C, H, W)`` of the inputs.
        width: the width of the residual stream.
        depth: the number of blocks.
        expansion: the blocks' hidden width over ``width``.
        dropout: dropout inside each block.

    >>> net = ResidualMLP(10, (3, 32, 32), width=64, depth=2)
    >>> len(net.blocks), net(torch.zeros(2, 3, 32, 32)).shape
    (2, torch.Size([2, 10]))
    """

    head_name = "head"

    def __init__(
        self,
        num_classes: int,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        width: int = 512,
        depth: int = 4,
        expansion: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width))  # (B, C, H, W) -> (B, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width),
                nn.Linear(width, expansion * width),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(expansion * width, width),
            )  # fmt: skip
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.norm(x))


class Residual(nn.Module):
    """``x + body(x)``."""

    def __init__(self, *body: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CifarResNet(nn.Module):
    """The residual network of the DAWNBench CIFAR-10 entries ("ResNet-9", Page 2018), widths configurable.

    ``prep`` conv, then three stages that each convolve and halve the resolution with a 2x2 max-pool, the first
    and last followed by a residual pair of convs; a global max-pool and a linear head whose output is scaled
    down (``head_scale``), which trains better with the large learning rates this net likes. With the default
    widths [64, 128, 256, 512] it is about 0.38 G multiply-adds per 32x32 image; [16, 32, 64, 128] is 1/16 of that.

    Args:
        num_classes: output classes.
        image_shape: ``(C, H, W)`` of the inputs (any H, W of at least 8: the pool is global).
        widths: channels of the prep conv and of the three stages.
        head_scale: the head's output is multiplied by this.

    >>> CifarResNet(10, (3, 32, 32), widths=[8, 16, 32, 64])(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    head_name = "head"

    def __init__(
        self,
        num_classes: int,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        widths: list[int] = [64, 128, 256, 512],  # noqa: B006 -- jsonargparse reads the default from the signature
        head_scale: float = 0.125,
    ) -> None:
        super().__init__()
        from cifarlit.utils.errors import CifarlitError

        if len(widths) != 4:
            raise CifarlitError(f"model.net.init_args.widths={widths} is not valid: give 4 widths (prep, 3 stages).")
        w0, w1, w2, w3 = widths
        self.features = nn.Sequential(
            *conv_bn(image_shape[0], w0),
            *conv_bn(w0, w1), nn.MaxPool2d(2), Residual(*conv_bn(w1, w1), *conv_bn(w1, w1)),
            *conv_bn(w1, w2), nn.MaxPool2d(2),
            *conv_bn(w2, w3), nn.MaxPool2d(2), Residual(*conv_bn(w3, w3), *conv_bn(w3, w3)),
            GlobalPool("max"), nn.Flatten(),  # (B, w3, h, w) -> (B, w3)
        )  # fmt: skip
        self.head = nn.Linear(w3, num_classes)
        self.head_scale = head_scale
        self.to(memory_format=torch.channels_last)  # see SmallCNN

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.contiguous(memory_format=torch.channels_last))) * self.head_scale


class TorchvisionNet(nn.Module):
    """Any torchvision classification model by name (``resnet18``, ``mobilenet_v3_small``, ...).

    Args:
        num_classes: output classes; the model's classifier is built with this many outputs.
        image_shape: ``(C, H, W)`` of the inputs.
        name: a function name in ``torchvision.models``, e.g. ``resnet18``.
        small_input: for ResNets, swap the 7x7 stride-2 stem and its max-pool for a 3x3 stride-1 conv, the usual
            adaptation to 32x32 images (ImageNet's stem would shrink them to 8x8 before the first block); pretrained
            weights then leave that conv freshly initialised.
        weights: a local weights file (``.safetensors``, a ``torch.save``'d state_dict, a cifarlit ``.ckpt``), or
            torchvision's pretrained tag, e.g. ``IMAGENET1K_V1`` (downloaded into ``$TORCH_HOME/hub/checkpoints``).
            A head of another class count is re-created. Built by ``LitMLP``, they are applied when a fit starts.
    """

    def __init__(
        self,
        num_classes: int,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        name: str = "resnet18",
        small_input: bool = True,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        import torchvision

        from cifarlit.models import weights as weights_files
        from cifarlit.utils.errors import CifarlitError

        if name not in torchvision.models.list_models(torchvision.models):
            raise CifarlitError(
                f"model.net.init_args.name={name!r} is not a torchvision classification model; valid names "
                f"include resnet18, resnet50, mobilenet_v3_small (see torchvision.models.list_models())."
            )
        if weights and not weights_files.looks_like_file(weights):
            _weights_enum(name, weights)  # an unknown tag is refused now, not when the fit starts
        model = torchvision.models.get_model_builder(name)(num_classes=num_classes)
        if image_shape[0] != 3:
            raise CifarlitError(f"model.net: {name} expects 3-channel images, the data has {image_shape[0]}.")
        self.renewed: tuple[str, ...] = ()  # modules built differently from torchvision's (see load_weights)
        if small_input and hasattr(model, "conv1") and hasattr(model, "maxpool"):
            model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
            self.renewed = ("model.conv1",)
        _replace_global_pools(model)
        self.model = model
        self.name, self.weights = name, weights
        self.head_name = "model." + _head_name(model)
        if weights and not weights_files.deferring():
            self.load_weights()

    def load_weights(self, classes: list[str] | None = None):
        """Copy ``weights`` in (a head of other classes, and a swapped stem, keep their fresh initialisation);
        returns the :class:`cifarlit.models.transfer.LoadReport`, or None without ``weights``."""
        from cifarlit.models import weights as weights_files
        from cifarlit.models.transfer import load_into, load_state

        option = "model.net.init_args.weights"
        if not self.weights:
            return None
        if weights_files.looks_like_file(self.weights):
            return load_into(self, Path(self.weights), self.head_name, classes, option, self.renewed)
        state = _pretrained_state(self.name, self.weights)
        return load_state(self, state, self.head_name, f"{option}={self.weights}", classes, None, self.renewed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _weights_enum(name: str, weights: str):
    import torchvision

    from cifarlit.utils.errors import CifarlitError

    try:
        return torchvision.models.get_model_weights(name)[weights]
    except KeyError:
        valid = [w.name for w in torchvision.models.get_model_weights(name)]
        raise CifarlitError(
            f"model.net.init_args.weights={weights!r} is not valid for {name}; use one of {valid}, or a weights "
            f"file (.safetensors, .pth)."
        ) from None


def _pretrained_state(name: str, weights: str) -> dict[str, torch.Tensor]:
    """torchvision's pretrained tensors, from ``$TORCH_HOME/hub/checkpoints`` or downloaded there."""
    from cifarlit.utils.errors import CifarlitError

    enum = _weights_enum(name, weights)
    try:
        return enum.get_state_dict(progress=False, check_hash=True)
    except OSError as err:  # URLError is an OSError: no internet
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        raise CifarlitError(
            f"cannot download torchvision's {name} {weights} weights ({err}): on a machine with internet fetch "
            f"{enum.url} and put it into $TORCH_HOME/hub/checkpoints (here {folder}), or pass the file with "
            f"--model.net.init_args.weights PATH."
        ) from None


def _replace_global_pools(model: nn.Module) -> None:
    """Swap adaptive pools to 1x1 for :class:`GlobalPool` (same output, deterministic backward on a GPU)."""
    kinds = {nn.AdaptiveAvgPool2d: "mean", nn.AdaptiveMaxPool2d: "max"}
    for name, module in list(model.named_modules()):
        if type(module) in kinds and module.output_size in (1, (1, 1)):
            _set_submodule(model, name, GlobalPool(kinds[type(module)]))


def _head_name(model: nn.Module) -> str:
    """The last ``nn.Linear`` in a torchvision model is its classifier (``fc``, ``classifier.3``, ``heads.head``)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][-1]


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)

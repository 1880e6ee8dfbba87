"""`cifarlit export --ckpt_path X --format onnx|torchscript|safetensors`: a trained model as one file that needs no
cifarlit.

The exported model takes what image libraries hand out, uint8 ``(B, H, W, 3)`` RGB arrays (PIL, NumPy, OpenCV
after BGR->RGB) of the training size (32x32), and returns class probabilities ``(B, num_classes)``. The
training split's normalization is inside the model; the class names travel with it (ONNX metadata
``classes``, TorchScript attribute ``classes``, both in label order).

``safetensors`` writes the network's weights instead, for a library to build the model around them: a TimmNet's
as timm names them (``timm.create_model(architecture, pretrained=True, pretrained_cfg_overlay=dict(file=path,
num_classes=K), num_classes=K)`` reads them back), with JSON metadata: ``classes``, ``mean``, ``std`` (0-1 scale,
what the inputs were normalized with), ``image_shape``, ``num_classes``, ``library`` and ``architecture``.
``model.init_from`` and a net's ``weights`` option read it too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from cifarlit.data.datamodule import CIFAR10DataModule
from cifarlit.data.split import normalizer
from cifarlit.utils import checkpoints
from cifarlit.utils.errors import CifarlitError
from cifarlit.utils.files import atomic_path, check_output

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
VALID = {"format": ", ".join(FORMATS)}  # what each option takes, for its error message


class ExportedClassifier(nn.Module):
    """uint8 ``(B, H, W, 3)`` images -> class probabilities ``(B, K)``, normalization included.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, 3))
    >>> model = ExportedClassifier(net, torch.zeros(3), torch.ones(3), ["a", "b", "c"])
    >>> probs = model(torch.zeros(5, 2, 2, 3, dtype=torch.uint8))  # (B, H, W, 3) uint8
    >>> probs.shape, bool(torch.allclose(probs.sum(1), torch.ones(5)))
    (torch.Size([5, 3]), True)
    """

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor, classes: list[str]) -> None:
        super().__init__()
        self.net = net
        scale, shift = normalizer(mean, std)  # exactly what the DataModule fed the network in training
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.classes = list(classes)
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]  # for safetensors' metadata

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()  # (B, H, W, 3) uint8 -> (B, 3, H, W) float
        return self.net(x * self.scale + self.shift).softmax(-1)


def load(ckpt_path: Path) -> tuple[ExportedClassifier, tuple[int, int, int]]:
    """The checkpoint's network wrapped for export, and its input shape ``(C, H, W)``."""
    from cifarlit.models.lit_mlp import LitMLP

    # tensors and plain values only, every part checked (classes it names, shapes, statistics): a crafted file
    # runs nothing and allocates nothing big before it is refused
    ckpt = checkpoints.load_checkpoint(ckpt_path, LitMLP)
    data_state = ckpt.get(CIFAR10DataModule.__qualname__)  # the DataModule's state_dict(): mean, std, classes
    if data_state is None or data_state.get("mean") is None:
        raise CifarlitError(
            f"--ckpt_path {ckpt_path} holds no normalization statistics; export a checkpoint written by `cifarlit fit`."
        )
    module = LitMLP.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    classes = data_state.get("classes") or [str(i) for i in range(module.hparams.num_classes)]
    model = ExportedClassifier(module.net, data_state["mean"], data_state["std"], classes).eval()
    return model, tuple(module.hparams.image_shape)


def export(ckpt_path: Path, format: str, output: Path | None = None) -> Path:
    """Write the checkpoint's model as ONNX or TorchScript, or its weights as safetensors; returns the file written."""
    if format not in FORMATS:
        raise CifarlitError(f"--format {format!r} is not valid: use {VALID['format']}.")
    model, (c, h, w) = load(ckpt_path)
    if output is None:  # next to the checkpoint, e.g. checkpoints/last.onnx
        output = ckpt_path.with_name(ckpt_path.name.removesuffix(".ckpt") + FORMATS[format])
    check_output(output, "--output", f"model{FORMATS[format]}")  # before the export, which takes a while
    example = torch.zeros(2, h, w, c, dtype=torch.uint8)
    with atomic_path(output) as tmp:  # a failed or killed export leaves no half model under the name
        if format == "torchscript":
            torch.jit.save(torch.jit.script(model), str(tmp))
        elif format == "safetensors":
            _export_safetensors(model, (c, h, w), tmp)
        else:
            _export_onnx(model, example, tmp)
    return output


def _export_safetensors(model: ExportedClassifier, image_shape: tuple[int, int, int], output: Path) -> None:
    from cifarlit.models.pretrained import library_module
    from cifarlit.models.weights import write_safetensors

    module, names = library_module(model.net)
    metadata = {"classes": model.classes, "mean": model.mean, "std": model.std, "image_shape": list(image_shape),
                "num_classes": len(model.classes), **names}  # fmt: skip
    write_safetensors(module, output, metadata)


def _export_onnx(model: ExportedClassifier, example: torch.Tensor, output: Path) -> None:
    try:
        import onnxscript  # noqa: F401 -- torch's (default) dynamo exporter needs it
    except ImportError:
        raise CifarlitError(
            "--format onnx needs the onnx and onnxscript packages: pip install 'cifarlit[export]'."
        ) from None
    program = torch.onnx.export(
        model,
        (example,),
        input_names=["images"],
        output_names=["probabilities"],
        dynamic_shapes={"images": {0: torch.export.Dim("batch")}},  # any batch size; H, W, C fixed
        dynamo=True,  # the torch.export-based exporter (torch >= 2.6); the TorchScript-based one is deprecated
        verbose=False,
    )
    program.model.metadata_props["classes"] = json.dumps(model.classes)
    program.model.metadata_props["input"] = "uint8 (batch, height, width, 3) RGB, 0..255"
    program.save(str(output), external_data=False)  # one self-contained file


def main(ckpt_path: Path, format: Literal["onnx", "torchscript", "safetensors"] = "onnx",
         output: Path | None = None) -> int:  # fmt: skip
    """Export a trained checkpoint to ONNX or TorchScript (uint8 (B, H, W, 3) RGB images in, class probabilities
    (B, num_classes) out, normalization inside), or its weights as safetensors with the class names, mean/std and
    image shape as metadata (timm reads a TimmNet's back).

    Args:
        ckpt_path: a checkpoint written by `cifarlit fit`.
        format: onnx, torchscript or safetensors.
        output: the file to write (default: next to the checkpoint, .onnx, .pt or .safetensors).
    """
    path = export(Path(ckpt_path), format, Path(output) if output else None)
    print(f"exported {format} model: {path}")
    return 0

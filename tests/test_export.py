"""`cifarlit export`: ONNX and TorchScript files that need no cifarlit and predict what the LightningModule does."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlit.cli import cli_main
from cifarlit.data.datamodule import CIFAR10DataModule
from cifarlit.data.sources import load_unlabelled_folder
from cifarlit.models.lit_mlp import LitMLP
from conftest import MIXED, write_unlabelled_folder


def export(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", *args])
    return exit_info.value.code


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> np.ndarray:
    """uint8 (B, 32, 32, 3): new images of the fixture classes, then random noise."""
    folder = tmp_path_factory.mktemp("batch") / "images"
    write_unlabelled_folder(folder)
    x, _ = load_unlabelled_folder(folder)
    noise = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    return np.concatenate([x, noise])


def module_probabilities(ckpt: Path, images: np.ndarray) -> torch.Tensor:
    """What the LightningModule predicts, with the DataModule's normalization from the checkpoint."""
    module = LitMLP.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = CIFAR10DataModule()
    dm.load_state_dict(torch.load(ckpt, weights_only=True)["CIFAR10DataModule"])
    with torch.no_grad():
        return module(dm.to_input(torch.from_numpy(images).permute(0, 3, 1, 2))).softmax(-1)


def test_onnx_runs_in_onnxruntime_and_matches_the_module(own_run, batch, tmp_path, capsys):
    import onnxruntime as ort

    path = tmp_path / "model.onnx"
    assert export("--ckpt_path", str(own_run.ckpt), "--format", "onnx", "--output", str(path)) == 0
    assert f"exported onnx model: {path}" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # one self-contained file, no .data beside it
    session = ort.InferenceSession(str(path))
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("images", "tensor(uint8)", [32, 32, 3])
    assert json.loads(session.get_modelmeta().custom_metadata_map["classes"]) == list(MIXED)
    expected = module_probabilities(own_run.ckpt, batch)
    got = torch.from_numpy(session.run(None, {"images": batch})[0])
    assert out.name == "probabilities" and got.shape == (len(batch), 3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    single = session.run(None, {"images": batch[:1]})[0]  # any batch size
    np.testing.assert_allclose(single, got[:1].numpy(), atol=1e-6)


def test_torchscript_loads_with_torch_alone_and_matches_the_module(own_run, batch, tmp_path):
    path = tmp_path / "model.pt"
    assert export("--ckpt_path", str(own_run.ckpt), "--format", "torchscript", "--output", str(path)) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        model = torch.jit.load(str(path))
    assert list(model.classes) == list(MIXED)
    expected = module_probabilities(own_run.ckpt, batch)
    with torch.no_grad():
        got = model(torch.from_numpy(batch))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_default_output_is_next_to_the_checkpoint(own_run, tmp_path):
    ckpt = tmp_path / "epoch03-val_acc0.9500.ckpt"  # the dots in the name must survive
    ckpt.write_bytes(own_run.ckpt.read_bytes())
    assert export("--ckpt_path", str(ckpt), "--format", "torchscript") == 0
    assert (tmp_path / "epoch03-val_acc0.9500.pt").is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--format", "tflite"], "--format 'tflite' is not valid: use onnx, torchscript, safetensors."),
        (["--ckpt_path", "{tmp}/missing.ckpt"], "missing.ckpt does not exist"),
        (["--ckpt_path", "{tmp}/foreign.ckpt"], "foreign.ckpt is not a cifarlit checkpoint"),
    ],
    ids=["bad-format", "missing-ckpt", "foreign-ckpt"],
)
def test_export_mistakes_are_one_sentence(args, expected, own_run, tmp_path, capsys):
    torch.save({"state_dict": {"encoder.weight": torch.zeros(3)}}, tmp_path / "foreign.ckpt")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--ckpt_path" not in args:
        args += ["--ckpt_path", str(own_run.ckpt)]
    assert export(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.pt"))

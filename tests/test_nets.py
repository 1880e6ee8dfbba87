"""Pluggable networks: the MLP default, the small CNN and torchvision models, switched by config only."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from cifarlit.models.lit_mlp import LitMLP
from cifarlit.models.nets import MLP, SmallCNN, TorchvisionNet
from cifarlit.utils.errors import CifarlitError
from helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
DEFAULT = str(REPO / "configs" / "default.yaml")


def test_default_network_is_the_mlp_and_cnns_get_image_tensors():
    assert isinstance(LitMLP().net, MLP)
    seen = []
    cnn = SmallCNN(4, (3, 20, 24), widths=[8, 16])
    cnn.features[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    assert cnn(torch.randn(2, 3, 20, 24)).shape == (2, 4)
    assert seen == [(2, 3, 20, 24)]  # not flattened: the MLP flattens for itself


@pytest.mark.parametrize(("convs", "widths"), [(1, [8, 16]), (2, [4, 8, 16])])
def test_small_cnn_widths_and_depth(convs, widths):
    cnn = SmallCNN(10, widths=widths, convs_per_stage=convs)
    convs_found = [m.out_channels for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert convs_found == [w for w in widths for _ in range(convs)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in cnn.modules()) == len(widths)


def test_torchvision_resnet_with_a_small_input_stem():
    net = TorchvisionNet(7, name="resnet18", small_input=True)
    assert net.model.conv1.kernel_size == (3, 3) and net.model.conv1.stride == (1, 1)
    assert isinstance(net.model.maxpool, nn.Identity)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7) and net.head_name == "model.fc"
    imagenet_stem = TorchvisionNet(7, name="resnet18", small_input=False)
    assert imagenet_stem.model.conv1.kernel_size == (7, 7)


def test_unknown_torchvision_name_is_a_clear_error():
    with pytest.raises(CifarlitError, match=r"name='resnet19' is not a torchvision classification model"):
        TorchvisionNet(10, name="resnet19")


def test_pretrained_weights_offline_say_how_to_use_a_file(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no internet")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: "/nonexistent-cifarlit-hub")
    where = r"cannot download.*resnet18.*hub/checkpoints.*--model.net.init_args.weights PATH"
    with pytest.raises(CifarlitError, match=where):
        TorchvisionNet(10, name="resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(CifarlitError, match=r"weights='IMAGENET9'.*IMAGENET1K_V1"):
        TorchvisionNet(10, name="resnet18", weights="IMAGENET9")


def test_cnn_switched_by_config_trains_and_reloads_from_its_checkpoint(pickle_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(
        "fit", "-c", DEFAULT, "--data.data_dir", str(pickle_root), "--trainer.max_epochs", "3",
        "--model.net", "cifarlit.models.nets.SmallCNN", "--model.net.widths", "[8, 16]",
        "--model.optimizer.init_args.lr", "0.01",
    )  # fmt: skip
    assert isinstance(cli.model.net, SmallCNN)
    assert cli.trainer.callback_metrics["test/acc"] > 0.3  # 10 classes: chance is 0.1
    ckpt = Path(cli.trainer.checkpoint_callback.best_model_path)
    reloaded = LitMLP.load_from_checkpoint(ckpt)
    assert isinstance(reloaded.net, SmallCNN) and [m.out_channels for m in reloaded.net.features if
                                                   isinstance(m, nn.Conv2d)] == [8, 16]  # fmt: skip
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(reloaded.eval()(x), cli.model.cpu().eval()(x))


def test_torchvision_builder_is_not_asked_to_download_without_weights(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    assert isinstance(TorchvisionNet(3, name="mobilenet_v3_small").model, torchvision.models.MobileNetV3)


@pytest.mark.parametrize(
    "net",
    [{"class_path": "cifarlit.models.nets.ResidualMLP", "init_args": {"width": 64, "depth": 2}},
     {"class_path": "cifarlit.models.nets.CifarResNet", "init_args": {"widths": [8, 16, 32, 32]}}],
    ids=["residual_mlp", "cifar_resnet"],
)  # fmt: skip
def test_the_recipe_networks_train_from_the_config_and_reload(net, pickle_root, tmp_path, monkeypatch):
    import json

    from cifarlit.models.lit_mlp import LitMLP

    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(pickle_root), "--model.net", json.dumps(net),
                  "--model.optimizer.init_args.lr", "0.01", "--trainer.max_epochs", "5")  # fmt: skip
    assert type(cli.model.net).__name__ == net["class_path"].rsplit(".", 1)[1]
    assert cli.trainer.callback_metrics["test/acc"] > 0.3  # the fixture classes are learnable
    reloaded = LitMLP.load_from_checkpoint(cli.trainer.checkpoint_callback.best_model_path, weights_only=True)
    x = torch.randn(4, 3, 32, 32)
    cli.model.eval(), reloaded.eval()
    torch.testing.assert_close(reloaded(x), cli.model(x))


def test_the_residual_mlp_adds_each_block_to_its_stream():
    from cifarlit.models.nets import ResidualMLP

    net = ResidualMLP(10, (3, 8, 8), width=16, depth=3)
    assert len(net.blocks) == 3 and net.blocks[0][1].out_features == 64  # expansion 4
    for block in net.blocks:  # zero blocks: the stream passes through unchanged
        torch.nn.init.zeros_(block[-1].weight), torch.nn.init.zeros_(block[-1].bias)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(net(x), net.head(net.norm(net.embed(x))))


def test_cifar_resnet_widths_must_be_four():
    from cifarlit.models.nets import CifarResNet
    from cifarlit.utils.errors import CifarlitError

    with pytest.raises(CifarlitError, match=r"widths=\[8, 16\] is not valid: give 4 widths"):
        CifarResNet(10, widths=[8, 16])

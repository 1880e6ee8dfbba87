"""Transfer learning: ``model.init_from`` (head re-creation, exact reporting, clear errors) and freezing."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import torchvision
from lightning.pytorch.callbacks import BackboneFinetuning

from cifarlit.data.datamodule import CIFAR10DataModule
from cifarlit.models.lit_mlp import LitMLP
from cifarlit.models.nets import TorchvisionNet
from cifarlit.models.transfer import load_into
from cifarlit.utils.errors import CifarlitError
from helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
DEFAULT = str(REPO / "configs" / "default.yaml")


def save_checkpoint(model: LitMLP, path: Path) -> Path:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def test_other_class_count_recreates_the_head_and_loads_the_rest(tmp_path):
    source = LitMLP(hidden_sizes=[32, 16], num_classes=5)
    ckpt = save_checkpoint(source, tmp_path / "five.ckpt")
    target = LitMLP(hidden_sizes=[32, 16], num_classes=3)
    fresh_head = target.net.head.weight.clone()
    report = load_into(target.net, ckpt, target.head_name)
    assert report.reinitialised == ["head.weight", "head.bias"]
    assert report.skipped == ["head.weight", "head.bias"]  # the file's 5-class head is not used
    assert report.loaded == [k for k in target.net.state_dict() if not k.startswith("head.")]
    for key in report.loaded:
        torch.testing.assert_close(target.net.state_dict()[key], source.net.state_dict()[key])
    torch.testing.assert_close(target.net.head.weight, fresh_head)
    assert "re-initialised head.weight, head.bias" in str(report)


def test_same_class_count_loads_everything(tmp_path):
    source = LitMLP(hidden_sizes=[16], num_classes=4)
    target = LitMLP(hidden_sizes=[16], num_classes=4)
    report = load_into(target.net, save_checkpoint(source, tmp_path / "a.ckpt"), target.head_name)
    assert report.reinitialised == [] and report.skipped == [] and len(report.loaded) == 4
    torch.testing.assert_close(target.net.head.weight, source.net.head.weight)


def test_torchvision_state_dict_file_into_a_wrapped_resnet(tmp_path):
    imagenet_like = torchvision.models.resnet18(num_classes=1000)  # stands in for downloaded weights
    weights = tmp_path / "resnet18.pth"
    torch.save(imagenet_like.state_dict(), weights)
    net = TorchvisionNet(10, name="resnet18", small_input=False)
    report = load_into(net, weights, net.head_name)
    assert report.reinitialised == ["model.fc.weight", "model.fc.bias"]
    assert report.skipped == ["model.fc.weight", "model.fc.bias"]
    torch.testing.assert_close(net.model.conv1.weight, imagenet_like.conv1.weight)


def test_mismatch_outside_the_head_is_an_error_that_names_the_tensor(tmp_path):
    ckpt = save_checkpoint(LitMLP(hidden_sizes=[32]), tmp_path / "narrow.ckpt")
    target = LitMLP(hidden_sizes=[64])
    before = {k: v.clone() for k, v in target.net.state_dict().items()}
    with pytest.raises(CifarlitError, match=r"outside its head.*layers.1.weight: \(32, 3072\) in the file vs \(64"):
        load_into(target.net, ckpt, target.head_name)
    for key, value in target.net.state_dict().items():  # nothing half-loaded
        torch.testing.assert_close(value, before[key])
    resnet = TorchvisionNet(10, name="resnet18")
    with pytest.raises(CifarlitError, match=r"not in this network|not in the file"):
        load_into(resnet, ckpt, resnet.head_name)


@pytest.mark.parametrize("content", [None, b"not a checkpoint", "list"])
def test_missing_or_foreign_files_are_clear_errors(tmp_path, content):
    path = tmp_path / "weights.pt"
    if content == "list":
        torch.save([1, 2, 3], path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CifarlitError, match=rf"model.init_from={path}"):
        load_into(LitMLP().net, path, "head")


def test_init_from_on_the_command_line_starts_from_the_file(pickle_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source = LitMLP(num_classes=7)
    ckpt = save_checkpoint(source, tmp_path / "seven.ckpt")
    cli = run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(pickle_root), "--trainer.fast_dev_run", "1",
                  "--model.init_from", str(ckpt), "--model.optimizer.init_args.lr", "0")  # fmt: skip
    assert "init_from" in capsys.readouterr().out
    assert cli.model.init_report.reinitialised == ["head.weight", "head.bias"]
    torch.testing.assert_close(cli.model.net.layers[1].weight, source.net.layers[1].weight)  # lr 0: unchanged


def test_backbone_finetuning_trains_the_head_first_then_everything(pickle_root, tmp_path):
    L.seed_everything(0)
    model = LitMLP(hidden_sizes=[32], optimizer=partial(torch.optim.SGD, lr=0.05))
    assert [type(m).__name__ for m in model.backbone] == ["Sequential"]  # the hidden layers, not the head
    start = {k: v.clone() for k, v in model.net.state_dict().items()}
    snapshots = []

    class Snapshot(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            state = pl_module.net.state_dict()
            groups = [g["lr"] for g in trainer.optimizers[0].param_groups]
            snapshots.append(({k: v.clone() for k, v in state.items()}, groups))

    finetune = BackboneFinetuning(unfreeze_backbone_at_epoch=2, backbone_initial_ratio_lr=0.1, verbose=False)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[finetune, Snapshot()],
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, CIFAR10DataModule(str(pickle_root), download=False))
    for state, groups in snapshots[:2]:  # epochs 0-1: head only
        torch.testing.assert_close(state["layers.1.weight"], start["layers.1.weight"])
        assert not torch.equal(state["head.weight"], start["head.weight"]) and len(groups) == 1
    state, groups = snapshots[2]  # epoch 2: backbone unfrozen with its own, lower learning rate
    assert not torch.equal(state["layers.1.weight"], start["layers.1.weight"])
    assert len(groups) == 2 and groups[1] == pytest.approx(0.1 * groups[0])


def test_backbone_of_a_torchvision_net_excludes_only_the_head():
    model = LitMLP(net=partial(TorchvisionNet, name="resnet18"))
    backbone_params = {id(p) for p in model.backbone.parameters()}
    head_params = {id(p) for p in model.net.model.fc.parameters()}
    assert not backbone_params & head_params
    assert len(backbone_params) + len(head_params) == len(list(model.net.parameters()))


def test_same_head_shape_but_other_class_names_recreates_the_head(tmp_path):
    source = LitMLP(hidden_sizes=[16], num_classes=3)
    ckpt = tmp_path / "animals.ckpt"
    torch.save({"state_dict": source.state_dict(), "CIFAR10DataModule": {"classes": ["cat", "dog", "frog"]}}, ckpt)
    same = LitMLP(hidden_sizes=[16], num_classes=3)
    assert load_into(same.net, ckpt, "head", ["cat", "dog", "frog"]).reinitialised == []
    torch.testing.assert_close(same.net.head.weight, source.net.head.weight)
    other = LitMLP(hidden_sizes=[16], num_classes=3)
    report = load_into(other.net, ckpt, "head", ["ship", "truck", "plane"])
    assert report.reinitialised == ["head.weight", "head.bias"]
    assert "the file's head is for ['cat', 'dog', 'frog']" in str(report)
    assert not torch.equal(other.net.head.weight, source.net.head.weight)
    torch.testing.assert_close(other.net.layers[1].weight, source.net.layers[1].weight)

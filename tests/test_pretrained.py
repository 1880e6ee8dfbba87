"""Pretrained backbones: TimmNet by name, weights files (.safetensors / .pth) with the head re-created for other
classes, refusals in one sentence, the offline message that says where a file goes, safetensors export read back
by cifarlit and by timm, and BackboneFinetuning freezing a timm backbone. No test touches the network: every
weights file is made here, and the Hugging Face hub is offline with its cache in a temporary folder."""

from __future__ import annotations

import json
import os
import re
import struct
import urllib.error
from functools import partial
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported; the fixture below sets it again

import lightning as L  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from lightning.pytorch.callbacks import BackboneFinetuning  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn  # noqa: E402

from cifarlit.data.datamodule import CIFAR10DataModule  # noqa: E402
from cifarlit.models import weights  # noqa: E402
from cifarlit.models.lit_mlp import LitMLP  # noqa: E402
from cifarlit.models.nets import TorchvisionNet  # noqa: E402
from cifarlit.models.pretrained import TimmNet  # noqa: E402
from cifarlit.models.transfer import load_into  # noqa: E402
from cifarlit.utils.errors import CifarlitError  # noqa: E402
from helpers import REPO, RunsCode, run_cli  # noqa: E402

TINY = "test_resnet"  # timm's own test model: 0.37 M parameters, a BatchNorm ResNet with an `fc` head
OTHER = "test_efficientnet"  # another architecture
TRANSFER = REPO / "configs" / "experiments" / "transfer"
DEFAULT = str(REPO / "configs" / "default.yaml")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No download can start: the hub is offline and its cache (and torch's) are empty folders of this test."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))


def timm_file(path: Path, name: str = TINY, num_classes: int = 10, **metadata) -> dict[str, torch.Tensor]:
    """A timm model's weights as a .safetensors or .pth file (what the Hub or torch.save would hold)."""
    state = {k: v.contiguous() for k, v in timm.create_model(name, num_classes=num_classes).state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path), metadata={k: json.dumps(v) for k, v in metadata.items()} or None)
    else:
        torch.save(state, path)
    return state


def backbone_keys(net: TimmNet) -> list[str]:
    return [k for k in net.state_dict() if not k.startswith(net.head_name + ".")]


def test_a_timm_model_by_name_with_timms_own_head():
    net = TimmNet(3, (3, 16, 16), name=TINY)
    assert isinstance(net.model, timm.models.ResNet) and net(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
    assert net.model.get_submodule(net.head_name.removeprefix("model.")) is net.model.get_classifier()
    gray = TimmNet(4, (1, 16, 16), name=OTHER)  # in_chans from the data; the head where timm says it is
    assert gray.model.conv_stem.in_channels == 1 and gray.head_name == "model.classifier"
    assert gray(torch.zeros(2, 1, 16, 16)).shape == (2, 4)
    assert TimmNet(3, name=TINY).pretrained_cfg["mean"] == timm.get_pretrained_cfg(TINY).mean
    with pytest.raises(CifarlitError, match=r"model.net.init_args.name='resnet_nope' is not a timm model"):
        TimmNet(3, name="resnet_nope")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_of_another_class_count_load_all_but_the_head_and_say_so_in_one_line(suffix, tmp_path):
    path = tmp_path / f"model{suffix}"
    source = timm_file(path, num_classes=10)
    with weights.deferred():  # as LitMLP builds it: nothing is read until load_weights
        net = TimmNet(3, (3, 16, 16), name=TINY, weights=str(path))
    fresh_head = net.model.fc.weight.clone()
    report = net.load_weights()
    assert report.reinitialised == ["model.fc.weight", "model.fc.bias"]
    assert "\n" not in str(report) and "model.fc.weight: (10, " in str(report) and "(3, " in str(report)
    state = net.model.state_dict()
    for key in source:
        if not key.startswith("fc."):
            torch.testing.assert_close(state[key], source[key])
    torch.testing.assert_close(net.model.fc.weight, fresh_head)
    eager = TimmNet(10, (3, 16, 16), name=TINY, weights=str(path))  # built outside LitMLP: read at once, head too
    torch.testing.assert_close(eager.model.fc.weight, source["fc.weight"])


def crafted_other_files(tmp_path: Path) -> list[tuple[Path, str, str]]:
    """Files that do not fit TINY outside its head: (path, the first key that does not fit, what is wrong)."""
    state = {k: v.contiguous() for k, v in timm.create_model(TINY, num_classes=3).state_dict().items()}
    first = next(iter(state))
    missing = {k: v for k, v in state.items() if k != first}
    wider = dict(state, **{first: torch.zeros(state[first].shape[0] + 1, *state[first].shape[1:])})
    out = []
    for name, variant in (("missing", missing), ("wider", wider)):
        path = tmp_path / f"{name}.safetensors"
        save_file(variant, str(path))
        out.append((path, f"model.{first}", "not in the file" if name == "missing" else r"\(.*\) in the file vs"))
    other = tmp_path / "other.pth"
    assert first not in timm_file(other, name=OTHER)
    out.append((other, f"model.{first}", "not in the file"))  # TINY's first tensor, absent from OTHER's
    return out


def test_weights_of_another_architecture_are_refused_naming_the_first_tensor(tmp_path):
    for path, key, wrong in crafted_other_files(tmp_path):
        with weights.deferred():
            net = TimmNet(3, (3, 16, 16), name=TINY, weights=str(path))
        before = {k: v.clone() for k, v in net.state_dict().items()}
        with pytest.raises(CifarlitError) as err:
            net.load_weights()
        message = str(err.value)
        assert message.startswith(f"model.net.init_args.weights={path} does not fit this network outside its head")
        assert re.search(rf"the first {re.escape(key)}: {wrong}", message), message
        assert message.count(". ") == 0 and "\n" not in message  # one sentence
        for k, v in net.state_dict().items():  # nothing half-loaded
            torch.testing.assert_close(v, before[k])


def hostile_safetensors(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """Files named .safetensors that are not readable ones: empty, text, cut short, lying headers, a pickle."""
    good = tmp_path / "good.safetensors"
    timm_file(good, num_classes=3)
    data = good.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"] = [0, 2**60]  # a tensor that claims more bytes than any file holds
    header[key]["shape"] = [2**30, 2**30]
    huge = json.dumps(header).encode()
    bad_classes = tmp_path / "bad_classes.safetensors"
    save_file({"w": torch.zeros(1)}, str(bad_classes), metadata={"classes": "{not json"})
    variants = {
        "empty": b"",
        "text": b"these are not the weights you are looking for\n" * 20,
        "truncated": data[: len(data) // 2],
        "header_too_large": struct.pack("<Q", 2**62) + data[8:],
        "header_past_the_end": struct.pack("<Q", len(data)) + data[8:],
        "header_not_json": struct.pack("<Q", 12) + b"{not: json!}" + data[8 + n :],
        "offsets_past_the_end": struct.pack("<Q", len(huge)) + huge + data[8 + n :],
        "pickle": None,
    }
    paths = {}
    for name, content in variants.items():
        path = tmp_path / f"{name}.safetensors"
        if content is None:
            torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": RunsCode(marker)}, path)
        else:
            path.write_bytes(content)
        paths[name] = path
    paths["bad_classes"] = bad_classes
    return paths


READERS = {
    "TimmNet weights": lambda path: TimmNet(3, (3, 16, 16), name=TINY, weights=str(path)),
    "TorchvisionNet weights": lambda path: TorchvisionNet(3, name="resnet18", weights=str(path)),
    "model.init_from": lambda path: load_into(TimmNet(3, (3, 16, 16), name=TINY), path, "model.fc"),
    "weights.read": lambda path: weights.read(path),
}


@pytest.mark.parametrize("reader", READERS)
def test_unreadable_safetensors_are_refused_in_one_sentence_by_every_reader(reader, tmp_path):
    marker, sentinel = tmp_path / "ran", tmp_path / "sentinel"
    sentinel.mkdir()
    for name, path in hostile_safetensors(tmp_path, marker).items():
        with pytest.raises(CifarlitError) as err:
            READERS[reader](path)
        message = str(err.value)
        assert f"={path} " in message and "\n" not in message, (name, message)
        assert "not a readable safetensors file" in message or "'classes' metadata" in message, (name, message)
    assert not marker.exists() and sentinel.is_dir()  # nothing ran, nothing was deleted


def test_a_pretrained_tag_offline_says_which_file_to_put_where(tmp_path):
    tagged = timm.list_pretrained(f"{TINY}.*")[0]  # e.g. test_resnet.r160_in1k
    hub_id = timm.get_pretrained_cfg(tagged).hf_hub_id
    folder = tmp_path / "hf-cache" / ("models--" + hub_id.replace("/", "--"))
    with pytest.raises(CifarlitError) as err:
        TimmNet(3, (3, 16, 16), name=TINY, weights="pretrained")
    message = str(err.value)
    assert f"timm's {tagged} weights are not in the Hugging Face cache" in message
    assert f"`hf download {hub_id} model.safetensors`" in message and "--model.net.init_args.weights PATH" in message
    assert message.endswith(f"copy that machine's cache folder {folder.name} to {folder}.")
    # and the instruction is right: that folder, laid out as the hub lays it, is read offline
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)
    source = timm_file(snapshot / "model.safetensors", num_classes=1000)
    net = TimmNet(3, (3, 16, 16), name=TINY, weights="pretrained")
    for key, value in net.model.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(value, source[key])
    with pytest.raises(CifarlitError, match=r"weights='r999' is neither a weights file .* or one of \['pretrained'"):
        TimmNet(3, name=TINY, weights="r999")


def test_a_torchvision_tag_offline_says_to_put_the_file_into_torch_home(tmp_path, monkeypatch):
    import torchvision
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no internet")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(CifarlitError) as err:
        TorchvisionNet(3, name="resnet18", weights="IMAGENET1K_V1")
    url = torchvision.models.get_model_weights("resnet18")["IMAGENET1K_V1"].url
    folder = tmp_path / "torch-hub" / "checkpoints"
    message = str(err.value)
    assert f"fetch {url} and put it into $TORCH_HOME/hub/checkpoints (here {folder})" in message
    assert message.endswith("or pass the file with --model.net.init_args.weights PATH.")


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory, pickle_root):
    """pretrain_timm.yaml for 2 steps on the fixture data (timm's tiny test model in place of its RegNetX, for
    speed), then `cifarlit export --format safetensors`."""
    base = tmp_path_factory.mktemp("timm_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        mp.setenv("HF_HUB_OFFLINE", "1")
        configs = ("-c", DEFAULT, "-c", str(TRANSFER / "pretrain.yaml"), "-c", str(TRANSFER / "pretrain_timm.yaml"))
        cli = run_cli("fit", *configs, "--data.data_dir", str(pickle_root), "--model.net.init_args.name", TINY,
                      "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                      "--test_after_fit", "false")  # fmt: skip
        ckpt = base / "lightning_logs" / "transfer" / "pretrained_timm.ckpt"
        with pytest.raises(SystemExit) as done:
            run_cli("export", "--ckpt_path", str(ckpt), "--format", "safetensors")
    assert done.value.code == 0
    return cli, ckpt, ckpt.with_suffix(".safetensors")


def test_export_safetensors_is_read_back_by_cifarlit_and_by_timm(timm_run):
    cli, ckpt, path = timm_run
    assert isinstance(cli.model.net, TimmNet) and path.is_file()
    trained = LitMLP.load_from_checkpoint(ckpt, map_location="cpu").net.eval()
    metadata = safe_open(str(path), "pt").metadata()
    config = yaml.safe_load((TRANSFER / "pretrain_timm.yaml").read_text())
    data_state = torch.load(ckpt, weights_only=True)["CIFAR10DataModule"]
    assert json.loads(metadata["classes"]) == data_state["classes"] == ["airplane", "automobile", "bird", "cat", "deer"]
    assert json.loads(metadata["mean"]) == pytest.approx(config["data"]["mean"])
    assert json.loads(metadata["std"]) == pytest.approx(config["data"]["std"])
    assert json.loads(metadata["image_shape"]) == [3, 32, 32] and metadata["library"] == "timm"
    arch = metadata["architecture"]
    assert arch == TINY
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = trained(x)
        # cifarlit: the net's weights option, and init_from (timm's key names matched to the wrapper's)
        again = TimmNet(5, name=arch, weights=str(path)).eval()
        torch.testing.assert_close(again(x), expected)
        into = TimmNet(5, name=arch)
        report = load_into(into, path, into.head_name, classes=["dog", "frog", "horse", "ship", "truck"])
        assert report.reinitialised == [into.head_name + ".weight", into.head_name + ".bias"]
        assert "the file's head is for ['airplane'" in report.reason  # same shape, other classes: a fresh head
        # timm alone: its pretrained-file route (head included when num_classes matches), and load_state_dict
        overlay = dict(file=str(path), num_classes=5)
        by_file = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=5).eval()
        torch.testing.assert_close(by_file(x), expected)
        plain = timm.create_model(arch, num_classes=5)
        plain.load_state_dict(load_file(str(path)))  # strict: every key, as timm names it
        torch.testing.assert_close(plain.eval()(x), expected)


def test_fit_from_yaml_starts_from_the_file_with_a_frozen_backbone(timm_run, pickle_root, tmp_path, monkeypatch,
                                                                   capsys):  # fmt: skip
    _, _, path = timm_run
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    configs = ("-c", DEFAULT, "-c", str(TRANSFER / "scratch.yaml"), "-c", str(TRANSFER / "pretrained.yaml"))
    cli = run_cli("fit", *configs, "--data.data_dir", str(pickle_root), "--model.net.init_args.name", TINY,
                  "--model.net.init_args.weights", str(path), "--trainer.max_epochs", "1",
                  "--trainer.limit_train_batches", "2",
                  "--test_after_fit", "false")  # fmt: skip
    net = cli.model.net
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("model.net.init_args.weights")]
    assert len(lines) == 1 and f"re-initialised {net.head_name}.weight" in lines[0]
    assert "the file's head is for ['airplane', 'automobile', 'bird', 'cat', 'deer']" in lines[0]
    assert cli.model.weights_report.reinitialised == [net.head_name + ".weight", net.head_name + ".bias"]
    source = load_file(str(path))
    convs = [k for k, m in net.model.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs  # epoch 0 of BackboneFinetuning: the backbone's convs are still the file's after 2 steps
    for name in convs:
        torch.testing.assert_close(net.model.get_submodule(name).weight, source[name + ".weight"])
    path.rename(path.with_suffix(".moved"))  # a checkpoint rebuilds without the weights file: it holds them all
    try:
        rebuilt = LitMLP.load_from_checkpoint(cli.trainer.checkpoint_callback.best_model_path, map_location="cpu")
    finally:
        path.with_suffix(".moved").rename(path)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(rebuilt.net.state_dict()[key], value)


def test_backbone_finetuning_freezes_a_timm_backbone_then_unfreezes_it(pickle_root, tmp_path):
    L.seed_everything(0)
    model = LitMLP(net=partial(TimmNet, name=TINY), optimizer=partial(torch.optim.SGD, lr=0.05))
    head = set(map(id, model.net.model.get_classifier().parameters()))
    batchnorm = {id(p) for m in model.net.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    seen = []

    class Trainable(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            params = list(pl_module.net.named_parameters())
            seen.append(({n for n, p in params if p.requires_grad}, {n for n, p in params if not p.requires_grad},
                         [g["lr"] for g in trainer.optimizers[0].param_groups]))  # fmt: skip

    finetune = BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=0.1)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=1, limit_val_batches=1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, callbacks=[finetune, Trainable()],
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, CIFAR10DataModule(str(pickle_root), download=False, image_size=16))
    named = dict(model.net.named_parameters())
    (trainable, frozen, lrs), (trainable_after, frozen_after, lrs_after) = seen
    assert frozen and {id(named[n]) for n in frozen} == set(map(id, named.values())) - head - batchnorm
    assert head <= {id(named[n]) for n in trainable}  # the head trains from the start; BatchNorm too (train_bn)
    assert not frozen_after and trainable_after == set(named)  # epoch 1: everything trains
    assert len(lrs) == 1 and lrs_after == [pytest.approx(0.05), pytest.approx(0.005)]  # the backbone at 0.1x


@pytest.mark.parametrize("config", ["pretrain_timm.yaml", "pretrained.yaml"])
def test_the_configs_normalize_as_the_backbones_pretrained_config_says(config):
    text = yaml.safe_load((TRANSFER / config).read_text())
    cfg = timm.get_pretrained_cfg(text["model"]["net"]["init_args"]["name"])
    assert text["data"]["mean"] == pytest.approx(cfg.mean) and text["data"]["std"] == pytest.approx(cfg.std)


def test_data_mean_and_std_replace_the_training_splits_statistics(pickle_root):
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    dm = CIFAR10DataModule(str(pickle_root), download=False, mean=imagenet[0], std=imagenet[1])
    dm.setup("fit")
    assert dm.mean.tolist() == pytest.approx(imagenet[0]) and dm.std.tolist() == pytest.approx(imagenet[1])
    assert dm.state_dict()["mean"].tolist() == pytest.approx(imagenet[0])  # what checkpoints and exports carry
    computed = CIFAR10DataModule(str(pickle_root), download=False)
    computed.setup("fit")
    assert computed.mean.tolist() != pytest.approx(imagenet[0])
    for mean, std in (
        (imagenet[0], None),
        ([0.5, 0.5], [0.2, 0.2]),
        (imagenet[0], [0.2, 0.0, 0.2]),
        ([128, 0, 0], imagenet[1]),
    ):
        with pytest.raises(CifarlitError, match=r"^data.mean=.* / data.std=.* are not valid: give both, 3 values"):
            CIFAR10DataModule(str(pickle_root), download=False, mean=mean, std=std)

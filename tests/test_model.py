"""The MLP network and LitMLP's loss, optimizer/scheduler wiring and argument checks."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import yaml
from torch import nn

from cifarlit.models.lit_mlp import LitMLP
from cifarlit.models.nets import MLP
from cifarlit.models.schedules import WarmupCosineLR
from cifarlit.utils.errors import CifarlitError


@pytest.mark.parametrize("hidden", [[], [50], [100, 100], [64, 32, 16]])
@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_output_shape_and_layers(hidden, norm, dropout):
    net = MLP(10, (3, 32, 32), hidden, norm=norm, dropout=dropout)
    assert net(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    count = lambda kind: sum(isinstance(m, kind) for m in net.modules())  # noqa: E731
    assert count(nn.Linear) == len(hidden) + 1
    assert count(nn.BatchNorm1d) == (len(hidden) if norm == "batch" else 0)
    assert count(nn.LayerNorm) == (len(hidden) if norm == "layer" else 0)
    assert count(nn.Dropout) == (len(hidden) if dropout else 0)


def test_dropout_per_layer():
    net = MLP(3, (3, 2, 2), [8, 8], dropout=[0.1, 0.5])
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.1, 0.5]


def test_lecture_default_is_3072_100_100_10():
    shapes = [tuple(m.weight.shape) for m in LitMLP().modules() if isinstance(m, nn.Linear)]
    assert shapes == [(100, 3072), (100, 100), (10, 100)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden_sizes": [100, 0]}, r"hidden_sizes=\[100, 0\].*>= 1"),
        ({"dropout": 1.0}, r"dropout=1.0.*\[0, 1\)"),
        ({"dropout": -0.1}, r"dropout=-0.1"),
        ({"dropout": [0.1]}, r"1 values for 2 hidden layers"),
        ({"num_classes": 1}, r"num_classes=1"),
        ({"label_smoothing": 1.0}, r"label_smoothing=1.0.*\[0, 1\)"),
    ],
)
def test_bad_architecture_is_a_clear_error(kwargs, match):
    with pytest.raises(CifarlitError, match=match):
        LitMLP(**kwargs)


def test_negative_lr_is_a_clear_error():
    model = LitMLP(optimizer=partial(torch.optim.SGD, lr=-0.1))
    with pytest.raises(CifarlitError, match="model.optimizer.*learning rate"):
        model.configure_optimizers()


def test_scheduler_config():
    model = LitMLP(
        optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=10, gamma=0.5),
    )
    cfg = model.configure_optimizers()
    assert isinstance(cfg["optimizer"], torch.optim.SGD)
    assert cfg["lr_scheduler"]["scheduler"].step_size == 10 and cfg["lr_scheduler"]["interval"] == "epoch"
    plateau = LitMLP(lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau).configure_optimizers()
    assert plateau["lr_scheduler"]["monitor"] == "val/loss"


@pytest.mark.parametrize(
    ("factory", "fused"),
    [
        (torch.optim.Adam, True),  # the default: a class, no arguments
        (partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05), True),
        (partial(torch.optim.SGD, lr=0.1, momentum=0.9), True),
        (partial(torch.optim.Adam, lr=1e-3, fused=False), False),  # the config's choice wins
        (partial(torch.optim.Adam, lr=1e-3, foreach=True), False),  # torch refuses foreach + fused
        (partial(torch.optim.RMSprop, lr=1e-3), False),  # no fused kernel: built as configured
    ],
)
def test_optimizers_use_torchs_fused_kernel_unless_the_config_says_otherwise(factory, fused):
    optimizer = LitMLP(optimizer=factory).configure_optimizers()
    assert bool(optimizer.defaults.get("fused")) is fused
    if isinstance(factory, partial):
        assert all(optimizer.defaults[k] == v for k, v in factory.keywords.items())


def test_fused_adam_takes_the_same_steps_as_the_default_implementation():
    torch.manual_seed(0)
    a, b = LitMLP(hidden_sizes=[16]), LitMLP(hidden_sizes=[16])
    b.load_state_dict(a.state_dict())
    opt_a = a.configure_optimizers()
    opt_b = LitMLP(optimizer=partial(torch.optim.Adam, fused=False)).optimizer(b.parameters())
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    for model, opt in ((a, opt_a), (b, opt_b)):
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert opt_a.defaults["fused"] and not opt_b.defaults["fused"]
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_label_smoothing_applies_to_the_training_loss_only():
    model = LitMLP(hidden_sizes=[], label_smoothing=0.2)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    logits = model(x)
    train, _ = model._step((x, y), "train")
    val, _ = model._step((x, y), "val")
    torch.testing.assert_close(train, nn.functional.cross_entropy(logits, y, label_smoothing=0.2))
    torch.testing.assert_close(val, nn.functional.cross_entropy(logits, y))
    assert not torch.allclose(train, val)


class _Trainer:  # what configure_optimizers reads from the trainer
    estimated_stepping_batches = 300
    max_epochs = 6


@pytest.mark.parametrize(("interval", "total"), [("step", 300), ("epoch", 6)])
@pytest.mark.parametrize(
    "scheduler",
    [partial(WarmupCosineLR, warmup_fraction=0.1), partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.01)],
)
def test_total_steps_is_filled_from_the_run_length(scheduler, interval, total):
    model = LitMLP(lr_scheduler=scheduler, scheduler_interval=interval)
    model.trainer = _Trainer()
    sched = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert sched.total_steps == total
    optimizer = sched.optimizer
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    peak = max(range(total), key=lrs.__getitem__)
    assert 0 < peak < total // 2  # warms up, then decays
    assert lrs[-1] < lrs[peak] / 5


def test_total_steps_given_in_the_config_is_kept():
    model = LitMLP(lr_scheduler=partial(WarmupCosineLR, total_steps=50), scheduler_interval="step")
    model.trainer = _Trainer()
    sched = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert [round(f(50), 3) for f in sched.lr_lambdas] == [0.0]
    with pytest.raises(CifarlitError, match="warmup_fraction=1.5"):
        WarmupCosineLR(sched.optimizer, total_steps=10, warmup_fraction=1.5)


def test_docstring_examples():
    import doctest

    from cifarlit.commands import export
    from cifarlit.data import datamodule as data
    from cifarlit.models import nets, schedules
    from cifarlit.training import predict
    from cifarlit.utils import files

    for module in (nets, schedules, export, files, predict, data):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_bf16_mixed_precision_trains_on_cpu(pickle_root, tmp_path):
    import lightning as L

    from cifarlit.data.datamodule import CIFAR10DataModule

    dm = CIFAR10DataModule(str(pickle_root), download=False)
    trainer = L.Trainer(max_epochs=2, precision="bf16-mixed", accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(LitMLP(), dm)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and metrics["val/acc"] > 0.3


@pytest.mark.slow
def test_torch_compile_gives_the_same_outputs_and_state_dict_keys():
    torch.manual_seed(0)
    plain = LitMLP()
    compiled = LitMLP(compile=True)
    compiled.load_state_dict(plain.state_dict())
    assert list(compiled.state_dict()) == list(plain.state_dict())
    x = torch.randn(8, 3, 32, 32)
    torch.testing.assert_close(compiled(x), plain(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pack_steps", [256, 2])  # 2: the 11 batches' tallies are stacked along the way
def test_epoch_metrics_are_exact_means_over_images_with_uneven_batches(pack_steps, tmp_path, monkeypatch):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from cifarlit.models import lit_mlp as model_module

    monkeypatch.setattr(model_module, "PACK_STEPS", pack_steps)

    torch.manual_seed(0)
    model = LitMLP(hidden_sizes=[8], num_classes=3, image_shape=(3, 4, 4))
    x, y = torch.randn(103, 3, 4, 4), torch.randint(0, 3, (103,))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    for name in ("validate", "test"):
        (out,) = getattr(trainer, name)(model, DataLoader(TensorDataset(x, y), batch_size=10))  # last batch: 3
        with torch.no_grad():
            logits = model(x)
        stage = "val" if name == "validate" else "test"
        assert out[f"{stage}/loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
        assert out[f"{stage}/acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item(), rel=1e-6)
    assert all(not tally for tally in model._tallies.values())  # emptied when the epoch's metrics were logged


def test_flip_tta_scores_an_image_as_the_mean_of_it_and_its_mirror():
    torch.manual_seed(0)
    model = LitMLP(hidden_sizes=[16]).eval()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with torch.no_grad():
        plain = model.scores(x)
        model.tta = "flip"
        both = model.scores(x)
        torch.testing.assert_close(both, (model(x) + model(x.flip(-1))) / 2)
        assert not torch.allclose(both, plain)  # an MLP is not mirror-symmetric
        torch.testing.assert_close(model.test_step((x, y), 0), both)  # what the test scores and reports
        torch.testing.assert_close(model.predict_step((x, y), 0), both.softmax(-1))
        model._tallies["test"].clear()


def test_hparams_yaml_is_plain_yaml(tmp_path):
    from lightning.pytorch.core.saving import save_hparams_to_yaml

    model = LitMLP(image_shape=(1, 16, 16))
    save_hparams_to_yaml(tmp_path / "hparams.yaml", model.hparams_initial)  # what the TensorBoard logger writes
    hparams = yaml.safe_load((tmp_path / "hparams.yaml").read_text())  # no python/* tags
    assert hparams["image_shape"] == [1, 16, 16]
    assert LitMLP(image_shape=hparams["image_shape"])(torch.zeros(2, 1, 16, 16)).shape == (2, 10)

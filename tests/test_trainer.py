"""CifarTrainer: Lightning's Trainer with the device policy a user should not have to know, and a loop that
dispatches only the callback hooks someone wrote."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.profilers import PassThroughProfiler, SimpleProfiler

from cifarlit.training.trainer import PER_BATCH_HOOKS, CifarTrainer, NoProfiler
from helpers import REPO, run_cli

DEFAULT = str(REPO / "configs" / "default.yaml")


class CountBatches(Callback):
    def __init__(self) -> None:
        self.ends = 0

    def on_train_batch_end(self, *args) -> None:
        self.ends += 1


class EveryBatchHook(CountBatches):
    def on_before_zero_grad(self, *args) -> None:
        super().on_before_zero_grad(*args)  # the base hook, called by a subclass that does override it
        self.zero_grads = getattr(self, "zero_grads", 0) + 1


def test_only_the_hooks_a_callback_overrides_are_dispatched(pickle_root, tmp_path):
    counter, both = CountBatches(), EveryBatchHook()
    trainer = CifarTrainer(max_epochs=2, accelerator="cpu", callbacks=[counter, both], logger=False,
                           enable_progress_bar=False, default_root_dir=tmp_path)  # fmt: skip
    from cifarlit.data.datamodule import CIFAR10DataModule
    from cifarlit.models.lit_mlp import LitMLP

    trainer.fit(LitMLP(), CIFAR10DataModule(str(pickle_root), download=False, batch_size=32))
    assert counter.ends == both.ends == both.zero_grads == 10  # 160 images / 32, two epochs
    assert counter.on_before_backward is None and counter.on_train_batch_start is None  # not dispatched
    assert counter.on_train_batch_end is not None and both.on_before_zero_grad is not None
    assert set(PER_BATCH_HOOKS) >= {"on_train_batch_end", "on_before_backward", "on_validation_batch_end"}


def test_the_default_config_dispatches_a_few_hooks_per_step(pickle_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(pickle_root), "--trainer.max_epochs", "1",
                  "--test_after_fit", "false")  # fmt: skip
    train_hooks = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
                   "on_before_optimizer_step", "on_before_zero_grad")  # fmt: skip
    live = [(type(cb).__name__, h) for cb in cli.trainer.callbacks for h in train_hooks if getattr(cb, h)]
    # the progress bar, the two checkpoints and the LR monitor: 4 of the 7 callbacks x 6 hooks
    assert len(live) == 4 and {name for name, _ in live} >= {"TQDMProgressBar", "ModelCheckpoint"}
    assert isinstance(cli.trainer.profiler, NoProfiler)


def test_barebones_stays_lightnings_floor_and_a_given_profiler_is_kept(tmp_path):
    bare = CifarTrainer(barebones=True, accelerator="cpu", default_root_dir=tmp_path)
    assert type(bare.profiler) is PassThroughProfiler
    simple = CifarTrainer(profiler="simple", accelerator="cpu", logger=False, default_root_dir=tmp_path)
    assert isinstance(simple.profiler, SimpleProfiler)


@pytest.mark.parametrize(("policy", "enabled"), [("auto", True), (False, False), (True, True)])
def test_deterministic_auto_is_pytorchs_deterministic_mode_on_the_cpu(policy, enabled, tmp_path):
    try:
        CifarTrainer(deterministic=policy, accelerator="cpu", logger=False, default_root_dir=tmp_path)
        assert torch.are_deterministic_algorithms_enabled() is enabled
    finally:
        torch.use_deterministic_algorithms(False)


def test_float32_matmul_precision_comes_from_the_config(tmp_path):
    before = torch.get_float32_matmul_precision()
    try:
        CifarTrainer(float32_matmul_precision="medium", accelerator="cpu", logger=False, default_root_dir=tmp_path)
        assert torch.get_float32_matmul_precision() == "medium"
        CifarTrainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
        assert torch.get_float32_matmul_precision() == "high"  # the default: the same results as highest on a CPU
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("lr", [1e-3, 1e6])  # 1e6: the loss turns NaN and the fit stops with an error
def test_a_cpu_fit_skips_lightnings_nvml_cuda_check_and_restores_it(pickle_root, tmp_path, lr):
    import os
    from functools import partial

    from cifarlit.data.datamodule import CIFAR10DataModule
    from cifarlit.models.lit_mlp import LitMLP
    from cifarlit.utils.errors import CifarlitError

    seen = []

    class Probe(Callback):
        def on_before_optimizer_step(self, *args):
            seen.append(os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"))

    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"  # set by `import lightning`
    trainer = CifarTrainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, callbacks=[Probe()], default_root_dir=tmp_path)  # fmt: skip
    model = LitMLP(optimizer=partial(torch.optim.SGD, lr=lr))
    dm = CIFAR10DataModule(str(pickle_root), download=False, batch_size=64)
    if lr > 1:
        with pytest.raises(CifarlitError, match="training loss became"):
            trainer.fit(model, dm)
    else:
        trainer.fit(model, dm)
    assert seen and set(seen) == {None}  # Adam's per-step CUDA check stays off NVML on the CPU
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"  # back after the fit, error or not

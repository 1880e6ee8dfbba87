"""GPU specifications (`make test-gpu`, pytest marker `gpu`): every shipped config trains on CUDA, the dataset
lives on the GPU with either augmentation backend's rule, no step waits on the host, bf16 and torch.compile work,
`deterministic: true` repeats a run exactly, and a GPU-trained checkpoint predicts and exports where there is no
GPU. Skipped where CUDA is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from helpers import CONFIGS, REPO, config_args, one_node, run_cli, skip_without_its_tracker

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with `make test-gpu` on one)"),
]
DEFAULT = str(REPO / "configs" / "default.yaml")
GPU = ("--trainer.accelerator", "gpu", "--trainer.devices", "1", "--data.download", "false")
SHORT = ("--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3")


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_every_config_fits_on_the_gpu(config, pickle_root, tmp_path, monkeypatch, request):
    skip_without_its_tracker(config)
    monkeypatch.chdir(tmp_path)
    if one_node(config):
        request.getfixturevalue("one_process_ddp")
    if config.name.startswith("finetune"):  # starts from the checkpoint that pretrain.yaml writes: run that first
        pretrain = config_args(config.parent / "pretrain.yaml")
        run_cli("fit", *pretrain, "--data.data_dir", str(pickle_root), *GPU, *SHORT, "--test_after_fit", "false")
    ladder = config.parent.name == "debug" and config.name != "subset.yaml"  # the whole rung: it must PASS
    cli = run_cli("fit", *config_args(config), "--data.data_dir", str(pickle_root), *GPU, *([] if ladder else SHORT),
                  *one_node(config))  # fmt: skip
    trainer = cli.trainer
    assert trainer.state.finished and trainer.strategy.root_device.type == "cuda"
    assert cli.datamodule.train_set.x.is_cuda  # data.on_device: auto
    # the ladder ends with its verdict (PASS, or SystemExit(1) above); the others fit, then test the best checkpoint
    assert torch.isfinite(trainer.callback_metrics["train/loss" if ladder else "test/loss"])


def test_tune_runs_trials_on_the_gpu(pickle_root, tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    monkeypatch.chdir(tmp_path)
    configs = ["-c", DEFAULT, "-c", str(REPO / "configs/experiments/best_mlp.yaml")]
    configs += ["-c", str(REPO / "configs/tune/mlp_subset.yaml")]
    with pytest.raises(SystemExit) as exit_info:
        run_cli("tune", "--space", str(REPO / "configs/tune/mlp_space.yaml"), "--n_trials", "2", "--study_name",
                "gpu", *configs, "--data.data_dir", str(pickle_root), *GPU, "--trainer.max_epochs", "2")  # fmt: skip
    assert exit_info.value.code in (0, None)
    assert (tmp_path / "lightning_logs" / "tune_gpu" / "best.yaml").is_file()


def watched(method):
    """``method`` with CUDA's warnings on for every operation that makes the host wait for the GPU."""

    def run(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            return method(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    return run


@pytest.mark.parametrize(
    "extra",
    [[], ["-c", "configs/experiments/cnn.yaml"], ["-c", "configs/experiments/best_mlp.yaml"],
     ["--data.augment.preset", "course"], ["--data.augment.preset", "flip"]],
    ids=["default", "cnn", "best_mlp", "course", "flip"],
)  # fmt: skip
def test_no_host_sync_inside_a_training_step(extra, pickle_root, tmp_path, monkeypatch):
    """Watched: serving the batch, moving, augmenting and normalizing it, and the optimizer step (which runs
    training_step, the loss and backward inside it). Only cifarlit's own lines fail the test; the rest is
    printed, for the benchmarks' notes."""
    from cifarlit.data.datamodule import CIFAR10DataModule
    from cifarlit.data.loaders import ArrayDataset
    from cifarlit.models.lit_mlp import LitMLP

    for cls, name in ((ArrayDataset, "__getitems__"), (CIFAR10DataModule, "transfer_batch_to_device"),
                      (CIFAR10DataModule, "on_after_batch_transfer"), (LitMLP, "optimizer_step")):  # fmt: skip
        monkeypatch.setattr(cls, name, watched(getattr(cls, name)))
    monkeypatch.chdir(tmp_path)
    extra = [str(REPO / a) if a.startswith("configs/") else a for a in extra]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cli = run_cli("fit", "-c", DEFAULT, *extra, "--data.data_dir", str(pickle_root), *GPU, "--data.batch_size",
                      "16", "--trainer.max_epochs", "2", "--test_after_fit", "false")  # fmt: skip
    assert cli.datamodule.train_set.x.is_cuda
    syncs = [w for w in seen if "synchroniz" in str(w.message)]
    where = sorted({f"{w.filename}:{w.lineno}" for w in syncs})
    if os.environ.get("CIFARLIT_SYNC_REPORT"):  # benchmarks/gpu_check.sh collects them for benchmarks/README.md
        with open(os.environ["CIFARLIT_SYNC_REPORT"], "a") as f:
            f.write(f"{extra or 'default'}: {where or 'none'}\n")
    ours = [f"{w.filename}:{w.lineno}" for w in syncs if f"{os.sep}cifarlit{os.sep}" in w.filename]
    assert not ours, ours


def test_albumentations_with_on_device_true_is_refused_in_one_sentence(pickle_root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(pickle_root), *GPU, "--data.on_device", "true",
                "--data.augment.preset", "flip", "--data.augment.backend", "albumentations")  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.on_device=true cannot be used with data.augment.backend=albumentations")
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_albumentations_with_on_device_auto_keeps_the_images_in_ram(pickle_root, tmp_path, monkeypatch):
    pytest.importorskip("albumentations")
    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(pickle_root), *GPU, *SHORT, "--data.augment.preset",
                  "crop_flip", "--data.augment.backend", "albumentations", "--data.num_workers", "1")  # fmt: skip
    assert not cli.datamodule.train_set.x.is_cuda and cli.trainer.state.finished


@pytest.mark.parametrize("extra", [["--trainer.precision", "bf16-mixed"], ["--model.compile", "true"]], ids=str)
def test_bf16_and_compile_train_on_the_gpu(extra, pickle_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(pickle_root), *GPU, *SHORT, *extra)
    assert cli.trainer.callback_metrics["test/acc"] > 0.2  # the fixture classes are learnable


@pytest.mark.parametrize(
    "net",
    [["-c", "configs/experiments/cnn.yaml"],
     ["--model.net", "cifarlit.models.nets.TorchvisionNet", "--model.net.init_args.name", "resnet18"]],
    ids=["cnn", "resnet18"],
)  # fmt: skip
def test_deterministic_true_repeats_a_gpu_run_exactly(net, pickle_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = [str(REPO / a) if a.startswith("configs/") else a for a in net]

    def fit():
        cli = run_cli("fit", "-c", DEFAULT, *net, "--data.data_dir", str(pickle_root), *GPU, *SHORT,
                      "--trainer.deterministic", "true", "--data.augment.preset", "crop_flip",
                      "--test_after_fit", "false")  # fmt: skip
        return {k: v.detach().clone() for k, v in cli.model.state_dict().items()}

    first, second = fit(), fit()
    assert all(torch.equal(first[k], second[k]) for k in first)
    torch.use_deterministic_algorithms(False)


def test_non_finite_loss_on_the_gpu_stops_before_a_checkpoint(pickle_root, tmp_path):
    import lightning as L

    from cifarlit.data.datamodule import CIFAR10DataModule
    from cifarlit.utils.errors import CifarlitError
    from test_errors import NaNAtStep

    L.seed_everything(0)
    dm = CIFAR10DataModule(str(pickle_root), download=False, batch_size=64)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(accelerator="gpu", devices=1, max_epochs=5, callbacks=[ckpt], logger=False,
                        enable_progress_bar=False, default_root_dir=tmp_path)  # fmt: skip
    with pytest.raises(CifarlitError, match=r"loss became nan at step 4 \(epoch 1\)"):
        trainer.fit(NaNAtStep(), dm)
    assert dm.train_set.x.is_cuda
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["state_dict"].values())


def cpu_only(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_gpu_checkpoint_predicts_and_exports_without_a_gpu(pickle_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(pickle_root), *GPU, *SHORT)
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    predicted = cpu_only("-m", "cifarlit", "predict", "-c", DEFAULT, "--ckpt_path", ckpt, "--data.data_dir",
                         str(pickle_root), "--output", "p.csv", cwd=tmp_path)  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + len(cli.datamodule.test_set)
    formats = ["torchscript"] + (["onnx"] if _imports("onnxscript", "onnxruntime") else [])
    for fmt in formats:
        out = tmp_path / f"model.{fmt}"
        exported = cpu_only("-m", "cifarlit", "export", "--ckpt_path", ckpt, "--format", fmt, "--output", str(out),
                            cwd=tmp_path)  # fmt: skip
        assert exported.returncode == 0, exported.stderr[-2000:]
    check = "import torch; m = torch.jit.load('model.torchscript')\n"
    check += "print([round(p, 4) for p in m(torch.zeros(2, 32, 32, 3, dtype=torch.uint8)).sum(1).tolist()])"
    ran = cpu_only("-c", check, cwd=tmp_path)
    assert ran.returncode == 0 and "[1.0, 1.0]" in ran.stdout, ran.stderr[-2000:]  # probabilities, on the CPU


def _imports(*modules: str) -> bool:
    try:
        for module in modules:
            __import__(module)
    except ImportError:
        return False
    return True


def test_a_gpu_run_asks_nothing_of_the_user(pickle_root, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "cifarlit", "fit", "-c", DEFAULT, "--data.data_dir", str(pickle_root), *GPU,
         "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--test_after_fit", "false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    said = run.stdout + run.stderr
    assert "set_float32_matmul_precision" not in said  # the config's float32_matmul_precision: high
    assert "seeded but not bit-reproducible" in said  # what deterministic: auto means here, said once

"""Slow specifications: real data, determinism, kill-and-resume, 2-process DDP, the real TensorBoard server.

Run with `make test-all` (they are deselected from `make test`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import run_cli

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
DEFAULT = str(REPO / "configs" / "default.yaml")


def scalars(run_dir: Path, tag: str) -> list[float]:
    return [e.value for e in EventAccumulator(str(run_dir)).Reload().Scalars(tag)]


def subprocess_fit(*args: str, cwd: Path, out: Path, wait: bool = True):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]),  # this checkout's cifarlit
        "CIFARLIT_TEST_OUT": str(out),
        "PYTHONWARNINGS": "ignore",
    }
    cmd = [sys.executable, "-m", "cifarlit", "fit", "-c", DEFAULT, *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_default_config_learns_real_cifar10(real_cifar, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(real_cifar), "--trainer.max_epochs", "3")
    assert len(cli.datamodule.train_set) == 40_000 and len(cli.datamodule.val_set) == 10_000
    assert scalars(Path(cli.trainer.log_dir), "val/acc")[-1] > 0.40
    assert cli.trainer.callback_metrics["test/acc"] > 0.40  # from testing the best checkpoint after fit


def test_explore_real_cifar10_mean(real_cifar, capsys):
    run_cli(
        "explore",
        "-c",
        DEFAULT,
        "--data.data_dir",
        str(real_cifar),
        "--format",
        "json",
        "--samples_per_class",
        "0",
    )
    train = json.loads(capsys.readouterr().out)["splits"]["train"]
    assert train["mean"] == pytest.approx([0.491, 0.482, 0.447], abs=0.003)


@pytest.mark.parametrize("backend", ["albumentations", "batched"])
def test_same_seed_same_run_different_seed_different_run(pickle_root, tmp_path, monkeypatch, backend):
    monkeypatch.chdir(tmp_path)

    def fit(name: str, seed: str):
        cli = run_cli(
            "fit", "-c", DEFAULT, "--data.data_dir", str(pickle_root), "--trainer.max_epochs", "3",
            "--seed_everything", seed, "--data.augment.preset", "course", "--data.augment.backend", backend,
            "--data.num_workers", "1", "--data.batch_size", "32", "--trainer.logger.init_args.name", name,
            "--test_after_fit", "false",
        )  # fmt: skip
        run_dir = Path(cli.trainer.log_dir)
        return {k: v.clone() for k, v in cli.model.state_dict().items()}, run_dir, cli.datamodule.val_idx

    w1, d1, val1 = fit("a", "1")
    w2, d2, val2 = fit("b", "1")
    w3, d3, val3 = fit("c", "2")
    for tag in ("train/loss", "val/loss", "val/acc"):
        assert scalars(d1, tag) == scalars(d2, tag)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert any(not torch.equal(w1[k], w3[k]) for k in w1)
    assert scalars(d1, "train/loss") != scalars(d3, "train/loss")
    assert (val1 == val3).all()  # the training seed never moves validation images
    info = json.loads((d1 / "run_info.json").read_text())
    assert info["split_fingerprint"] == json.loads((d3 / "run_info.json").read_text())["split_fingerprint"]
    assert torch.__version__.startswith(info["packages"]["torch"].split("+")[0])


def test_killed_run_resumes_and_matches_an_uninterrupted_one(pickle_root, tmp_path):
    common = ["--data.data_dir", str(pickle_root), "--data.batch_size", "8", "--trainer.max_epochs", "6",
              "--test_after_fit", "false", "--trainer.callbacks+=helpers.SlowSteps"]  # fmt: skip
    (tmp_path / "a").mkdir()
    subprocess_fit(*common, "--trainer.logger.init_args.name", "whole", cwd=tmp_path, out=tmp_path / "a")

    out = tmp_path / "b"
    out.mkdir()
    proc = subprocess_fit(*common, "--trainer.logger.init_args.name", "killed", cwd=tmp_path, out=out, wait=False)
    deadline = time.time() + 300
    while not (out / "epoch3_batch10").exists():  # mid-way through epoch 3 (20 steps an epoch)
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:] if proc.poll() else "timeout"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = tmp_path / "lightning_logs" / "killed" / "version_0"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2  # the last full epoch

    subprocess_fit(*common, "--trainer.logger.init_args.name", "killed", "--ckpt_path", "last", cwd=tmp_path, out=out)
    assert not (tmp_path / "lightning_logs" / "killed" / "version_1").exists()  # resumed into the same run
    whole = torch.load(
        tmp_path / "lightning_logs" / "whole" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True
    )
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == whole["epoch"] == 5
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key  # exact: resumed at an epoch boundary on CPU
    assert scalars(run, "val/acc")[-1] == scalars(tmp_path / "lightning_logs" / "whole" / "version_0", "val/acc")[-1]


def test_ddp_two_processes_on_cpu(pickle_root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    subprocess_fit(
        "--data.data_dir", str(pickle_root), "--data.batch_size", "16", "--trainer.max_epochs", "2",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.callbacks+=helpers.RankReport", "--test_after_fit", "false", cwd=tmp_path, out=out,
    )  # fmt: skip
    r0, r1 = (json.loads((out / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["split"] == r1["split"]  # the same train/val split on every rank
    assert not set(r0["shard"]) & set(r1["shard"]) and len(set(r0["shard"]) | set(r1["shard"])) == 160
    assert r0["steps"] == r1["steps"] == 5  # 80 images each, batch 16
    assert r0["val_acc"] == r1["val_acc"] and r0["val_loss"] == r1["val_loss"]  # synced metrics
    runs = list((tmp_path / "lightning_logs").rglob("events.out.tfevents.*"))
    assert len({p.parent for p in runs}) == 1  # only rank 0 writes logs
    assert len(list((tmp_path / "lightning_logs").rglob("last.ckpt"))) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_serves_the_curves_and_hparams(pickle_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli("fit", "-c", DEFAULT, "--data.data_dir", str(pickle_root), "--trainer.max_epochs", "3",
            "--trainer.logger.init_args.name", "tb")  # fmt: skip
    port = free_port()
    tensorboard = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen([str(tensorboard), "--logdir", str(tmp_path / "lightning_logs"), "--host", "127.0.0.1",
                               "--port", str(port), "--reload_interval", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                tags = json.load(urllib.request.urlopen(f"{base}/data/plugin/scalars/tags", timeout=5))
                if "tb/version_0" in tags and "val/acc" in tags["tb/version_0"]:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "TensorBoard did not serve the run"
            time.sleep(1)
        for tag in ("train/loss", "val/loss", "val/acc"):
            url = f"{base}/data/plugin/scalars/scalars?run=tb/version_0&tag={urllib.request.quote(tag)}"
            points = json.load(urllib.request.urlopen(url, timeout=10))
            assert len(points) == 3, tag  # one per epoch
        request = urllib.request.Request(
            f"{base}/data/plugin/hparams/experiment", data=json.dumps({"experimentName": ""}).encode(),
            headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
        )  # fmt: skip
        experiment = json.load(urllib.request.urlopen(request, timeout=10))
        hparams = {h["name"] for h in experiment["hparamInfos"]}
        assert {"hidden_sizes", "norm", "optimizer"} <= hparams
        assert "val/acc" in {m["name"]["tag"] for m in experiment["metricInfos"]}
    finally:
        server.terminate()
        server.wait()


THREE_CLASSES = ("--data.keep_classes", "[airplane, automobile, bird]")  # 15 test images: not divisible by 2


def test_ddp_test_metrics_equal_a_single_process_run(pickle_root, tmp_path):
    """DistributedSampler pads a split to a multiple of the process count; cifarlit's eval batches do not, so a
    2-process test of an odd-sized test set counts every image once, as one process does."""
    subprocess_fit("--data.data_dir", str(pickle_root), *THREE_CLASSES, "--trainer.max_epochs", "2",
                   "--trainer.accelerator", "cpu", "--test_after_fit", "false", cwd=tmp_path, out=tmp_path)  # fmt: skip
    ckpt = next((tmp_path / "lightning_logs" / "default" / "version_0" / "checkpoints").glob("last.ckpt"))
    matrices = {}
    for devices in ("1", "2"):
        name = f"test_{devices}"
        result = subprocess.run(
            [sys.executable, "-m", "cifarlit", "test", "-c", DEFAULT, "--data.data_dir", str(pickle_root),
             *THREE_CLASSES, "--ckpt_path", str(ckpt), "--trainer.accelerator", "cpu", "--trainer.devices", devices,
             "--trainer.strategy", "ddp" if devices == "2" else "auto", "--trainer.logger.init_args.name", name],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        run = tmp_path / "lightning_logs" / name / "version_0"
        matrices[devices] = (run / "confusion_matrix.csv").read_text()
        assert len(list(run.glob("events.out.tfevents.*"))) == 1
        matrices[devices + "acc"] = scalars(run, "test/acc")
    assert matrices["1"] == matrices["2"]
    assert sum(int(v) for line in matrices["2"].splitlines()[1:] for v in line.split(",")[1:]) == 15
    assert matrices["1acc"] == matrices["2acc"]


def test_a_resumed_ddp_run_gives_each_process_its_own_rng_state(pickle_root, tmp_path):
    common = ["--data.data_dir", str(pickle_root), "--data.batch_size", "16", "--trainer.accelerator", "cpu",
              "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.augment.preset", "flip",
              "--test_after_fit", "false", "--trainer.callbacks+=helpers.RankDrift"]  # fmt: skip
    subprocess_fit(*common, "--trainer.max_epochs", "3", "--trainer.logger.init_args.name", "whole",
                   cwd=tmp_path, out=tmp_path)  # fmt: skip
    subprocess_fit(*common, "--trainer.max_epochs", "2", "--trainer.logger.init_args.name", "split",
                   cwd=tmp_path, out=tmp_path)  # fmt: skip
    subprocess_fit(*common, "--trainer.max_epochs", "3", "--trainer.logger.init_args.name", "split",
                   "--ckpt_path", "last", cwd=tmp_path, out=tmp_path)  # fmt: skip
    runs = tmp_path / "lightning_logs"
    whole = torch.load(runs / "whole" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(runs / "split" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == whole["epoch"] == 2
    assert len(whole["cifarlit_rng_states"]) == 2  # one per process
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


def test_two_fits_started_together_on_a_new_folder_both_finish_in_their_own_runs(fresh_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = ["--data.data_dir", str(fresh_folder), "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu"]
    procs = [subprocess_fit(*args, cwd=tmp_path, out=out, wait=False) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    runs = sorted((tmp_path / "lightning_logs" / "default").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]
    for run in runs:
        assert {"config.yaml", "run_info.json", "confusion_matrix.csv"} <= {p.name for p in run.iterdir()}
        assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (fresh_folder / ".cifarlit-cache.npz").is_file()

"""Datasets larger than memory: `cifarlit prepare` writes LitData chunks once, `data.stream` trains on them.

A stream holds the in-memory path's split, image for image; training reads it in an order set by the seed and
the epoch; every image is used once per epoch, also when several processes share it; a prepare that did not
finish is never trusted.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cifarlit.cli import cli_main
from cifarlit.commands import prepare as prepare_module
from cifarlit.data import litdata_adapter, stream, stream_loader
from cifarlit.data.datamodule import CIFAR10DataModule, StreamDataModule
from cifarlit.data.sources import DataError
from conftest import write_image_folder, write_unlabelled_folder
from helpers import SeenImages, run_cli

REPO = Path(__file__).resolve().parents[1]
DEFAULT = str(REPO / "configs" / "default.yaml")


def prepare(*args: str) -> int:
    """`cifarlit prepare ARGS` in this process; its exit status."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prepare", *args])
    return exit_info.value.code


@pytest.fixture(scope="module")
def pickle_stream(pickle_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("streams") / "pickle"
    assert prepare("--data.data_dir", str(pickle_root), "--output", str(out), "--num_workers", "2") == 0
    return out


def digests(x: torch.Tensor) -> list[str]:
    return [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in x]


def batches(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


@pytest.fixture
def without_test(fresh_folder) -> Path:
    shutil.rmtree(fresh_folder / "test")  # the test split is carved from train/
    return fresh_folder


@pytest.mark.parametrize("source", ["pickle_root", "folder_root", "without_test"])
def test_a_stream_holds_the_in_memory_split_image_for_image(source, request, tmp_path):
    data_dir = request.getfixturevalue(source)
    assert prepare("--data.data_dir", str(data_dir), "--output", str(tmp_path / "s"), "--num_workers", "1") == 0
    memory, streamed = CIFAR10DataModule(data_dir=str(data_dir)), CIFAR10DataModule(stream=str(tmp_path / "s"))
    memory.prepare_data()
    memory.setup("fit")
    streamed.prepare_data()
    streamed.setup("fit")
    assert streamed.split_fingerprint == memory.split_fingerprint  # the same files, the same train/val/test
    assert streamed.classes == memory.classes
    assert streamed.stream_sizes == {"train": len(memory.train_set), "val": len(memory.val_set),
                                     "test": len(memory.test_set)}  # fmt: skip
    assert torch.allclose(streamed.mean, memory.mean, atol=1e-6) and torch.allclose(streamed.std, memory.std, atol=1e-6)
    for split in ("val", "test"):  # in the same order, so predictions of the test split line up
        x, y = batches(getattr(streamed, f"{split}_dataloader")())
        assert x.dtype == torch.uint8 and torch.equal(x, getattr(memory, f"{split}_set").x)
        assert torch.equal(y, getattr(memory, f"{split}_set").y)
    x, y = batches(streamed.train_dataloader())
    assert sorted(digests(x)) == sorted(digests(memory.train_set.x))  # every training image once, shuffled
    assert digests(x) != digests(memory.train_set.x)
    assert sorted(y.tolist()) == sorted(memory.train_set.y.tolist())


@pytest.mark.parametrize("source, size, channels", [("pickle_root", 16, 1), ("folder_root", 24, 3)])
def test_a_stream_at_another_image_size_holds_the_in_memory_images(source, size, channels, request, tmp_path):
    data_dir = request.getfixturevalue(source)
    shape = ("--data.image_size", str(size), "--data.channels", str(channels))
    assert prepare("--data.data_dir", str(data_dir), "--output", str(tmp_path / "s"), *shape) == 0
    memory = CIFAR10DataModule(data_dir=str(data_dir), image_size=size, channels=channels)
    streamed = CIFAR10DataModule(stream=str(tmp_path / "s"), image_size=size, channels=channels)
    for dm in (memory, streamed):
        dm.prepare_data()
        dm.setup("fit")
    assert streamed.split_fingerprint == memory.split_fingerprint
    x, y = batches(streamed.test_dataloader())
    assert x.shape[1:] == (channels, size, size) and torch.equal(x, memory.test_set.x)
    assert torch.equal(y, memory.test_set.y)
    x, _ = batches(streamed.train_dataloader())
    assert sorted(digests(x)) == sorted(digests(memory.train_set.x))
    with pytest.raises(DataError, match=rf"prepared with data.image_size={size}.* asks for data.image_size=32"):
        CIFAR10DataModule(stream=str(tmp_path / "s"), channels=channels).setup("fit")


def test_fit_validate_test_and_predict_from_a_stream(pickle_stream, pickle_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "-c", DEFAULT, "--data.stream", str(pickle_stream), "--trainer.max_epochs", "2",
                  "--data.batch_size", "16")  # fmt: skip
    assert type(cli.datamodule) is StreamDataModule  # data.stream picked it, from the same `data:` options
    run = Path(cli.trainer.log_dir)
    info = json.loads((run / "run_info.json").read_text())
    assert (info["train_size"], info["val_size"], info["test_size"]) == (160, 40, 50)
    assert cli.trainer.callback_metrics["test/acc"] > 0.5  # the fixture's classes are easy: it learned
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    state = torch.load(ckpt, weights_only=True)["CIFAR10DataModule"]  # predict and export need no data
    assert torch.equal(state["mean"], cli.datamodule.mean) and len(state["classes"]) == 10

    validated = run_cli("validate", "-c", DEFAULT, "--data.stream", str(pickle_stream), "--ckpt_path", ckpt)
    assert "val/acc" in validated.trainer.callback_metrics

    def predict(*data: str) -> str:
        output = tmp_path / f"{data[0].split('.')[-1]}.csv"
        run_cli("predict", "-c", DEFAULT, *data, "--ckpt_path", ckpt, "--output", str(output))
        return output.read_text()

    from_stream = predict("--data.stream", str(pickle_stream))
    assert len(from_stream.splitlines()) == 1 + 50  # a header, then the test split
    assert from_stream == predict("--data.data_dir", str(pickle_root))  # same ids, same images, same numbers
    # the in-memory DataModule reads the stream-trained checkpoint's statistics: new images need no data at all
    folder = tmp_path / "new"
    write_unlabelled_folder(folder)
    assert len(predict("--data.predict_dir", str(folder)).splitlines()) == 1 + 9


def test_data_stream_picks_the_streamed_datamodule_which_copies_and_pickles_as_itself(pickle_stream):
    dm = CIFAR10DataModule(stream=str(pickle_stream), batch_size=16)
    assert type(dm) is StreamDataModule and isinstance(dm, CIFAR10DataModule)
    assert type(CIFAR10DataModule(data_dir="elsewhere")) is CIFAR10DataModule
    # filed in checkpoints under the in-memory DataModule's name, so either reads the other's state
    assert type(dm).__qualname__ == CIFAR10DataModule.__qualname__ == "CIFAR10DataModule"
    for again in (copy.deepcopy(dm), pickle.loads(pickle.dumps(dm))):
        assert type(again) is StreamDataModule and again.hparams.batch_size == 16
        assert again.classes == dm.classes
    with pytest.raises(DataError, match="data.keep_classes=.* cannot be used with data.stream"):
        CIFAR10DataModule(stream=str(pickle_stream), keep_classes=["cat", "dog"])


def test_the_training_order_follows_the_seed_and_the_epoch_and_survives_a_resume(pickle_stream, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def fit(name: str, seed: str, epochs: str, *args: str):
        cli = run_cli("fit", "-c", DEFAULT, "--data.stream", str(pickle_stream), "--seed_everything", seed,
                      "--trainer.max_epochs", epochs, "--data.batch_size", "16", "--test_after_fit", "false",
                      "--trainer.logger.init_args.name", name, "--trainer.callbacks+=helpers.SeenImages",
                      *args)  # fmt: skip
        seen = next(cb for cb in cli.trainer.callbacks if isinstance(cb, SeenImages))
        last = torch.load(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        return seen.train, last

    once, weights = fit("once", "1", "3")
    again, _ = fit("again", "1", "2")
    other, _ = fit("other", "2", "2")
    assert once[0] == again[0] and once[1] == again[1]  # the same seed: the same order, epoch by epoch
    assert once[0] != other[0] and once[0] != once[1]  # another seed, another epoch: another order
    for order in (*once.values(), *other.values()):
        assert len(order) == len(set(order)) == 160  # every training image once per epoch
    resumed, resumed_weights = fit("again", "1", "3", "--ckpt_path", "last")
    assert resumed[2] == once[2]  # the resumed epoch reads what the uninterrupted run read
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)


def ranks_read(stream_dir: Path, world: int, split: str, batch_size: int, workers: int) -> list:
    """What each of ``world`` processes reads of a split, per batch (LitData reads its rank from the environment)."""
    info = stream.read_info(str(stream_dir))
    per_rank = []
    for rank in range(world):
        with pytest.MonkeyPatch.context() as env:
            env.setenv("WORLD_SIZE", str(world))
            env.setenv("GLOBAL_RANK", str(rank))
            dataset = stream.open_split(str(stream_dir), split, info, shuffle=split == "train", seed=7)
            loader = stream_loader.loader(dataset, info.shape, batch_size, workers, False)
            per_rank.append([digests(x) for x, _ in loader])
    return per_rank


@pytest.mark.parametrize("world, batch_size, workers", [(2, 16, 0), (2, 12, 0), (3, 7, 2)])
def test_processes_share_every_training_image_once_in_as_many_steps(world, batch_size, workers, pickle_stream):
    per_rank = ranks_read(pickle_stream, world, "train", batch_size, workers)
    images = [d for batches_ in per_rank for batch in batches_ for d in batch]
    assert len(images) == len(set(images)) == 160  # 160 = 2 x 80 = 2 x 6.7 x 12 = 3 x 53.3: nothing left out
    assert len({len(batches_) for batches_ in per_rank}) == 1  # the same number of steps: DDP cannot hang
    assert all(1 < len(batch) <= batch_size for batches_ in per_rank for batch in batches_)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_processes_share_every_test_image_once_in_order(world, pickle_stream):
    per_rank = ranks_read(pickle_stream, world, "test", 7, 0)
    images = [d for batches_ in per_rank for batch in batches_ for d in batch]
    assert len(images) == len(set(images)) == 50 and len({len(b) for b in per_rank}) == 1
    memory = CIFAR10DataModule(stream=str(pickle_stream))
    memory.setup("test")
    assert images == digests(batches(memory.test_dataloader())[0])  # rank 0's part, then rank 1's, ...


def test_a_stream_in_object_storage_reads_the_same(pickle_stream, tmp_path, monkeypatch):
    monkeypatch.setattr(*litdata_adapter.CACHE_DIR_SETTING, str(tmp_path / "cache"))  # where chunks land
    url = f"local:{pickle_stream}"  # LitData's object-store path, served from a local folder
    remote, local = CIFAR10DataModule(stream=url), CIFAR10DataModule(stream=str(pickle_stream))
    for dm in (remote, local):
        dm.setup("fit")
    assert remote.classes == local.classes and remote.split_fingerprint == local.split_fingerprint
    assert torch.equal(batches(remote.val_dataloader())[0], batches(local.val_dataloader())[0])
    assert any((tmp_path / "cache").rglob("*.bin"))  # the chunks came through LitData's download cache


def test_a_prepare_that_did_not_finish_is_never_trusted(pickle_root, tmp_path, monkeypatch):
    out = tmp_path / "s"

    def interrupted(*args):
        raise KeyboardInterrupt  # Ctrl-C after the chunks, before the statistics and the description

    with monkeypatch.context() as m:
        m.setattr(prepare_module, "_train_stats", interrupted)
        with pytest.raises(KeyboardInterrupt):
            prepare("--data.data_dir", str(pickle_root), "--output", str(out), "--num_workers", "1")
    assert list(tmp_path.iterdir()) == []  # no stream, and no partial one left behind
    with pytest.raises(DataError, match="is not a prepared stream"):
        CIFAR10DataModule(stream=str(out)).setup("fit")

    # a SIGKILLed prepare leaves its hidden partial folder: the next prepare removes it and writes the stream
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".s.partial-{socket.gethostname()}-{dead.stdout.strip()}"
    (leftover / "train").mkdir(parents=True)
    assert prepare("--data.data_dir", str(pickle_root), "--output", str(out), "--num_workers", "1") == 0
    assert not leftover.exists() and CIFAR10DataModule(stream=str(out)).num_classes == 10

    # a copy without its description (say, a copy that stopped half way) is refused; not being a stream, it is
    # not replaced even with --overwrite (tests/test_hostile_streams.py), so the user deletes it
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / stream.META_NAME).unlink()
    with pytest.raises(DataError, match="a killed or partial prepare is refused"):
        CIFAR10DataModule(stream=str(copy)).setup("fit")
    assert prepare("--data.data_dir", str(pickle_root), "--output", str(copy)) == 2
    assert prepare("--data.data_dir", str(pickle_root), "--output", str(copy), "--overwrite") == 2
    assert (copy / "train" / "index.json").is_file()  # still there
    shutil.rmtree(copy)
    assert prepare("--data.data_dir", str(pickle_root), "--output", str(copy)) == 0
    CIFAR10DataModule(stream=str(copy)).setup("fit")

    # a split that lost its index, or holds other images than the description says, is refused
    (copy / "val" / "index.json").unlink()
    with pytest.raises(DataError, match="the val split cannot be read"):
        CIFAR10DataModule(stream=str(copy)).setup("fit")
    meta = json.loads((out / stream.META_NAME).read_text())
    meta["sizes"]["test"] = 49
    (out / stream.META_NAME).write_text(json.dumps(meta))
    with pytest.raises(DataError, match="the test split holds 50 images, but"):
        CIFAR10DataModule(stream=str(out)).setup("fit")


def test_prepare_again_is_a_no_op_and_an_unreadable_image_stops_it(fresh_folder, tmp_path, capsys):
    out = tmp_path / "s"
    assert prepare("--data.data_dir", str(fresh_folder), "--output", str(out), "--num_workers", "1") == 0
    written = (out / stream.META_NAME).stat().st_mtime_ns
    assert prepare("--data.data_dir", str(fresh_folder), "--output", str(out)) == 0
    assert "nothing to do" in capsys.readouterr().out and (out / stream.META_NAME).stat().st_mtime_ns == written

    (fresh_folder / "train" / "cat" / "0040.png").write_bytes(b"not a png")
    assert prepare("--data.data_dir", str(fresh_folder), "--output", str(tmp_path / "t"), "--num_workers", "2") == 2
    assert "train/cat/0040.png (UnidentifiedImageError)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "s"]  # nothing written, nothing left


@pytest.mark.parametrize(
    "option, value",
    [("train_subset", 16), ("val_subset", 0.5), ("keep_classes", ["cat", "dog"]), ("on_device", True)],
)
def test_options_that_need_the_images_in_memory_are_refused(option, value, pickle_stream):
    with pytest.raises(DataError, match=f"data.{option}=.* cannot be used with data.stream"):
        CIFAR10DataModule(stream=str(pickle_stream), **{option: value})


def test_a_run_must_ask_for_the_split_the_stream_holds(pickle_stream):
    dm = CIFAR10DataModule(stream=str(pickle_stream), val_size=0.25, seed=42)
    with pytest.raises(DataError, match=r"prepared with data.val_size=0.2, but this run asks for data.val_size=0.25"):
        dm.setup("fit")


@pytest.mark.slow
def test_a_killed_prepare_process_leaves_no_stream(tmp_path):
    data = write_image_folder(tmp_path / "images", per_class_train=150, per_class_test=10)
    out = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "cifarlit", "prepare", "--data.data_dir", str(data), "--output", str(out),
           "--num_workers", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".s.partial-*/train")):  # killed while LitData writes the training split
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    with pytest.raises(DataError, match="is not a prepared stream"):
        CIFAR10DataModule(stream=str(out)).setup("fit")
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert not list(tmp_path.glob(".s.partial-*"))
    CIFAR10DataModule(stream=str(out)).setup("fit")


@pytest.mark.slow
def test_ddp_two_processes_train_on_every_image_once_per_epoch(pickle_stream, pickle_root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO / 'tests'}", "CIFARLIT_TEST_OUT": str(out),
           "PYTHONWARNINGS": "ignore"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "cifarlit", "fit", "-c", DEFAULT, "--data.stream", str(pickle_stream),
         "--data.batch_size", "12", "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu",
         "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.callbacks+=helpers.SeenImages",
         "--test_after_fit", "false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = (json.loads((out / f"seen_rank{rank}.json").read_text()) for rank in (0, 1))
    memory = CIFAR10DataModule(data_dir=str(pickle_root))
    memory.setup("fit")
    train, val = set(digests(memory.train_set.x)), set(digests(memory.val_set.x))
    for epoch in ("0", "1"):
        assert not set(r0["train"][epoch]) & set(r1["train"][epoch])  # each process its own part
        assert sorted(r0["train"][epoch] + r1["train"][epoch]) == sorted(train)  # together: each image once
        assert len(r0["train"][epoch]) == len(r1["train"][epoch]) == 80  # 160 / 2, in 7 steps of 11-12 each
        assert sorted(r0["val"][epoch] + r1["val"][epoch]) == sorted(val)  # metrics count each val image once
    assert r0["train"]["0"] != r0["train"]["1"]  # reshuffled each epoch
    assert r0["val_acc"] == r1["val_acc"]  # synced metrics


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_epochs_read_in_this_process_leave_no_chunk_file_open(pickle_stream):
    dm = CIFAR10DataModule(stream=str(pickle_stream), batch_size=16)
    dm.setup("fit")
    loaders = (dm.train_dataloader(), dm.val_dataloader())
    for loader in loaders:
        next(iter(loader))  # an epoch left unfinished (limit_*_batches) closes its chunks too
    opened = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        for loader in loaders:
            for _ in loader:
                pass
    assert len(os.listdir("/proc/self/fd")) <= opened

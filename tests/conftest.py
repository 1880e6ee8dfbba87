"""Fixture datasets in the real on-disk formats, so the real loading code runs in every test.

Each class has its own mean colour plus noise, so a network can learn the fixtures and tests can tell a
working pipeline from a broken one.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlit.data.sources import CIFAR10_CLASSES

SHARED_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-images.tar.gz"


def make_images(labels: np.ndarray, seed: int, size: int = 32) -> np.ndarray:
    """uint8 ``(N, size, size, 3)`` images whose colour depends on the label."""
    rng = np.random.default_rng(seed)
    n_classes = int(labels.max()) + 1
    palette = np.random.default_rng(0).integers(30, 226, size=(n_classes, 3))
    noise = rng.normal(0, 25, size=(len(labels), size, size, 3))
    return np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def balanced_labels(per_class: int, n_classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(n_classes), per_class))


def write_pickle_cifar(root: Path, per_class_train: int = 20, per_class_test: int = 5) -> Path:
    """``root/cifar-10-batches-py`` with data_batch_1..5, test_batch and batches.meta, as CIFAR-10 ships it."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    y = balanced_labels(per_class_train)
    x = make_images(y, seed=1)
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        entry = {"data": x[part].transpose(0, 3, 1, 2).reshape(len(part), -1), "labels": y[part].tolist()}
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(entry, f)
    ty = balanced_labels(per_class_test, seed=1)
    tx = make_images(ty, seed=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": tx.transpose(0, 3, 1, 2).reshape(len(ty), -1), "labels": ty.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, f)
    return root


def write_image_folder(
    root: Path, classes=CIFAR10_CLASSES, per_class_train: int = 12, per_class_test: int = 4, size: int = 32
) -> Path:
    """``root/{train,test}/<class>/NNNN.png``, the layout of the shared CIFAR-10 image archive."""
    for split, per_class, seed in (("train", per_class_train, 3), ("test", per_class_test, 4)):
        y = np.repeat(np.arange(len(classes)), per_class)
        x = make_images(y, seed=seed, size=size)
        for i, (image, label) in enumerate(zip(x, y, strict=True)):
            d = root / split / classes[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(d / f"{i:04d}.png")
    return root


# Your own images: each class in another size, mode and format (width x height).
MIXED = {"cat": ((20, 20), "L", "png"), "dog": ((40, 48), "RGB", "jpg"), "fish": ((32, 32), "RGBA", "png")}


def write_mixed_image(image: np.ndarray, label: int, path_stem: Path) -> Path:
    """Save a 48x48 RGB ``image`` the way its class's files look in :data:`MIXED`; returns the file."""
    (width, height), mode, ext = MIXED[list(MIXED)[label]]
    path = path_stem.with_name(f"{path_stem.name}.{ext}")
    Image.fromarray(image).convert(mode).resize((width, height)).save(path)
    return path


def write_mixed_folder(root: Path, per_class_train: int = 20, per_class_test: int = 4) -> Path:
    """``root/train/<class>/*`` (+ ``root/test`` unless ``per_class_test`` is 0) of the 3 :data:`MIXED` classes."""
    for split, per_class, seed in (("train", per_class_train, 5), ("test", per_class_test, 6)):
        if per_class == 0:
            continue
        y = np.repeat(np.arange(len(MIXED)), per_class)
        for i, (image, label) in enumerate(zip(make_images(y, seed=seed, size=48), y, strict=True)):
            folder = root / split / list(MIXED)[label]
            folder.mkdir(parents=True, exist_ok=True)
            write_mixed_image(image, label, folder / f"{i:04d}")
    return root


def write_unlabelled_folder(root: Path, per_class: int = 3) -> dict[str, str]:
    """A flat folder of new images of the :data:`MIXED` classes; returns {file stem: true class}."""
    root.mkdir(parents=True)
    y = np.repeat(np.arange(len(MIXED)), per_class)
    truth = {}
    for i, (image, label) in enumerate(zip(make_images(y, seed=7, size=48), y, strict=True)):
        stem = f"img{i:02d}"
        write_mixed_image(image, label, root / stem)
        truth[stem] = list(MIXED)[label]
    return truth


@pytest.fixture(scope="session")
def pickle_root(tmp_path_factory) -> Path:
    return write_pickle_cifar(tmp_path_factory.mktemp("pickle"))


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("folder"))


@pytest.fixture
def fresh_folder(tmp_path, folder_root) -> Path:
    """A private copy of the image folder, for tests that change files or the cache."""
    dst = tmp_path / "images"
    shutil.copytree(folder_root, dst, ignore=shutil.ignore_patterns(".cifarlit-cache*"))
    return dst


@pytest.fixture(scope="session")
def real_cifar(tmp_path_factory) -> Path:
    """The real CIFAR-10 image folder, extracted from ../shared/data; slow tests only, skipped when absent."""
    if not SHARED_ARCHIVE.is_file():
        pytest.skip(f"real CIFAR-10 not found at {SHARED_ARCHIVE}")
    import tarfile

    root = tmp_path_factory.mktemp("real")
    with tarfile.open(SHARED_ARCHIVE) as tar:
        tar.extractall(root, filter="data")
    return root / "cifar10"


@pytest.fixture(scope="session")
def own_run(tmp_path_factory):
    """`cifarlit fit` (then test) on a 3-class mixed folder; afterwards the training data is moved away.

    Returns a namespace: ``ckpt`` (the best checkpoint), ``run_dir``, ``data`` (where the folder now is),
    ``gone`` (where it was trained from, now absent), ``cli`` (the fit's LightningCLI).
    """
    from types import SimpleNamespace

    from helpers import run_cli

    base = tmp_path_factory.mktemp("own")
    trained_from = write_mixed_folder(base / "images")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        cli = run_cli(
            "fit", "-c", str(Path(__file__).resolve().parents[1] / "configs" / "default.yaml"),
            "--data.data_dir", str(trained_from), "--trainer.max_epochs", "5",
            "--trainer.logger.init_args.save_dir", str(base / "lightning_logs"),
            "--trainer.logger.init_args.name", "own",
        )  # fmt: skip
    moved = shutil.move(trained_from, base / "moved")
    return SimpleNamespace(
        ckpt=Path(cli.trainer.checkpoint_callback.best_model_path),
        run_dir=Path(cli.trainer.log_dir),
        data=Path(moved),
        gone=trained_from,
        cli=cli,
    )


@pytest.fixture
def one_process_ddp(monkeypatch):
    """Undoes what a DDP run of one process leaves in this process: its environment variables, the thread count
    and the process group, so later tests (and the processes they start) do not inherit them."""
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.fixture(autouse=True)
def nothing_written_into_the_checkout():
    """Every test works in folders of its own: a run folder (or a plot, a CSV) left at the top of the checkout is a
    command writing where it was not pointed, or a test that forgot to change directory (a refused fit once left
    an empty lightning_logs/default/version_N there)."""
    checkout = Path(__file__).resolve().parents[1]
    before = {p.name for p in checkout.iterdir()}
    yield
    left = sorted({p.name for p in checkout.iterdir()} - before - {".pytest_cache"})
    assert not left, f"the test left {left} at the top of the checkout"

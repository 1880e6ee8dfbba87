"""CIFAR10DataModule and the dataset sources: split, subsets, statistics, cache, batches."""

from __future__ import annotations

import pickle

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from cifarlit.data import cache as decode_cache
from cifarlit.data import images, sources
from cifarlit.data.datamodule import CIFAR10DataModule
from cifarlit.data.sources import DataError
from cifarlit.data.split import channel_stats


def make_dm(root, **kwargs) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(data_dir=str(root), download=False, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_pickle_batches_round_trip(pickle_root):
    raw = sources.load(pickle_root)
    with open(pickle_root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        first = pickle.load(f)
    assert raw.train_x.shape == (200, 32, 32, 3) and raw.train_x.dtype == np.uint8
    assert raw.test_x.shape == (50, 32, 32, 3)
    # pixel (row 0, col 1) of the first image: CIFAR stores R plane, then G, then B, row-major
    assert list(raw.train_x[0, 0, 1]) == [first["data"][0][1], first["data"][0][1025], first["data"][0][2049]]
    assert raw.train_y[: len(first["labels"])].tolist() == first["labels"]
    assert raw.classes == sources.CIFAR10_CLASSES


def test_image_folder_decodes_pixels_and_sorted_classes(folder_root):
    raw = sources.load(folder_root)
    assert raw.classes == tuple(sorted(sources.CIFAR10_CLASSES))
    assert raw.train_x.shape == (120, 32, 32, 3) and raw.test_x.shape == (40, 32, 32, 3)
    first = sorted((folder_root / "train" / raw.classes[0]).iterdir())[0]
    np.testing.assert_array_equal(raw.train_x[0], np.asarray(Image.open(first)))
    assert np.bincount(raw.train_y).tolist() == [12] * 10


def test_image_folder_converts_other_sizes_and_modes(tmp_path):
    for cls, (size, mode) in {"a": ((20, 20), "L"), "b": ((40, 48), "RGB"), "c": ((32, 32), "RGBA")}.items():
        for split in ("train", "test"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new(mode, size, color=100 if mode == "L" else (10, 20, 30, 255)[: len(mode)]).save(
                    tmp_path / split / cls / f"{i}.{'jpg' if mode == 'L' else 'png'}"
                )
    raw = sources.load(tmp_path)
    assert raw.train_x.shape == (9, 32, 32, 3) and raw.classes == ("a", "b", "c")
    assert (raw.train_x[raw.train_y == 0] == raw.train_x[0, 0, 0, 0]).all()  # gray became 3 equal channels
    assert raw.train_x[raw.train_y == 1][0, 5, 5].tolist() == [10, 20, 30]


def test_split_is_stratified_exact_and_disjoint(pickle_root):
    dm = make_dm(pickle_root)
    assert len(dm.train_set) == 160 and len(dm.val_set) == 40
    assert np.bincount(dm.val_set.y.numpy()).tolist() == [4] * 10
    assert np.bincount(dm.train_set.y.numpy()).tolist() == [16] * 10
    assert not set(dm.train_idx) & set(dm.val_idx)
    assert len(set(dm.train_idx) | set(dm.val_idx)) == 200


# the split alone; with fraction subsets; with a count below the class count (drawn at random, not stratified)
@pytest.mark.parametrize("subsets", [{}, {"train_subset": 0.5, "val_subset": 0.5}, {"train_subset": 3}], ids=str)
def test_split_depends_only_on_data_seed(pickle_root, subsets):
    def split_after_training_seed(training_seed: int, data_seed: int) -> CIFAR10DataModule:
        L.seed_everything(training_seed)  # torch, NumPy and Python's global generators, as `fit` seeds them
        return make_dm(pickle_root, seed=data_seed, **subsets)

    a, b = split_after_training_seed(1, data_seed=7), split_after_training_seed(2, data_seed=7)
    for part in ("train_idx", "val_idx"):  # the training seed moves no image between train, val and the subsets
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert a.split_fingerprint == b.split_fingerprint
    c = split_after_training_seed(1, data_seed=8)  # the same training seed, another data seed: another split
    assert not np.array_equal(a.val_idx, c.val_idx) and a.split_fingerprint != c.split_fingerprint
    if subsets:
        assert not np.array_equal(a.train_idx, c.train_idx)


def test_fraction_subset_is_stratified_and_from_train_split_only(pickle_root):
    full = make_dm(pickle_root)
    dm = make_dm(pickle_root, train_subset=0.5, val_subset=0.5)
    assert np.bincount(dm.train_set.y.numpy()).tolist() == [8] * 10
    assert np.bincount(dm.val_set.y.numpy()).tolist() == [2] * 10
    assert set(dm.train_idx) <= set(full.train_idx)
    np.testing.assert_array_equal(full.val_idx[np.isin(full.val_idx, dm.val_idx)], dm.val_idx)


@pytest.mark.parametrize("count", [1, 3, 16])
def test_count_subsets(pickle_root, count):
    dm = make_dm(pickle_root, train_subset=count)
    assert len(dm.train_set) == count
    assert len(dm.val_set) == 40  # the val split is untouched
    if count >= 10:
        assert np.bincount(dm.train_set.y.numpy(), minlength=10).min() >= 1  # every class represented


def test_stats_come_from_the_train_split_only(pickle_root):
    dm = make_dm(pickle_root, train_subset=10)  # a subset must not change the statistics either
    raw = sources.load(pickle_root)
    train = raw.train_x[make_dm(pickle_root).train_idx] / 255.0
    np.testing.assert_allclose(dm.mean.numpy(), train.mean(axis=(0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(dm.std.numpy(), train.std(axis=(0, 1, 2)), atol=1e-5)
    everything = np.concatenate([raw.train_x, raw.test_x]) / 255.0
    assert not np.allclose(dm.mean.numpy(), everything.mean(axis=(0, 1, 2)), atol=1e-5)


def test_channel_stats_matches_numpy():
    x = torch.randint(0, 256, (37, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(x)
    ref = x.double().div(255)
    torch.testing.assert_close(mean, ref.mean((0, 2, 3)).float())
    torch.testing.assert_close(std, ref.std((0, 2, 3), unbiased=False).float())


def test_loader_serves_whole_uint8_batches_and_each_image_once(pickle_root):
    dm = make_dm(pickle_root, batch_size=32)
    seen = []
    for x, y in dm.train_dataloader():
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32) and len(x) <= 32
        seen.append(y)
    assert len(seen) == 5
    assert np.bincount(torch.cat(seen).numpy()).tolist() == [16] * 10


def test_batch_transfer_normalizes_with_train_stats(pickle_root):
    dm = make_dm(pickle_root)
    x, y = next(iter(dm.val_dataloader()))
    out, out_y = dm.on_after_batch_transfer((x, y), 0)
    assert out.dtype == torch.float32 and out.shape == x.shape
    expected = (x.float() / 255 - dm.mean.view(1, 3, 1, 1)) / dm.std.view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected)
    assert torch.equal(out_y, y)


# --- the decode cache --------------------------------------------------------------------------------------------


def test_cache_is_written_then_used(fresh_folder, monkeypatch):
    first = sources.load(fresh_folder)
    assert (fresh_folder / decode_cache.CACHE_NAME).is_file()
    monkeypatch.setattr(images, "decode", lambda *args: pytest.fail("decoded although the cache is fresh"))
    again = sources.load(fresh_folder)
    np.testing.assert_array_equal(first.train_x, again.train_x)


def test_stale_cache_is_rebuilt(fresh_folder):
    sources.load(fresh_folder)
    victim = sorted((fresh_folder / "train" / "cat").iterdir())[0]
    Image.new("RGB", (32, 32), (255, 0, 0)).save(victim)
    with pytest.warns(UserWarning, match="stale"):
        raw = sources.load(fresh_folder)
    assert raw.train_x[raw.train_y == raw.classes.index("cat")][0, 0, 0].tolist() == [255, 0, 0]


def test_corrupted_cache_is_rebuilt(fresh_folder):
    good = sources.load(fresh_folder)
    (fresh_folder / decode_cache.CACHE_NAME).write_bytes(b"not a cache")
    with pytest.warns(UserWarning, match="unreadable"):
        raw = sources.load(fresh_folder)
    np.testing.assert_array_equal(raw.train_x, good.train_x)


def test_on_device_is_a_no_op_on_the_cpu_and_refuses_workers(pickle_root):
    dm = make_dm(pickle_root, on_device=True)
    assert dm.train_set.x.device.type == "cpu"
    with pytest.raises(DataError, match="on_device=true needs data.num_workers=0"):
        CIFAR10DataModule(str(pickle_root), on_device=True, num_workers=2)


def test_keep_classes_selects_and_relabels_in_the_given_order(pickle_root):
    dm = CIFAR10DataModule(str(pickle_root), download=False, keep_classes=["truck", "cat", "ship"])
    assert dm.num_classes == 3 and dm.classes == ("truck", "cat", "ship")
    dm.setup("fit")
    full = CIFAR10DataModule(str(pickle_root), download=False)
    full.setup("fit")
    for split in ("train_set", "val_set", "test_set"):
        labels = getattr(dm, split).y
        assert set(labels.tolist()) == {0, 1, 2}
    # the test images labelled 0 are exactly the full test set's trucks (class 9)
    assert torch.equal(dm.test_set.x[dm.test_set.y == 0], full.test_set.x[full.test_set.y == 9])
    assert len(dm.test_set) == int(sum((full.test_set.y == c).sum() for c in (9, 3, 8)))


@pytest.mark.parametrize("keep", [["cat", "unicorn"], ["cat"], ["cat", "cat"]])
def test_bad_keep_classes_is_a_clear_error(pickle_root, keep):
    with pytest.raises(DataError, match=r"data.keep_classes=.*at least 2 distinct classes of \['airplane'"):
        _ = CIFAR10DataModule(str(pickle_root), download=False, keep_classes=keep).num_classes

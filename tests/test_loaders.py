"""Whole-batch serving of in-memory images: tensor index batches, exact seeded shuffling, any sampler."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler, SubsetRandomSampler

from cifarlit.data.loaders import ArrayDataset, EvalBatchSampler, TensorBatchSampler, TrainBatchSampler, whole_batch


def dataset(n: int = 103) -> ArrayDataset:
    # image i is filled with i % 256 and labelled i, so a batch says exactly which images it holds
    x = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    return ArrayDataset(x, torch.arange(n))


@pytest.mark.parametrize("batch_size", [1, 10, 64, 103, 500])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_index_once_per_epoch_in_tensor_batches(batch_size, drop_last):
    ds = dataset()
    sampler = TensorBatchSampler(RandomSampler(ds), batch_size, drop_last)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert all(isinstance(b, torch.Tensor) and b.dtype == torch.long for b in batches)
    assert all(len(b) == batch_size for b in batches[: len(batches) - (not drop_last)])
    seen = torch.cat(batches).tolist() if batches else []
    assert len(seen) == len(set(seen))
    expected = len(ds) - (len(ds) % batch_size if drop_last else 0)
    assert len(seen) == expected and set(seen) <= set(range(len(ds)))


# None: a whole permutation (drawn as one tensor); 50 and 250: fewer or more than the 103 images (torch's own order)
@pytest.mark.parametrize("num_samples", [None, 50, 250])
def test_shuffle_is_exactly_torchs_random_sampler_under_the_same_seed(num_samples):
    ds = dataset()
    torch.manual_seed(7)
    theirs = [list(RandomSampler(ds, num_samples=num_samples)) for _ in range(3)]  # three epochs
    torch.manual_seed(7)
    sampler = TensorBatchSampler(RandomSampler(ds, num_samples=num_samples), 16, drop_last=False)
    ours = [torch.cat(list(sampler)).tolist() for _ in range(3)]
    assert ours == theirs and len(ours[0]) == (num_samples or len(ds))
    assert ours[0] != ours[1]  # a new order every epoch


def test_sequential_and_other_samplers_keep_their_order():
    ds = dataset()
    assert torch.cat(list(TensorBatchSampler(SequentialSampler(ds), 10, False))).tolist() == list(range(103))
    subset = SubsetRandomSampler([5, 3, 99, 0], generator=torch.Generator().manual_seed(0))
    order = list(iter(SubsetRandomSampler([5, 3, 99, 0], generator=torch.Generator().manual_seed(0))))
    assert torch.cat(list(TensorBatchSampler(subset, 3, False))).tolist() == order


def test_wraps_a_distributed_sampler_into_disjoint_shards():
    # what Lightning does under DDP: re-creates the batch sampler around a DistributedSampler
    ds = dataset(100)
    shards = []
    for rank in (0, 1):
        sampler = TensorBatchSampler(DistributedSampler(ds, num_replicas=2, rank=rank, seed=3), 8, False)
        shards.append(torch.cat(list(sampler)).tolist())
    assert len(shards[0]) == len(shards[1]) == 50
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(100))


def test_loader_hands_out_the_images_the_indices_name():
    ds = dataset()
    loader = DataLoader(ds, batch_sampler=TensorBatchSampler(RandomSampler(ds), 32, False), collate_fn=whole_batch)
    for x, y in loader:
        assert x.shape[1:] == (3, 4, 4) and x.dtype == torch.uint8
        assert torch.equal(x[:, 0, 0, 0], (y % 256).to(torch.uint8))
    x, y = ds.__getitems__([4, 2])  # a plain list of indices works too
    assert y.tolist() == [4, 2] and x[:, 0, 0, 0].tolist() == [4, 2]
    x0, y0 = ds[9]
    assert x0.shape == (3, 4, 4) and int(y0) == 9


@pytest.mark.parametrize(
    ("n", "batch_size", "dropped"), [(103, 51, 1), (103, 34, 1), (103, 10, 0), (1, 1, 0), (1, 8, 0)]
)
def test_training_leaves_out_a_last_batch_of_one_image(n, batch_size, dropped):
    sampler = TrainBatchSampler(RandomSampler(dataset(n)), batch_size, drop_last=False)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sum(len(b) for b in batches) == n - dropped
    assert len(batches) == 1 or min(len(b) for b in batches) > 1  # BatchNorm can always normalize a batch


@pytest.mark.parametrize(("n", "world", "batch_size"), [(15, 2, 4), (103, 2, 10), (100, 3, 1000), (3, 2, 1)])
def test_eval_shards_hold_every_image_once_in_as_many_batches(n, world, batch_size):
    ds = dataset(n)
    shards = []
    for rank in range(world):
        sampler = EvalBatchSampler(DistributedSampler(ds, world, rank, shuffle=False), batch_size, drop_last=False)
        batches = list(sampler)
        assert len(batches) == len(sampler) and all(len(b) <= batch_size for b in batches)
        shards.append(batches)
    assert len({len(batches) for batches in shards}) == 1  # a per-batch collective lines up on every process
    seen = sorted(i for batches in shards for b in batches for i in b.tolist())
    assert seen == list(range(n))  # DistributedSampler alone would repeat images to even out the shards


def test_a_batchnorm_mlp_trains_when_the_last_batch_holds_one_image(pickle_root, tmp_path, monkeypatch):
    from helpers import REPO, run_cli

    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "-c", str(REPO / "configs" / "default.yaml"), "--data.data_dir", str(pickle_root),
                  "--data.val_size", "56", "--model.norm", "batch", "--data.batch_size", "143",
                  "--trainer.max_epochs", "2")  # fmt: skip
    assert len(cli.datamodule.train_set) == 144 and cli.trainer.global_step == 2  # one step per epoch
    assert torch.isfinite(cli.trainer.callback_metrics["test/loss"])

"""The benchmarks still run: `make bench` is only useful if it works on a fresh clone (timings are not checked)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of scripts, not part of the package

from benchmarks import augment_cost, common, loop_overhead, plain_loop, startup  # noqa: E402

pytestmark = pytest.mark.slow  # each run is a fresh `cifarlit fit` process (~10 s of startup apiece)


def test_loop_overhead_compares_cifarlit_and_barebones_lightning_with_the_plain_loops(pickle_root):
    rows = loop_overhead.run(str(pickle_root), epochs=2, batch_sizes=(32,), repeats=1)
    assert [r["benchmark"] for r in rows] == [
        "loop_overhead bs=32",
        "loop_overhead bs=32, like for like",
        "loop_overhead bs=32, Lightning barebones vs like for like",
    ]
    assert rows[0]["cifarlit img/s"] > 0 and all(r["ratio (cifarlit/plain time)"] > 0 for r in rows)


def test_augment_cost_reports_each_backend(pickle_root):
    rows = augment_cost.run(str(pickle_root), epochs=2)
    assert len(rows) == 4 and all(r["ratio (aug/no-aug time)"] > 0 for r in rows)


def test_startup_times_the_first_step(pickle_root):
    (row,) = startup.run(str(pickle_root), repeats=1)
    assert 0 < row["seconds"] < 300


def test_plain_loop_trains_the_same_split_and_reports_every_epoch(pickle_root, tmp_path):
    split = tmp_path / "split.pt"
    n_train = plain_loop.export_split(str(pickle_root), split)
    assert n_train == len(torch.load(split, weights_only=True)["train"][1]) == 160
    for like in (False, True):
        assert len(common.plain_epochs(split, 16, 3, like_cifarlit=like)) == 3


def test_synthetic_data_has_cifars_layout(tmp_path):
    root = common.synthetic(tmp_path / "synthetic", n_train=50, n_test=10)
    from cifarlit import sources

    raw = sources.load(root)
    assert raw.train_x.shape == (50, 32, 32, 3) and raw.test_x.shape == (10, 32, 32, 3)

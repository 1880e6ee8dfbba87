"""The benchmarks still run and report consistent figures: `make bench` is only useful if it works on a fresh clone.

Timings themselves are never asserted; what is checked is that each row says what it measured: its name and keys,
a ratio that is the quotient of the figures printed beside it (to the precision they are printed with), and a
fastest epoch that is no slower than any epoch reported.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of scripts, not part of the package

from benchmarks import (  # noqa: E402
    augment_cost,
    common,
    loop_overhead,
    plain_loop,
    serve_load,
    startup,
    step_overhead,
    stream_cost,
)

pytestmark = pytest.mark.slow  # each run is a fresh `cifarlit fit` process (~10 s of startup apiece)

ROW_KEYS = {"benchmark", "target", "detail"}


def shown(text: str) -> tuple[float, float]:
    """The interval a printed number stands for: '1.30' is [1.295, 1.305], '4661' is [4660.5, 4661.5]."""
    half = 0.5 * 10 ** -len(text.partition(".")[2])
    return float(text) - half, float(text) + half


def assert_quotient(ratio: float, numerator: tuple[float, float], denominator: tuple[float, float]) -> None:
    """``ratio`` (rounded to 3 decimals) is numerator / denominator for some values in the printed intervals."""
    low = numerator[0] / denominator[1]
    high = numerator[1] / denominator[0] if denominator[0] > 0 else math.inf
    assert low - 5e-4 <= ratio <= high + 5e-4, f"{ratio} is not {numerator} / {denominator}"


def spreads(detail: str) -> dict[str, tuple[str, str]]:
    """``'s/epoch cifarlit 1.30-1.35; plain 1.04-1.05'`` -> {'cifarlit': ('1.30', '1.35'), 'plain': (...)}, each kind's
    fastest and slowest epoch; the fastest is no slower than any."""
    found = dict((kind, (fast, slow)) for kind, fast, slow in re.findall(r"(\w+) ([\d.]+)-([\d.]+)", detail))
    for kind, (fast, slow) in found.items():
        assert float(fast) <= float(slow), f"{kind}: the fastest epoch {fast} is slower than {slow}"
    return found


def figure(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in {text!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def n_train(pickle_root, tmp_path_factory) -> int:
    """Training images in the benchmarks' split of the fixture data."""
    return plain_loop.export_split(str(pickle_root), tmp_path_factory.mktemp("split") / "split.pt")


def test_loop_overhead_compares_cifarlit_and_barebones_lightning_with_the_plain_loops(pickle_root, n_train):
    rows = loop_overhead.run(str(pickle_root), epochs=2, batch_sizes=(32,), repeats=1)
    assert [r["benchmark"] for r in rows] == [
        "loop_overhead bs=32",
        "loop_overhead bs=32, like for like",
        "loop_overhead bs=32, Lightning barebones vs like for like",
    ]
    ratio = "ratio (cifarlit/plain time)"
    assert set(rows[0]) == ROW_KEYS | {"plain img/s", "cifarlit img/s", ratio}
    assert set(rows[1]) == set(rows[2]) == ROW_KEYS | {ratio}
    assert "fastest of 1x2 epochs" in rows[0]["detail"]
    epochs = spreads(rows[0]["detail"])
    assert set(epochs) == {"cifarlit", "plain", "like", "barebones"}
    fastest = {kind: shown(fast) for kind, (fast, _) in epochs.items()}
    for kind in ("cifarlit", "plain"):  # images per second of the fastest epoch
        speed = rows[0][f"{kind} img/s"]
        assert n_train / fastest[kind][1] - 0.5 <= speed <= n_train / fastest[kind][0] + 0.5, (kind, speed)
    per_image = {kind: (1 / (rows[0][f"{kind} img/s"] + 0.5), 1 / (rows[0][f"{kind} img/s"] - 0.5)) for kind in
                 ("cifarlit", "plain")}  # fmt: skip
    assert_quotient(rows[0][ratio], per_image["cifarlit"], per_image["plain"])
    assert_quotient(rows[0][ratio], fastest["cifarlit"], fastest["plain"])
    for row, kind in ((rows[1], "like"), (rows[2], "barebones")):  # each names its reference's fastest epoch
        assert figure(r"\(([\d.]+) s/epoch\)", row["detail"]) == epochs[kind][0]
    assert_quotient(rows[1][ratio], fastest["cifarlit"], fastest["like"])
    assert_quotient(rows[2][ratio], fastest["barebones"], fastest["like"])


def test_step_overhead_reports_cpu_time_ratios_per_step(pickle_root, n_train):
    rows = step_overhead.run(str(pickle_root), epochs=2, repeats=1)
    assert [r["benchmark"] for r in rows] == [
        "step_overhead linear bs=32, cifarlit vs barebones (CPU time)",
        "step_overhead linear bs=32, cifarlit vs plain loop (CPU time)",
    ]
    assert all(set(row) == ROW_KEYS | {"ratio"} for row in rows)
    first, second = (row["detail"] for row in rows)
    cifarlit, barebones = (shown(t) for t in re.search(r"(\d+) vs (\d+) us of CPU per step", first).groups())
    plain = shown(figure(r"(\d+) us of CPU per step", second))
    steps = int(figure(r"epoch / (\d+) steps", first))
    assert steps == math.ceil(n_train / 32) and "fastest of 1x2 epochs" in first
    assert_quotient(rows[0]["ratio"], cifarlit, barebones)
    assert_quotient(rows[1]["ratio"], cifarlit, plain)
    epochs = spreads(figure(r"CPU s/epoch (.*?); wall", first))
    assert set(epochs) == {"cifarlit", "barebones", "plain"}
    for kind, per_step in (("cifarlit", cifarlit), ("barebones", barebones), ("plain", plain)):
        fast = shown(epochs[kind][0])  # the per-step figure is the fastest epoch's CPU time over its steps
        assert fast[0] - 1e-9 <= per_step[1] * steps / 1e6 and per_step[0] * steps / 1e6 <= fast[1] + 1e-9, kind
    for row in rows:
        assert float(figure(r"wall-time ratio ([\d.]+)", row["detail"])) > 0


def test_augment_cost_reports_each_backend(pickle_root):
    rows = augment_cost.run(str(pickle_root), epochs=2)
    assert [r["benchmark"] for r in rows] == [
        "augment_cost batched (course preset)",
        *(f"augment_cost albumentations workers={w}" for w in (0, 1, 2)),
    ]
    ratio = "ratio (aug/no-aug time)"
    assert all(set(row) == ROW_KEYS | {ratio} for row in rows)
    times = re.fullmatch(r"([\d.]+)s vs ([\d.]+)s / ([\d.]+)s per epoch", rows[0]["detail"])
    assert times, rows[0]["detail"]
    batched, plain, plain_again = times.groups()
    base = min((plain, plain_again), key=float)  # the faster of the no-augmentation runs before and after
    assert_quotient(rows[0][ratio], shown(batched), shown(base))
    for row in rows[1:]:
        assert_quotient(row[ratio], shown(figure(r"^([\d.]+)s per epoch$", row["detail"])), shown(base))


def test_startup_times_the_first_step(pickle_root):
    (row,) = startup.run(str(pickle_root), repeats=2)
    assert row["benchmark"] == "startup (fit -> first step, cached data)" and set(row) == ROW_KEYS | {"seconds"}
    runs = [shown(t) for t in re.findall(r"([\d.]+)s", figure(r"^runs: (.*)$", row["detail"]))]
    assert len(runs) == 2
    fastest = min(runs)  # the reported seconds are the fastest run's
    assert fastest[0] - 0.005 <= row["seconds"] <= fastest[1] + 0.005
    assert all(row["seconds"] <= slow + 0.005 for _, slow in runs)


def test_stream_cost_compares_epochs_and_the_peak_memory_of_1x_and_5x_streams(pickle_root, tmp_path):
    rows = stream_cost.run(str(pickle_root), epochs=2, rounds=1, streams=tmp_path)
    assert [r["benchmark"] for r in rows] == [
        "stream_cost epoch (stream / in-memory)",
        "stream_cost peak RSS (train split 5x / 1x)",
    ]
    assert all(set(row) == ROW_KEYS | {"ratio"} for row in rows)
    epochs = spreads(rows[0]["detail"])
    assert set(epochs) == {"streamed", "memory"} and "fastest of 2 / 2 epochs" in rows[0]["detail"]
    assert_quotient(rows[0]["ratio"], shown(epochs["streamed"][0]), shown(epochs["memory"][0]))
    five, one = (shown(t) for t in re.match(r"(\d+) MB vs (\d+) MB", rows[1]["detail"]).groups())
    assert_quotient(rows[1]["ratio"], five, one)
    assert "1x written in" in rows[1]["detail"] and "5x written in" in rows[1]["detail"]
    sizes = [json.loads((p / "cifarlit-stream.json").read_text())["sizes"]["train"] for p in sorted(tmp_path.iterdir())]
    assert sizes == [160, 800]  # the training split once, and five times


def test_plain_loop_trains_the_same_split_and_reports_every_epoch(pickle_root, tmp_path):
    from cifarlit.data.datamodule import CIFAR10DataModule

    split_path = tmp_path / "split.pt"
    n_train = plain_loop.export_split(str(pickle_root), split_path)
    split = torch.load(split_path, weights_only=True)
    dm = CIFAR10DataModule(str(pickle_root), download=False, val_size=0.2)  # what `cifarlit fit` trains on
    dm.setup("fit")
    assert n_train == len(split["train"][1]) == len(dm.train_set) and len(split["val"][1]) == len(dm.val_set)
    for part, ds in (("train", dm.train_set), ("val", dm.val_set)):  # the same images, in the same order
        assert torch.equal(split[part][0], ds.x) and torch.equal(split[part][1], ds.y)
    torch.testing.assert_close(split["mean"], dm.mean)
    torch.testing.assert_close(split["std"], dm.std)
    for like in (False, True):
        out = common.plain_run(split_path, 16, 3, like_cifarlit=like)
        assert len(common.markers(out, "EPOCH_SECONDS")) == len(common.markers(out, "EPOCH_CPU_SECONDS")) == 3
        (val_acc,) = common.markers(out, "VAL_ACC")
        correct = val_acc * len(dm.val_set)  # the val pass counts every val image once
        assert 0 <= val_acc <= 1 and abs(correct - round(correct)) < 1e-6


def test_synthetic_data_has_cifars_layout(tmp_path):
    root = common.synthetic(tmp_path / "synthetic", n_train=50, n_test=10)
    from cifarlit.data import sources

    raw = sources.load(root)
    assert raw.train_x.shape == (50, 32, 32, 3) and raw.test_x.shape == (10, 32, 32, 3)


def test_every_trick_is_timed_against_the_plain_way_with_a_verdict():
    from benchmarks import tricks

    rows = tricks.run()
    assert len(rows) == 10 and all(r["benchmark"].startswith("trick: ") for r in rows)
    for row in rows:
        fast, slow = (float(v) for v in row["detail"].split(" ", 3)[0:3:2])
        assert row["ratio (plain/trick time)"] == pytest.approx(slow / fast, rel=0.02)  # from the printed figures
        noise = float(row["detail"].rsplit("noise ", 1)[1].rstrip("%")) / 100
        assert row["verdict"] == ("keep" if slow / fast - 1 > noise else "no measurable gain: remove")


def test_cpu_precision_times_bf16_against_fp32_for_each_cnn(monkeypatch):
    from benchmarks import cpu_precision, tricks

    monkeypatch.setattr(cpu_precision, "BATCH", 8)
    monkeypatch.setattr(tricks, "ROUNDS", 3)
    rows = cpu_precision.run()
    assert [r["benchmark"].split(": ")[0] for r in rows] == ["cpu_precision", "cpu_precision"]
    for row in rows:
        fast, slow = (float(v) for v in row["detail"].split(" ", 3)[0:3:2])
        assert row["ratio (plain/trick time)"] == pytest.approx(slow / fast, rel=0.02)


def test_serve_load_reports_batched_vs_unbatched_and_in_process_onnxruntime(own_run, tmp_path):
    from conftest import write_unlabelled_folder

    write_unlabelled_folder(tmp_path / "images")
    rows = serve_load.run(requests=50, clients=4, rounds=1, ckpt_path=own_run.ckpt, images=tmp_path / "images")
    assert [r["benchmark"] for r in rows] == [
        "serve_load torch: batched (max_batch_size 64) vs unbatched (1)",
        "serve_load onnx: batched (max_batch_size 64) vs unbatched (1)",
        "serve_load onnxruntime in-process vs served onnx batched",
    ]
    figures = r"(\d+) req/s, p50 ([\d.]+) ms, p99 ([\d.]+) ms, CPU ([\d.]+) ms/request"
    for row in rows[:2]:
        assert set(row) == ROW_KEYS | {"ratio (batched/unbatched req/s)", "ratio (batched/unbatched server CPU)"}
        (batched, *_, batched_cpu), (unbatched, *_, unbatched_cpu) = re.findall(figures, row["detail"])
        assert_quotient(row["ratio (batched/unbatched req/s)"], shown(batched), shown(unbatched))
        assert_quotient(row["ratio (batched/unbatched server CPU)"], shown(batched_cpu), shown(unbatched_cpu))
        assert float(figure(r"([\d.]+) images per forward pass", row["detail"])) >= 1
        assert "50 requests from 4 clients, 9 images, best of 1; load average" in row["detail"]
        for p50, p99 in re.findall(r"p50 ([\d.]+) ms, p99 ([\d.]+) ms", row["detail"]):
            assert float(p50) <= float(p99)
    last = rows[2]
    assert set(last) == ROW_KEYS | {"ratio (in-process/served req/s)", "ratio (served/in-process CPU)"}
    (local, *_, local_cpu), (served, *_, served_cpu) = re.findall(figures, last["detail"])
    assert_quotient(last["ratio (in-process/served req/s)"], shown(local), shown(served))
    assert_quotient(last["ratio (served/in-process CPU)"], shown(served_cpu), shown(local_cpu))
    assert "labels agree on 9/9 images" in last["detail"]  # the server and onnxruntime label every image alike

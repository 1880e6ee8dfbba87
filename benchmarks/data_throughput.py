"""Images per second out of the training loader alone (no model), and the image-folder cache cold vs warm."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import Stopwatch
from cifarlit.data import sources
from cifarlit.data.augment import AugmentConfig
from cifarlit.data.datamodule import CIFAR10DataModule


class _Training:
    training = True  # stands in for the trainer so on_after_batch_transfer augments


def loader_images_per_second(data: str, backend: str, workers: int, preset: str = "course") -> float:
    dm = CIFAR10DataModule(data, download=False, num_workers=workers, persistent_workers=workers > 0,
                           augment=AugmentConfig(preset=preset, backend=backend))  # fmt: skip
    dm.setup("fit")
    dm.trainer = _Training()
    n, start = 0, time.perf_counter()
    for batch in dm.train_dataloader():
        x, _ = dm.on_after_batch_transfer(batch, 0)  # where the batched backend does its work
        n += len(x)
    return n / (time.perf_counter() - start)


def run(data: str) -> list[dict]:
    rows = []
    for backend, workers in (("none", 0), ("batched", 0), ("albumentations", 0), ("albumentations", 2)):
        preset = "none" if backend == "none" else "course"
        rate = loader_images_per_second(data, "batched" if backend == "none" else backend, workers, preset)
        rows.append({"benchmark": f"data_throughput {backend} workers={workers}", "images/s": round(rate)})
    root = Path(data)
    if sources.detect_format(root) == "folder":
        with Stopwatch() as cold:
            sources.load(root, cache=False)
        with Stopwatch() as warm:
            sources.load(root, cache=True)
        rows.append({
            "benchmark": "image-folder load cold (decode) vs warm (cache)",
            "ratio (cold/warm)": round(cold.seconds / warm.seconds, 1),
            "detail": f"cold {cold.seconds:.1f}s, warm {warm.seconds:.2f}s",
        })  # fmt: skip
    return rows

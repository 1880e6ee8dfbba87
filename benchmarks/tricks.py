"""Each speed trick in cifarlit's code against the plain way it replaced, timed side by side in one process.

python benchmarks/tricks.py        (also part of `make bench`)

A trick stays only while it pays more than the run-to-run noise: every pair is timed in alternating rounds, each
figure is the fastest round, and the noise is how far the trick's own rounds spread. The code keeps a one-line
reason and points here; the figures live in benchmarks/README.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

ROUNDS, REPEATS = 7, 30


def best_of(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def compare(name: str, trick: Callable, plain: Callable, unit: str = "ms", repeats: int = REPEATS) -> dict:
    """The fastest round of each, alternating, and whether the trick's gain is larger than its own spread."""
    times: dict[str, list[float]] = {"trick": [], "plain": []}
    for i in range(ROUNDS):
        for kind, fn in (("trick", trick), ("plain", plain)) if i % 2 == 0 else (("plain", plain), ("trick", trick)):
            times[kind].append(best_of(fn, repeats))
    fast, slow = min(times["trick"]), min(times["plain"])
    noise = sorted(times["trick"])[ROUNDS // 2] / fast - 1  # median round over the fastest: this run's spread
    scale = 1e3 if unit == "ms" else 1e6
    return {
        "benchmark": f"trick: {name}",
        "ratio (plain/trick time)": round(slow / fast, 2),
        "verdict": "keep" if slow / fast - 1 > noise else "no measurable gain: remove",
        "detail": f"{fast * scale:.3g} vs {slow * scale:.3g} {unit}; noise {noise:.0%}",
    }


def run(data: str | None = None) -> list[dict]:
    torch.manual_seed(0)
    rows = []
    x512 = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8)
    idx = torch.randperm(40000)[:512]
    big = torch.randint(0, 256, (40000, 3, 32, 32), dtype=torch.uint8)
    rows.append(compare("batch by index_select, not x[idx] (512 of 40,000 images)",
                        lambda: big.index_select(0, idx), lambda: big[idx]))  # fmt: skip

    from cifarlit.data.split import normalizer

    scale, shift = normalizer(torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26]))
    mean, std = torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1), torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1)
    rows.append(compare("normalize with mul_ + add_, not (x / 255 - mean) / std (512 images)",
                        lambda: x512.float().mul_(scale).add_(shift),
                        lambda: (x512.float() / 255 - mean) / std))  # fmt: skip

    from cifarlit.data.augment import AugmentConfig, batch_crop, select_apply

    x64 = torch.rand(64, 3, 32, 32)
    cfg = AugmentConfig(preset="crop_flip")

    def affine_grid_crop(x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        r = torch.rand(b, 2)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, 0, 2] = (torch.floor(r[:, 1] * 9) - 4) * 2 / w
        theta[:, 1, 2] = (torch.floor(r[:, 0] * 9) - 4) * 2 / h
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    rows.append(compare("crop grid built from two coordinate rows, not F.affine_grid (64 images)",
                        lambda: batch_crop(x64.clone(), cfg), lambda: affine_grid_crop(x64.clone())))  # fmt: skip
    chosen = torch.rand(64) < 0.5
    rows.append(compare("CPU: flip the chosen images by index, not a whole-batch torch.where (64 images)",
                        lambda: select_apply(x64.clone(), chosen, lambda im: im.flip(-1), by_index=True),
                        lambda: select_apply(x64.clone(), chosen, lambda im: im.flip(-1), by_index=False)))  # fmt: skip
    rows.append(compare("one random draw per augmentation, not one per parameter (4 x 64 numbers)",
                        lambda: torch.rand(64, 4), lambda: [torch.rand(64) for _ in range(4)], unit="us"))  # fmt: skip

    from torchmetrics import MeanMetric

    metric, tally = MeanMetric(), []
    loss = torch.tensor(1.0)
    rows.append(compare("per-step metrics as a list append, not a torchmetrics update per step",
                        lambda: tally.append((loss, loss, 64)), lambda: metric.update(loss, weight=64),
                        unit="us", repeats=1000))  # fmt: skip
    tally.clear()

    from cifarlit.models.nets import MLP, SmallCNN

    for fused in (True, None):
        model = MLP(10, (3, 32, 32), [100, 100])
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        if fused:
            fused_step = torch.optim.Adam(model.parameters(), fused=True).step
        else:
            default_step = torch.optim.Adam(model.parameters()).step
    rows.append(compare("fused Adam step, not the default (3072-100-100-10 MLP)", fused_step, default_step))

    import lightning  # noqa: F401 -- sets PYTORCH_NVML_BASED_CUDA_CHECK=1, as in every cifarlit process

    def without_nvml_check():
        saved = os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
        try:
            fused_step()
        finally:
            if saved is not None:
                os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = saved

    rows.append(compare("CPU: optimizer step without Lightning's NVML-based CUDA check",
                        without_nvml_check, fused_step))  # fmt: skip

    cnn, xb = SmallCNN(10), torch.randn(128, 3, 32, 32)
    contiguous = SmallCNN(10).to(memory_format=torch.contiguous_format)
    contiguous.forward = lambda x: contiguous.head(contiguous.features(x))  # the same net, plain layout
    rows.append(compare("SmallCNN in channels_last, not contiguous (forward + backward, 128 images)",
                        lambda: cnn(xb).sum().backward(), lambda: contiguous(xb).sum().backward(),
                        repeats=3))  # fmt: skip

    from cifarlit.data.split import channel_stats

    rows.append(compare("channel statistics by uint8 bincount, not through an int64 copy (40,000 images)",
                        lambda: channel_stats(big),
                        lambda: [torch.bincount(big[:, c].reshape(-1).long(), minlength=256) for c in range(3)],
                        repeats=1))  # fmt: skip
    return rows


if __name__ == "__main__":
    for row in run():
        print(row, flush=True)

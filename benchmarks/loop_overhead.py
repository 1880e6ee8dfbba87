"""Plain PyTorch loop vs cifarlit's Trainer.fit on the same MLP, data, batch size and epochs.

Both train the default 3072-100-100-10 MLP with Adam on the 40,000-image split and run the 10,000-image val
pass every epoch; startup (imports, loading, the sanity check) is excluded from both. The ratio is the price of
the framework: Lightning's hooks, metrics, logger, checkpointing and progress bar of the default config.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback

from benchmarks.common import cifarlit_cli
from cifarlit.model import MLP


class FitTimer(Callback):
    """Wall time from the first training step's epoch to the end of the last epoch (val included)."""

    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def plain_loop(dm, batch_size: int, epochs: int, device: str = "cpu") -> float:
    """The benchmark's reference: in-memory normalized float tensors, no framework."""
    mean, std = dm.mean.view(1, 3, 1, 1).to(device), dm.std.view(1, 3, 1, 1).to(device)
    x = (dm.train_set.x.to(device).float() / 255 - mean) / std
    y = dm.train_set.y.to(device)
    vx = (dm.val_set.x.to(device).float() / 255 - mean) / std
    vy = dm.val_set.y.to(device)
    torch.manual_seed(0)
    model = MLP(3072, [100, 100], 10).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), device=device).split(batch_size):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(vy), 1000):
                correct += (model(vx[i : i + 1000]).argmax(1) == vy[i : i + 1000]).sum()
        correct.item()
    return time.perf_counter() - start


def cifarlit_fit(data: str, batch_size: int, epochs: int) -> tuple[float, object]:
    cli = cifarlit_cli([
        "--data.data_dir", data, "--data.batch_size", str(batch_size), "--trainer.max_epochs", str(epochs),
        "--trainer.accelerator", "cpu", "--trainer.enable_model_summary", "false",
    ])  # fmt: skip
    timer = FitTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    return timer.seconds, cli.datamodule


def run(data: str, epochs: int = 3, batch_sizes=(64, 512)) -> list[dict]:
    rows = []
    for bs in batch_sizes:
        lit, dm = cifarlit_fit(data, bs, epochs)  # also sets up the data the plain loop reuses
        plain = plain_loop(dm, bs, epochs)
        lit2, _ = cifarlit_fit(data, bs, epochs)  # plain sandwiched between two: drift on a shared machine shows
        images = epochs * len(dm.train_set)
        best = min(lit, lit2)
        rows.append({
            "benchmark": f"loop_overhead bs={bs}",
            "plain img/s": round(images / plain), "cifarlit img/s": round(images / best),
            "ratio (cifarlit/plain time)": round(best / plain, 3),
            "target": "<= 1.10" if bs == 64 else "<= 1.05",
            "detail": f"{epochs} epochs; cifarlit runs {lit:.1f}s / {lit2:.1f}s, plain {plain:.1f}s",
        })  # fmt: skip
    return rows

"""The reference: a plain PyTorch loop over in-memory tensors, in a process that never imports Lightning.

python benchmarks/plain_loop.py SPLIT.pt --batch_size 64 --epochs 3 [--device cpu]

Trains the same 3072-100-100-10 MLP with ``torch.optim.Adam(lr=1e-3)`` (torch's defaults, as a plain loop would
write it) on the train split of SPLIT.pt (written by :func:`export_split`: the images of cifarlit's own split,
normalized up front), running the val pass after each epoch and printing ``EPOCH_SECONDS <s>``. ``--like_cifarlit``
uses what cifarlit's defaults use instead (fused Adam, uint8 batches by ``index_select`` normalized per batch),
so the ratio against it is Lightning's own cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from cifarlit.nets import MLP  # noqa: E402  (torch only: no Lightning in this process)


def export_split(data: str, path: Path) -> int:
    """Saves cifarlit's default train/val split of ``data`` (uint8 tensors and the train statistics) to ``path``
    for the plain loop; returns the number of training images."""
    from cifarlit.data import CIFAR10DataModule

    dm = CIFAR10DataModule(data, download=False)
    dm.setup("fit")
    torch.save({"train": (dm.train_set.x, dm.train_set.y), "val": (dm.val_set.x, dm.val_set.y),
                "mean": dm.mean, "std": dm.std}, path)  # fmt: skip
    return len(dm.train_set)


def train(split: dict, batch_size: int, epochs: int, device: str = "cpu", like_cifarlit: bool = False) -> list[float]:
    """Seconds of each epoch (training, then the val pass)."""
    mean, std = split["mean"].view(1, 3, 1, 1).to(device), split["std"].view(1, 3, 1, 1).to(device)
    (x, y), (vx, vy) = ((t.to(device) for t in split[part]) for part in ("train", "val"))
    scale, shift = 1 / (255 * std), -mean / std
    if not like_cifarlit:  # the whole set normalized once, batches by indexing
        x, vx = ((t.float() / 255 - mean) / std for t in (x, vx))
    torch.manual_seed(0)
    model = MLP(10, (3, 32, 32), [100, 100]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=like_cifarlit or None)

    def batch(source: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if not like_cifarlit:
            return source[idx]
        return source.index_select(0, idx).float().mul_(scale).add_(shift)

    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(y), device=device).split(batch_size):
            loss = F.cross_entropy(model(batch(x, idx)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        correct = torch.zeros((), dtype=torch.long, device=device)
        with torch.no_grad():
            for idx in torch.arange(len(vy), device=device).split(1000):
                correct += (model(batch(vx, idx)).argmax(1) == vy[idx]).sum()
        correct.item()  # the val accuracy reaches the host once per epoch, as a logged metric would
        times.append(time.perf_counter() - start)
        print(f"EPOCH_SECONDS {times[-1]}", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split", type=Path)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--like_cifarlit", action="store_true")
    args = parser.parse_args()
    split = torch.load(args.split, weights_only=True)
    train(split, args.batch_size, args.epochs, args.device, args.like_cifarlit)


if __name__ == "__main__":
    main()

"""The reference: a plain PyTorch loop over in-memory tensors, in a process that never imports Lightning.

python benchmarks/plain_loop.py SPLIT.pt --batch_size 64 --epochs 3 [--device cpu] [--net mlp|cnn]

``--net mlp`` trains the 3072-100-100-10 MLP (``--hidden_sizes`` for others) with ``torch.optim.Adam(lr=1e-3)``
(torch's defaults, as a plain loop would write it) on the train split of SPLIT.pt (written by
:func:`export_split`: the images of cifarlit's own split), normalized up front. ``--like_cifarlit`` uses what
cifarlit's defaults use instead (fused Adam, uint8 batches by ``index_select`` normalized per batch), so the
ratio against it is Lightning's own cost. ``--net cnn`` is ``configs/experiments/cnn.yaml`` by hand: SmallCNN,
fused AdamW with the per-step warm-up + cosine schedule, label smoothing and the batched crop-and-flip
augmentation on the device. Each epoch runs the val pass after training and prints ``EPOCH_SECONDS <s>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
# torch only: no Lightning in this process
from cifarlit.data.augment import AugmentConfig, BatchAugment  # noqa: E402
from cifarlit.models.nets import MLP, SmallCNN  # noqa: E402
from cifarlit.models.schedules import WarmupCosineLR  # noqa: E402


def export_split(data: str, path: Path, val_size: float = 0.2) -> int:
    """Saves cifarlit's train/val split of ``data`` (uint8 tensors and the train statistics) to ``path`` for the
    plain loop; returns the number of training images."""
    from cifarlit.data.datamodule import CIFAR10DataModule

    dm = CIFAR10DataModule(data, download=False, val_size=val_size)
    dm.setup("fit")
    torch.save({"train": (dm.train_set.x, dm.train_set.y), "val": (dm.val_set.x, dm.val_set.y),
                "mean": dm.mean, "std": dm.std}, path)  # fmt: skip
    return len(dm.train_set)


def train(
    split: dict,
    batch_size: int,
    epochs: int,
    device: str = "cpu",
    like_cifarlit: bool = False,
    net: str = "mlp",
    hidden_sizes: list[int] | None = None,
) -> list[float]:
    """Seconds of each epoch (training, then the val pass)."""
    mean, std = split["mean"].view(1, 3, 1, 1).to(device), split["std"].view(1, 3, 1, 1).to(device)
    (x, y), (vx, vy) = ((t.to(device) for t in split[part]) for part in ("train", "val"))
    scale, shift = 1 / (255 * std), -mean / std
    cnn = net == "cnn"
    like_cifarlit = like_cifarlit or cnn
    if not like_cifarlit:  # the whole set normalized once, batches by indexing
        x, vx = ((t.float() / 255 - mean) / std for t in (x, vx))
    torch.manual_seed(0)
    if cnn:
        model = SmallCNN(10, (3, 32, 32), [32, 64, 128]).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05, fused=True)
        steps = epochs * -(-len(y) // batch_size)
        schedule = WarmupCosineLR(opt, total_steps=steps, warmup_fraction=0.05)
        augment = BatchAugment(AugmentConfig(preset="crop_flip"))
    else:
        model = MLP(10, (3, 32, 32), [100, 100] if hidden_sizes is None else hidden_sizes).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=like_cifarlit or None)
        schedule = augment = None

    def batch(source: torch.Tensor, idx: torch.Tensor, train: bool = False) -> torch.Tensor:
        if not like_cifarlit:
            return source[idx]
        images = source.index_select(0, idx)
        if augment is not None and train:
            return augment(images.float().div_(255)).mul_(scale * 255).add_(shift)
        return images.float().mul_(scale).add_(shift)

    times = []
    for _ in range(epochs):
        start, cpu = time.perf_counter(), time.process_time()
        model.train()
        for idx in torch.randperm(len(y), device=device).split(batch_size):
            loss = F.cross_entropy(model(batch(x, idx, True)), y[idx], label_smoothing=0.1 if cnn else 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if schedule is not None:
                schedule.step()
        model.eval()
        correct = torch.zeros((), dtype=torch.long, device=device)
        with torch.no_grad():
            for idx in torch.arange(len(vy), device=device).split(1000):
                correct += (model(batch(vx, idx)).argmax(1) == vy[idx]).sum()
        correct.item()  # the val accuracy reaches the host once per epoch, as a logged metric would
        times.append(time.perf_counter() - start)
        print(f"EPOCH_SECONDS {times[-1]}", flush=True)
        print(f"EPOCH_CPU_SECONDS {time.process_time() - cpu}", flush=True)
    print(f"VAL_ACC {correct.item() / len(vy)}", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split", type=Path)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--like_cifarlit", action="store_true")
    parser.add_argument("--net", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--hidden_sizes", type=int, nargs="*", default=None, help="MLP widths (none: linear)")
    parser.add_argument("--matmul_precision", default="high", help="torch.set_float32_matmul_precision, as cifarlit")
    args = parser.parse_args()
    torch.set_float32_matmul_precision(args.matmul_precision)
    split = torch.load(args.split, weights_only=True)
    train(split, args.batch_size, args.epochs, args.device, args.like_cifarlit, args.net, args.hidden_sizes)


if __name__ == "__main__":
    main()

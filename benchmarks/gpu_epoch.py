"""Epoch time of the default MLP on a GPU: cifarlit's variants against a plain PyTorch loop on the same GPU.

python benchmarks/gpu_epoch.py [--data.data_dir <folder>] [--epochs 4] [--compile]

Each run is a fresh process; the figure is its fastest epoch (40,000 train + 10,000 val images).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.plain_loop import export_split  # noqa: E402

VARIANTS = [
    ("bs=64 fp32 (default config)", 64, []),
    ("bs=64 fp32 on_device", 64, ["--data.on_device", "true"]),
    ("bs=512 fp32 on_device", 512, ["--data.on_device", "true"]),
    ("bs=512 bf16-mixed on_device", 512, ["--data.on_device", "true", "--trainer.precision", "bf16-mixed"]),
    ("bs=64 course aug (batched) on_device", 64, ["--data.on_device", "true", "--data.augment.preset", "course"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data.data_dir", dest="data", default=None)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    data, _ = common.data_dir(args.data)
    variants = VARIANTS + (
        [("bs=512 compile on_device", 512, ["--data.on_device", "true", "--model.compile", "true"])]
        if args.compile
        else []
    )
    rows = []
    for name, bs, extra in variants:
        epochs = common.fit_epochs(str(data), "--trainer.accelerator", "gpu", "--data.batch_size", str(bs),
                                   "--trainer.max_epochs", str(args.epochs), *extra)  # fmt: skip
        rows.append((f"cifarlit {name}", min(epochs)))
    split = Path(tempfile.mkdtemp(prefix="cifarlit-bench-")) / "split.pt"
    export_split(str(data), split)
    for bs in (64, 512):
        for like in (False, True):
            epochs = common.plain_epochs(split, bs, args.epochs, like_cifarlit=like, device="cuda")
            rows.append((f"plain PyTorch loop bs={bs}{' (like cifarlit)' if like else ''}", min(epochs)))
    print(f"\nmachine: {common.machine()}\n")
    print("| run | fastest epoch, s (40k train + 10k val) |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()

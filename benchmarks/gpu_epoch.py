"""Epoch time of the default MLP on a GPU: cifarlit's variants against a plain PyTorch loop on the same GPU.

python benchmarks/gpu_epoch.py --data.data_dir <folder>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import cifarlit_cli, machine  # noqa: E402
from benchmarks.loop_overhead import FitTimer, plain_loop  # noqa: E402


def fit(data: str, epochs: int, *args: str):
    cli = cifarlit_cli(["--data.data_dir", data, "--trainer.max_epochs", str(epochs), "--trainer.accelerator", "gpu",
                        "--trainer.enable_model_summary", "false", "--test_after_fit", "false", *args])  # fmt: skip
    timer = FitTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    return timer.seconds / epochs, cli


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data.data_dir", dest="data", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    rows = []
    variants = [
        ("bs=64 fp32 (default config)", 64, []),
        ("bs=64 fp32 on_device", 64, ["--data.on_device", "true"]),
        ("bs=512 fp32 on_device", 512, ["--data.on_device", "true"]),
        (
            "bs=512 bf16-mixed on_device",
            512,
            ["--data.on_device", "true", "--trainer.precision", "bf16-mixed"],
        ),
        (
            "bs=64 course aug (batched) on_device",
            64,
            ["--data.on_device", "true", "--data.augment.preset", "course"],
        ),
    ]
    if args.compile:
        variants.append(("bs=512 compile on_device", 512, ["--data.on_device", "true", "--model.compile", "true"]))
    dm = None
    for name, bs, extra in variants:
        seconds, cli = fit(args.data, args.epochs, "--data.batch_size", str(bs), *extra)
        dm = cli.datamodule
        acc = float(cli.trainer.callback_metrics["val/acc"])
        rows.append((f"cifarlit {name}", seconds, acc))
    dm.train_set.x, dm.train_set.y = dm.train_set.x.cpu(), dm.train_set.y.cpu()
    dm.val_set.x, dm.val_set.y = dm.val_set.x.cpu(), dm.val_set.y.cpu()
    for bs in (64, 512):
        rows.append((f"plain PyTorch loop bs={bs} fp32", plain_loop(dm, bs, args.epochs, "cuda") / args.epochs, None))
    print(f"\nmachine: {machine()}, {torch.cuda.get_device_name()}\n")
    print("| run | s/epoch (40k train + 10k val) | val/acc after run |\n|---|---|---|")
    for name, seconds, acc in rows:
        print(f"| {name} | {seconds:.2f} | {'' if acc is None else f'{acc:.3f}'} |")


if __name__ == "__main__":
    main()

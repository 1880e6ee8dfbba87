"""Epoch time with the course augmentation preset over epoch time without, per backend and worker count."""

from __future__ import annotations

from benchmarks.common import cifarlit_cli
from benchmarks.loop_overhead import FitTimer


def epoch_seconds(data: str, epochs: int, *args: str) -> float:
    cli = cifarlit_cli([
        "--data.data_dir", data, "--trainer.max_epochs", str(epochs), "--trainer.accelerator", "cpu",
        "--trainer.enable_model_summary", "false", "--test_after_fit", "false", *args,
    ])  # fmt: skip
    timer = FitTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    return timer.seconds / epochs


def run(data: str, epochs: int = 1) -> list[dict]:
    rows = []
    plain = epoch_seconds(data, epochs)
    batched = epoch_seconds(data, epochs, "--data.augment.preset", "course", "--data.augment.backend", "batched")
    plain_again = epoch_seconds(data, epochs)
    base = min(plain, plain_again)
    rows.append({
        "benchmark": "augment_cost batched (course preset)", "ratio (aug/no-aug time)": round(batched / base, 3),
        "target": "<= 1.30", "detail": f"{batched:.1f}s vs {plain:.1f}s / {plain_again:.1f}s per epoch",
    })  # fmt: skip
    for workers in (0, 1, 2):
        albu = epoch_seconds(
            data, epochs, "--data.augment.preset", "course", "--data.augment.backend", "albumentations",
            "--data.num_workers", str(workers), "--data.persistent_workers", str(workers > 0).lower(),
        )  # fmt: skip
        rows.append({
            "benchmark": f"augment_cost albumentations workers={workers}",
            "ratio (aug/no-aug time)": round(albu / base, 3), "target": "-", "detail": f"{albu:.1f}s per epoch",
        })  # fmt: skip
    return rows

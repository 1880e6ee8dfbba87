"""Epoch time with the course augmentation preset over epoch time without, per backend and worker count.

Each run is a fresh `cifarlit fit` process and the figures are fastest epochs; the no-augmentation baseline runs
before and after the others.
"""

from __future__ import annotations

from benchmarks.common import fit_epochs


def epoch_seconds(data: str, epochs: int, *args: str) -> float:
    return min(fit_epochs(data, "--trainer.max_epochs", str(epochs), *args))


def run(data: str, epochs: int = 3) -> list[dict]:
    rows = []
    course = ("--data.augment.preset", "course")
    plain = epoch_seconds(data, epochs)
    batched = epoch_seconds(data, epochs, *course, "--data.augment.backend", "batched")
    plain_again = epoch_seconds(data, epochs)
    base = min(plain, plain_again)
    rows.append({
        "benchmark": "augment_cost batched (course preset)", "ratio (aug/no-aug time)": round(batched / base, 3),
        "target": "<= 1.30", "detail": f"{batched:.2f}s vs {plain:.2f}s / {plain_again:.2f}s per epoch",
    })  # fmt: skip
    for workers in (0, 1, 2):
        albu = epoch_seconds(
            data, epochs, *course, "--data.augment.backend", "albumentations",
            "--data.num_workers", str(workers), "--data.persistent_workers", str(workers > 0).lower(),
        )  # fmt: skip
        rows.append({
            "benchmark": f"augment_cost albumentations workers={workers}",
            "ratio (aug/no-aug time)": round(albu / base, 3), "target": "-", "detail": f"{albu:.2f}s per epoch",
        })  # fmt: skip
    return rows

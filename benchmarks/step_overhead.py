"""Per-step host cost, measured on the CPU: a tiny model (one linear layer, batch 32) trained by `cifarlit fit` with
the default config, by Lightning's `Trainer(barebones=True)` with the same model and data, and by a plain loop.

A linear layer at batch 32 does almost no arithmetic, so an epoch (1,250 steps) is mostly what each loop does
around the arithmetic: Lightning's hooks, the callbacks, the logger, the progress bar, the data path. That is
what limits a small model on a GPU too, so this ratio can be worked on without one. Target: cifarlit <= 1.10x
barebones (cifarlit's own cost over Lightning's floor); the plain-loop ratio is reported beside it.

Every run is a fresh process, the kinds alternate, the figure is each kind's fastest epoch (train + val pass).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import fit_epochs, plain_epochs
from benchmarks.plain_loop import export_split

TINY = ("--model.hidden_sizes", "[]")  # 3072 -> 10: one linear layer


def run(data: str, epochs: int = 3, batch_size: int = 32, repeats: int = 3) -> list[dict]:
    split = Path(tempfile.mkdtemp(prefix="cifarlit-bench-")) / "split.pt"
    n_train = export_split(data, split)
    times: dict[str, list[float]] = {"cifarlit": [], "barebones": [], "plain": []}
    args = (*TINY, "--data.batch_size", str(batch_size), "--trainer.max_epochs", str(epochs))
    for i in range(repeats):
        kinds = ("cifarlit", "barebones", "plain")
        for kind in kinds if i % 2 == 0 else kinds[::-1]:
            if kind == "plain":
                times[kind] += plain_epochs(split, batch_size, epochs, like_cifarlit=True, hidden_sizes=[])
            else:
                times[kind] += fit_epochs(data, *args, barebones=kind == "barebones")
    best = {k: min(v) for k, v in times.items()}
    steps = -(-n_train // batch_size)
    per_step = {k: 1e6 * v / steps for k, v in best.items()}  # the val pass included: read as a comparison
    spread = "; ".join(f"{k} {min(v):.2f}-{max(v):.2f}" for k, v in times.items())
    return [
        {
            "benchmark": f"step_overhead linear bs={batch_size}, cifarlit vs barebones",
            "ratio": round(best["cifarlit"] / best["barebones"], 3),
            "target": "<= 1.10",
            "detail": f"{per_step['cifarlit']:.0f} vs {per_step['barebones']:.0f} us per step (epoch / {steps} "
            f"steps); fastest of {repeats}x{epochs} epochs, s/epoch {spread}",
        },
        {
            "benchmark": f"step_overhead linear bs={batch_size}, cifarlit vs plain loop",
            "ratio": round(best["cifarlit"] / best["plain"], 3),
            "target": "-",
            "detail": f"plain loop with the same data path and fused Adam: {per_step['plain']:.0f} us per step",
        },
    ]

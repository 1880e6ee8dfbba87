"""Per-step host cost, measured on the CPU: a tiny model (one linear layer, batch 32) trained by `cifarlit fit` with
the default config, by Lightning's `Trainer(barebones=True)` with the same model and data, and by a plain loop.

A linear layer at batch 32 does almost no arithmetic, so an epoch (1,250 steps) is mostly what each loop does
around the arithmetic: Lightning's hooks, the callbacks, the logger, the progress bar, the data path. That is
what limits a small model on a GPU too, so this ratio can be worked on without one. Target: cifarlit <= 1.10x
barebones (cifarlit's own cost over Lightning's floor); the plain-loop ratio is reported beside it.

The figure is CPU time per epoch (train + val pass, every thread of the process), with one torch thread: on this
shared 2-core machine the wall time of the same epoch moved by 10-50% from run to run with the neighbours'
load, and CPU time does not count the time the process waited for a core. Every run is a fresh process, the
kinds alternate, each kind's fastest epoch counts; wall-time ratios are printed beside.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import fit_run, markers, plain_run
from benchmarks.plain_loop import export_split

TINY = ("--model.hidden_sizes", "[]")  # 3072 -> 10: one linear layer
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(data: str, epochs: int = 3, batch_size: int = 32, repeats: int = 3) -> list[dict]:
    split = Path(tempfile.mkdtemp(prefix="cifarlit-bench-")) / "split.pt"
    n_train = export_split(data, split)
    cpu: dict[str, list[float]] = {"cifarlit": [], "barebones": [], "plain": []}
    wall: dict[str, list[float]] = {k: [] for k in cpu}
    args = (*TINY, "--data.batch_size", str(batch_size), "--trainer.max_epochs", str(epochs))
    for i in range(repeats):
        kinds = ("cifarlit", "barebones", "plain")
        for kind in kinds if i % 2 == 0 else kinds[::-1]:
            if kind == "plain":
                out = plain_run(split, batch_size, epochs, like_cifarlit=True, hidden_sizes=[], env=ONE_THREAD)
            else:
                out = fit_run(data, *args, barebones=kind == "barebones", env=ONE_THREAD)
            cpu[kind] += markers(out, "EPOCH_CPU_SECONDS")
            wall[kind] += markers(out, "EPOCH_SECONDS")
    best = {k: min(v) for k, v in cpu.items()}
    fast = {k: min(v) for k, v in wall.items()}
    steps = -(-n_train // batch_size)
    per_step = {k: 1e6 * v / steps for k, v in best.items()}  # the val pass included: read as a comparison
    spread = "; ".join(f"{k} {min(v):.2f}-{max(v):.2f}" for k, v in cpu.items())
    return [
        {
            "benchmark": f"step_overhead linear bs={batch_size}, cifarlit vs barebones (CPU time)",
            "ratio": round(best["cifarlit"] / best["barebones"], 3),
            "target": "<= 1.10",
            "detail": f"{per_step['cifarlit']:.0f} vs {per_step['barebones']:.0f} us of CPU per step (epoch / "
            f"{steps} steps), 1 thread; fastest of {repeats}x{epochs} epochs, CPU s/epoch {spread}; wall-time "
            f"ratio {fast['cifarlit'] / fast['barebones']:.3f}",
        },
        {
            "benchmark": f"step_overhead linear bs={batch_size}, cifarlit vs plain loop (CPU time)",
            "ratio": round(best["cifarlit"] / best["plain"], 3),
            "target": "-",
            "detail": f"plain loop with the same data path and fused Adam: {per_step['plain']:.0f} us of CPU per "
            f"step; wall-time ratio {fast['cifarlit'] / fast['plain']:.3f}",
        },
    ]

"""Plain PyTorch loop vs `cifarlit fit` on the same MLP, data, batch size and epochs.

Both train the default 3072-100-100-10 MLP with Adam on cifarlit's 40,000-image split and run the 10,000-image
val pass every epoch; startup (imports, loading, the sanity check) is excluded from both. Every run is a fresh
process and the two alternate, so drift on a shared machine hits both; the ratio uses each side's fastest run.

Two references: the plain loop as one would write it (torch's default Adam, the set normalized up front,
``x[idx]`` batches: the issue's "plain PyTorch"), and the same loop given cifarlit's data path and fused Adam
("like for like"), whose ratio is what Lightning's loop, callbacks, logger and progress bar cost by themselves.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import fit_seconds, plain_seconds
from benchmarks.plain_loop import export_split


def run(data: str, epochs: int = 3, batch_sizes=(64, 512), repeats: int = 3) -> list[dict]:
    split = Path(tempfile.mkdtemp(prefix="cifarlit-bench-")) / "split.pt"
    n_train = export_split(data, split)
    rows = []
    for bs in batch_sizes:
        times: dict[str, list[float]] = {"cifarlit": [], "plain": [], "like": []}
        for i in range(repeats):
            order = ["plain", "cifarlit", "like"] if i % 2 == 0 else ["like", "cifarlit", "plain"]
            for kind in order:
                if kind == "cifarlit":
                    t = fit_seconds(data, "--data.batch_size", str(bs), "--trainer.max_epochs", str(epochs))
                else:
                    t = plain_seconds(split, bs, epochs, like_cifarlit=kind == "like")
                times[kind].append(t)
        best = {k: min(v) for k, v in times.items()}
        images = epochs * n_train
        runs = "; ".join(f"{k} " + "/".join(f"{t:.1f}" for t in v) + " s" for k, v in times.items())
        rows.append({
            "benchmark": f"loop_overhead bs={bs}",
            "plain img/s": round(images / best["plain"]), "cifarlit img/s": round(images / best["cifarlit"]),
            "ratio (cifarlit/plain time)": round(best["cifarlit"] / best["plain"], 3),
            "target": "<= 1.10" if bs == 64 else "<= 1.05",
            "detail": f"{epochs} epochs, {repeats} runs each: {runs}",
        })  # fmt: skip
        rows.append({
            "benchmark": f"loop_overhead bs={bs}, like for like",
            "ratio (cifarlit/plain time)": round(best["cifarlit"] / best["like"], 3), "target": "-",
            "detail": "plain loop with cifarlit's fused Adam and uint8 index_select batches: Lightning's own cost",
        })  # fmt: skip
    return rows

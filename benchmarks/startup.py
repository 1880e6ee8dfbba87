"""Seconds from launching `python -m cifarlit fit` to its first training step, with the data already cached."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

from benchmarks.common import DEFAULT_CONFIG, ENV, REPO, markers


def run(data: str, repeats: int = 2) -> list[dict]:
    times = []
    for _ in range(repeats):
        logs = tempfile.mkdtemp(prefix="cifarlit-startup-")
        start = time.time()
        out = subprocess.run(
            [sys.executable, "-m", "cifarlit", "fit", "-c", str(DEFAULT_CONFIG), "--data.data_dir", data,
             "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
             "--trainer.limit_val_batches", "1", "--trainer.accelerator", "cpu", "--test_after_fit", "false",
             "--trainer.logger.init_args.save_dir", logs, "--trainer.callbacks+=benchmarks.timers.FirstStep"],
            capture_output=True, text=True, cwd=REPO, env=ENV,
        )  # fmt: skip
        times.append(markers(out, "FIRST_STEP_AT")[0] - start)
    return [{
        "benchmark": "startup (fit -> first step, cached data)", "seconds": round(min(times), 2),
        "target": "<= 8", "detail": f"runs: {', '.join(f'{t:.1f}s' for t in times)}",
    }]  # fmt: skip

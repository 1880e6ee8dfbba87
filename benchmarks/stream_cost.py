"""Streaming from LitData chunks (``data.stream``) against the in-memory dataset, on this machine.

Epoch time: the default config in fresh processes, in-memory and streamed runs alternating, fastest epochs
(training + its val pass); target: the stream at most 1.3x the in-memory epoch. Memory: the peak RSS of a fit
from a stream of the training split written once and five times (``cifarlit prepare --repeat 5``); target: no
higher with 5x, i.e. memory does not grow with the dataset. The streams are prepared once under
``data/streams/`` (``prepare`` leaves a finished stream of the same split alone), timed when written.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ENV, REPO, fit_epochs, fit_run, markers


def prepared(data: str, repeat: int, streams: Path) -> tuple[Path, float | None]:
    """A stream of ``data`` with the training split ``repeat`` times, and the seconds it took to write (None when
    it was already there)."""
    out = streams / f"{Path(data).name}-x{repeat}"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cifarlit", "prepare", "--data.data_dir", str(Path(data).resolve()),
         "--output", str(out), "--repeat", str(repeat)],
        capture_output=True, text=True, env=ENV,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"prepare failed:\n{done.stderr[-3000:]}")
    return out, None if "nothing to do" in done.stdout else time.perf_counter() - start


def peak_rss_mb(data: str, *args: str) -> float:
    return markers(
        fit_run(data, "--trainer.max_epochs", "1", "--trainer.callbacks+=benchmarks.timers.PeakMemory", *args),
        "PEAK_RSS_MB",
    )[0]


def run(data: str, epochs: int = 3, rounds: int = 3, streams: Path = REPO / "data" / "streams") -> list[dict]:
    once, wrote_once = prepared(data, 1, streams)
    five, wrote_five = prepared(data, 5, streams)
    memory, streamed = [], []
    for _ in range(rounds):  # alternating, so both kinds see the same spells of load from others
        memory += fit_epochs(data, "--trainer.max_epochs", str(epochs))
        streamed += fit_epochs(data, "--trainer.max_epochs", str(epochs), "--data.stream", str(once))
    rss = {"in-memory": peak_rss_mb(data)}
    for _ in range(2):
        for name, stream in (("1x", once), ("5x", five)):
            rss[name] = min(rss.get(name, float("inf")), peak_rss_mb(data, "--data.stream", str(stream)))
    written = ", ".join(f"{n} written in {s:.0f} s" for n, s in (("1x", wrote_once), ("5x", wrote_five)) if s)
    return [
        {
            "benchmark": "stream_cost epoch (stream / in-memory)", "ratio": round(min(streamed) / min(memory), 3),
            "target": "<= 1.30",
            "detail": f"fastest of {len(streamed)} / {len(memory)} epochs, s/epoch streamed "
            f"{min(streamed):.2f}-{max(streamed):.2f}; memory {min(memory):.2f}-{max(memory):.2f}",
        },
        {
            "benchmark": "stream_cost peak RSS (train split 5x / 1x)", "ratio": round(rss["5x"] / rss["1x"], 3),
            "target": "<= 1.00",
            "detail": f"{rss['5x']:.0f} MB vs {rss['1x']:.0f} MB (in-memory fit: {rss['in-memory']:.0f} MB)"
            + (f"; {written}" if written else ""),
        },
    ]  # fmt: skip

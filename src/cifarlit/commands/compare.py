"""`cifarlit compare RUN...`: learning curves of several runs side by side, and a table of their metrics.

Reads each run's TensorBoard event files (and its saved ``config.yaml``), so it works on any finished,
stopped-early or still-running cifarlit run. A folder whose event files hold no readable events (empty, damaged
from the start, another program's) is refused in one sentence naming it; a file cut short, as a run still
writing leaves it, is read up to where it ends.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Literal

from cifarlit.utils import figures
from cifarlit.utils.errors import CifarlitError
from cifarlit.utils.files import atomic_write, check_output

CURVES = ("loss", "acc")


def find_runs(patterns: list[str]) -> list[Path]:
    """Run directories from paths or globs; a directory above runs (e.g. ``lightning_logs/``) expands to them."""
    runs: list[Path] = []
    for pattern in patterns:
        matches = sorted(Path(p) for p in glob.glob(pattern)) or [Path(pattern)]
        for path in matches:
            if not path.exists():
                raise CifarlitError(
                    f"run directory {str(path)!r} does not exist; pass run folders under lightning_logs/."
                )
            if any(path.glob("events.out.tfevents.*")):
                _check_event_files(path)
                runs.append(path)
                continue
            nested = sorted({p.parent for p in path.rglob("events.out.tfevents.*")})
            if not nested:
                raise CifarlitError(
                    f"{str(path)!r} has no TensorBoard event files (events.out.tfevents.*): pass the folder of a run, "
                    "e.g. lightning_logs/default/version_0."
                )
            for run in nested:
                _check_event_files(run)
            runs += nested
    return runs


def _check_event_files(run: Path) -> None:
    """TensorBoard opens every ``events.out.tfevents.*`` entry of a run: a folder fails and a pipe blocks forever."""
    for entry in run.glob("events.out.tfevents.*"):
        if not entry.is_file():
            raise CifarlitError(f"{str(entry)!r} is not a regular file, so the run cannot be read: move it away.")


def read_run(path: Path) -> dict[str, list[float]]:
    """Per-epoch scalars of one run, e.g. ``{"val/acc": [0.41, 0.45, ...]}``, and under ``_seconds/<tag>`` the
    seconds from the run's start to each of them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    try:
        events = EventAccumulator(str(path), size_guidance={"scalars": 0}).Reload()
        start = events.FirstEventTimestamp()  # a ValueError when no event could be read
    except Exception as err:  # TensorBoard's reader raises many types for a file that is not its own
        raise CifarlitError(
            f"{str(path)!r} has event files without one readable TensorBoard event ({err.__class__.__name__}: "
            f"{(str(err).splitlines() or [''])[0]}); they are empty, damaged or another program's: pass the folder "
            "of a cifarlit run."
        ) from None
    scalars = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    scalars |= {f"_seconds/{t}": [e.wall_time - start for e in events.Scalars(t)] for t in events.Tags()["scalars"]}
    if "val/acc" in scalars:  # fit's wall time: from the logger's start to the last validation
        scalars["_fit_seconds"] = [events.Scalars("val/acc")[-1].wall_time - events.FirstEventTimestamp()]
    return scalars


def run_name(path: Path, all_runs: list[Path]) -> str:
    """``name/version_N`` when several runs share a name, else just the logger name."""
    names = [p.parent.name for p in all_runs]
    return f"{path.parent.name}/{path.name}" if names.count(path.parent.name) > 1 else path.parent.name


def summary_table(runs: dict[str, dict[str, list[float]]]) -> str:
    """Markdown: epochs run, final and best val metrics, test metrics when present."""
    header = "| run | epochs | final train/acc | final val/acc | best val/acc | best val/loss | test/acc | fit time |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]

    def fmt(values: list[float], how) -> str:
        return f"{how(values):.4f}" if values else "-"

    for name, s in runs.items():
        lines.append(
            f"| {name} | {len(s.get('val/acc', []))} | {fmt(s.get('train/acc', []), lambda v: v[-1])} "
            f"| {fmt(s.get('val/acc', []), lambda v: v[-1])} | {fmt(s.get('val/acc', []), max)} "
            f"| {fmt(s.get('val/loss', []), min)} | {fmt(s.get('test/acc', []), lambda v: v[-1])} "
            f"| {_duration(s.get('_fit_seconds', []))} |"
        )
    return "\n".join(lines)


def _duration(seconds: list[float]) -> str:
    if not seconds:
        return "-"
    minutes, secs = divmod(round(seconds[0]), 60)
    return f"{minutes}m{secs:02d}s"


def common_folder(paths: list[Path]) -> Path:
    """The folder that holds all ``paths``: the run itself for one, e.g. ``lightning_logs/`` for several."""
    import os

    return Path(os.path.commonpath([str(Path(p).resolve()) for p in paths]))


def plot(runs: dict[str, dict[str, list[float]]], path: Path, x: str = "epoch") -> None:
    """One row per metric (loss, acc), train on the left and val on the right, one line per run; against the
    epoch, or with ``x="time"`` against the seconds since each run started (which recipe gets there first)."""
    plt = figures.pyplot()
    fig, axes = plt.subplots(len(CURVES), 2, figsize=(11, 4 * len(CURVES)), squeeze=False)
    for row, metric in enumerate(CURVES):
        for col, stage in enumerate(("train", "val")):
            ax = axes[row][col]
            for i, (name, scalars) in enumerate(runs.items()):
                values = scalars.get(f"{stage}/{metric}", [])
                if values:  # 10 colours, then the same colours dashed, so a dozen runs stay distinguishable
                    style = {"color": plt.cm.tab10(i % 10), "linestyle": ("-", "--", ":")[i // 10 % 3]}
                    ax.plot(
                        scalars[f"_seconds/{stage}/{metric}"] if x == "time" else range(1, len(values) + 1),
                        values,
                        label=name,
                        marker="." if len(values) < 30 else None,
                        **style,
                    )
            ax.set_title(f"{stage}/{metric}")
            ax.set_xlabel("seconds since the run started" if x == "time" else "epoch")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    figures.save(fig, path)
    plt.close(fig)


def main(runs: list[str], output: str | None = None, table: str | None = None,
         x: Literal["epoch", "time"] = "epoch") -> int:  # fmt: skip
    """Learning curves of several runs side by side, and a markdown table of their metrics.

    Args:
        runs: run folders or globs, e.g. 'lightning_logs/*/version_*'; a folder above runs expands to them.
        output: where to write the learning-curve PNG (default: compare.png in the folder that holds the runs,
            e.g. lightning_logs/).
        table: also write the markdown table to this file.
        x: the curves' x axis: epochs, or wall-clock seconds since each run started.
    """
    paths = find_runs(runs)
    png = check_output(Path(output) if output else common_folder(paths) / "compare.png", "--output", "compare.png")
    if table:
        check_output(Path(table), "--table", "compare.md")
    read = {run_name(p, paths): read_run(p) for p in paths}
    plot(read, png, x)
    text = summary_table(read)
    print(text)
    if table:
        with atomic_write(Path(table), encoding="utf-8") as f:
            f.write(text + "\n")
    print(f"\ncurves: {png}")
    return 0

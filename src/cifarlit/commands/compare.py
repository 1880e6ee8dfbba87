"""`cifarlit compare RUN...`: learning curves of several runs side by side, and a table of their metrics.

Reads each run's TensorBoard event files, or a CSVLogger's ``metrics.csv`` (which records no wall-clock times, so
no ``--x time`` and no fit time), or every run of an MLflow tracking store given by its URI (``sqlite:///mlflow.db``,
``http://host:5000``, ``file:./mlruns``; ``URI#experiment`` for one experiment), so it works on any finished,
stopped-early or still-running cifarlit run. A W&B run is not read: its offline files are W&B's own format (use
W&B's UI, or log to CSV as well). A folder whose event files hold no readable events (empty, damaged from the start,
another program's), a metrics file that is not a CSVLogger's and a store MLflow cannot read are refused in one
sentence naming them; a file cut short, as a run still writing leaves it, is read up to where it ends.
"""

from __future__ import annotations

import contextlib
import glob
import re
from pathlib import Path
from typing import Literal

from cifarlit.utils import figures
from cifarlit.utils.errors import CifarlitError
from cifarlit.utils.files import atomic_write, check_output

CURVES = ("loss", "acc")


def find_runs(patterns: list[str]) -> list[Path]:
    """Run directories from paths or globs; a directory above runs (e.g. ``lightning_logs/``) expands to them.
    MLflow tracking URIs are not paths: :func:`main` reads them apart (:func:`mlflow_runs`)."""
    runs: list[Path] = []
    for pattern in patterns:
        if is_tracking_uri(pattern):
            continue
        matches = sorted(Path(p) for p in glob.glob(pattern)) or [Path(pattern)]
        for path in matches:
            if not path.exists():
                raise CifarlitError(
                    f"run directory {str(path)!r} does not exist; pass run folders under lightning_logs/."
                )
            if any(path.glob("events.out.tfevents.*")) or (path / METRICS_CSV).exists():
                _check_event_files(path)
                runs.append(path)
                continue
            nested = sorted({p.parent for p in path.rglob("events.out.tfevents.*")} |
                            {p.parent for p in path.rglob(METRICS_CSV)})  # fmt: skip
            if not nested:
                raise CifarlitError(
                    f"{str(path)!r} has no TensorBoard event files (events.out.tfevents.*) and no CSVLogger "
                    f"{METRICS_CSV}: pass the folder of a run, e.g. lightning_logs/default/version_0, or an MLflow "
                    "tracking URI such as sqlite:///mlflow.db (W&B runs are W&B's own format, which compare does "
                    "not read: add a CSV logger beside W&B's to compare them here)."
                )
            for run in nested:
                _check_event_files(run)
            runs += nested
    return runs


METRICS_CSV = "metrics.csv"  # a CSVLogger's file; TensorBoard's event files win when a run has both


def is_tracking_uri(text: str) -> bool:
    """An MLflow tracking URI (``sqlite:///...``, ``http(s)://...``, ``file:...``, a database URL), not a path."""
    return re.match(r"^(file:|[a-z][a-z0-9+]*://)", text) is not None


def _check_event_files(run: Path) -> None:
    """TensorBoard opens every ``events.out.tfevents.*`` entry of a run: a folder fails and a pipe blocks forever."""
    for entry in run.glob("events.out.tfevents.*"):
        if not entry.is_file():
            raise CifarlitError(f"{str(entry)!r} is not a regular file, so the run cannot be read: move it away.")


def read_run(path: Path) -> dict[str, list[float]]:
    """Per-epoch scalars of one run, e.g. ``{"val/acc": [0.41, 0.45, ...]}``, and under ``_seconds/<tag>`` the
    seconds from the run's start to each of them (TensorBoard's event files, else a CSVLogger's file)."""
    if not any(path.glob("events.out.tfevents.*")):
        return read_csv_run(path / METRICS_CSV)
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


def read_csv_run(path: Path) -> dict[str, list[float]]:
    """A CSVLogger's ``metrics.csv``: one row per logged step, a column per metric, empty where a row lacks it."""
    import csv

    def refuse(why: str) -> CifarlitError:
        return CifarlitError(f"{str(path)!r} is not a CSVLogger's metrics file ({why}): pass a cifarlit run's folder.")

    if not path.is_file():  # a folder or a pipe by that name: a pipe would block the read forever
        raise refuse("not a regular file")
    scalars: dict[str, list[float]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.DictReader(f)
            if "step" not in (rows.fieldnames or []):
                raise refuse("its first line names no step column")
            for number, row in enumerate(rows, start=2):
                for key, value in row.items():
                    if key in ("epoch", "step") or value in ("", None):
                        continue
                    if key is None or not isinstance(value, str):
                        raise refuse(f"line {number} has more values than its header names")
                    try:
                        scalars.setdefault(key, []).append(float(value))
                    except ValueError:
                        raise refuse(f"{key} on line {number} is {value[:40]!r}, not a number") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise refuse(f"{err.__class__.__name__}: {(str(err).splitlines() or [''])[0][:120]}") from None
    if not scalars:
        raise refuse("no metric values")
    return scalars


def mlflow_runs(uri: str) -> dict[str, dict[str, list[float]]]:
    """Every run of an MLflow tracking store (of one experiment with ``URI#name``), by run name, as :func:`read_run`
    gives them. Read-only: a SQLite store is read from a copy, so MLflow never creates or upgrades tables in the
    user's file, and a ``file:`` store only if MLflow made it (see :func:`_readable_store`)."""
    uri, _, experiment = uri.partition("#")
    try:
        from mlflow.tracking import MlflowClient
    except ModuleNotFoundError:
        raise CifarlitError(f"reading the MLflow store {uri} needs mlflow: pip install 'cifarlit[trackers]'.") from None
    with _readable_store(uri) as readable, _no_http_retries():
        try:
            client = MlflowClient(readable)
            if experiment:
                found = client.get_experiment_by_name(experiment)
                if found is None:
                    raise CifarlitError(f"the MLflow store {uri} has no experiment {experiment!r}.")
                ids = [found.experiment_id]
            else:
                ids = [e.experiment_id for e in client.search_experiments()]
            runs = client.search_runs(ids, order_by=["attributes.start_time ASC"]) if ids else []
            if not runs:
                where = f" in experiment {experiment!r}" if experiment else ""
                raise CifarlitError(f"the MLflow store {uri} holds no runs{where}: pass the store a run logged to.")
            return {f"{run.info.run_name or run.info.run_id}": _mlflow_scalars(client, run) for run in runs}
        except CifarlitError:
            raise
        except Exception as err:  # MLflow raises many types for a store it cannot read (and sqlalchemy's own)
            raise CifarlitError(
                f"the MLflow store {uri} cannot be read ({err.__class__.__name__}: "
                f"{(str(err).splitlines() or [''])[0][:160]}): pass the tracking URI a cifarlit run logged to."
            ) from None


def _mlflow_scalars(client, run) -> dict[str, list[float]]:
    scalars: dict[str, list[float]] = {}
    for key in run.data.metrics:
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        scalars[key] = [m.value for m in history]
        scalars[f"_seconds/{key}"] = [(m.timestamp - run.info.start_time) / 1000 for m in history]
    if scalars.get("_seconds/val/acc"):  # fit's wall time: from the run's start to the last validation
        scalars["_fit_seconds"] = scalars["_seconds/val/acc"][-1:]
    return scalars


# MLflow's own tables in every version that cifarlit's loggers write: a SQLite file without them is not a store
MLFLOW_TABLES = {"alembic_version", "experiments", "runs", "metrics", "params", "tags", "latest_metrics"}


@contextlib.contextmanager
def _readable_store(uri: str):
    """The URI to read ``uri`` through without writing to it: a SQLite store's copy (MLflow would add or upgrade
    tables in the file it opens), a ``file:`` store as it is once MLflow made it (it would add its ``.trash``
    folder to any other) and MLflow 3 is allowed to read it; servers and other databases as given."""
    import os
    import sqlite3
    import tempfile

    if uri.startswith("file:"):
        folder = Path(uri[len("file:") :].removeprefix("//"))
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
            raise CifarlitError(f"the MLflow store {uri} is a file: store, which MLflow 3 reads only with "
                                "MLFLOW_ALLOW_FILE_STORE=true set.")  # fmt: skip
        if not (folder / ".trash").is_dir():
            raise CifarlitError(f"the MLflow store {uri} is not a folder MLflow made (no .trash folder in it): pass "
                                "the store a run logged to.")  # fmt: skip
    if not uri.startswith("sqlite:"):
        yield uri
        return
    path = Path(uri.split(":///", 1)[-1] if ":///" in uri else uri[len("sqlite:") :])
    if not path.is_file():  # MLflow would create it
        raise CifarlitError(f"the MLflow store {uri}: {str(path)!r} is not a file; pass the database of a run.")
    with tempfile.TemporaryDirectory(prefix="cifarlit-compare-") as tmp:
        copy = Path(tmp) / "mlflow.db"
        try:
            with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if MLFLOW_TABLES <= tables:
                    with contextlib.closing(sqlite3.connect(copy)) as target:
                        db.backup(target)  # a consistent copy, also of a database a run is writing
        except sqlite3.Error as err:
            raise CifarlitError(f"the MLflow store {uri} is not a SQLite database ({err}): pass the database of a "
                                "run.") from None  # fmt: skip
        if not MLFLOW_TABLES <= tables:
            raise CifarlitError(f"the MLflow store {uri} is a SQLite database without MLflow's tables: pass the "
                                "database of a run.")  # fmt: skip
        yield f"sqlite:///{copy}"


@contextlib.contextmanager
def _no_http_retries():
    """A tracking server that does not answer fails at once, not after MLflow's minutes of retries."""
    import os

    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="20")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
    untimed = [name for name, scalars in runs.items() if any(k.startswith(("train/", "val/")) and
               f"_seconds/{k}" not in scalars for k in scalars)]  # fmt: skip
    if x == "time" and untimed:
        raise CifarlitError(f"--x time: run {untimed[0]!r} records no wall-clock times (a CSVLogger's metrics.csv has "
                            "none): use --x epoch, or log the run to TensorBoard or MLflow as well.")  # fmt: skip
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
        runs: run folders or globs, e.g. 'lightning_logs/*/version_*' (TensorBoard or CSV logger runs; a folder above
            runs expands to them), or MLflow tracking URIs, e.g. sqlite:///mlflow.db or sqlite:///mlflow.db#cifarlit
            for one experiment.
        output: where to write the learning-curve PNG (default: compare.png in the folder that holds the runs,
            e.g. lightning_logs/).
        table: also write the markdown table to this file.
        x: the curves' x axis: epochs, or wall-clock seconds since each run started.
    """
    paths = find_runs(runs)
    uris = [run for run in runs if is_tracking_uri(run)]
    folders = paths or [Path(".")]  # MLflow runs alone: compare.png in the working directory
    png = check_output(Path(output) if output else common_folder(folders) / "compare.png", "--output", "compare.png")
    if table:
        check_output(Path(table), "--table", "compare.md")
    read = {run_name(p, paths): read_run(p) for p in paths}
    for uri in uris:
        read |= mlflow_runs(uri)
    plot(read, png, x)
    text = summary_table(read)
    print(text)
    if table:
        with atomic_write(Path(table), encoding="utf-8") as f:
            f.write(text + "\n")
    print(f"\ncurves: {png}")
    return 0

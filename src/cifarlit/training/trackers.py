"""The trackers a run logs to: any Lightning logger (``trainer.logger``), or several at once (a list).

Every run has one run folder, whatever it logs to: the first logger's ``log_dir`` for a TensorBoardLogger or a
CSVLogger (``<save_dir>/<name>/version_N``, as before), else the folder Lightning gives that logger's checkpoints
(``<save_dir or default_root_dir>/<name>/<version>``: an MLflow run's ``<experiment id>/<run id>``, a W&B run's
``<project>/<run id>``). ``config.yaml``, ``run_info.json`` and the per-class report are written there, and copied
into each tracker that keeps a store of its own (an MLflow run's artifacts, a W&B run's files), so the tracker's
UI shows what the run depended on next to its curves.
"""

from __future__ import annotations

import os
from pathlib import Path

from cifarlit.utils.errors import CifarlitError

# Loggers whose run is a folder of files (Lightning's ``trainer.log_dir``): nothing to copy into them.
FOLDER_LOGGERS = ("TensorBoardLogger", "CSVLogger")


def _kind(logger) -> str:
    """A logger's class name, or that of the Lightning logger it derives from, without importing the tracker."""
    names = [cls.__name__ for cls in type(logger).__mro__]
    return next((n for n in names if n in (*FOLDER_LOGGERS, "MLFlowLogger", "WandbLogger")), names[0])


def run_dir(trainer) -> str | None:
    """The run's folder (see the module docstring), or None without a logger. A collective under DDP: every rank
    must ask, and every rank gets rank 0's answer (another rank's MLflow or W&B logger knows no run id)."""
    if not trainer.loggers:
        return None
    logger = trainer.loggers[0]
    if _kind(logger) in FOLDER_LOGGERS:
        return trainer.log_dir  # Lightning's own answer for these, itself a collective
    path = None
    if trainer.is_global_zero:
        _ = logger.experiment  # starts the run: a W&B run has no id before
        version = logger.version
        version = version if isinstance(version, str) else f"version_{version}"
        path = os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version)
    return trainer.strategy.broadcast(path)


def log_files(trainer, paths: list[Path]) -> None:
    """Copy files of the run folder into every tracker that keeps its own store: an MLflow run's artifacts, a W&B
    run's files (offline: its ``offline-run-*/files``, synced with the run). Rank 0 only."""
    for logger in trainer.loggers:
        kind = _kind(logger)
        if kind == "MLFlowLogger":
            for path in paths:
                logger.experiment.log_artifact(logger.run_id, str(path))
        elif kind == "WandbLogger":
            for path in paths:  # "now": copied at once, not watched for changes until the run ends
                logger.experiment.save(str(path), base_path=str(path.parent), policy="now")


def log_figure(trainer, figure, name: str) -> None:
    """A matplotlib figure into every logger that shows images: TensorBoard's IMAGES tab, an MLflow run's artifacts
    (``<name>.png``), W&B's media panel. Rank 0 only."""
    for logger in trainer.loggers:
        kind = _kind(logger)
        if kind == "TensorBoardLogger":
            logger.experiment.add_figure(name, figure, trainer.global_step, close=False)
            logger.experiment.flush()
        elif kind == "MLFlowLogger":
            logger.experiment.log_figure(logger.run_id, figure, f"{name}.png")
        elif kind == "WandbLogger":
            import wandb

            logger.experiment.log({name: wandb.Image(figure)})


def logger_configs(config) -> list:
    """The ``{class_path, init_args}`` of each logger in a parsed config's ``trainer.logger`` (none for
    ``true``/``false``/``null``, which mean Lightning's default logger or none)."""
    logger = config.trainer.get("logger")
    loggers = logger if isinstance(logger, list) else [logger]
    return [item for item in loggers if getattr(item, "class_path", None) and item.get("init_args") is not None]


def is_kind(item, kind: str) -> bool:
    """Whether a logger's ``{class_path, init_args}`` names ``kind`` (a class name such as ``CSVLogger``)."""
    return str(item.class_path).rsplit(".", 1)[-1] == kind


def check(config) -> None:
    """Refuse, before anything is built, a logger whose tracker would refuse it later with a traceback: an MLflow
    ``file:`` store, which MLflow 3 keeps only behind ``MLFLOW_ALLOW_FILE_STORE=true``."""
    for item in logger_configs(config):
        if not is_kind(item, "MLFlowLogger"):
            continue
        uri = item.init_args.get("tracking_uri") or f"file:{item.init_args.get('save_dir') or './mlruns'}"
        if uri.startswith("file:") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
            raise CifarlitError(
                f"--trainer.logger.init_args.tracking_uri={uri}: MLflow 3 refuses file: stores unless "
                "MLFLOW_ALLOW_FILE_STORE=true is set; use a database, e.g. sqlite:///mlflow.db "
                "(configs/loggers/mlflow.yaml), or set that variable."
            )


def name_run(config, name: str, version: str) -> None:
    """Name the run in each logger of a parsed config (tune's ``tune_<study>/trial_<n>``): a folder logger's
    ``<name>/<version>``, an MLflow experiment and run name, a W&B project and run name."""
    for item in logger_configs(config):
        args = item.init_args
        if is_kind(item, "MLFlowLogger"):
            args.experiment_name, args.run_name = name, version
        elif is_kind(item, "WandbLogger"):
            args.project, args.name = name, version
        else:
            args.name, args.version = name, version

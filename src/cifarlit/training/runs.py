"""Where a run writes: its own ``<save_dir>/<name>/version_N`` folder, or the folder of the run it resumes; and which
checkpoint file ``--ckpt_path last|best|hpc`` means.

TensorBoardLogger and CSVLogger pick the next free ``version_N`` when they first write, so two runs started together
pick the same one and write into each other's folder. The CLI settles the folder before anything is built instead:
a resumed run continues its own, a new run creates the next free one itself (``mkdir`` fails for all but one
process, so two runs never share one), and several such loggers of one run under one ``<save_dir>/<name>`` share
it. Other loggers (MLflow, W&B) name their runs themselves (training/trackers.py).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from lightning.pytorch.utilities.rank_zero import rank_zero_only

from cifarlit.training.trackers import FOLDER_LOGGERS, is_kind, logger_configs
from cifarlit.utils import checkpoints
from cifarlit.utils.errors import CifarlitError


def checkpoint_file(ckpt: str | None, subcommand: str, config) -> str | None:
    """The file ``--ckpt_path`` means, so that the CLI checks that file whatever the option said.

    A path stays as given. ``last`` is the newest run's ``last.ckpt`` (of the first logger's name, a TensorBoard or CSV
    logger's,
    or ``<default_root_dir>/checkpoints`` without a logger); ``fit`` without one starts afresh, as Lightning does.
    ``best`` is the best checkpoint that run's ``last.ckpt`` names inside its own checkpoint folder. ``hpc`` (and,
    under SLURM, no ``--ckpt_path``) is the newest ``hpc_ckpt_N.ckpt`` in ``default_root_dir``, which Lightning
    writes when SLURM preempts a run. Anything else Lightning would resolve (``registry``) is refused.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment

    root = Path(config.trainer.get("default_root_dir") or ".")
    if ckpt is None and SLURMEnvironment.detect():  # Lightning resumes from this one unasked
        return _newest_hpc(root)
    if ckpt and (ckpt.lower() == "registry" or ckpt.lower().startswith("registry:")):
        raise CifarlitError(
            f"--ckpt_path {ckpt} (Lightning's model registry) is not supported: it downloads a checkpoint from "
            "Lightning AI; download it yourself and pass the file."
        )
    if ckpt not in ("last", "best", "hpc"):
        return ckpt
    if ckpt == "hpc":
        found = _newest_hpc(root)
        if found is None:
            raise CifarlitError(
                f"--ckpt_path hpc found no hpc_ckpt_N.ckpt in {root} (Lightning writes one there when SLURM "
                "preempts a run); pass a checkpoint file."
            )
        return found
    folder, where = _checkpoint_folder(config)
    last = folder / "last.ckpt" if folder is not None else None
    if last is None or not last.is_file():
        if ckpt == "last" and subcommand == "fit":
            print(f"--ckpt_path last: no last.ckpt in {where} yet, so the run starts afresh.", file=sys.stderr)
            return None
        raise CifarlitError(f"--ckpt_path {ckpt} found no last.ckpt in {where}; pass a checkpoint file.")
    return str(last) if ckpt == "last" else _best_named_in(last, folder)


def _best_named_in(last: Path, folder: Path) -> str:
    """The best checkpoint ``last``'s first monitoring ModelCheckpoint names, if it lies inside ``folder``."""
    state = checkpoints.load(last, f"--ckpt_path best (read from {last})")
    callbacks = state.get("callbacks") if isinstance(state, dict) else None
    for callback in callbacks.values() if isinstance(callbacks, dict) else ():
        if isinstance(callback, dict) and callback.get("monitor") and callback.get("best_model_path"):
            best = callback["best_model_path"]
            if checkpoints.inside(best, str(folder)) and Path(best).is_file():
                return best
    raise CifarlitError(
        f"--ckpt_path best: {last} names no best checkpoint inside {folder} (no ModelCheckpoint with a monitor "
        "saved one there); pass a checkpoint file."
    )


def _checkpoint_folder(config) -> tuple[Path | None, str]:
    """The checkpoint folder of the run ``--ckpt_path last`` continues, and how to name where it was looked for."""
    folders = _folder_args(config, first_only=True)
    logger = config.trainer.get("logger")
    if not folders:
        if logger is None or logger is False or logger == []:  # checkpoints then go to <default_root_dir>/checkpoints
            folder = Path(config.trainer.get("default_root_dir") or ".") / "checkpoints"
            return folder, str(folder)
        return None, "this logger's folders (cifarlit finds the runs of a TensorBoardLogger or CSVLogger)"
    args = folders[0]
    run_root = _run_root(args)
    version = args.get("version")
    if version is not None:
        run = run_root / (version if isinstance(version, str) else f"version_{version}")
        return run / "checkpoints", str(run / "checkpoints")
    versions = sorted(
        (int(p.name[8:]), p) for p in run_root.glob("version_*")
        if p.name[8:].isdigit() and (p / "checkpoints" / "last.ckpt").is_file()
    )  # fmt: skip
    where = f"{run_root}/version_*/checkpoints"
    return (versions[-1][1] / "checkpoints", where) if versions else (None, where)


def _newest_hpc(folder: Path) -> str | None:
    numbers = [int(p.stem[9:]) for p in folder.glob("hpc_ckpt_*.ckpt") if p.stem[9:].isdigit()]
    return str(folder / f"hpc_ckpt_{max(numbers)}.ckpt") if numbers else None


def resume_into_same_run(config, ckpt: str) -> None:
    """Point the TensorBoard and CSV loggers at the run being resumed, so curves and checkpoints continue in one
    folder: a checkpoint inside ``<save_dir>/<name>/version_N/checkpoints/`` resumes that run (``--ckpt_path last``
    is that file by now, see :func:`checkpoint_file`)."""
    path = Path(ckpt).resolve()
    for args in _folder_args(config):
        if args.get("version") is None and path.parent.name == "checkpoints":
            if path.parent.parent.parent == _run_root(args).resolve():
                version = path.parent.parent.name
                args.version = (
                    int(version.split("_")[1]) if version.startswith("version_") and version[8:].isdigit() else version
                )


def claim_run_dir(config) -> None:
    """Create the run's ``version_N`` folder now and set each TensorBoard or CSV logger's version to it, unless set.
    Loggers of one run under the same ``<save_dir>/<name>`` share one folder."""
    claimed: dict[Path, int | str] = {}
    for args in _folder_args(config):
        root = _run_root(args)
        _check_writable(root, args)
        if args.get("version") is None and root.resolve() in claimed:
            args.version = claimed[root.resolve()]
        # Under DDP the first process claims the folder and Lightning hands its name to the others: the global
        # rank of torchrun/SLURM, or a node rank other than 0 where processes are started by hand on each machine.
        elif args.get("version") is None and _first_process():
            args.version = _claim(root)
        if args.get("version") is not None:
            claimed.setdefault(root.resolve(), args.version)


def _check_writable(root: Path, args) -> None:
    try:  # a save_dir that is a file, or a folder that cannot be written: one sentence, before anything runs
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as err:
        raise CifarlitError(
            f"--trainer.logger.init_args.save_dir={args.get('save_dir')}: the run folder {root} cannot be written "
            f"({err.strerror or err.__class__.__name__}): pass a folder you can write to."
        ) from None


def _first_process() -> bool:
    return rank_zero_only.rank == 0 and int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0))) == 0


def _claim(root: Path) -> int:
    taken = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"version_{version}").mkdir()
        except FileExistsError:  # another run took it a moment ago
            version += 1
            continue
        return version


def _folder_args(config, first_only: bool = False) -> list:
    """The ``init_args`` of the TensorBoard and CSV loggers in the parsed config (with ``first_only``: of the first
    logger, where Lightning puts the checkpoints, if it is one of them)."""
    loggers = logger_configs(config)
    if first_only:
        logger = config.trainer.get("logger")
        first = logger[0] if isinstance(logger, list) and logger else logger
        loggers = [item for item in loggers[:1] if item is first]
    return [item.init_args for item in loggers if any(is_kind(item, kind) for kind in FOLDER_LOGGERS)]


def _run_root(args) -> Path:
    return Path(args.get("save_dir") or "lightning_logs") / (args.get("name") or "lightning_logs")

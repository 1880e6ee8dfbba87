"""Where a run writes: its own ``<save_dir>/<name>/version_N`` folder, or the folder of the run it resumes.

TensorBoardLogger picks the next free ``version_N`` when it first writes, so two runs started together pick the
same one and write into each other's folder. The CLI settles the folder before anything is built instead: a
resumed run continues its own, a new run creates the next free one itself (``mkdir`` fails for all but one
process, so two runs never share one).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lightning.pytorch.utilities.rank_zero import rank_zero_only

from cifarlit.errors import CifarlitError


def resume_into_same_run(config, ckpt: str) -> None:
    """Point the TensorBoard logger at the run being resumed, so curves and checkpoints continue in one folder.

    ``--ckpt_path last`` resumes the newest ``version_N`` of the configured logger name; a checkpoint path
    inside ``<save_dir>/<name>/version_N/checkpoints/`` resumes that run.
    """
    args = _tensorboard_args(config)
    if args is None or args.get("version") is not None:
        return
    run_root = _run_root(args)
    if ckpt == "last":
        versions = sorted(
            (int(p.name.split("_")[1]), p)
            for p in run_root.glob("version_*")
            if p.name.split("_")[1].isdigit() and (p / "checkpoints" / "last.ckpt").is_file()
        )
        if versions:
            args.version = versions[-1][0]
        return
    path = Path(ckpt).resolve()
    if path.parent.name == "checkpoints" and path.parent.parent.parent == run_root.resolve():
        version = path.parent.parent.name
        args.version = (
            int(version.split("_")[1]) if version.startswith("version_") and version[8:].isdigit() else version
        )


def claim_run_dir(config) -> None:
    """Create the run's ``version_N`` folder now and set the logger's version to it, unless one is set."""
    args = _tensorboard_args(config)
    if args is None:
        return
    root = _run_root(args)
    try:  # a save_dir that is a file, or a folder that cannot be written: one sentence, before anything runs
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as err:
        raise CifarlitError(
            f"--trainer.logger.init_args.save_dir={args.get('save_dir')}: the run folder {root} cannot be written "
            f"({err.strerror or err.__class__.__name__}): pass a folder you can write to."
        ) from None
    if args.get("version") is not None:
        return
    # Under DDP the first process claims the folder and Lightning hands its name to the others: the global rank
    # of torchrun/SLURM, or a node rank other than 0 where processes are started by hand on each machine.
    if rank_zero_only.rank != 0 or int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0))) != 0:
        return
    taken = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"version_{version}").mkdir()
        except FileExistsError:  # another run took it a moment ago
            version += 1
            continue
        args.version = version
        return


def _tensorboard_args(config):
    """The TensorBoardLogger's ``init_args`` in the parsed config, or None for another or no logger."""
    logger = config.trainer.get("logger")
    args = getattr(logger, "init_args", None)
    if args is None or not str(getattr(logger, "class_path", "")).endswith("TensorBoardLogger"):
        return None
    return args


def _run_root(args) -> Path:
    return Path(args.get("save_dir") or "lightning_logs") / (args.get("name") or "lightning_logs")

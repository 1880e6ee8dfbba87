"""``cifarlit`` / ``python -m cifarlit``: LightningCLI with fit / validate / test / predict / explore, plus compare
and export."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations must never phone home

from lightning.pytorch import Trainer  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402

from cifarlit.callbacks import OverfitCheck, PerClassReport, RunInfo  # noqa: E402
from cifarlit.data import CIFAR10DataModule  # noqa: E402
from cifarlit.errors import CifarlitError  # noqa: E402
from cifarlit.model import LitMLP  # noqa: E402


class CifarTrainer(Trainer):
    """Lightning's Trainer plus ``explore``: LightningCLI builds a subcommand's options from a Trainer method,
    so defining it here gives ``cifarlit explore`` the same ``--data.*`` options and config files as ``fit``."""

    def explore(
        self,
        model: LitMLP,
        datamodule: CIFAR10DataModule,
        format: Literal["table", "json"] = "table",
        samples_per_class: int = 8,
        grid_path: str | None = "explore.png",
        log_grid: bool = False,
    ) -> dict:
        """Describe the data per split: sizes, classes, channels, resolution, dtype, range, mean/std, balance.

        Args:
            format: ``table`` for people, ``json`` for scripts.
            samples_per_class: images per class in the sample grid.
            grid_path: where to save the PNG grid of samples (``null`` for none).
            log_grid: also log the grid to the run's TensorBoard logger.
        """
        from cifarlit import report

        datamodule.prepare_data()
        datamodule.setup("fit")
        classes = datamodule.classes
        splits = {
            name: report.describe(ds.x, ds.y, classes)
            for name, ds in (
                ("train", datamodule.train_set),
                ("val", datamodule.val_set),
                ("test", datamodule.test_set),
            )
        }
        print(report.to_json(splits, classes) if format == "json" else report.format_table(splits, classes))
        if grid_path or log_grid:
            ds = datamodule.train_set
            fig = report.sample_grid(ds.x, ds.y, classes, samples_per_class, Path(grid_path or "explore.png"))
            if grid_path and format == "table":
                print(f"\nsample grid: {grid_path}")
            if log_grid and self.logger is not None:
                self.logger.experiment.add_figure("explore/samples", fig)
                self.logger.experiment.flush()
        return splits

    def predict(
        self,
        model: LitMLP | None = None,
        dataloaders=None,
        datamodule: CIFAR10DataModule | None = None,
        return_predictions: bool | None = None,
        ckpt_path: str | None = None,
        weights_only: bool | None = None,
        output: str | None = None,
        probabilities: bool = False,
    ) -> list[torch.Tensor]:
        """Predict the test split, or the images in ``--data.predict_dir``, and write them to a CSV.

        Args:
            return_predictions: ignored: the CSV needs them, so they are always kept (and returned).
            ckpt_path: the trained checkpoint; it holds the weights, the class names and the normalization
                statistics, so the training data need not be on disk.
            output: the CSV to write (``id,label``; ``id`` is the file-name stem, or the index in the test
                split). Default: ``predictions.csv`` in the run directory, or here without a logger.
            probabilities: add a ``prob_<class>`` column per class.
        """
        from cifarlit.predict import write_csv

        if self.world_size > 1:
            raise CifarlitError(
                "predict writes one CSV from one process: run it with --trainer.devices 1 and no DDP strategy."
            )
        batches = super().predict(model, dataloaders, datamodule, True, ckpt_path, weights_only)
        probs = torch.cat([b.float().cpu() for b in batches])  # (N, num_classes), each row sums to 1
        dm = self.datamodule
        ids = getattr(dm, "predict_ids", None) or [str(i) for i in range(len(probs))]
        classes = tuple(dm.classes) if dm is not None else tuple(str(i) for i in range(probs.shape[1]))
        if len(classes) != probs.shape[1]:
            raise CifarlitError(
                f"the model predicts {probs.shape[1]} classes but the data names {len(classes)} ({list(classes)}): "
                "use the checkpoint and data of the same training run."
            )
        path = Path(output) if output else Path(self.log_dir if self.logger else ".") / "predictions.csv"
        write_csv(path, ids, probs, classes, probabilities)
        print(f"predictions for {len(ids)} images: {path}")
        return batches


class CifarCLI(LightningCLI):
    """LightningCLI that links the data's class count into the model and tests the best checkpoint after fit."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "explore": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, test the best checkpoint on the test split.",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else None
        if config is None:
            return
        ckpt = config.get("ckpt_path")
        if self.subcommand == "predict" and (not ckpt or ckpt in ("last", "best", "hpc", "registry")):
            raise CifarlitError(
                f"predict needs --ckpt_path with a checkpoint file written by `cifarlit fit` (got {ckpt!r}), e.g. "
                "lightning_logs/default/version_0/checkpoints/last.ckpt."
            )
        if ckpt and ckpt not in ("last", "best", "hpc", "registry"):
            check_checkpoint(Path(ckpt))
        if self.subcommand == "fit" and ckpt:
            resume_into_same_run(config, ckpt)

    def before_fit(self) -> None:
        self.trainer.callbacks += [RunInfo(), PerClassReport()]

    def before_test(self) -> None:
        self.trainer.callbacks.append(PerClassReport())

    def before_predict(self) -> None:
        # The model comes from the checkpoint's own hyperparameters: the data (and so data.num_classes, linked
        # into the config's model) may be absent or different when predicting new images.
        ckpt = self.config.predict.ckpt_path
        self.model = type(self.model).load_from_checkpoint(ckpt, map_location="cpu")

    def after_fit(self) -> None:
        trainer = self.trainer
        checks = [cb for cb in trainer.callbacks if isinstance(cb, OverfitCheck)]
        if any(cb.passed is False for cb in checks):
            sys.exit(1)  # the debug ladder's FAIL is an exit status scripts can act on
        if not self.config.fit.get("test_after_fit", True) or trainer.interrupted or trainer.fast_dev_run:
            return
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None)


def check_checkpoint(path: Path) -> None:
    """Fail with one sentence naming the file if it is missing, truncated or not a cifarlit checkpoint."""
    import torch

    if not path.is_file():
        raise CifarlitError(
            f"--ckpt_path {path} does not exist; pass a checkpoint file (lightning_logs/<name>/version_N/checkpoints/"
            "*.ckpt), or 'last' to resume the newest run of a fit."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for damaged files
        raise CifarlitError(
            f"--ckpt_path {path} cannot be read ({err.__class__.__name__}); it may be truncated by a crash: use "
            "another checkpoint from the same folder, e.g. last.ckpt or the best epoch."
        ) from None
    state = ckpt.get("state_dict", {}) if isinstance(ckpt, dict) else {}
    if not any(key.startswith("net.") for key in state) or "hyper_parameters" not in ckpt:
        raise CifarlitError(
            f"--ckpt_path {path} is not a cifarlit checkpoint (no LitMLP weights and hyperparameters in it)."
        )


def resume_into_same_run(config, ckpt: str) -> None:
    """Point the TensorBoard logger at the run being resumed, so curves and checkpoints continue in one folder.

    ``--ckpt_path last`` resumes the newest ``version_N`` of the configured logger name; a checkpoint path
    inside ``<save_dir>/<name>/version_N/checkpoints/`` resumes that run.
    """
    logger = config.trainer.get("logger")
    args = getattr(logger, "init_args", None)
    if (
        args is None
        or not str(getattr(logger, "class_path", "")).endswith("TensorBoardLogger")
        or args.get("version") is not None
    ):
        return
    run_root = Path(args.get("save_dir") or "lightning_logs") / (args.get("name") or "lightning_logs")
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


def build_cli(args: list[str] | None, callbacks: list | None = None) -> CifarCLI:
    return CifarCLI(
        LitMLP,
        CIFAR10DataModule,
        trainer_class=CifarTrainer,
        save_config_kwargs={"overwrite": True},  # re-running or resuming into a run directory is fine
        trainer_defaults={"callbacks": callbacks} if callbacks else None,  # added to the config's callbacks
        args=args,
    )


def run_fit(args: list[str], extra_callbacks: list | None = None) -> CifarCLI:
    """``cifarlit fit ARGS`` in this process, with callbacks that cannot come from YAML (e.g. Optuna's pruner)."""
    return build_cli(["fit", *args], extra_callbacks)


def cli_main(args: list[str] | None = None) -> CifarCLI | None:
    """Entry point; user mistakes end in one sentence on stderr and exit status 2, not a traceback."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] == ["compare"]:  # reads finished runs: needs no model, data or trainer
            from cifarlit.compare import main

            sys.exit(main(argv[1:]))
        if argv[:1] == ["tune"]:  # many fits under an Optuna study
            from cifarlit.tune import main

            sys.exit(main(argv[1:]))
        if argv[:1] == ["export"]:  # a checkpoint in, one model file out: needs no data or trainer
            from cifarlit.export import main

            sys.exit(main(argv[1:]))
        return build_cli(args)
    except CifarlitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """The ``cifarlit`` console script: it passes the return value to ``sys.exit``, so returning the CLI object
    (as :func:`cli_main` does, for tests) would print its repr and end every successful command with status 1."""
    cli_main()


if __name__ == "__main__":
    main()

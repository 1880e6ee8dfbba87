"""``cifarlit`` / ``python -m cifarlit``: LightningCLI with fit / validate / test / predict / explore, plus compare,
export, tune, prepare and serve."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Literal

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations must never phone home

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402

from cifarlit.data.datamodule import CIFAR10DataModule  # noqa: E402
from cifarlit.data.shapes import check_image_shape  # noqa: E402
from cifarlit.models import transfer  # noqa: E402
from cifarlit.models.lit_mlp import LitMLP  # noqa: E402
from cifarlit.training import runs
from cifarlit.training.callbacks import OverfitCheck, PerClassReport, RunRecord  # noqa: E402
from cifarlit.training.trainer import CifarTrainer  # noqa: E402
from cifarlit.utils import checkpoints
from cifarlit.utils.errors import CifarlitError, report  # noqa: E402


class CifarCLI(LightningCLI):
    """LightningCLI that links the data's class count into the model and tests the best checkpoint after fit."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "explore": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        # as a list: the model's hparams.yaml must be plain YAML (see LitMLP.__init__)
        parser.link_arguments("data.image_shape", "model.image_shape", compute_fn=list, apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, test the best checkpoint on the test split.",
        )
        parser.add_argument(
            "--test_tta",
            type=Literal["none", "flip"],
            default="none",
            help="Test-time augmentation of the test after fit: flip scores each image with its mirror too.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        if config is None:
            return
        if config.get("trainer") is not None:
            check_trainer_numbers(config.trainer)
        ckpt = config.get("ckpt_path")
        if subcommand == "predict" and (not ckpt or ckpt in ("last", "best", "hpc", "registry")):
            raise CifarlitError(
                f"predict needs --ckpt_path with a checkpoint file written by `cifarlit fit` (got {ckpt!r}), e.g. "
                "lightning_logs/default/version_0/checkpoints/last.ckpt."
            )
        # A keyword becomes the file it means, so that file is checked like any other (Lightning would read it
        # unchecked); refused here, in one sentence, before LightningCLI reads the file for its hyperparameters.
        if "ckpt_path" in config:
            ckpt = config.ckpt_path = runs.checkpoint_file(ckpt, subcommand, config)
        if ckpt:
            state = checkpoints.load_checkpoint(Path(ckpt), LitMLP, trusted=_named_classes(config))
            if subcommand != "predict":  # predict reads new images at the trained size whatever the options say
                check_image_shape(state, config.data, ckpt)
        elif subcommand == "fit" and (config.get("model") or {}).get("init_from"):
            # read when the fit starts (LitMLP.setup); read here too, so a bad file leaves no run folder behind
            transfer.read_weights(Path(config.model.init_from))
        if "weights_only" in config:  # what Lightning's own reads use: tensors and plain values, never code
            if config.weights_only is False:
                raise CifarlitError(
                    "--weights_only false is not supported: cifarlit reads checkpoints as tensors and plain values "
                    "only (weights_only true), since unpickling anything else can run code from the file."
                )
            config.weights_only = True

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else None
        if config is None:
            return
        if self.subcommand == "fit" and config.get("ckpt_path"):
            runs.resume_into_same_run(config, config.ckpt_path)
        if self.subcommand != "explore":  # it writes a run folder only for its grid, at the end
            runs.claim_run_dir(config)

    def before_test(self) -> None:
        self.trainer.callbacks.append(PerClassReport())

    def before_predict(self) -> None:
        # The model comes from the checkpoint's own hyperparameters: the data (and so data.num_classes, linked
        # into the config's model) may be absent or different when predicting new images.
        ckpt = self.config.predict.ckpt_path
        self.model = type(self.model).load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)

    def after_fit(self) -> None:
        trainer = self.trainer
        checks = [cb for cb in trainer.callbacks if isinstance(cb, OverfitCheck)]
        if any(cb.passed is False for cb in checks):
            sys.exit(1)  # the debug ladder's FAIL is an exit status scripts can act on
        if not self.config.fit.get("test_after_fit", True) or trainer.interrupted or trainer.fast_dev_run:
            return
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        trainer.callbacks.append(PerClassReport())  # not during fit: every callback costs every training step
        trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None, weights_only=True,
                     tta=self.config.fit.get("test_tta", "none"))  # fmt: skip


def build_cli(args: list[str] | None, callbacks: list | None = None) -> CifarCLI:
    return CifarCLI(
        LitMLP,
        CIFAR10DataModule,
        trainer_class=CifarTrainer,
        save_config_callback=RunRecord,  # config.yaml, run_info.json and the TensorBoard hparams
        save_config_kwargs={"overwrite": True},  # re-running or resuming into a run directory is fine
        trainer_defaults={"callbacks": callbacks} if callbacks else None,  # added to the config's callbacks
        args=args,
    )


# Trainer options whose invalid values Lightning reports as a traceback (or a division by zero, or not at all):
# each with what is valid, checked before anything is built.
TRAINER_NUMBERS = {
    "max_epochs": ("a whole number >= 0, or -1 for no limit", lambda v: v is None or _whole(v, -1)),
    "min_epochs": ("a whole number >= 0", lambda v: v is None or _whole(v, 0)),
    "max_steps": ("a whole number >= 0, or -1 for no limit", lambda v: _whole(v, -1)),
    "min_steps": ("a whole number >= 0", lambda v: v is None or _whole(v, 0)),
    "accumulate_grad_batches": ("a whole number >= 1", lambda v: _whole(v, 1)),
    "check_val_every_n_epoch": ("a whole number >= 1, or null", lambda v: v is None or _whole(v, 1)),
    "log_every_n_steps": ("a whole number >= 0 (0: never)", lambda v: v is None or _whole(v, 0)),
    "num_sanity_val_steps": ("a whole number >= 0, or -1 for the whole split", lambda v: v is None or _whole(v, -1)),
    "reload_dataloaders_every_n_epochs": ("a whole number >= 0", lambda v: _whole(v, 0)),
    "num_nodes": ("a whole number >= 1", lambda v: _whole(v, 1)),
    "devices": ("a count >= 1, -1 for all, 'auto' or a list of device indices", lambda v: _devices(v)),
    "fast_dev_run": ("true, false or a number of batches >= 0", lambda v: isinstance(v, bool) or _whole(v, 0)),
    "gradient_clip_val": ("a number >= 0, or null", lambda v: v is None or _number(v, 0)),
    "val_check_interval": ("a fraction of an epoch in (0, 1] or a whole number of batches >= 1",
                           lambda v: not _number(v, -math.inf) or _share(v, 1) and v != 0),
    "overfit_batches": ("a fraction in [0, 1] or a whole number of batches >= 0", lambda v: _share(v, 0)),
}  # fmt: skip
TRAINER_NUMBERS |= {
    f"limit_{split}_batches": ("a fraction in [0, 1] or a whole number of batches >= 0, or null",
                               lambda v: v is None or _share(v, 0))
    for split in ("train", "val", "test", "predict")
}  # fmt: skip


def check_trainer_numbers(trainer) -> None:
    """Refuse a Trainer count or fraction out of its range, naming the option, the value and what is valid."""
    for option, (valid, ok) in TRAINER_NUMBERS.items():
        value = trainer.get(option)
        if option in trainer and not ok(value):
            raise CifarlitError(f"trainer.{option}={value!r} is not valid: use {valid}.")


def _whole(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _number(value, least: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= least


def _share(value, least_count: int) -> bool:
    """A fraction in [0, 1] (a float) or a count (an int) of at least ``least_count``."""
    return _whole(value, least_count) or (isinstance(value, float) and 0 <= value <= 1)


def _devices(value) -> bool:
    """A device count is -1 (all) or >= 1; "0" arrives as a string (devices may also be a list or "auto")."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    return not isinstance(value, int) or isinstance(value, bool) or value == -1 or value >= 1


def _named_classes(config) -> dict[str, str]:
    """The class paths the user's own config names for the model's factories: a checkpoint may name them too."""
    model = config.get("model") or {}
    named = {key: getattr(model.get(key), "class_path", None) for key in ("net", "optimizer", "lr_scheduler")}
    return {key: path for key, path in named.items() if isinstance(path, str)}


def run_fit(args: list[str], extra_callbacks: list | None = None) -> CifarCLI:
    """``cifarlit fit ARGS`` in this process, with callbacks that cannot come from YAML (e.g. Optuna's pruner)."""
    return build_cli(["fit", *args], extra_callbacks)


def cli_main(args: list[str] | None = None) -> CifarCLI | None:
    """Entry point; user mistakes end in one sentence on stderr and exit status 2, not a traceback."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] == ["compare"]:  # reads finished runs: needs no model, data or trainer
            from cifarlit.commands.compare import main

            sys.exit(main(argv[1:]))
        if argv[:1] == ["tune"]:  # many fits under an Optuna study; each trial is `fit` through this CLI
            from cifarlit.commands.tune import main

            sys.exit(main(argv[1:], run_fit))
        if argv[:1] == ["prepare"]:  # a dataset written once as LitData chunks: needs no model or trainer
            from cifarlit.commands.prepare import main

            sys.exit(main(argv[1:]))
        if argv[:1] == ["export"]:  # a checkpoint in, one model file out: needs no data or trainer
            from cifarlit.commands.export import main

            sys.exit(main(argv[1:]))
        if argv[:1] == ["serve"]:  # a model behind HTTP (LitServe): needs no data or trainer
            try:
                from cifarlit.commands.serve import main
            except ModuleNotFoundError as err:  # an optional extra
                raise CifarlitError(f"cifarlit serve needs {err.name}: pip install 'cifarlit[serve]'.") from None
            sys.exit(main(argv[1:]))
        return build_cli(args)
    except CifarlitError as err:
        sys.exit(report(err))


def main() -> None:
    """The ``cifarlit`` console script: it passes the return value to ``sys.exit``, so returning the CLI object
    (as :func:`cli_main` does, for tests) would print its repr and end every successful command with status 1."""
    cli_main()


if __name__ == "__main__":
    main()

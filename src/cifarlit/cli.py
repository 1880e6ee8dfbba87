"""``cifarlit`` / ``python -m cifarlit``: LightningCLI with fit / validate / test / predict / explore, plus compare,
export, tune, prepare and serve."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations must never phone home

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402

from cifarlit import checkpoints, runs  # noqa: E402
from cifarlit.callbacks import OverfitCheck, PerClassReport, RunRecord  # noqa: E402
from cifarlit.data import CIFAR10DataModule  # noqa: E402
from cifarlit.errors import CifarlitError, report  # noqa: E402
from cifarlit.model import LitMLP  # noqa: E402
from cifarlit.trainer import CifarTrainer  # noqa: E402


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
        ckpt = config.get("ckpt_path")
        if subcommand == "predict" and (not ckpt or ckpt in ("last", "best", "hpc", "registry")):
            raise CifarlitError(
                f"predict needs --ckpt_path with a checkpoint file written by `cifarlit fit` (got {ckpt!r}), e.g. "
                "lightning_logs/default/version_0/checkpoints/last.ckpt."
            )
        # Refused here, in one sentence, before LightningCLI reads the file for its hyperparameters.
        if ckpt and ckpt not in ("last", "best", "hpc", "registry"):
            state = checkpoints.load_checkpoint(Path(ckpt))
            if subcommand != "predict":  # predict reads new images at the trained size whatever the options say
                check_image_shape(state, config.data, ckpt)
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


def check_image_shape(state: dict, data, ckpt: str) -> None:
    """Refuse to test or resume a checkpoint on images of another shape than it was trained on."""
    trained = (state.get(CIFAR10DataModule.__qualname__) or {}).get("image_shape")
    wanted = [data.get("channels", 3), data.get("image_size", 32), data.get("image_size", 32)]
    if trained is not None and list(trained) != wanted:
        raise CifarlitError(
            f"--ckpt_path {ckpt} was trained on images of shape {list(trained)} (channels, height, width), but "
            f"data.image_size/data.channels give {wanted}: set them as in training."
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
        if argv[:1] == ["tune"]:  # many fits under an Optuna study; each trial is `fit` through this CLI
            from cifarlit.tune import main

            sys.exit(main(argv[1:], run_fit))
        if argv[:1] == ["prepare"]:  # a dataset written once as LitData chunks: needs no model or trainer
            from cifarlit.prepare import main

            sys.exit(main(argv[1:]))
        if argv[:1] == ["export"]:  # a checkpoint in, one model file out: needs no data or trainer
            from cifarlit.export import main

            sys.exit(main(argv[1:]))
        if argv[:1] == ["serve"]:  # a model behind HTTP (LitServe): needs no data or trainer
            try:
                from cifarlit.serve import main
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

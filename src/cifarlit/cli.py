"""``cifarlit`` / ``python -m cifarlit``: LightningCLI with fit / validate / test / predict."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations must never phone home

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402

from cifarlit.data import CIFAR10DataModule  # noqa: E402
from cifarlit.errors import CifarlitError  # noqa: E402
from cifarlit.model import LitMLP  # noqa: E402


class CifarCLI(LightningCLI):
    """LightningCLI that links the data's class count into the model and tests the best checkpoint after fit."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="After fit, test the best checkpoint on the test split."
        )

    def after_fit(self) -> None:
        trainer = self.trainer
        if not self.config.fit.get("test_after_fit", True) or trainer.interrupted or trainer.fast_dev_run:
            return
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None)


def cli_main(args: list[str] | None = None) -> CifarCLI | None:
    """Entry point; user mistakes end in one sentence on stderr and exit status 2, not a traceback."""
    try:
        return CifarCLI(
            LitMLP,
            CIFAR10DataModule,
            save_config_kwargs={"overwrite": True},  # re-running or resuming into a run directory is fine
            args=args,
        )
    except CifarlitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli_main()

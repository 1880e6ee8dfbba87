"""``cifarlit`` / ``python -m cifarlit``: LightningCLI's fit / validate / test / predict plus explore, and the commands
beside it (compare, export, prepare, serve, tune), whose options jsonargparse reads from the signature of their
``main`` function as LightningCLI reads a class's (:func:`run_command`).

Every mistake on the command line ends in one sentence on stderr and exit status 2, jsonargparse's own included.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import typing
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations must never phone home

from jsonargparse import ArgumentError, ArgumentParser  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402

from cifarlit.data.datamodule import CIFAR10DataModule  # noqa: E402
from cifarlit.data.shapes import check_image_shape, check_image_size  # noqa: E402
from cifarlit.models import factories, transfer  # noqa: E402
from cifarlit.models.lit_mlp import LitMLP  # noqa: E402
from cifarlit.training import finders, predict, runs, trackers  # noqa: E402
from cifarlit.training.callbacks import DEFAULTS, OverfitCheck, PerClassReport, RunRecord, kept_defaults  # noqa: E402
from cifarlit.training.trainer import CifarTrainer, check_numbers  # noqa: E402
from cifarlit.utils import checkpoints  # noqa: E402
from cifarlit.utils.errors import CifarlitError, report  # noqa: E402

SUBCOMMANDS = ("fit", "validate", "test", "predict", "explore")  # LightningCLI's, run by CifarCLI
COMMANDS = ("compare", "export", "prepare", "serve", "tune")  # cifarlit.commands.<name>.main, run by run_command
RUN_CHOICES = ("tta",)  # model options a test or predict takes from its own config, not from the checkpoint's


class CifarCLI(LightningCLI):
    """LightningCLI that links the data's class count into the model, adds the default callbacks (each a top-level
    option, see ``training.callbacks.DEFAULTS``), checks a checkpoint before anything reads it and reads it once,
    tests the best checkpoint after fit, and writes predict's CSV."""

    checkpoint: dict | None = None  # the --ckpt_path file, read and checked once by parse_arguments

    def __init__(self, *args, run_name: tuple[str, str] | None = None, **kwargs) -> None:
        self.run_name = run_name  # (name, version) of the run in every logger (tune's trials), see trackers.name_run
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "explore": {"model", "datamodule"}}

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        options = kwargs.pop("options", None)  # parser_kwargs={"predict": {"options": f}}: f's arguments as well
        parser = super().init_parser(**kwargs)
        if options is not None:
            parser.add_function_arguments(options, as_group=False)
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        # as a list: the model's hparams.yaml must be plain YAML (see LitMLP.__init__)
        parser.link_arguments("data.image_shape", "model.image_shape", compute_fn=list, apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="After fit, test the best checkpoint on the test split."
        )
        parser.add_argument(
            "--find_lr", type=bool, default=False, help="Before fit, run Lightning's learning-rate finder and train "
            "at the rate it suggests (printed, plotted to lr_find.png and written to the run's config.yaml)."
        )  # fmt: skip
        parser.add_argument(
            "--find_batch_size", type=bool, default=False, help="Before fit (and --find_lr), double data.batch_size "
            "until a step runs out of accelerator memory and train with the largest that fitted (GPU only)."
        )  # fmt: skip
        for key, (base, cls, init_args) in DEFAULTS.items():
            parser.add_subclass_arguments(base, key, required=False, fail_untyped=False, help=f"Default callback; "
                                          f"null switches it off. Default: {cls.__name__}({init_args}).")  # fmt: skip
            parser.set_defaults({key: {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": init_args}})

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        if config is None:
            return
        if config.get("trainer") is not None:
            check_numbers(config.trainer)
        if isinstance((config.get("data") or {}).get("image_size"), int):  # before a run folder is claimed
            check_image_size(config.data.image_size)
        if subcommand == "fit" and any(config.get(flag) for flag in finders.FLAGS):
            finders.check_options(config)
        ckpt = config.get("ckpt_path")
        if subcommand == "predict" and (not ckpt or ckpt in ("last", "best", "hpc", "registry")):
            raise CifarlitError(
                f"predict needs --ckpt_path with a checkpoint file written by `cifarlit fit` (got {ckpt!r}), e.g. "
                "lightning_logs/default/version_0/checkpoints/last.ckpt."
            )
        # A keyword becomes the file it means, so that file is checked like any other (Lightning would read it
        # unchecked); refused here, in one sentence, before anything acts on the file.
        if "ckpt_path" in config:
            ckpt = config.ckpt_path = runs.checkpoint_file(ckpt, subcommand, config)
        if ckpt:
            self.checkpoint = checkpoints.load_checkpoint(Path(ckpt), LitMLP, trusted=_named_classes(config))
            if subcommand != "predict":  # predict reads new images at the trained size whatever the options say
                check_image_shape(self.checkpoint, config.data, ckpt)
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

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's own reads the checkpoint again, for the hyperparameters it merges into the config's model;
        this merges those of the file parse_arguments read and checked. The one private hook of LightningCLI that
        cifarlit overrides: tests/test_predict.py counts the reads, and fails if a Lightning release changes it."""
        if self.checkpoint is None:
            return
        subcommand = self.config.subcommand
        hparams = {k: v for k, v in self.checkpoint["hyper_parameters"].items()
                   if k != "_instantiator" and k not in RUN_CHOICES}  # fmt: skip
        if hparams:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        if subcommand != "predict":  # only predict builds its module from it; the others let Lightning restore
            self.checkpoint = None

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else None
        if config is None:
            return
        trackers.check(config)
        if self.run_name:
            trackers.name_run(config, *self.run_name)
        if self.subcommand == "fit" and config.get("ckpt_path"):
            runs.resume_into_same_run(config, config.ckpt_path)
        if self.subcommand != "explore":  # it writes a run folder only for its grid, at the end
            runs.claim_run_dir(config)

    def instantiate_trainer(self, **kwargs) -> CifarTrainer:
        """The Trainer, with the config's ``trainer.callbacks`` and the default callbacks it keeps."""
        config = self.config_init.get(str(self.subcommand)) or self.config_init
        trainer = config.get("trainer") or {}
        listed = trainer.get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        defaults = kept_defaults({key: config.get(key) for key in DEFAULTS}, trainer)
        return super().instantiate_trainer(**{"callbacks": [*listed, *defaults], **kwargs})

    def before_fit(self) -> None:
        # What a finder finds is the run's: config.yaml (written when the fit starts) records it, finders off.
        config = self.config.fit
        if config.get("find_batch_size"):
            finders.check_device(self.trainer)
            config.data.batch_size = finders.find_batch_size(self.trainer, self.model, self.datamodule)
            config.find_batch_size = False
        if config.get("find_lr"):
            lr, _ = finders.find_lr(self.trainer, self.model, self.datamodule)
            factories.write_learning_rate(config.model, lr, factories.rate_argument(self.model.lr_scheduler))
            config.find_lr = False

    def before_test(self) -> None:
        self.trainer.callbacks.append(PerClassReport())

    def before_predict(self) -> None:
        config = self.config.predict
        if self.trainer.world_size > 1:
            raise CifarlitError(
                "predict writes one CSV from one process: run it with --trainer.devices 1 and no DDP strategy."
            )
        # The module comes from the checkpoint alone: the data (and so data.num_classes, linked into the config's
        # model) may be absent or different when predicting new images.
        checkpoint, self.checkpoint = self.checkpoint, None
        self.model = predict.module_from(checkpoint, LitMLP, **{key: config.model[key] for key in RUN_CHOICES})
        path = predict.csv_path(config.output, self.trainer, config.ckpt_path)
        self.trainer.callbacks.append(predict.PredictionsCSV(path, config.probabilities, checkpoint))
        self.config_init.predict.ckpt_path = None  # restored from the file read once: Lightning reads it no more

    def after_fit(self) -> None:
        trainer = self.trainer
        checks = [cb for cb in trainer.callbacks if isinstance(cb, OverfitCheck)]
        if any(cb.passed is False for cb in checks):
            sys.exit(1)  # the debug ladder's FAIL is an exit status scripts can act on
        if not self.config.fit.get("test_after_fit", True) or trainer.interrupted or trainer.fast_dev_run:
            return
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        trainer.callbacks.append(PerClassReport())  # not during fit: every callback costs every training step
        trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None, weights_only=True)


def build_cli(
    args: list[str] | None, callbacks: list | None = None, run: bool = True, run_name: tuple[str, str] | None = None
) -> CifarCLI:
    """``cifarlit SUBCOMMAND ARGS`` through LightningCLI; ``callbacks`` are added to the config's (e.g. tune's pruner,
    which cannot come from YAML), ``run_name`` names the run in every logger. With ``run=False`` ARGS name no
    subcommand: the classes are built, not run."""
    no_exit = {"exit_on_error": False}  # a parse error is raised, and reported as one sentence
    try:
        return CifarCLI(
            LitMLP,
            CIFAR10DataModule,
            trainer_class=CifarTrainer,
            save_config_callback=RunRecord,  # config.yaml and run_info.json, in the run folder and each tracker
            save_config_kwargs={"overwrite": True},  # re-running or resuming into a run directory is fine
            trainer_defaults={"callbacks": callbacks} if callbacks else None,
            parser_kwargs={
                **no_exit,
                **{name: dict(no_exit) for name in SUBCOMMANDS},
                "predict": {**no_exit, "options": predict.options},
            },  # fmt: skip
            args=args,
            run=run,
            run_name=run_name,
        )
    except ArgumentError as err:
        subcommand = next((arg for arg in args or sys.argv[1:] if arg in SUBCOMMANDS), None)
        sys.exit(report(parse_error(err, f"cifarlit {subcommand}" if subcommand else "cifarlit")))


def _named_classes(config) -> dict[str, str]:
    """The class paths the user's own config names for the model's factories: a checkpoint may name them too."""
    model = config.get("model") or {}
    named = {key: getattr(model.get(key), "class_path", None) for key in ("net", "optimizer", "lr_scheduler")}
    return {key: path for key, path in named.items() if isinstance(path, str)}


TYPE_WORDS = {
    "int": "a whole number",
    "float": "a number",
    "str": "a text",
    "bool": "true or false",
    "NoneType": "null",
}


def parse_error(err: ArgumentError, prog: str, valid: typing.Mapping[str, str] | None = None) -> CifarlitError:
    """jsonargparse's complaint as one sentence: the option, the value and what would be valid (from ``valid``,
    option name: what is valid, else from the types jsonargparse expected)."""
    text = re.sub(r"<class '([\w.]+)'>", r"\1", " ".join(str(err).split()))
    keyed = re.match(r'Parser key "([\w.]+)":\s*(.*)$', text)
    key = keyed.group(1) if keyed else ""
    given = re.search(r"(?:Got|Given) value: (.+?)(?: Given value type:.*)?$", text)
    unknown = re.search(r"Option '([\w.]+)' is not accepted", text)
    required = re.match(r"the following arguments are required: ([\w., ]+)$", text)
    if given and key in (valid or {}):
        return CifarlitError(f"--{key} {given.group(1)!r} is not valid: use {valid[key]}.")
    if required:
        names = " and ".join(f"--{name.strip()}" for name in required.group(1).split(","))
        return CifarlitError(f"{prog} needs {names}; see `{prog} --help` for what to pass.")
    if keyed and unknown:
        return CifarlitError(f"--{key}.{unknown.group(1)} is not an option of --{key}; see `{prog} --help`.")
    missing = re.search(r"module '([\w.]+)' has no attribute '(\w+)'", text)
    if keyed and given and missing:
        return CifarlitError(f"--{key} {given.group(1)!r} is not valid: {missing.group(1)} has no {missing.group(2)}.")
    expected = re.findall(
        r"Expected an? (typing\.Literal\[[^\]]*\]|\w+(?:\.\w+)*)(?=\.? -|\.? Got|\.? Given|\.?$)", text
    )
    if keyed and given and expected:
        words = [item[15:-1] if item.startswith("typing.Literal[") else TYPE_WORDS.get(item, item) for item in expected]
        return CifarlitError(f"--{key} {given.group(1)!r} is not valid: use {' or '.join(words)}.")
    if keyed:
        text = f"--{key}: {keyed.group(2)}"
    if len(text) > 300:  # a union's error lists every type it tried
        text = text[:300].rsplit(" ", 1)[0] + " ..."
    return CifarlitError(f"{text.rstrip('.')}; see `{prog} --help` for the options.")


# --- the commands beside LightningCLI's ---------------------------------------------------------------------------


def run_command(name: str, argv: list[str]) -> int | None:
    """``cifarlit NAME ARGS``: ``cifarlit.commands.NAME.main`` called with the options jsonargparse parses from its
    signature (its docstring's ``Args:`` are the ``--help``), after ``-c/--config`` files of them.

    Three conventions of a ``main``: a required ``list[str]`` argument takes the positional values (compare's runs);
    an argument ``data`` takes fit's ``--data.*`` options, and its ``-c`` files are fit configs, whose ``data:``
    section it reads as fit does (prepare); ``fit_args`` takes every argument that is not its own, ``-c`` files
    included, and ``run_fit`` runs one fit with them (tune). A ``bool`` option may be given alone (``--overwrite``).
    """
    module = _command_module(name)
    main, prog = module.main, f"cifarlit {name}"
    arguments = inspect.signature(main).parameters
    hints = typing.get_type_hints(main)
    injected = {}
    parser = ArgumentParser(prog=prog, description=inspect.getdoc(main).split("\n\n")[0], exit_on_error=False)
    if "fit_args" in arguments:
        argv, injected["fit_args"] = _own_arguments(argv, arguments, hints)
        injected["run_fit"] = run_fit
    elif "data" in arguments:
        argv = _data_sections(argv)
        parser.add_class_arguments(CIFAR10DataModule, "data", instantiate=False, sub_configs=True)
    else:
        parser.add_argument("-c", "--config", action="config", help="A YAML file of these options.")
    positional = [key for key, p in arguments.items()
                  if key not in injected and p.default is p.empty and hints.get(key) == list[str]]  # fmt: skip
    for key in positional:
        parser.add_argument(key, nargs="+", help=_argument_help(main, key))
    parser.add_function_arguments(main, as_group=False, skip={*injected, *positional, "data"})
    try:
        options = parser.parse_args(_bare_flags(argv, hints))
    except ArgumentError as err:
        raise parse_error(err, prog, getattr(module, "VALID", None)) from None
    options = {key: value for key, value in vars(options).items() if key in arguments}
    if "data" in options:
        options["data"] = options["data"].as_dict()
    return main(**options, **injected)


def _command_module(name: str):
    try:
        return importlib.import_module(f"cifarlit.commands.{name}")
    except ModuleNotFoundError as err:  # an optional extra (serve's LitServe)
        if err.name.startswith("cifarlit"):
            raise
        raise CifarlitError(f"cifarlit {name} needs {err.name}: pip install 'cifarlit[{name}]'.") from None


def _argument_help(function, name: str) -> str | None:
    import docstring_parser  # jsonargparse's own reader of the Args: section

    return next((p.description for p in docstring_parser.parse(inspect.getdoc(function)).params
                 if p.arg_name == name), None)  # fmt: skip


def _bare_flags(argv: list[str], hints: dict) -> list[str]:
    """``--flag`` alone, followed by nothing or another option, as ``--flag true`` for a bool option."""
    flags = {f"--{key}" for key, hint in hints.items() if hint is bool}
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in flags and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("true")
    return out


def _own_arguments(argv: list[str], arguments, hints: dict) -> tuple[list[str], list[str]]:
    """``argv`` split into the options of the command (``--name value``, ``--name=value``, ``-h``) and the rest."""
    own_names = {f"--{key}" for key in arguments if key not in ("fit_args", "run_fit")} | {"-h", "--help"}
    own, rest, i = [], [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        takes_value = name not in ("-h", "--help") and "=" not in argv[i] and hints.get(name[2:]) is not bool
        if name in own_names:
            own += argv[i : i + 1 + takes_value]
            i += 1 + takes_value
        else:
            rest.append(argv[i])
            i += 1
    return own, rest


def _data_sections(argv: list[str]) -> list[str]:
    """Each ``-c FILE`` (a fit config) as ``--data <its data: section>``: jsonargparse checks and merges those
    options as fit would, later files and options winning; the other sections are a training's, not read."""
    import yaml

    out, configs = [], iter(argv)
    for arg in configs:
        name, _, value = arg.partition("=")
        if name not in ("-c", "--config"):
            out.append(arg)
            continue
        path = value or next(configs, "")
        try:
            section = (yaml.safe_load(Path(path).read_text()) or {}).get("data")
        except (OSError, UnicodeDecodeError, AttributeError, yaml.YAMLError) as err:
            raise CifarlitError(f"-c {path} cannot be read as a fit config ({err.__class__.__name__}): pass a "
                                "YAML config such as configs/default.yaml.") from None  # fmt: skip
        if section:
            out += ["--data", yaml.safe_dump(section)]
    return out


def run_fit(args: list[str], extra_callbacks: list | None = None, run_name: tuple[str, str] | None = None) -> CifarCLI:
    """``cifarlit fit ARGS`` in this process, with callbacks that cannot come from YAML (e.g. Optuna's pruner) and
    the run's (name, version) in every logger."""
    return build_cli(["fit", *args], extra_callbacks, run_name=run_name)


def cli_main(args: list[str] | None = None) -> CifarCLI | None:
    """Entry point; user mistakes end in one sentence on stderr and exit status 2, not a traceback."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] and argv[0] in COMMANDS:
            sys.exit(run_command(argv[0], argv[1:]) or 0)
        return build_cli(args)
    except CifarlitError as err:
        sys.exit(report(err))


def main() -> None:
    """The ``cifarlit`` console script: it passes the return value to ``sys.exit``, so returning the CLI object
    (as :func:`cli_main` does, for tests) would print its repr and end every successful command with status 1."""
    cli_main()


if __name__ == "__main__":
    main()

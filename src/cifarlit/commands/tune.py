"""``cifarlit tune``: an Optuna study over ``cifarlit fit`` runs, with pruning, shared by any number of workers.

Every trial is an ordinary ``fit`` with the given configs plus the sampled overrides (``--key value``), logged to
``lightning_logs/tune_<study>/trial_<n>`` (by a TensorBoard or CSV logger; an MLflow or W&B logger names the run
``trial_<n>`` in the experiment or project ``tune_<study>``). Optuna's Lightning callback reports the monitored
metric after each validation and stops trials that fall below the median of earlier ones at the same epoch. The
study lives in the ``--storage`` (by default Optuna's journal file ``lightning_logs/tune_<study>.journal``), so an
interrupted search resumes where it stopped, ``optuna-dashboard <storage>`` shows it, and several ``cifarlit tune``
processes, on one machine or on machines that share the folder, add trials to one study at once. Optuna numbers the
trials in the storage, so every trial has its own folder whichever worker runs it. Trials never touch the test split
(``--test_after_fit false``): the test set is for the final model.

Search spaces are YAML, one entry per option (see ``configs/tune/mlp_space.yaml``)::

    model.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    model.hidden_sizes: {type: categorical, choices: ["[256]", "[1024, 1024]"]}
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import yaml

from cifarlit.utils.errors import CifarlitError
from cifarlit.utils.files import atomic_write

KINDS = ("float", "int", "categorical")


def load_space(path: Path) -> dict[str, dict]:
    """The search space in ``path``, checked entry by entry, so that a mistake ends the command in one sentence
    before any trial instead of failing every trial."""
    if not path.is_file():
        raise CifarlitError(
            f"--space {path} is not a file; pass a YAML search space such as configs/tune/mlp_space.yaml."
        )
    try:
        space = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CifarlitError(f"--space {path} cannot be read as YAML ({err.__class__.__name__}).") from None
    if not space:
        raise CifarlitError(f"--space {path} defines no options to search.")
    if not isinstance(space, dict):
        raise CifarlitError(
            f"--space {path} holds a {type(space).__name__}, not a mapping of options to distributions such as "
            "'model.dropout: {type: float, low: 0.0, high: 0.5}'."
        )
    for key, spec in space.items():
        problem = _spec_problem(spec)
        if problem:
            raise CifarlitError(f"--space {path}: {key!r} {problem}.")
    return space


SPEC_KEYS = {"float": {"low", "high", "log"}, "int": {"low", "high", "log"}, "categorical": {"choices"}}


def _spec_problem(spec) -> str | None:
    """What is wrong with one entry of a search space, or None."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in KINDS:
        return f"has type {kind!r}; use one of {', '.join(KINDS)}"
    needed = ("choices",) if kind == "categorical" else ("low", "high")
    if not set(needed) <= set(spec) or not set(spec) - {"type"} <= SPEC_KEYS[kind]:
        return f"({kind}) needs {' and '.join(needed)}, and takes {', '.join(sorted(SPEC_KEYS[kind]))} only"
    if kind == "categorical":
        choices, plain = spec["choices"], (type(None), bool, int, float, str)  # what Optuna stores
        if not isinstance(choices, list) or not choices or not all(isinstance(c, plain) for c in choices):
            return "needs choices as a non-empty list of numbers or texts"
        return None
    number = int if kind == "int" else (int, float)
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if not all(isinstance(v, number) and not isinstance(v, bool) for v in (low, high)) or not isinstance(log, bool):
        return f"needs {kind} low and high and a true/false log"
    if low > high or (log and low <= 0):
        return f"has low {low} and high {high}; use low <= high{', both above 0 with log' if log else ''}"
    return None


def suggest(trial, space: dict[str, dict]) -> dict[str, object]:
    values = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            values[key] = trial.suggest_categorical(key, spec["choices"])
        elif spec["type"] == "int":
            values[key] = trial.suggest_int(key, spec["low"], spec["high"], log=spec.get("log", False))
        else:
            values[key] = trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False))
    return values


def as_args(values: dict[str, object]) -> list[str]:
    # Strings go as typed ("[1024, 1024]" is parsed by the CLI); numbers/bools/None in YAML spelling.
    text = {k: v if isinstance(v, str) else yaml.safe_dump(v).strip().removesuffix("\n...") for k, v in values.items()}
    return [arg for key, value in text.items() for arg in (f"--{key}", value)]


def nested(values: dict[str, object]) -> dict:
    """``{"model.optimizer.init_args.lr": 0.01}`` -> ``{"model": {"optimizer": {"init_args": {"lr": 0.01}}}}``."""
    tree: dict = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value) if isinstance(value, str) and value.startswith("[") else value
    return tree


def open_storage(storage: str | None, study_name: str) -> tuple[object, str]:
    """``--storage`` as Optuna takes it, and its name: a database URL passes through, a ``*.journal`` path becomes
    a journal storage. Without one: ``lightning_logs/tune_<study>.journal``, or the SQLite file that was the default
    before (``tune_<study>.db``) when only that exists, so a study started then still resumes.

    A file that is there must already be what it is named as (a SQLite database, an Optuna journal): Optuna would
    otherwise write its own records into it."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if storage is None:
        journal, old = Path(f"lightning_logs/tune_{study_name}.journal"), Path(f"lightning_logs/tune_{study_name}.db")
        storage = f"sqlite:///{old}" if old.is_file() and not journal.exists() else str(journal)
    if "://" in storage:  # sqlite:///file.db for one worker; postgresql://... or mysql://... for many machines
        if storage.startswith("sqlite:///") and storage != "sqlite:///":
            _make_folder(storage, _check_file(storage, Path(storage.removeprefix("sqlite:///").split("?")[0])))
        return storage, storage
    if not storage.endswith(".journal"):
        raise CifarlitError(
            f"--storage={storage} is not valid: give a journal file ending in .journal or a database URL such as "
            "sqlite:///tune.db or postgresql://user@host/db."
        )
    _make_folder(storage, _check_file(storage, Path(storage)))
    # Optuna appends each change to the file under its default lock, a symlink (atomic on local file systems and
    # NFS), the same lock optuna-dashboard and the optuna command take on this file.
    try:
        return JournalStorage(JournalFileBackend(storage)), storage
    except OSError as err:
        raise CifarlitError(f"--storage={storage} cannot be opened ({err.strerror or err}).") from None


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def _check_file(storage: str, path: Path) -> Path:
    """``path`` (a SQLite file or a journal), refused when it exists and is not one."""
    if not path.exists():
        return path
    what = "a SQLite database" if storage.startswith("sqlite:") else "an Optuna journal"
    try:
        data = path.read_bytes() if path.is_file() else None
    except OSError as err:
        raise CifarlitError(f"--storage={storage}: {path} cannot be read ({err.strerror}).") from None
    if data is None or not _is_storage(data, storage.startswith("sqlite:")):
        raise CifarlitError(
            f"--storage={storage}: {path} is not {what} (a folder, an empty or another file), so the study is not "
            "written into it: pass a new file name or the file of an earlier study."
        )
    return path


def _is_storage(data: bytes, sqlite: bool) -> bool:
    if sqlite:  # SQLite would make an empty file a database; it holds no study, so it is someone else's file
        return data.startswith(SQLITE_HEADER)
    lines = data.split(b"\n")[:-1]  # complete lines; an empty journal is Optuna's own new file
    try:
        records = [json.loads(line) for line in lines]
    except ValueError:  # not JSON, or not UTF-8
        return False
    return (not data or bool(lines)) and all(isinstance(r, dict) and "op_code" in r for r in records)


def _make_folder(storage: str, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CifarlitError(
            f"--storage={storage}: the folder {path.parent} cannot be created ({err.strerror or err}): pass a path "
            "you can write to."
        ) from None


def create_study(storage, where: str, **kwargs):
    """``optuna.create_study`` on ``storage``, or one sentence when the storage cannot be opened (no driver for the
    URL's database, a server that cannot be reached, a URL SQLAlchemy does not know)."""
    import optuna

    try:
        return optuna.create_study(storage=storage, load_if_exists=True, **kwargs)
    except Exception as err:  # SQLAlchemy, its drivers and Optuna raise many types
        raise CifarlitError(
            f"--storage={where} cannot be opened ({err.__class__.__name__}: {(str(err).splitlines() or [''])[0]}): "
            "check the URL and that its server is reachable, install its Python driver (psycopg2 for postgresql://, "
            "pymysql with mysql+pymysql://), or pass a journal file such as tune.journal."
        ) from None


def trial_seeded_sampler(seed: int, **tpe_kwargs):
    """Optuna's TPE sampler drawing trial ``n``'s settings from the seed ``(seed, n)``.

    One seed per process would make every worker of a shared study propose the same settings (all the random
    start-up trials are alike); Optuna numbers trials once per study, so ``(seed, n)`` differs between workers,
    and one worker given the same seed and results still proposes the same settings."""
    import numpy as np
    import optuna

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        # One TPE sampler per running trial; TPE reads the history from the study and keeps only its generator.
        def __init__(self) -> None:
            self.tpe: dict[int, optuna.samplers.TPESampler] = {}

        def of(self, trial) -> optuna.samplers.TPESampler:
            if trial.number not in self.tpe:
                trial_seed = int(np.random.SeedSequence([seed, trial.number]).generate_state(1)[0])
                self.tpe[trial.number] = optuna.samplers.TPESampler(seed=trial_seed, **tpe_kwargs)
            return self.tpe[trial.number]

        def before_trial(self, study, trial) -> None:
            self.of(trial).before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.of(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.of(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.of(trial).sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self.of(trial).after_trial(study, trial, state, values)
            del self.tpe[trial.number]

    return TrialSeededTPE()


def write_best(study, metric: str):
    """``lightning_logs/tune_<study>/best.yaml`` from the study's best trial, among the trials of every worker.

    Each worker writes it when it ends. Reading the best trial and writing the file happen under a lock, so the
    worker that writes last also read last, after every trial finished so far: workers may end in any order."""
    from optuna.storages.journal import JournalFileSymlinkLock

    best_file = Path("lightning_logs") / f"tune_{study.study_name}" / "best.yaml"
    best_file.parent.mkdir(parents=True, exist_ok=True)
    lock = JournalFileSymlinkLock(str(best_file))  # best.yaml.lock; one a killed worker left is broken after 30 s
    lock.acquire()
    try:
        best = study.best_trial
        with atomic_write(best_file) as f:
            f.write(f"# best of study {study.study_name}: {metric} {best.value:.4f} (trial {best.number})\n")
            f.write(yaml.safe_dump(nested(best.params), sort_keys=False))
    finally:
        lock.release()
    return best, best_file


def main(
    space: Path,
    fit_args: list[str],
    run_fit: Callable,
    n_trials: int = 20,
    study_name: str = "cifarlit",
    storage: str | None = None,
    metric: str = "val/acc",
    direction: Literal["maximize", "minimize"] = "maximize",
    seed: int = 0,
    warmup_epochs: int = 2,
    startup_trials: int = 3,
) -> int:
    """Optuna search over `cifarlit fit` runs; the options not listed here go to `fit` (e.g. -c
    configs/default.yaml -c configs/debug/subset.yaml --data.data_dir data).

    Args:
        space: YAML search space, see configs/tune/mlp_space.yaml.
        fit_args: the arguments of `cifarlit fit` (every option that is not tune's).
        run_fit: runs one `cifarlit fit` with them and extra callbacks (the CLI passes its own, so this module
            does not import the command line back).
        n_trials: trials this worker runs (others add more).
        study_name: the study's name in its storage.
        storage: where the study lives: a journal file (*.journal), safe for several workers at once, also on a
            shared file system; or a database URL: sqlite:///tune.db for one worker, postgresql://... or
            mysql://... for many machines. Default: lightning_logs/tune_<study>.journal.
        metric: the validation metric to optimize.
        direction: maximize or minimize the metric.
        seed: seed of Optuna's TPE sampler: trial n draws from (seed, n), so workers sharing a study with the
            same seed still propose different settings.
        warmup_epochs: epochs before a trial may be pruned.
        startup_trials: complete trials before pruning starts.
    """
    if n_trials < 1:
        raise CifarlitError(f"--n_trials={n_trials} is not valid: run at least 1 trial.")
    values = load_space(space)

    import optuna

    storage, where = open_storage(storage, study_name)
    study = create_study(  # loads the study if it exists: the same command resumes it, or joins its workers
        storage,
        where,
        study_name=study_name,
        direction=direction,
        # constant_liar (Optuna 5's default; 4.x warns it is experimental): trials still running in other workers
        # count as bad ones, so the workers do not all close in on one spot
        sampler=trial_seeded_sampler(seed, constant_liar=True),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs),
    )
    objective = _objective(values, fit_args, run_fit, study_name, metric, direction)
    # A trial that fails (a NaN loss, settings that do not fit the data) is recorded as failed, with its error
    # in Optuna's log, and the study goes on; a wrong option ends it (LightningCLI exits) and Ctrl-C stops it.
    study.optimize(objective, n_trials=n_trials, catch=(Exception,))
    return _summary(study, where, metric)


def _objective(space: dict, fit_args: list[str], run_fit: Callable, study_name: str, metric: str, direction: str):
    """One trial: the suggested values as fit options, a run with Optuna's pruner, the best reported metric."""
    from optuna_integration import PyTorchLightningPruningCallback

    def objective(trial) -> float:
        values = suggest(trial, space)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # who ran it, for the dashboard
        pruning = PyTorchLightningPruningCallback(trial, monitor=metric)
        run_args = [*fit_args, *as_args(values), "--test_after_fit", "false"]
        # named in whatever loggers the config has: tune_<study>/trial_<n> folders, MLflow experiment and run, ...
        names = (f"tune_{study_name}", f"trial_{trial.number}")
        cli = run_fit(run_args, extra_callbacks=[pruning], run_name=names)
        pruning.check_pruned()
        reported = list(trial.storage.get_trial(trial._trial_id).intermediate_values.values())
        if not reported:
            raise CifarlitError(f"no {metric} was logged; check --metric against the logged names.")
        if cli.trainer.interrupted:
            raise KeyboardInterrupt
        return max(reported) if direction == "maximize" else min(reported)

    return objective


def _summary(study, where: str, metric: str) -> int:
    """Print what the study holds and write its best settings; 1 when no trial completed."""
    import optuna

    states = [t.state for t in study.trials]
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned, failed = states.count(optuna.trial.TrialState.PRUNED), states.count(optuna.trial.TrialState.FAIL)
    print(f"\nstudy {study.study_name} in {where}: {len(finished)} complete, {pruned} pruned, {failed} failed trials")
    if not finished:
        return 1
    best, best_file = write_best(study, metric)
    print(f"best {metric} {best.value:.4f} (trial {best.number}):")
    for key, value in best.params.items():
        print(f"  {key}: {value}")
    print(f"written to {best_file}; train it on all data with your full config plus `-c {best_file}`")
    return 0

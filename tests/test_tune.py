"""`cifarlit tune`: an Optuna study over fit runs, end to end on fixture data (pruning, SQLite resume, best.yaml,
several workers on one journal)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml

from cifarlit.commands.tune import nested, open_storage, trial_seeded_sampler
from helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
DEFAULT = str(REPO / "configs" / "default.yaml")


def tune(tmp_path, pickle_root, *extra: str):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            "tune", "--space", str(tmp_path / "space.yaml"), "--study_name", "t",
            "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--startup_trials", "1", "--warmup_epochs", "0",
            "-c", DEFAULT, "--data.data_dir", str(pickle_root), "--trainer.max_epochs", "3", *extra,
        )  # fmt: skip
    return exit_info.value.code


def test_study_prunes_resumes_and_writes_the_best_settings(pickle_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(
        "model.optimizer.init_args.lr: {type: categorical, choices: [0.01, 0.0]}\n"
        "model.hidden_sizes: {type: categorical, choices: ['[32]', '[64]']}\n"
    )
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="t", storage=storage, direction="maximize")
    study.enqueue_trial({"model.optimizer.init_args.lr": 0.01, "model.hidden_sizes": "[32]"})
    study.enqueue_trial({"model.optimizer.init_args.lr": 0.0, "model.hidden_sizes": "[64]"})  # learns nothing

    assert tune(tmp_path, pickle_root, "--n_trials", "2") == 0
    trials = optuna.load_study(study_name="t", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    assert trials[0].value > 0.3  # best val/acc of a learning run on 10 classes
    assert (tmp_path / "lightning_logs" / "tune_t" / "trial_0" / "hparams.yaml").is_file()
    assert not list((tmp_path / "lightning_logs").rglob("events*test*"))  # trials never touch the test split

    best = yaml.safe_load((tmp_path / "lightning_logs" / "tune_t" / "best.yaml").read_text())
    assert best == {"model": {"optimizer": {"init_args": {"lr": 0.01}}, "hidden_sizes": [32]}}
    assert "1 complete, 1 pruned, 0 failed" in capsys.readouterr().out

    assert tune(tmp_path, pickle_root, "--n_trials", "1") == 0  # the same command resumes the study
    assert len(optuna.load_study(study_name="t", storage=storage).trials) == 3


def test_a_failing_trial_is_recorded_and_the_study_goes_on(pickle_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text("model.optimizer.init_args.lr: {type: categorical, choices: [1.0e+9, 0.01]}\n")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="t", storage=storage, direction="maximize")
    study.enqueue_trial({"model.optimizer.init_args.lr": 1.0e9})  # the loss turns NaN: the trial fails
    study.enqueue_trial({"model.optimizer.init_args.lr": 0.01})
    assert tune(tmp_path, pickle_root, "--n_trials", "2", "--model.optimizer", "torch.optim.SGD") == 0
    trials = optuna.load_study(study_name="t", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    best = yaml.safe_load((tmp_path / "lightning_logs" / "tune_t" / "best.yaml").read_text())
    assert best == {"model": {"optimizer": {"init_args": {"lr": 0.01}}}}
    assert "1 complete, 0 pruned, 1 failed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("space", "match"),
    [
        ("model.dropout: {type: uniform, low: 0, high: 1}", r"'model.dropout' has type 'uniform'"),
        ("model.dropout: {type: float, low: 0}", r"'model.dropout' \(float\) needs low and high"),
        ("", r"defines no options"),
    ],
)
def test_bad_search_space_is_a_clear_error(pickle_root, tmp_path, monkeypatch, capsys, space, match):
    import re

    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(space)
    assert tune(tmp_path, pickle_root) == 2
    assert re.search(match, capsys.readouterr().err)


def test_storage_is_a_journal_file_or_a_database_url(pickle_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert open_storage(None, "t")[1] == "lightning_logs/tune_t.journal"  # the default: safe for several workers
    assert open_storage("sqlite:///s/t.db", "t") == ("sqlite:///s/t.db", "sqlite:///s/t.db")
    assert (tmp_path / "s").is_dir()
    assert open_storage("postgresql://u@host/db", "t")[0] == "postgresql://u@host/db"  # passed to Optuna as it is

    (tmp_path / "space.yaml").write_text("model.dropout: {type: float, low: 0.0, high: 0.5}\n")
    assert tune(tmp_path, pickle_root, "--storage", "t.db") == 2
    assert "--storage=t.db is not valid: give a journal file ending in .journal" in capsys.readouterr().err


def test_a_study_in_the_former_default_sqlite_file_still_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lightning_logs").mkdir()
    optuna.create_study(study_name="t", storage="sqlite:///lightning_logs/tune_t.db")  # a study started back then
    assert open_storage(None, "t")[1] == "sqlite:///lightning_logs/tune_t.db"


def test_workers_with_one_seed_propose_different_settings_and_each_repeats_itself():
    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(study_name="s", storage=storage, sampler=trial_seeded_sampler(0))
    second = optuna.load_study(study_name="s", storage=storage, sampler=trial_seeded_sampler(0))
    trials = [first.ask(), second.ask(), first.ask(), second.ask()]  # two workers taking turns
    drawn = [t.suggest_float("x", 0.0, 1.0) for t in trials]
    assert len(set(drawn)) == 4

    alone = optuna.create_study(sampler=trial_seeded_sampler(0))  # one worker, same seed: the same settings
    assert [alone.ask().suggest_float("x", 0.0, 1.0) for _ in range(4)] == drawn
    other_seed = optuna.create_study(sampler=trial_seeded_sampler(1))
    assert other_seed.ask().suggest_float("x", 0.0, 1.0) != drawn[0]


@pytest.mark.slow
def test_two_workers_at_once_fill_one_study(pickle_root, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(
        "model.optimizer.init_args.lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n"
        "model.hidden_sizes: {type: categorical, choices: ['[16]', '[32]', '[64]']}\n"
    )
    journal = tmp_path / "lightning_logs" / "tune_t.journal"  # the default storage, found from the working folder
    journal.parent.mkdir()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="t", storage=storage, direction="maximize")
    enqueued = [{"model.optimizer.init_args.lr": 0.01, "model.hidden_sizes": h} for h in ("[16]", "[64]")]
    for params in enqueued:
        study.enqueue_trial(params)  # each must run once, in whichever worker takes it

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable, "-m", "cifarlit", "tune", "--space", str(space), "--study_name", "t", "--n_trials", "3",
        "--startup_trials", "1", "--warmup_epochs", "0",
        "-c", DEFAULT, "--data.data_dir", str(pickle_root), "--trainer.max_epochs", "2",
    ]  # fmt: skip
    workers = [
        subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    try:
        outputs = [w.communicate(timeout=300)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [0, 0], "\n".join(out[-3000:] for out in outputs)

    trials = optuna.load_study(study_name="t", storage=storage).trials
    assert len(trials) == 6 and all(t.state.is_finished() for t in trials)  # 3 + 3: none lost, none run twice
    assert sorted(t.number for t in trials) == list(range(6))
    assert Counter(t.user_attrs["worker"].split(":")[1] for t in trials) == {str(w.pid): 3 for w in workers}
    by_worker = {w: [t for t in trials if t.user_attrs["worker"].endswith(f":{w.pid}")] for w in workers}
    a, b = by_worker.values()  # both ran at once: each started a trial before the other's last one ended
    assert min(t.datetime_start for t in a) < max(t.datetime_complete for t in b)
    assert min(t.datetime_start for t in b) < max(t.datetime_complete for t in a)
    assert [t.params for t in trials[:2]] == enqueued  # the enqueued trials ran, once each

    runs = tmp_path / "lightning_logs" / "tune_t"
    assert sorted(p.name for p in runs.glob("trial_*")) == sorted(f"trial_{t.number}" for t in trials)
    for t in trials:  # one writer per folder: one event file, and the hparams of its own trial
        assert len(list((runs / f"trial_{t.number}").glob("events.out.tfevents.*"))) == 1
        hparams = yaml.safe_load((runs / f"trial_{t.number}" / "hparams.yaml").read_text())
        assert hparams["hidden_sizes"] == yaml.safe_load(t.params["model.hidden_sizes"])

    best = optuna.load_study(study_name="t", storage=storage).best_trial
    best_text = (runs / "best.yaml").read_text()
    assert f"(trial {best.number})" in best_text.splitlines()[0]
    assert yaml.safe_load(best_text) == nested(best.params)

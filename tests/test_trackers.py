"""Any Lightning logger: TensorBoard, CSV, MLflow (a SQLite store, a tracking server over HTTP) and W&B offline, alone
or several at once. Each run keeps its run folder (config.yaml, run_info.json, the per-class report, checkpoints),
copies those files into the tracker's own store, and `compare` reads CSV and MLflow runs back. No network: the MLflow
server runs on 127.0.0.1, W&B offline."""

from __future__ import annotations

import contextlib
import csv
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from cifarlit.cli import cli_main
from cifarlit.commands.compare import main as compare_main
from cifarlit.training import trackers
from cifarlit.utils.errors import CifarlitError
from helpers import REPO, run_cli

DEFAULT = str(REPO / "configs" / "default.yaml")
LOGGERS = REPO / "configs" / "loggers"


def fit(pickle_root: Path, *extra: str):
    """`cifarlit fit` for one epoch on the fixture pickles (then the test of its best checkpoint)."""
    return run_cli("fit", "-c", DEFAULT, *extra, "--data.data_dir", str(pickle_root), "--trainer.max_epochs", "1")


def mlflow_db(folder: Path) -> str:
    """An absolute SQLite URI: MLflow keeps one database engine per URI in a process, so the relative one of
    configs/loggers/mlflow.yaml would reach the file of the test that used it first, in another folder."""
    return f"sqlite:///{folder / 'mlflow.db'}"


def table_row(out: str, name: str) -> dict[str, str]:
    """The row of run ``name`` in compare's markdown table on stdout."""
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    for line in lines[1:]:  # the separator row starts with "|-"
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] == name:
            return dict(zip(header, cells, strict=True))
    raise AssertionError(f"no row {name!r} in {out}")


def compare(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["compare", *args])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    return captured.out


def assert_report_files(run: Path, cli) -> None:
    """The run folder holds what every run records, whatever its logger."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["data_dir"] == cli.config.fit.data.data_dir  # the full resolved config
    assert (run / "run_info.json").is_file() and list((run / "checkpoints").glob("*.ckpt"))
    with open(run / "per_class_accuracy.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["class"] for row in rows] == list(cli.datamodule.classes)
    correct = sum(int(row["correct"]) for row in rows) / sum(int(row["images"]) for row in rows)
    assert correct == pytest.approx(float(cli.trainer.callback_metrics["test/acc"]), abs=1e-6)


# --- the logger configs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "cls", "gone"),
    [("csv.yaml", "CSVLogger", "default_hp_metric"), ("mlflow.yaml", "MLFlowLogger", "name"),
     ("wandb_offline.yaml", "WandbLogger", "default_hp_metric")],
)  # fmt: skip
def test_a_logger_config_replaces_the_tensorboard_logger(config, cls, gone, capsys):
    """jsonargparse merges `trainer.logger` across -c files: the later file's class must replace TensorBoard's,
    keeping none of its arguments the new class does not take."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "-c", DEFAULT, "-c", str(LOGGERS / config), "--print_config")
    assert exit_info.value.code == 0
    logger = yaml.safe_load(capsys.readouterr().out)["trainer"]["logger"]
    assert isinstance(logger, dict) and logger["class_path"] == f"lightning.pytorch.loggers.{cls}"
    assert gone not in logger["init_args"]


def test_csv_logger_alone_keeps_the_run_folder_and_compare_reads_it(pickle_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli = fit(pickle_root, "-c", str(LOGGERS / "csv.yaml"))
    run = tmp_path / "lightning_logs" / "default" / "version_0"
    assert Path(cli.trainer.log_dir).resolve() == run.resolve()
    assert (run / "metrics.csv").is_file() and not list(run.glob("events.out.tfevents.*"))  # no TensorBoard at all
    assert "CSVLogger" in (run / "config.yaml").read_text()
    assert_report_files(run, cli)
    capsys.readouterr()
    row = table_row(compare(capsys, str(run), "--output", str(tmp_path / "c.png")), "default")
    assert row["epochs"] == "1" and row["fit time"] == "-"  # a CSV file records no wall-clock times
    assert float(row["test/acc"]) == pytest.approx(float(cli.trainer.callback_metrics["test/acc"]), abs=1e-4)
    best = float(cli.trainer.checkpoint_callback.best_model_score)  # val/acc of the one epoch
    assert float(row["final val/acc"]) == pytest.approx(best, abs=1e-4)


def test_tensorboard_and_csv_at_once_share_one_run_folder(pickle_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    both = tmp_path / "both.yaml"
    loggers = [{"class_path": f"lightning.pytorch.loggers.{cls}", "init_args": {"save_dir": "lightning_logs",
                "name": "b"}} for cls in ("TensorBoardLogger", "CSVLogger")]  # fmt: skip
    both.write_text(yaml.safe_dump({"trainer": {"logger": loggers}}))
    cli = fit(pickle_root, "-c", str(both))
    assert [type(logger).__name__ for logger in cli.trainer.loggers] == ["TensorBoardLogger", "CSVLogger"]
    run = tmp_path / "lightning_logs" / "b" / "version_0"
    assert sorted(p.name for p in (tmp_path / "lightning_logs" / "b").iterdir()) == ["version_0"]  # one folder
    assert list(run.glob("events.out.tfevents.*")) and (run / "metrics.csv").is_file()
    assert_report_files(run, cli)
    capsys.readouterr()
    row = table_row(compare(capsys, str(run), "--output", str(tmp_path / "c.png")), "b")
    assert row["epochs"] == "1" and row["fit time"] != "-"  # read from TensorBoard's events, which have times


def logger_config(root: Path, *kinds: str):
    """A parsed config's ``trainer`` with these loggers (a list when several), as runs.py reads it."""
    from jsonargparse import Namespace

    items = [Namespace(class_path=f"lightning.pytorch.loggers.{kind}",
                       init_args=Namespace(save_dir=str(root), name="r", version=None)) for kind in kinds]  # fmt: skip
    return Namespace(trainer=Namespace(logger=items if len(items) > 1 else items[0], default_root_dir=str(root)))


def test_csv_loggers_get_run_folders_and_resume_like_tensorboards(tmp_path):
    from cifarlit.training import runs

    both = logger_config(tmp_path, "TensorBoardLogger", "CSVLogger")
    runs.claim_run_dir(both)
    assert [item.init_args.version for item in both.trainer.logger] == [0, 0]  # one folder for both
    again = logger_config(tmp_path, "CSVLogger", "TensorBoardLogger")
    runs.claim_run_dir(again)
    assert [item.init_args.version for item in again.trainer.logger] == [1, 1]
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["version_0", "version_1"]

    (tmp_path / "r" / "version_1" / "checkpoints").mkdir()
    (tmp_path / "r" / "version_1" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    csv_first = logger_config(tmp_path, "CSVLogger", "MLFlowLogger")
    last = runs.checkpoint_file("last", "fit", csv_first)
    assert last == str(tmp_path / "r" / "version_1" / "checkpoints" / "last.ckpt")
    runs.resume_into_same_run(csv_first, last)
    assert csv_first.trainer.logger[0].init_args.version == 1  # the resumed run's folder, not a new one
    assert csv_first.trainer.logger[1].init_args.version is None  # MLflow names its own runs

    with pytest.raises(CifarlitError, match="TensorBoardLogger or CSVLogger"):
        runs.checkpoint_file("last", "test", logger_config(tmp_path, "MLFlowLogger", "CSVLogger"))


def test_trials_are_named_in_every_kind_of_logger(tmp_path):
    """tune's `tune_<study>/trial_<n>`, in each logger of a list, as that logger names a run."""
    from lightning.pytorch.cli import LightningArgumentParser
    from lightning.pytorch.loggers import Logger

    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Logger, "trainer.logger", required=False)
    config = parser.parse_object({"trainer": {"logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                                          "init_args": {"save_dir": str(tmp_path)}}}})  # fmt: skip
    kinds = {"CSVLogger": ("name", "version"), "MLFlowLogger": ("experiment_name", "run_name"),
             "WandbLogger": ("project", "name"), "TensorBoardLogger": ("name", "version")}  # fmt: skip
    for kind, expected in kinds.items():
        item = config.trainer.logger
        item.class_path = f"lightning.pytorch.loggers.{kind}"
        trackers.name_run(config, "tune_s", "trial_3")
        assert (item.init_args.get(expected[0]), item.init_args.get(expected[1])) == ("tune_s", "trial_3"), kind


# --- MLflow -------------------------------------------------------------------------------------------------------


def mlflow_run(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("cifarlit")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def assert_logged_to_mlflow(client, run, cli, tmp_path: Path) -> None:
    """test/acc, the parameters, and config.yaml and the per-class report as artifacts, as the run folder has them."""
    assert run.data.metrics["test/acc"] == pytest.approx(float(cli.trainer.callback_metrics["test/acc"]), abs=1e-6)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [2]  # 1 epoch, 3 batches
    assert run.data.params["hidden_sizes"] == "[100, 100]" and run.data.params["optimizer/init_args/lr"] == "0.001"
    run_dir = Path(cli.trainer.checkpoint_callback.dirpath).parent  # where Lightning put the MLflow run's checkpoints
    assert run_dir.parts[-2:] == (run.info.experiment_id, run.info.run_id)
    assert_report_files(run_dir, cli)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "run_info.json", "per_class_accuracy.csv", "confusion_matrix.csv", "test"} <= artifacts
    for name in ("config.yaml", "per_class_accuracy.csv"):
        local = client.download_artifacts(run.info.run_id, name, str(tmp_path))
        assert Path(local).read_bytes() == (run_dir / name).read_bytes()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["logger"]["class_path"].endswith(
        "MLFlowLogger"
    )


def test_mlflow_sqlite_store_holds_metrics_params_and_the_config(pickle_root, tmp_path, monkeypatch, capsys):
    """MLflow 3 refuses file: stores (maintenance mode): a SQLite store, as configs/loggers/mlflow.yaml sets."""
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    cli = fit(
        pickle_root, "-c", str(LOGGERS / "mlflow.yaml"), "--trainer.logger.init_args.tracking_uri", mlflow_db(tmp_path)
    )
    print(f"mlflow fit: {time.perf_counter() - started:.1f} s")
    client, run = mlflow_run(mlflow_db(tmp_path))
    assert_logged_to_mlflow(client, run, cli, tmp_path / "download")
    capsys.readouterr()
    row = table_row(compare(capsys, f"{mlflow_db(tmp_path)}#cifarlit", "--output", str(tmp_path / "c.png")),
                    run.info.run_name)  # fmt: skip
    assert row["epochs"] == "1" and row["fit time"] != "-"
    assert float(row["test/acc"]) == pytest.approx(run.data.metrics["test/acc"], abs=1e-4)


def test_validate_test_predict_and_explore_log_to_mlflow(own_run, tmp_path, monkeypatch):
    """Every LightningCLI command with an MLflow logger: a run each, its files in its run folder and in the store."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from conftest import write_unlabelled_folder

    monkeypatch.chdir(tmp_path)
    write_unlabelled_folder(tmp_path / "new")
    common = [
        "-c",
        DEFAULT,
        "-c",
        str(LOGGERS / "mlflow.yaml"),
        "--data.data_dir",
        str(own_run.data),
        "--trainer.logger.init_args.tracking_uri",
        mlflow_db(tmp_path),
    ]
    ckpt = ["--ckpt_path", str(own_run.ckpt)]
    for command in (["validate", *ckpt], ["test", *ckpt], ["predict", *ckpt, "--data.predict_dir", "new"],
                    ["explore", "--log_grid", "true"]):  # fmt: skip
        run_cli(command[0], *common, *command[1:])
    client = MlflowClient(mlflow_db(tmp_path))
    runs = client.search_runs([client.get_experiment_by_name("cifarlit").experiment_id], order_by=["start_time ASC"])
    assert len(runs) == 4  # validate, test, predict, explore: one run each
    folders = [tmp_path / "lightning_logs" / "mlflow" / run.info.experiment_id / run.info.run_id for run in runs]
    validated, tested, predicted, explored = zip(runs, folders, strict=True)
    assert "val/acc" in validated[0].data.metrics and (validated[1] / "config.yaml").is_file()
    assert "test/acc" in tested[0].data.metrics
    for name in ("config.yaml", "per_class_accuracy.csv", "confusion_matrix.csv"):
        local = client.download_artifacts(tested[0].info.run_id, name, str(tmp_path))
        assert Path(local).read_bytes() == (tested[1] / name).read_bytes()
    assert len((predicted[1] / "predictions.csv").read_text().splitlines()) == 1 + 9  # a header and 9 images
    assert (explored[1] / "explore.png").is_file()
    assert [a.path for a in client.list_artifacts(explored[0].info.run_id, "explore")] == ["explore/samples.png"]


def test_tune_names_its_trials_in_an_mlflow_store(pickle_root, tmp_path, monkeypatch, capsys):
    """tune's trials as the runs `trial_<n>` of the experiment `tune_<study>`, not as TensorBoard folder names."""
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text("model.optimizer.init_args.lr: {type: categorical, choices: [0.01]}\n")
    with pytest.raises(SystemExit) as exit_info:
        run_cli("tune", "--space", "space.yaml", "--study_name", "s", "--n_trials", "1", "--storage", "sqlite:///s.db",
                "-c", DEFAULT, "-c", str(LOGGERS / "mlflow.yaml"), "--data.data_dir", str(pickle_root),
                "--trainer.logger.init_args.tracking_uri", mlflow_db(tmp_path),
                "--trainer.max_epochs", "1")  # fmt: skip
    assert exit_info.value.code == 0, capsys.readouterr().err[-2000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_db(tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name("tune_s").experiment_id])
    assert run.info.run_name == "trial_0" and "val/acc" in run.data.metrics and "test/acc" not in run.data.metrics
    assert (tmp_path / "lightning_logs" / "tune_s" / "best.yaml").is_file()


def test_an_mlflow_file_store_is_refused_in_one_sentence_unless_allowed(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "-c", DEFAULT, "-c", str(LOGGERS / "mlflow.yaml"), "--data.data_dir", "nowhere",
                "--trainer.logger.init_args.tracking_uri", "file:./mlruns")  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "MLFLOW_ALLOW_FILE_STORE=true" in err and "sqlite:///mlflow.db" in err
    assert not list(tmp_path.iterdir())  # refused before anything was built or written


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 and a free port, started for the test and stopped after it."""
    pytest.importorskip("mlflow")
    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed below, after the server)
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server_artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not answer /health in 120 s"
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, 15)  # the server and the workers it started, by the group of the process started here
        server.wait(timeout=30)
        log.close()


def test_mlflow_tracking_server_over_http(mlflow_server, pickle_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli = fit(pickle_root, "-c", str(LOGGERS / "mlflow.yaml"), "--trainer.logger.init_args.tracking_uri", mlflow_server)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()  # all of it went to the server
    client, run = mlflow_run(mlflow_server)
    assert_logged_to_mlflow(client, run, cli, tmp_path / "download")
    assert list((tmp_path / "server_artifacts").rglob("per_class_accuracy.csv"))  # stored by the server
    capsys.readouterr()
    row = table_row(compare(capsys, mlflow_server, "--output", str(tmp_path / "c.png")), run.info.run_name)
    assert float(row["test/acc"]) == pytest.approx(run.data.metrics["test/acc"], abs=1e-4)


# --- W&B offline --------------------------------------------------------------------------------------------------


def test_wandb_offline_writes_its_run_files(pickle_root, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))  # no login, no settings file of the user's
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    try:
        cli = fit(pickle_root, "-c", str(LOGGERS / "wandb_offline.yaml"))
        run_id = cli.trainer.logger.version
        wandb.finish()
    finally:
        wandb.teardown()  # ends W&B's service process, started by this test
    run_dir = tmp_path / "lightning_logs" / "cifarlit" / run_id
    assert_report_files(run_dir, cli)
    (offline,) = (tmp_path / "lightning_logs" / "wandb").glob(f"offline-run-*-{run_id}")
    assert (offline / f"run-{run_id}.wandb").stat().st_size > 0  # the metrics, for `wandb sync`
    for name in ("config.yaml", "run_info.json", "per_class_accuracy.csv", "confusion_matrix.csv"):
        assert (offline / "files" / name).read_bytes() == (run_dir / name).read_bytes()
    assert list((offline / "files" / "media" / "images").rglob("confusion_matrix*.png"))
    for folder in (run_dir, offline):  # compare says in one sentence that it does not read W&B runs
        with pytest.raises(CifarlitError, match="W&B runs are W&B's own format, which compare does not read"):
            compare_main([str(folder)], output=str(tmp_path / "c.png"))
    assert not (tmp_path / "c.png").exists()


# --- hostile inputs of compare: a crafted metrics.csv, a crafted MLflow store --------------------------------------


def refused(capsys, *args: str) -> str:
    """`cifarlit ARGS` must exit with status 2 and one `error:` line, no traceback; the line is returned."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def tree(root: Path) -> dict[str, bytes | str]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else "folder" if p.is_dir() else "other"
            for p in sorted(root.rglob("*"))}  # fmt: skip


def payload(marker: Path) -> bytes:
    import pickle

    from helpers import RunsCode

    return pickle.dumps(RunsCode(marker))


HEADER = "epoch,step,train/acc,val/acc\n"
CRAFTED_CSV = {
    "not_a_number": lambda f, m: f.write_text(HEADER + "0,2,0.5,abc\n"),
    "a_formula": lambda f, m: f.write_text(HEADER + f'0,2,0.5,"=HYPERLINK(""x"")&system(""touch {m}"")"\n'),
    "nul_bytes": lambda f, m: f.write_bytes(HEADER.encode() + b"0,2,0.5,0.\x007\n"),
    "not_utf8": lambda f, m: f.write_bytes(HEADER.encode() + b"0,2,0.5,\xff\xfe\n"),
    "no_step_column": lambda f, m: f.write_text("epoch,acc\n0,0.5\n"),
    "more_values_than_names": lambda f, m: f.write_text(HEADER + "0,2,0.5,0.6,0.7\n"),
    "a_huge_field": lambda f, m: f.write_text(HEADER + "0,2,0.5," + "1" * 300_000 + "\n"),
    "header_only": lambda f, m: f.write_text(HEADER),
    "a_pickle_payload": lambda f, m: f.write_bytes(payload(m)),
    "a_folder": lambda f, m: f.mkdir(),
    "a_pipe": lambda f, m: os.mkfifo(f),  # a read would block forever
    "a_link_to_a_device": lambda f, m: f.symlink_to("/dev/zero"),  # a read would never end
}


@pytest.mark.parametrize("where", ["the run", "a folder above it"])
@pytest.mark.parametrize("variant", CRAFTED_CSV, ids=str)
def test_compare_refuses_a_crafted_metrics_csv_in_one_sentence(variant, where, tmp_path, capsys):
    good, bad = tmp_path / "runs" / "good" / "version_0", tmp_path / "runs" / "bad" / "version_0"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    (good / "metrics.csv").write_text(HEADER + "0,2,0.5,0.6\n1,5,0.6,0.7\n")
    marker = tmp_path / "marker"
    CRAFTED_CSV[variant](bad / "metrics.csv", marker)
    before = tree(tmp_path)
    target = str(bad) if where == "the run" else str(tmp_path / "runs")
    message = refused(capsys, "compare", str(good), target, "--table", str(tmp_path / "t.md"))
    assert f"'{bad / 'metrics.csv'}'" in message and "CSVLogger" in message
    assert not marker.exists()  # nothing in the file ran
    assert tree(tmp_path) == before  # no compare.png, no table, nothing changed


def test_compare_reads_a_good_metrics_csv_it_is_given(tmp_path, capsys):
    """The counterpart of the refusals: the same file without the crafted line is read, value for value."""
    from cifarlit.commands.compare import read_run

    run = tmp_path / "runs" / "good" / "version_0"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text(HEADER + "0,2,0.5,\n0,2,,0.6\n1,5,0.6,0.7\n")  # as CSVLogger leaves gaps
    assert read_run(run) == {"train/acc": [0.5, 0.6], "val/acc": [0.6, 0.7]}


def other_database(path: Path, marker: Path) -> None:
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE notes (text)")
        db.execute("INSERT INTO notes VALUES ('mine')")
        db.commit()


def mlflow_names_without_mlflow_schema(path: Path, marker: Path) -> None:
    import sqlite3

    from cifarlit.commands.compare import MLFLOW_TABLES

    with contextlib.closing(sqlite3.connect(path)) as db:
        for table in MLFLOW_TABLES:
            db.execute(f"CREATE TABLE {table} (x)")
        db.execute("INSERT INTO alembic_version VALUES ('not a revision')")
        db.commit()


CRAFTED_STORES = {
    "missing": lambda p, m: None,  # MLflow would create it
    "empty": lambda p, m: p.write_bytes(b""),  # MLflow would create its tables in it
    "random_bytes": lambda p, m: p.write_bytes(bytes(range(256)) * 8),
    "a_pickle_payload": lambda p, m: p.write_bytes(payload(m)),
    "another_programs_database": other_database,
    "mlflow_table_names_with_other_columns": mlflow_names_without_mlflow_schema,
    "a_folder": lambda p, m: p.mkdir(),
}


@pytest.mark.parametrize("variant", CRAFTED_STORES, ids=str)
def test_compare_refuses_a_crafted_mlflow_database_and_never_writes_to_it(variant, tmp_path, capsys):
    pytest.importorskip("mlflow")
    store = tmp_path / "store" / "mlflow.db"
    store.parent.mkdir()
    marker = tmp_path / "marker"
    CRAFTED_STORES[variant](store, marker)
    before = tree(tmp_path)
    message = refused(capsys, "compare", f"sqlite:///{store}", "--output", str(tmp_path / "c.png"))
    assert f"the MLflow store sqlite:///{store}" in message
    assert not marker.exists()
    assert tree(tmp_path) == before  # not created, no tables added, no compare.png


def file_store_meta_yaml_payload(root: Path, marker: Path) -> None:
    (root / ".trash").mkdir(parents=True)
    (root / "0").mkdir()
    (root / "0" / "meta.yaml").write_text(f'!!python/object/apply:os.system ["touch {marker}"]\n')


def file_store_without_trash(root: Path, marker: Path) -> None:
    (root / "0").mkdir(parents=True)  # MLflow would add its .trash folder


def file_store_yaml_bomb(root: Path, marker: Path) -> None:
    (root / ".trash").mkdir(parents=True)
    (root / "0").mkdir()
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]'] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]" for i in range(8)
    ]
    (root / "0" / "meta.yaml").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("variant", [file_store_meta_yaml_payload, file_store_without_trash, file_store_yaml_bomb],
                         ids=lambda v: v.__name__)  # fmt: skip
def test_compare_refuses_a_crafted_mlflow_file_store(variant, tmp_path, monkeypatch, capsys):
    """MLflow reads a file store's meta.yaml with yaml's safe loader: a payload is an error, not a command."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    marker = tmp_path / "marker"
    variant(tmp_path / "mlruns", marker)
    before = tree(tmp_path)
    message = refused(capsys, "compare", f"file:{tmp_path / 'mlruns'}", "--output", str(tmp_path / "c.png"))
    assert f"the MLflow store file:{tmp_path / 'mlruns'}" in message
    assert not marker.exists()
    assert tree(tmp_path) == before


def test_compare_refuses_a_file_store_unless_mlflow_may_read_it(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    (tmp_path / "mlruns" / ".trash").mkdir(parents=True)
    message = refused(capsys, "compare", f"file:{tmp_path / 'mlruns'}", "--output", str(tmp_path / "c.png"))
    assert "MLFLOW_ALLOW_FILE_STORE=true" in message


def test_compare_says_at_once_that_a_tracking_server_does_not_answer(tmp_path, capsys):
    pytest.importorskip("mlflow")
    started = time.monotonic()
    message = refused(capsys, "compare", f"http://127.0.0.1:{free_port()}", "--output", str(tmp_path / "c.png"))
    assert "cannot be read" in message and time.monotonic() - started < 60  # no minutes of retries
    assert not list(tmp_path.iterdir())


def test_the_lr_finders_plot_lands_in_the_mlflow_run(pickle_root, tmp_path, monkeypatch, capsys):
    """`--find_lr true` with an MLflow logger (which has no log_dir): the plot in the run folder and the run's
    artifacts, and the run trains at the rate it found."""
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    cli = fit(pickle_root, "-c", str(LOGGERS / "mlflow.yaml"), "--trainer.logger.init_args.tracking_uri",
              mlflow_db(tmp_path), "--find_lr", "true", "--test_after_fit", "false")  # fmt: skip
    client, run = mlflow_run(mlflow_db(tmp_path))
    run_dir = Path(cli.trainer.checkpoint_callback.dirpath).parent
    assert (run_dir / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert "lr_find.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert float(run.data.params["optimizer/init_args/lr"]) == pytest.approx(cli.model.lr, rel=1e-6)

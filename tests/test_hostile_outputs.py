"""What cifarlit writes, and the inputs of `compare` and `tune`: one sentence for every mistake, nothing lost.

An output path that cannot become a file (a folder, a path under a file, a folder that cannot be written, a pipe)
is refused before the work that would fill it, wherever an output is named: predict/export/compare ``--output``,
compare ``--table``, explore ``--grid_path`` and the logger's ``save_dir``. `compare` refuses event files without
one readable event; `tune` refuses a storage that is not what it is named as (its bytes left as they were), a
database it cannot open, and a search space that is not a mapping of valid distributions, before any trial.
Atomic writes reach the disk before the rename and clean what killed writers left.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cifarlit.cli import cli_main
from cifarlit.utils import files
from cifarlit.utils.errors import CifarlitError
from helpers import REPO

DEFAULT = str(REPO / "configs" / "default.yaml")


def refused(capsys, *args: str) -> str:
    """Runs `cifarlit ARGS`; it must exit with status 2 and one `error:` line, which is returned."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root`` and its bytes (a folder or pipe: its kind)."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else "folder" if p.is_dir() else "other"
        for p in sorted(root.rglob("*"))
    }


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


# --- output paths ------------------------------------------------------------------------------------------------


def a_folder(tmp: Path) -> Path:
    (tmp / "out").mkdir()
    return tmp / "out"


def under_a_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("mine")
    return tmp / "notes.txt" / "out"


def an_unwritable_folder(tmp: Path) -> Path:
    folder = tmp / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with tempfile.TemporaryFile(dir=folder):  # root writes anyway: use a folder nobody may write to
            folder = Path("/sys")
    except OSError:
        pass
    return folder / "out"


def a_pipe(tmp: Path) -> Path:
    os.mkfifo(tmp / "out")
    return tmp / "out"


BAD_OUTPUTS = [a_folder, under_a_file, an_unwritable_folder, a_pipe]


@pytest.mark.parametrize("variant", BAD_OUTPUTS, ids=lambda v: v.__name__)
def test_an_output_that_cannot_become_a_file_is_refused_and_nothing_is_made(variant, tmp_path):
    path = variant(tmp_path)
    before = tree(tmp_path)
    with pytest.raises(CifarlitError, match=rf"--output {path} (is a folder|cannot be written|is not a regular file)"):
        files.check_output(path, "--output", "out.csv")
    assert tree(tmp_path) == before
    assert files.check_output(tmp_path / "new" / "deeper" / "out.csv", "--output", "out.csv")  # may be made
    assert tree(tmp_path) == before  # checking made nothing


OUTPUT_CASES = [  # (command and where the output goes, variant): every command that names an output, every variant
    ("predict --output", a_folder), ("predict --output", a_pipe), ("export --output", under_a_file),
    ("export --output", an_unwritable_folder), ("explore --grid_path", a_folder),
    ("explore --grid_path", an_unwritable_folder), ("compare --output", under_a_file), ("compare --table", a_folder),
]  # fmt: skip


@pytest.mark.parametrize("command, variant", OUTPUT_CASES, ids=lambda c: getattr(c, "__name__", str(c)))
def test_every_command_refuses_a_bad_output_before_its_work(command, variant, own_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = variant(tmp_path)
    before = tree(tmp_path)
    subcommand, option = command.split()
    data = ["-c", DEFAULT, "--data.data_dir", str(own_run.data), "--trainer.logger", "false"]
    args = {
        "predict": ["predict", *data, "--ckpt_path", str(own_run.ckpt), option, str(bad)],
        "export": ["export", "--ckpt_path", str(own_run.ckpt), "--format", "torchscript", option, str(bad)],
        "explore": ["explore", *data, option, str(bad)],
        "compare": ["compare", str(own_run.run_dir), option, str(bad)],
    }[subcommand]
    assert refused(capsys, *args).startswith(f"error: {option} {bad}")
    assert tree(tmp_path) == before  # nothing written, nothing lost
    assert not list(own_run.ckpt.parent.glob("*.pt"))


@pytest.mark.parametrize("variant", [under_a_file, an_unwritable_folder, "a file"], ids=str)
def test_a_log_folder_that_cannot_be_written_is_refused_before_training(variant, own_run, tmp_path, monkeypatch,
                                                                        capsys):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    if variant == "a file":
        (tmp_path / "logs").write_text("mine")
        save_dir = tmp_path / "logs"
    else:
        save_dir = variant(tmp_path)
    before = tree(tmp_path)
    message = refused(capsys, "fit", "-c", DEFAULT, "--data.data_dir", str(own_run.data),
                      "--trainer.logger.init_args.save_dir", str(save_dir))  # fmt: skip
    assert message.startswith(f"error: --trainer.logger.init_args.save_dir={save_dir}: the run folder")
    assert tree(tmp_path) == before


# --- compare ---------------------------------------------------------------------------------------------------


def event_file(folder: Path) -> Path:
    """A real TensorBoard event file of 5 epochs of val/acc and train/loss."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as writer:
        for epoch in range(5):
            writer.add_scalar("val/acc", 0.1 * epoch, epoch)
            writer.add_scalar("train/loss", 1 - 0.1 * epoch, epoch)
    return next(folder.glob("events.out.tfevents.*"))


NAME = "events.out.tfevents.1700000000.host.1.0"


def empty(run: Path) -> None:
    (run / NAME).write_bytes(b"")


def random_bytes(run: Path) -> None:
    (run / NAME).write_bytes(os.urandom(600))


def text(run: Path) -> None:
    (run / NAME).write_text("step,val/acc\n1,0.5\n" * 20)


def cut_inside_its_header(run: Path) -> None:
    good = event_file(run)
    good.write_bytes(good.read_bytes()[:7])


def first_record_damaged(run: Path) -> None:
    good = event_file(run)
    data = bytearray(good.read_bytes())
    data[12:20] = bytes(8)  # the first record's data: its checksum no longer matches
    good.write_bytes(bytes(data))


def a_folder_named_like_one(run: Path) -> None:
    (run / NAME).mkdir()


def a_pipe_named_like_one(run: Path) -> None:
    os.mkfifo(run / NAME)  # TensorBoard would wait on it forever


def no_event_files(run: Path) -> None:
    (run / "metrics.csv").write_text("epoch,acc\n0,0.5\n")
    (run / "checkpoints").mkdir()


DAMAGED_RUNS = [empty, random_bytes, text, cut_inside_its_header, first_record_damaged, a_folder_named_like_one,
                a_pipe_named_like_one, no_event_files]  # fmt: skip


@pytest.mark.parametrize("variant", DAMAGED_RUNS, ids=lambda v: v.__name__)
def test_compare_refuses_a_run_without_readable_events(variant, tmp_path, capsys):
    good, bad = tmp_path / "runs" / "good" / "version_0", tmp_path / "runs" / "bad" / "version_0"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    event_file(good)
    variant(bad)
    before = tree(tmp_path)
    message = refused(capsys, "compare", str(good), str(bad), "--table", str(tmp_path / "t.md"))
    assert f"'{bad}" in message  # the run, or its entry, is named
    assert tree(tmp_path) == before  # no compare.png, no table


def test_compare_reads_a_file_cut_short_up_to_where_it_ends(tmp_path, capsys):
    run = tmp_path / "runs" / "still_running" / "version_0"
    run.mkdir(parents=True)
    events = event_file(run)
    data = events.read_bytes()
    events.write_bytes(data[: len(data) // 2 + 3])  # as a run still writing it leaves it: a record cut in two
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["compare", str(run), "--output", str(tmp_path / "c.png")])
    assert exit_info.value.code == 0 and (tmp_path / "c.png").is_file()
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| still_running"))
    assert 0 < int(row.split("|")[2]) < 5  # the epochs before the cut


# --- tune --------------------------------------------------------------------------------------------------------

GOOD_SPACE = "model.dropout: {type: float, low: 0.0, high: 0.5}\n"


def tune(capsys, tmp_path: Path, *args: str) -> str:
    return refused(capsys, "tune", "--space", str(tmp_path / "space.yaml"), "--study_name", "t", "--n_trials", "1",
                   *args, "-c", DEFAULT, "--data.data_dir", "nowhere", "--data.download", "false")  # fmt: skip


STORAGES = {  # name: (the file to plant or None, the --storage value)
    "journal of random bytes": (os.urandom(300), "s.journal"),
    "journal of text": (b"hello\nworld\n", "s.journal"),
    "journal of other JSON": (b'[1, 2]\n{"a": 1}\n', "s.journal"),
    "journal of one unfinished line": (b"hello", "s.journal"),
    "journal that is a folder": ("folder", "s.journal"),
    "database of random bytes": (os.urandom(300), "sqlite:///s.db"),
    "database of text": (b"id,value\n1,2\n", "sqlite:///s.db"),
    "empty database file": (b"", "sqlite:///s.db"),
    "database that is a folder": ("folder", "sqlite:///s.db"),
    "database under a file": (b"mine", "sqlite:///s.db/t.db"),
    "journal under a file": (b"mine", "s.journal/t.journal"),
    "postgresql without its driver": (None, "postgresql://user@127.0.0.1:9/db"),
    "mysql without its driver": (None, "mysql://user@127.0.0.1:9/db"),
    "a scheme nobody knows": (None, "nosuchdb://host/db"),
}


@pytest.mark.parametrize("case", list(STORAGES))
def test_tune_refuses_a_storage_it_cannot_use_and_leaves_it_as_it_was(case, tmp_path, monkeypatch, capsys):
    planted, storage = STORAGES[case]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(GOOD_SPACE)
    name = storage.removeprefix("sqlite:///").split("/")[0]
    if planted == "folder":
        (tmp_path / name).mkdir()
    elif planted is not None:
        (tmp_path / name).write_bytes(planted)
    before = tree(tmp_path)
    message = tune(capsys, tmp_path, "--storage", storage)
    assert message.startswith(f"error: --storage={storage}")
    assert tree(tmp_path) == before  # the file's bytes as they were, no lightning_logs/tune_t


def test_an_empty_journal_is_a_new_study(tmp_path):
    from optuna.storages import JournalStorage

    from cifarlit.commands.tune import open_storage

    (tmp_path / "s.journal").write_bytes(b"")  # what Optuna itself creates first: another worker's new study
    assert isinstance(open_storage(str(tmp_path / "s.journal"), "t")[0], JournalStorage)


SPACES = {
    "a list": "- model.dropout\n- model.lr\n",
    "a scalar": "0.5\n",
    "nothing": "",
    "invalid YAML": "model.dropout: {type: float, low: 0.0\n",
    "not UTF-8": b"model.dropout: \xff\xfe\n",
    "a Python tag": "!!python/object/apply:os.system ['touch code-ran']\n",
    "an entry that is not a mapping": "model.dropout: 0.5\n",
    "an unknown type": "model.dropout: {type: normal, low: 0.0, high: 0.5}\n",
    "an unknown key": "model.dropout: {type: float, low: 0.0, high: 0.5, lgo: true}\n",
    "low above high": "model.dropout: {type: float, low: 0.5, high: 0.1}\n",
    "log from zero": "model.optimizer.init_args.lr: {type: float, low: 0.0, high: 0.1, log: true}\n",
    "text bounds": "model.dropout: {type: float, low: small, high: 0.5}\n",
    "int with fractions": "data.batch_size: {type: int, low: 16.5, high: 64}\n",
    "choices not a list": "model.hidden_sizes: {type: categorical, choices: '[32]'}\n",
    "no choices": "model.hidden_sizes: {type: categorical, choices: []}\n",
    "a folder": None,
}


@pytest.mark.parametrize("case", list(SPACES))
def test_tune_refuses_a_search_space_that_is_not_a_mapping_of_distributions(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    space = SPACES[case]
    if space is None:
        (tmp_path / "space.yaml").mkdir()
    else:
        (tmp_path / "space.yaml").write_bytes(space if isinstance(space, bytes) else space.encode())
    before = tree(tmp_path)
    assert tune(capsys, tmp_path).startswith(f"error: --space {tmp_path / 'space.yaml'}")
    assert tree(tmp_path) == before  # no storage, no trial, no code run


# --- atomic writes -----------------------------------------------------------------------------------------------


def test_a_file_reaches_the_disk_before_its_name_and_the_name_after(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.fstat(fd).st_ino)) or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", None)) or replace(a, b))
    target = tmp_path / "out.csv"
    with files.atomic_write(target) as f:
        f.write("id,label\n")
    assert events == [("fsync", target.stat().st_ino), ("replace", None), ("fsync", tmp_path.stat().st_ino)]


def test_the_next_write_removes_what_dead_writers_of_that_name_left(tmp_path):
    host, target = socket.gethostname(), tmp_path / "out.csv"
    dead, alive = dead_pid(), os.getppid()
    left = {
        "dead writer": tmp_path / f".out.csv.{host}-{dead}.tmp",
        "live writer": tmp_path / f".out.csv.{host}-{alive}.tmp",
        "another machine's": tmp_path / f".out.csv.elsewhere-{dead}.tmp",
        "another name's": tmp_path / f".other.csv.{host}-{dead}.tmp",
    }
    for path in left.values():
        path.write_text("half")
    with files.atomic_write(target) as f:
        f.write("id,label\n")
    assert not left["dead writer"].exists()
    assert all(path.read_text() == "half" for name, path in left.items() if name != "dead writer")

"""Several machines: 2 nodes x 1 process on this machine, started the way a cluster starts them (torchrun, and SLURM's
srun running scripts/slurm_ddp.sbatch), with configs/scale/ddp_nodes.yaml on the fixture data, gloo on the CPU.

Two nodes must train exactly as one process does on the same global batches, and leave one run folder. The
reference is the same config as one node of one process with twice the batch: Lightning's DistributedSampler
deals each rank every world_size-th index of the epoch's one seeded permutation, so the two ranks' batches of 16
together are the same 32 images as the batch of 32 that a DistributedSampler of one process gives (a plain run's
RandomSampler would draw another order), and DDP's averaged gradient is that batch's mean. The runs differ only
in the order of float sums.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("-c", "configs/default.yaml", "-c", "configs/scale/ddp_nodes.yaml")  # run from a folder linking configs/
TAGS = ("train/loss", "val/loss", "val/acc", "test/loss", "test/acc")
TIMEOUT = 300  # seconds for a whole run; a hung rendezvous fails the test instead of hanging the suite
# Variables of a launcher this test may itself run under (a SLURM job, torchrun): each run gets only its own.
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR",
                 "MASTER_PORT", "JSM_NAMESPACE_RANK", "PL_GLOBAL_SEED")  # fmt: skip

# What srun does for this job of 2 nodes x 1 task, all on one machine: the command once per task, with the task's
# ranks; one failed task ends the others, which would wait for it.
FAKE_SRUN = """#!/bin/bash
pids=()
for task in 0 1; do
  SLURM_PROCID=$task SLURM_NODEID=$task SLURM_LOCALID=0 "$@" &
  pids+=($!)
done
status=0
for _ in "${pids[@]}"; do
  wait -n && continue
  code=$?
  [ "$status" -ne 0 ] || status=$code
  kill "${pids[@]}" 2>/dev/null
done
exit "$status"
"""


def fit_args(data: Path, batch_size: int) -> list[str]:
    """What the tests add to the recipes' command (the default config augments nothing): the fixture data, the CPU,
    one process per node."""
    return ["--data.data_dir", str(data), "--data.batch_size", str(batch_size), "--trainer.max_epochs", "3",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.callbacks+=helpers.RankReport"]  # fmt: skip


def run_env(cwd: Path) -> dict[str, str]:
    """This process's environment less any launcher's variables, with the worktree's code and the test callbacks."""
    launchers = ("SLURM_", "TORCHELASTIC_")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith(launchers)}
    return env | {
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]),
        "CIFARLIT_TEST_OUT": str(cwd),  # where helpers.RankReport writes rank<N>.json
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",  # two processes share the cores, and the reference computes with as many threads
    }


def workspace(tmp_path: Path) -> Path:
    """A working folder from which the recipes' relative config paths resolve, as from the repository root."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    return tmp_path


def free_port(low: int = 1024, high: int = 65535) -> int:
    for _ in range(100):
        port = random.randint(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in {low}..{high}")


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, theirs, and so on (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])  # "pid (name) state ppid ..."
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def run_together(commands: list[list[str]], cwd: Path, envs: list[dict[str, str]]) -> None:
    """Start the commands at once, as a cluster starts its nodes, and wait for all of them; when one fails or time
    runs out, end every process they started."""
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in commands]
        procs: list[subprocess.Popen] = []
        try:
            for command, env, log in zip(commands, envs, logs, strict=True):
                procs.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + TIMEOUT
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                if any(p.poll() not in (None, 0) for p in procs):  # the others would wait for it until the timeout
                    break
                time.sleep(0.2)
        finally:
            killed = [proc.poll() is None for proc in procs]
            for proc, kill in zip(procs, killed, strict=True):
                if kill:
                    for pid in [proc.pid, *descendants(proc.pid)]:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    proc.wait()
        for command, proc, kill, log in zip(commands, procs, killed, logs, strict=True):
            log.seek(0)
            how = f"was killed after {TIMEOUT} s or another's failure" if kill else f"ended with {proc.returncode}"
            assert proc.returncode == 0, f"{command[0]} {how}:\n{log.read()[-3000:]}"


def the_one_run(root: Path, writer: int | None = None) -> Path:
    """The run folder under ``root``, after checking that nothing of a run was written twice anywhere under it, and
    that one process (``writer``, when given) wrote its TensorBoard events: one file for fit, one for the test."""
    runs = [p for p in root.rglob("version_*") if p.is_dir()]
    assert len(runs) == 1, f"one run folder expected, found {runs}"
    run = runs[0]
    for name in ("config.yaml", "run_info.json", "hparams.yaml", "confusion_matrix.csv"):
        found = list(root.rglob(name))
        assert len(found) == 1 and found[0].parent == run, f"{name}: {found}"
    events = list(root.rglob("events.out.tfevents.*"))  # events.out.tfevents.<time>.<host>.<pid>.<n>
    assert len(events) == 2 and {p.parent for p in events} == {run}, events
    assert len({p.name.split(".")[-2] for p in events} | ({str(writer)} if writer else set())) == 1, events
    checkpoints = list(root.rglob("*.ckpt"))
    assert {p.parent for p in checkpoints} == {run / "checkpoints"}, checkpoints
    assert sorted(p.name for p in checkpoints) == ["epoch02-val_acc1.0000.ckpt", "last.ckpt"]  # best and last
    return run


def results(run: Path) -> dict:
    events = EventAccumulator(str(run)).Reload()
    out = {tag: [e.value for e in events.Scalars(tag)] for tag in TAGS}
    out["weights"] = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return out


@pytest.fixture(scope="module")
def one_process(pickle_root, tmp_path_factory) -> dict:
    """The reference: the same config, one node of one process, batch 32."""
    cwd = workspace(tmp_path_factory.mktemp("one_process"))
    command = [sys.executable, "-m", "cifarlit", "fit", *CONFIGS, *fit_args(pickle_root, 32)]
    command += ["--trainer.num_nodes", "1"]
    run_together([command], cwd, [run_env(cwd)])
    return results(the_one_run(cwd))


def check_two_nodes(cwd: Path, reference: dict, environment: str) -> None:
    reports = [json.loads((cwd / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    seen = [(r["rank"], r["node_rank"], r["world_size"], r["environment"]) for r in reports]
    assert seen == [(0, 0, 2, environment), (1, 1, 2, environment)]
    assert reports[0]["split"] == reports[1]["split"]
    first, second = (set(r["shard"]) for r in reports)
    assert not first & second and len(first | second) == 160  # each node its half of the training set
    assert reports[0]["steps"] == reports[1]["steps"] == 5  # 80 images each, batch 16
    got = results(the_one_run(cwd, writer=reports[0]["pid"]))  # rank 0 alone wrote
    for tag in TAGS:
        assert got[tag] == pytest.approx(reference[tag], rel=1e-5, abs=1e-6), tag
    assert got["weights"].keys() == reference["weights"].keys()
    # Adam divides by each gradient's running size, so a rounding in a near-zero gradient can move a weight by a few
    # 1e-6 over these 15 steps (6e-6 measured); batches in another order move them by about 1e-2.
    for name, want in reference["weights"].items():
        assert torch.allclose(got["weights"][name], want, rtol=1e-4, atol=1e-4), name


def test_two_nodes_started_by_torchrun_train_as_one_process(pickle_root, one_process, tmp_path):
    cwd = workspace(tmp_path)
    torchrun = Path(sys.executable).with_name("torchrun")
    port = str(free_port())
    commands = [
        [str(torchrun), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node), "--master_addr",
         "127.0.0.1", "--master_port", port, "-m", "cifarlit", "fit", *CONFIGS, *fit_args(pickle_root, 16)]
        for node in (0, 1)
    ]  # fmt: skip
    run_together(commands, cwd, [run_env(cwd)] * 2)
    check_two_nodes(cwd, one_process, "TorchElasticEnvironment")


def test_two_nodes_started_by_the_slurm_script_train_as_one_process(pickle_root, one_process, tmp_path):
    cwd = workspace(tmp_path)
    srun = cwd / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text(FAKE_SRUN)
    srun.chmod(0o755)
    port = free_port(15000, 24999)  # SLURMEnvironment's port: 15000 + the job id's last 4 digits
    env = run_env(cwd) | {
        "PATH": os.pathsep.join([str(srun.parent), str(Path(sys.executable).parent), os.environ["PATH"]]),
        # what sbatch sets for `--nodes=2 --ntasks-per-node=1`; no MASTER_ADDR / MASTER_PORT, as on a cluster
        "SLURM_JOB_ID": f"7{port - 15000:04d}", "SLURM_JOB_NAME": "cifarlit", "SLURM_NODELIST": "127.0.0.1",
        "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "2", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1",
    }  # fmt: skip
    run_together([["bash", str(REPO / "scripts" / "slurm_ddp.sbatch"), *fit_args(pickle_root, 16)]], cwd, [env])
    check_two_nodes(cwd, one_process, "SLURMEnvironment")

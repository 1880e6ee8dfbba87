"""Epoch time on a GPU: `cifarlit fit` with its default config, as a user gets it (determinism policy included),
against Lightning's floor (`Trainer(barebones=True)`, same model and data) and a plain PyTorch loop on the same GPU;
and what bit-reproducibility (`--trainer.deterministic true`) costs there.

python benchmarks/gpu_epoch.py [--data.data_dir DIR] [--epochs 4] [--only mlp512 cnn ...] [--json OUT]

Every run is a fresh process; a figure is the fastest epoch (training + its val pass) of the runs of a kind. The MLP
at batch 512 and the CNN run twice (does the default reproduce?), the rest once: a fresh process takes ~15 s on the
GPU machine before its first epoch, and benchmarks/gpu_check.sh has to fit in 8 minutes.
Targets (issue #13): default MLP batch 512 <= 1.25x the plain loop, batch 64 <= 1.5x, cnn.yaml's CNN <= 1.4x a
plain loop of the same network; where Lightning's floor is above a target, within 1.05x of the floor.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.plain_loop import export_split  # noqa: E402

CNN = ("configs/experiments/cnn.yaml",)
# name: (configs, batch size, val_size of the config, plain-loop net, target vs the plain loop)
GROUPS = {
    "mlp512": ((), 512, 0.2, "mlp", 1.25),
    "cnn": (CNN, 128, 0.1, "cnn", 1.4),
    "mlp64": ((), 64, 0.2, "mlp", 1.5),
}


ACCELERATOR = {"gpu": "cuda", "cpu": "cpu"}  # Lightning's name -> torch's; cpu only to try the script out
accelerator = "gpu"


def cifarlit(data: str, epochs: int, *args: str, configs=(), barebones=False) -> tuple[list[float], list[str]]:
    out = common.fit_run(data, "--trainer.max_epochs", str(epochs), *args, configs=configs, barebones=barebones,
                         accelerator=accelerator)  # fmt: skip
    return common.markers(out, "EPOCH_SECONDS"), re.findall(r"VAL_LOSS (\S+)", out.stdout)


def group(name: str, data: str, epochs: int, splits: dict, repeats: int = 2) -> list[dict]:
    configs, bs, val_size, net, target = GROUPS[name]
    if val_size not in splits:
        splits[val_size] = Path(tempfile.mkdtemp(prefix="cifarlit-bench-")) / "split.pt"
        export_split(data, splits[val_size], val_size)
    split = splits[val_size]
    batch = ("--data.batch_size", str(bs))
    runs = [cifarlit(data, epochs, *batch, configs=configs) for _ in range(repeats)]  # twice: does it reproduce?
    bare, _ = cifarlit(data, epochs, *batch, configs=configs, barebones=True)
    device = ACCELERATOR[accelerator]
    plain = common.plain_epochs(split, bs, epochs, device=device, net=net)
    times = {"cifarlit": min(min(r[0]) for r in runs), "barebones": min(bare), "plain": min(plain)}
    if net == "mlp":  # the plain loop given cifarlit's data path and fused Adam (the CNN loop already has them)
        times["like for like"] = min(common.plain_epochs(split, bs, epochs, device=device, like_cifarlit=True))
    row = {
        "benchmark": f"gpu {name} (batch {bs})",
        **{f"{k} s/epoch": round(v, 4) for k, v in times.items()},
        "cifarlit/plain": round(times["cifarlit"] / times["plain"], 3),
        "barebones/plain": round(times["barebones"] / times["plain"], 3),
        "cifarlit/barebones": round(times["cifarlit"] / times["barebones"], 3),
        "target": f"<= {target} x plain, or <= 1.05 x barebones where barebones/plain > {target}",
        "reproduced": runs[0][1] == runs[-1][1] if len(runs) > 1 else None,
        "val_loss per epoch": [r[1] for r in runs],
    }
    return [row]


def determinism(data: str, epochs: int, repeats: int = 2, auto: dict | None = None) -> list[dict]:
    """``deterministic: true`` against the default ``auto`` on a GPU: the time, and whether two runs agree.
    ``auto`` holds the default's s/epoch from this invocation's rows, so they are not run again."""
    rows = []
    for name, configs, bs in (("mlp512", (), 512), ("cnn", CNN, 128)):
        args = ("--data.batch_size", str(bs), "--trainer.deterministic", "true")
        runs = [cifarlit(data, epochs, *args, configs=configs) for _ in range(repeats)]
        default = (auto or {}).get(name) or min(
            cifarlit(data, epochs, "--data.batch_size", str(bs), configs=configs)[0]
        )
        fastest = min(min(r[0]) for r in runs)
        rows.append({
            "benchmark": f"gpu {name} deterministic: true vs auto", "true s/epoch": round(fastest, 4),
            "auto s/epoch": round(default, 4), "ratio": round(fastest / default, 3),
            "reproduced": runs[0][1] == runs[-1][1] if repeats > 1 else None, "val_loss per epoch": runs[0][1],
        })  # fmt: skip
    return rows


def precision(data: str, epochs: int) -> list[dict]:
    fp32, _ = cifarlit(data, epochs, "--data.batch_size", "512")
    bf16, _ = cifarlit(data, epochs, "--data.batch_size", "512", "--trainer.precision", "bf16-mixed")
    return [{"benchmark": "gpu mlp512 bf16-mixed vs 32-true", "bf16 s/epoch": round(min(bf16), 4),
             "fp32 s/epoch": round(min(fp32), 4), "ratio": round(min(bf16) / min(fp32), 3)}]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data.data_dir", dest="data", default=None)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--only", nargs="*", choices=[*GROUPS, "determinism", "precision"], help="default: all but precision"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--repeats", type=int, default=2, help="cifarlit runs per row (2: does it reproduce?)")
    parser.add_argument("--accelerator", choices=list(ACCELERATOR), default="gpu", help="cpu: try the script out")
    args = parser.parse_args()
    global accelerator
    accelerator = args.accelerator
    data, source = common.data_dir(args.data)
    print(f"machine: {common.machine()}\ndata: {source} ({data})", flush=True)
    rows, splits, auto = [], {}, {}
    for name in args.only or [*GROUPS, "determinism"]:
        try:
            if name in GROUPS:
                new = group(name, str(data), args.epochs, splits, args.repeats if name != "mlp64" else 1)
                auto[name] = new[0]["cifarlit s/epoch"]
            elif name == "determinism":
                new = determinism(str(data), args.epochs, 1, auto)
            else:
                new = precision(str(data), max(3, args.epochs - 1))
        except RuntimeError as err:  # one failing run must not throw away the others' minutes
            print(f"{name} failed: {err}", file=sys.stderr, flush=True)
            new = [{"benchmark": name, "detail": "FAILED (see stderr)"}]
        for row in new:
            print(json.dumps(row), flush=True)
        rows += new
        if args.json:
            args.json.write_text(json.dumps({"machine": common.machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

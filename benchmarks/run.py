"""`make bench`: every benchmark, one table. Figures are ratios measured side by side in this one run."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` is a folder of scripts, not installed
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from benchmarks import (  # noqa: E402
    augment_cost,
    common,
    cpu_precision,
    data_throughput,
    loop_overhead,
    serve_load,
    startup,
    step_overhead,
    stream_cost,
    tricks,
)  # fmt: skip

SUITES = {
    "tricks": tricks.run,
    "step_overhead": step_overhead.run,
    "loop_overhead": loop_overhead.run,
    "augment_cost": augment_cost.run,
    "data_throughput": data_throughput.run,
    "startup": startup.run,
    "stream_cost": stream_cost.run,
    "cpu_precision": cpu_precision.run,
    "serve_load": serve_load.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data.data_dir", dest="data_dir", default=None, help="dataset folder (default: shared CIFAR-10)"
    )
    parser.add_argument("--only", nargs="*", choices=list(SUITES), help="run only these benchmarks")
    args = parser.parse_args()
    data, source = common.data_dir(args.data_dir)
    print(f"machine: {common.machine()}\ndata: {source} ({data})", flush=True)
    rows = []
    for name in args.only or SUITES:
        try:
            suite = SUITES[name](str(data))
        except RuntimeError as err:  # one broken suite must not throw away the others' minutes of measuring
            print(f"{name} failed: {err}", file=sys.stderr)
            suite = [{"benchmark": name, "detail": "FAILED (see stderr)"}]
        for row in suite:
            print("  " + ", ".join(f"{k}: {v}" for k, v in row.items()), flush=True)  # progress, in case of a crash
        rows += suite
    keys = ["benchmark"] + sorted({k for r in rows for k in r} - {"benchmark", "detail"}) + ["detail"]
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    if any(r.get("detail") == "FAILED (see stderr)" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()

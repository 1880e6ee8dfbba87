"""bf16 autocast against fp32 on this CPU: one training step (forward, backward, SGD) of each shipped CNN.

python benchmarks/cpu_precision.py        (also part of `make bench`)

`trainer.precision: bf16-mixed` is what recipe_cnn_cpu.yaml uses; whether it pays depends on the CPU (AVX512-BF16
or AMX make it fast, without them it can be slower than fp32). Alternating rounds, fastest of each, as tricks.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tricks import compare  # noqa: E402

BATCH = 256


def step_fn(net: torch.nn.Module, bf16: bool):
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run(data: str | None = None) -> list[dict]:
    from cifarlit.models.nets import CifarResNet, SmallCNN

    torch.manual_seed(0)
    nets = {
        "SmallCNN 32-64-128 (cnn.yaml)": lambda: SmallCNN(10, (3, 32, 32), widths=[32, 64, 128]),
        "CifarResNet 24-48-96-192 (recipe_cnn_cpu.yaml)": lambda: CifarResNet(
            10, (3, 32, 32), widths=[24, 48, 96, 192]
        ),
    }  # fmt: skip
    rows = []
    for name, make in nets.items():
        row = compare(f"bf16 autocast, not fp32: {name}, batch {BATCH}", step_fn(make(), True),
                      step_fn(make(), False), repeats=2)  # fmt: skip
        row["benchmark"] = row["benchmark"].replace("trick: ", "cpu_precision: ")
        rows.append(row)
    return rows


if __name__ == "__main__":
    for row in run():
        print(row, flush=True)

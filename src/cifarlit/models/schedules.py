"""Learning-rate schedules stepped per batch that torch does not ship as one class.

``WarmupCosineLR``: linear warm-up from ``start_factor * lr`` over the first ``warmup_fraction`` of training, then
a cosine decay to ``min_factor * lr``. Warm-up lets Adam(W) use a higher peak rate without the first, badly
scaled steps blowing up BatchNorm statistics; the cosine tail anneals into a flat minimum. ``total_steps`` is
filled in by ``LitMLP`` from ``trainer.estimated_stepping_batches`` when left unset.

>>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
>>> s = WarmupCosineLR(opt, total_steps=10, warmup_fraction=0.2, start_factor=0.0)
>>> [round(s.lr_lambdas[0](i), 2) for i in (0, 1, 2, 6, 10)]
[0.0, 0.5, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from cifarlit.utils.errors import CifarlitError


class WarmupCosineLR(LambdaLR):
    """Linear warm-up then cosine decay (set ``model.scheduler_interval: step`` to step it per batch).

    Args:
        optimizer: filled in by the LightningModule.
        total_steps: length of the schedule in scheduler steps; unset means the whole run.
        warmup_fraction: share of ``total_steps`` spent warming up.
        start_factor: learning rate at step 0 as a fraction of the optimizer's ``lr``.
        min_factor: learning rate at the end as a fraction of ``lr``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int | None = None,
        warmup_fraction: float = 0.05,
        start_factor: float = 0.1,
        min_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if total_steps is None or total_steps < 1:
            raise CifarlitError(f"lr_scheduler.init_args.total_steps={total_steps} is not valid: use a count >= 1.")
        if not 0 <= warmup_fraction < 1:
            raise CifarlitError(
                f"lr_scheduler.init_args.warmup_fraction={warmup_fraction} is not valid: use a value in [0, 1)."
            )
        self.total_steps, warmup = total_steps, round(total_steps * warmup_fraction)

        def factor(step: int) -> float:
            if step < warmup:
                return start_factor + (1 - start_factor) * step / warmup
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

        super().__init__(optimizer, factor, last_epoch)

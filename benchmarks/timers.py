"""Callbacks the benchmarks add to a `cifarlit fit` run (``--trainer.callbacks+=benchmarks.timers.X``); each
prints one marked line the parent process reads."""

from __future__ import annotations

import time

from lightning.pytorch import Callback


class FitTimer(Callback):
    """Wall time from the start of training to its end: the startup and the sanity check are excluded, every
    epoch's val pass, checkpointing, logging and progress bar are included."""

    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        print(f"FIT_SECONDS {time.perf_counter() - self.start}", flush=True)


class FirstStep(Callback):
    """The wall-clock time of the first training step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0 and trainer.current_epoch == 0:
            print(f"FIRST_STEP_AT {time.time()}", flush=True)

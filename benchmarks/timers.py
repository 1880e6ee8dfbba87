"""Callbacks the benchmarks add to a `cifarlit fit` run (``--trainer.callbacks+=benchmarks.timers.X``); each
prints one marked line the parent process reads."""

from __future__ import annotations

import time

from lightning.pytorch import Callback


class FitTimer(Callback):
    """Wall time of each epoch, from one epoch's start to the next's (its val pass, checkpointing, logging and
    progress bar included), then of the whole training; the startup and the sanity check are excluded."""

    def on_train_start(self, trainer, pl_module):
        self.start = self.epoch_start = time.perf_counter()
        self.cpu_start = time.process_time()

    def on_train_epoch_start(self, trainer, pl_module):
        now, cpu = time.perf_counter(), time.process_time()
        if trainer.current_epoch > 0:
            print(f"EPOCH_SECONDS {now - self.epoch_start}", flush=True)
            print(f"EPOCH_CPU_SECONDS {cpu - self.cpu_start}", flush=True)  # all threads of the process
        self.epoch_start, self.cpu_start = now, cpu

    def on_validation_end(self, trainer, pl_module):
        loss = trainer.callback_metrics.get("val/loss")  # none under barebones: nothing is logged
        if loss is not None and not trainer.sanity_checking:  # every digit: are two runs the same?
            print(f"VAL_LOSS {float(loss):.10g}", flush=True)

    def on_train_end(self, trainer, pl_module):
        now = time.perf_counter()
        print(f"EPOCH_SECONDS {now - self.epoch_start}", flush=True)
        print(f"EPOCH_CPU_SECONDS {time.process_time() - self.cpu_start}", flush=True)
        print(f"FIT_SECONDS {now - self.start}", flush=True)


class FirstStep(Callback):
    """The wall-clock time of the first training step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0 and trainer.current_epoch == 0:
            print(f"FIRST_STEP_AT {time.time()}", flush=True)


class PeakMemory(Callback):
    """The process's peak resident memory at the end of fit (``ru_maxrss``: every page it ever held, the memory
    maps of a stream's chunks included)."""

    def on_fit_end(self, trainer, pl_module):
        import resource

        print(f"PEAK_RSS_MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}", flush=True)

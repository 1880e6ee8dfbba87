"""The random number generators' states in a checkpoint, so that a resumed run shuffles and augments exactly as
the uninterrupted one would have.

Lightning restores weights, optimizer, scheduler, loops and callbacks, not the RNGs. ``LitMLP`` stores them under
``cifarlit_rng_states``: one dict per process of a DDP run (each draws for its own batches, on its own GPU), as
tensors and plain values, so the checkpoint loads with ``weights_only=True``. A checkpoint's are checked against
this layout before they are restored (``cifarlit.utils.checkpoint_state.check_restorable``).
"""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_states() -> dict:
    """torch, CUDA, NumPy and Python RNG states of this process, as tensors and plain values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def set_rng_states(states: dict) -> None:
    """Put back what :func:`rng_states` returned (CUDA's only where this process has CUDA)."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def every_process(state: dict) -> list[dict]:
    """``state`` of every process of a DDP run, in rank order (only this process's outside one)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)  # the run's own processes, in memory: not a file
    return states


def this_process(states: dict | list[dict], rank: int) -> dict:
    """This process's state among a checkpoint's: its rank's, or the first (a checkpoint of fewer processes, or
    one from before the states were stored per process, as one dict)."""
    states = [states] if isinstance(states, dict) else states
    return states[rank] if rank < len(states) else states[0]

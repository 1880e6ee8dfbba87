"""Shared by every layer: ``errors`` (the one user-error type), ``files`` (atomic writes, output checks),
``figures`` (matplotlib), ``checkpoints`` (checkpoints read as data, never code; the checks themselves in
``checkpoint_state`` and ``checkpoint_hparams``) and one adapter per library whose undocumented API cifarlit relies
on (``lightning_adapter``, ``jsonargparse_adapter``)."""

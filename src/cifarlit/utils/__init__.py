"""Shared by every layer: ``errors`` (the one user-error type), ``files`` (atomic writes, output checks),
``figures`` (matplotlib) and ``checkpoints`` (checkpoints read as data, never code)."""

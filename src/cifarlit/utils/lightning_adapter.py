"""What cifarlit relies on in Lightning beyond its documented API, in one place.

Each item is checked by ``tests/test_adapters.py`` against the installed Lightning, so an upgrade that changes
one fails there, by name, instead of somewhere in a run; pyproject.toml keeps lightning below its next minor
release until that test has passed on it.

- **The instantiator in the hyperparameters.** LightningCLI hands a module its config as hyperparameters with
  ``_instantiator: lightning.pytorch.cli.instantiate_module`` added; ``load_from_checkpoint`` rebuilds a module
  with that function only if the name is in its allow-list. cifarlit writes the same key into a module built in
  Python (so every checkpoint is plain values), builds a checkpoint's network with it on the meta device, and reads
  the key to tell that LightningCLI built the module (Lightning has no public flag for that; its own is a private
  context variable).
- **ModelCheckpoint's state**: the keys of ``ModelCheckpoint.state_dict()``, whose paths a resumed callback trusts
  and later deletes (``checkpoint_state.confine_paths`` checks every one of them).

Lightning files a DataModule's state in a checkpoint under its class's ``__qualname__`` (``checkpoint_state.DATA_KEY``);
the same test checks that on a real checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

INSTANTIATOR_KEY = "_instantiator"
INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
# the ones load_from_checkpoint accepts (lightning.pytorch.core.saving's allow-list)
INSTANTIATORS = (INSTANTIATOR, "pytorch_lightning.cli.instantiate_module")
# every key of ModelCheckpoint.state_dict(): the paths among them are the ones a resumed callback deletes later
MODEL_CHECKPOINT_PATHS = ("best_model_path", "last_model_path", "kth_best_model_path")
MODEL_CHECKPOINT_KEYS = frozenset(
    {*MODEL_CHECKPOINT_PATHS, "monitor", "best_model_score", "current_score", "best_k_models", "kth_value", "dirpath"}
)


def built_by_cli(hparams: Mapping[str, Any]) -> bool:
    """Whether ``hparams``, just saved by ``save_hyperparameters()``, are the config LightningCLI gave (class paths
    and plain values) rather than the arguments of a module built in Python (live classes and callables)."""
    return INSTANTIATOR_KEY in hparams


def instantiate_module(module_class: type, hparams: Mapping[str, Any]) -> Any:
    """``module_class`` built from checkpoint hyperparameters as ``load_from_checkpoint`` builds it (LightningCLI's
    parser, so ``class_path``/``init_args`` become objects); ``_instantiator`` is dropped first."""
    from lightning.pytorch.cli import instantiate_module as lightning_instantiate

    return lightning_instantiate(module_class, {k: v for k, v in hparams.items() if k != INSTANTIATOR_KEY})

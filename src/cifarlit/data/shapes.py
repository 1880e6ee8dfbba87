"""The image shape: the smallest side any command reads images at, and the one check of a checkpoint's shape.

A network is built for ``(channels, image_size, image_size)`` images; a checkpoint records the shape it was trained
on. Testing or resuming it on images of another shape is refused here, before a model is built for them (the CLI
calls :func:`check_image_shape` on the checkpoint file; the DataModule, used without the CLI, checks the state
Lightning hands it). A stream records its own shape, which ``stream.check_split`` compares with the options.
"""

from __future__ import annotations

from cifarlit.data import DataError
from cifarlit.utils.checkpoints import DATA_KEY, MIN_SIDE


def check_image_size(image_size: int) -> None:
    """Refuse ``data.image_size`` below :data:`~cifarlit.utils.checkpoints.MIN_SIDE`, the smallest side any command
    reads images at (and a checkpoint may claim)."""
    if image_size < MIN_SIDE:
        raise DataError(
            f"data.image_size={image_size} is not valid: use {MIN_SIDE} or more pixels (the default networks halve "
            "the size three times)."
        )


def check_trained_shape(trained: tuple[int, ...], asked: tuple[int, int, int], what: str) -> None:
    """Refuse to read images of another shape than ``what`` (a checkpoint) was trained on."""
    if tuple(trained) != tuple(asked):
        raise DataError(
            f"{what} was trained on images of shape {list(trained)} (channels, height, width), but "
            f"data.image_size/data.channels give {list(asked)}: set them as in training."
        )


def check_image_shape(state: dict, data, ckpt: str) -> None:
    """Refuse to test or resume the checkpoint ``ckpt`` (its contents ``state``) on images of another shape than it
    was trained on, with the ``data`` options of the command line: before a model is built for them."""
    trained = (state.get(DATA_KEY) or {}).get("image_shape")
    if trained is not None:
        size = data.get("image_size", 32)
        check_trained_shape(trained, (data.get("channels", 3), size, size), f"--ckpt_path {ckpt}")

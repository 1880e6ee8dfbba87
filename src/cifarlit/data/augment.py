"""Training-set augmentation: small batch functions on the training device, each with its albumentations twin.

An augmentation is one function ``batch_<name>(x, cfg, generator)`` on a float batch ``(B, C, H, W)`` in [0, 1],
drawing its random parameters for the whole batch at once, registered with the albumentations transforms that
do the same to one image (:func:`albumentations_twin`). A preset (:data:`PRESETS`) is a list of them; the
``batched`` backend (:class:`BatchAugment`) applies the list to whole batches on the training device, and the
``albumentations`` backend builds its ``Compose`` from the same list and runs it per image in DataLoader workers,
for users who want its catalogue. Per image, on the CPU, the same pipeline costs several times an MLP's own
compute (benchmarks/README.md, augment_cost). MixUp and CutMix (:class:`BatchMix`) mix whole batches after
either backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, what albumentations' ToGray uses
RGB_SHIFT = 20 / 255  # albumentations' RGBShift default: each channel moved by up to +-20 of 255
Twin = Callable[..., list]  # (albumentations module, cfg, size, channels) -> its transforms of one image


def albumentations_twin(twin: Twin):
    """Register a batch augmentation with ``twin``, the albumentations transforms that do the same to one uint8
    ``(size, size, channels)`` image (called with the ``albumentations`` module, the config, size, channels)."""

    def register(augmentation):
        augmentation.albumentations = twin
        return augmentation

    return register


def draw(x: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` uniform random numbers per image of the batch ``x``, ``(B, count)`` on its device, in one call:
    a small op costs mostly its fixed overhead (benchmarks/tricks.py)."""
    return torch.rand(len(x), count, device=x.device, generator=generator)


@albumentations_twin(lambda A, cfg, size, channels: [A.HorizontalFlip()])
def batch_flip_lr(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror a random half of the images left to right."""
    return select_apply(x, draw(x, 1, generator)[:, 0] < 0.5, lambda im: im.flip(-1))


def _pad_and_crop(A, cfg: AugmentConfig, size: int, channels: int) -> list:
    import cv2

    padded = size + 2 * cfg.pad
    return [A.PadIfNeeded(padded, padded, border_mode=cv2.BORDER_CONSTANT, fill=0), A.RandomCrop(size, size)]


@albumentations_twin(_pad_and_crop)
def batch_crop(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad ``cfg.pad`` pixels of zeros around each image and cut a random window of its size: a whole-pixel shift
    of up to ``cfg.pad`` each way."""
    _, _, h, w = x.shape
    shift = torch.floor(draw(x, 2, generator) * (2 * cfg.pad + 1)) - cfg.pad  # (dy, dx) per image
    return _resample(x, 1.0, 1.0, shift[:, 1] * 2 / w, shift[:, 0] * 2 / h, "nearest")


@albumentations_twin(
    lambda A, cfg, size, channels: [A.RandomCrop(cfg.crop_pixels(size), cfg.crop_pixels(size)), A.Resize(size, size)]
)
def batch_crop_resize(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cut a random ``cfg.crop`` window at a whole-pixel offset and stretch it back to the image size (bilinear,
    as OpenCV's resize)."""
    _, _, h, w = x.shape
    ch, cw = cfg.crop_pixels(h), cfg.crop_pixels(w)
    u = draw(x, 2, generator)
    oy, ox = torch.floor(u[:, 0] * (h - ch + 1)), torch.floor(u[:, 1] * (w - cw + 1))
    # the crop's scale and centre, in grid_sample's [-1, 1] coordinates
    return _resample(x, cw / w, ch / h, (2 * ox + cw) / w - 1, (2 * oy + ch) / h - 1, "bilinear")


@albumentations_twin(
    lambda A, cfg, size, channels: [A.OneOf([A.ToGray(p=0.2), A.RGBShift(p=0.3)])] if channels == 3 else []
)
def batch_gray_or_shift(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """OneOf(ToGray p=0.2, RGBShift p=0.3) at p=0.5: one of the two, picked by weight 0.2 : 0.3, on half of the
    images (20% turn gray, 30% get each channel moved by up to ``RGB_SHIFT``); for RGB images only."""
    if x.shape[1] != 3:
        return x
    r = draw(x, 4, generator)
    u, offsets = r[:, 0], (r[:, 1:] * 2 - 1).mul_(RGB_SHIFT).view(-1, 3, 1, 1)

    def gray(im: torch.Tensor) -> torch.Tensor:
        luma = im[:, 0] * GRAY_WEIGHTS[0] + im[:, 1] * GRAY_WEIGHTS[1] + im[:, 2] * GRAY_WEIGHTS[2]
        return luma.unsqueeze(1).expand(-1, 3, -1, -1)

    x = select_apply(x, u < 0.5 * 0.4, gray)
    return select_apply(x, (u >= 0.5 * 0.4) & (u < 0.5), lambda im, off: im.add(off).clamp_(0, 1), offsets)


PRESETS = {
    "none": [],
    # the lecture's pipeline: RandomCrop(24, 24) -> Resize(32, 32) -> HorizontalFlip -> OneOf(ToGray, RGBShift)
    "course": [batch_crop_resize, batch_flip_lr, batch_gray_or_shift],
    "crop_flip": [batch_crop, batch_flip_lr],  # the usual CIFAR recipe: pad 4, random crop, flip
    "flip": [batch_flip_lr],  # the one change that keeps every pixel where an MLP expects it
}
Preset = Literal[tuple(PRESETS)]  # the config accepts every preset's name


@dataclass
class AugmentConfig:
    """Augmentation of the training split (val and test are never augmented).

    Args:
        preset: a list of augmentations by name (``cifarlit.data.augment.PRESETS``): ``none``, ``course``
            (crop 3/4 -> resize back -> flip -> gray / RGB shift, the colour changes for RGB images only),
            ``crop_flip`` (pad + random crop of the image size + flip) or ``flip`` (horizontal flip only).
        backend: ``batched`` (tensor ops on the training device, the fast default) or ``albumentations``
            (per sample, in DataLoader workers).
        pad: padding in pixels for ``crop_flip``.
        crop: the crop of ``course``, resized back to the image size: a fraction of the side (0.75: 24 of 32
            pixels) or, as a whole number, pixels.
        mixup: MixUp's ``alpha`` (each training batch blended with a shuffled copy of itself by a weight drawn
            from Beta(alpha, alpha), the labels likewise); 0 is off. Runs on the whole batch, on the device, for
            either backend; val and test are never mixed.
        cutmix: CutMix's ``alpha`` (a box of the shuffled copy pasted in, the labels mixed by its area); 0 is
            off. With both on, each batch gets one of the two, at random.
    """

    preset: Preset = "none"
    backend: Literal["batched", "albumentations"] = "batched"
    pad: int = 4
    crop: int | float = 0.75
    mixup: float = 0.0
    cutmix: float = 0.0

    def crop_pixels(self, size: int) -> int:
        """The side of the ``course`` crop for images of ``size`` pixels."""
        pixels = round(self.crop * size) if isinstance(self.crop, float) and self.crop <= 1 else int(self.crop)
        return max(1, min(pixels, size))


def _resample(x: torch.Tensor, sx: float, sy: float, tx: torch.Tensor, ty: torch.Tensor, mode: str) -> torch.Tensor:
    """Each image sampled at ``(tx + sx * u, ty + sy * v)`` of grid_sample's [-1, 1] coordinates (zeros outside).

    The map is separable (a scale and a shift per axis), so the sampling grid is built from two small ``(B, W)``
    and ``(B, H)`` coordinate rows rather than by ``F.affine_grid``'s batched matmul (benchmarks/tricks.py).
    """
    b, _, h, w = x.shape
    base_x = torch.linspace(1 / w - 1, 1 - 1 / w, w, device=x.device, dtype=x.dtype)  # pixel centres
    base_y = torch.linspace(1 / h - 1, 1 - 1 / h, h, device=x.device, dtype=x.dtype)
    gx = (tx[:, None] + sx * base_x)[:, None, :].expand(b, h, w)
    gy = (ty[:, None] + sy * base_y)[:, :, None].expand(b, h, w)
    return F.grid_sample(x, torch.stack((gx, gy), -1), mode=mode, padding_mode="zeros", align_corners=False)


def select_apply(
    x: torch.Tensor, chosen: torch.Tensor, fn, *params: torch.Tensor, by_index: bool | None = None
) -> torch.Tensor:
    """``fn(images, *params)`` on the images where the ``(B,)`` mask ``chosen`` is true; the others unchanged.

    On the CPU (``by_index``) only the chosen images are gathered and written back (``index_select`` /
    ``index_copy_``), which is cheaper there than whole-batch selects (benchmarks/tricks.py). On a GPU the
    whole batch goes through ``torch.where`` instead, since finding the chosen indices (``nonzero``) would make
    the host wait for the GPU at every step. Both give the same images. ``x`` may be modified in place.
    """
    if by_index is None:
        by_index = x.device.type == "cpu"
    if not by_index:
        return torch.where(chosen.view(-1, *[1] * (x.dim() - 1)), fn(x, *params), x)
    idx = torch.nonzero(chosen).flatten()
    if len(idx):
        x.index_copy_(0, idx, fn(x.index_select(0, idx), *(p.index_select(0, idx) for p in params)))
    return x


class BatchAugment(nn.Module):
    """Augment a float batch ``(B, C, H, W)`` in [0, 1] by the preset's augmentations, in order, with independent
    random parameters per image. The input may be modified in place (the caller passes a fresh float copy of the
    uint8 batch)."""

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.augmentations = PRESETS[cfg.preset]

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for augmentation in self.augmentations:
            x = augmentation(x, self.cfg, generator)
        return x


def albumentations_pipeline(cfg: AugmentConfig, size: int = 32, seed: int | None = None, channels: int = 3):
    """The preset as an albumentations ``Compose`` of its augmentations' twins, for one ``(size, size, channels)``
    uint8 image."""
    import os

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never phone home for a version check
    import albumentations as A

    transforms = [
        t for augmentation in PRESETS[cfg.preset] for t in augmentation.albumentations(A, cfg, size, channels)
    ]
    return A.Compose(transforms, seed=seed)


class AlbumentationsBatch:
    """Apply an albumentations pipeline image by image to a uint8 batch ``(B, C, H, W)``."""

    def __init__(self, cfg: AugmentConfig, seed: int, shape: tuple[int, int, int] = (3, 32, 32)) -> None:
        self.pipeline = albumentations_pipeline(cfg, size=shape[1], seed=seed, channels=shape[0])

    def reseed(self, seed: int) -> None:
        self.pipeline.set_random_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        images = x.permute(0, 2, 3, 1).numpy()  # (B, C, H, W) -> (B, H, W, C), what OpenCV expects
        out = np.stack([self.pipeline(image=np.ascontiguousarray(im))["image"] for im in images])
        return torch.from_numpy(out.reshape(images.shape)).permute(0, 3, 1, 2).contiguous()


class BatchMix:
    """MixUp (Zhang et al., 2018) and CutMix (Yun et al., 2019) of a training batch, with soft targets.

    One weight per batch, paired with a random permutation of the batch itself. The weight and the box are
    drawn on the CPU (from torch's seeded global RNG) and the permutation on the batch's device, so nothing makes
    the host wait for a GPU.

    >>> x, y = torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    >>> mixed, soft = BatchMix(AugmentConfig(mixup=1.0), num_classes=5)(x, y)
    >>> soft.shape, bool(torch.allclose(soft.sum(1), torch.ones(4)))
    (torch.Size([4, 5]), True)
    """

    def __init__(self, cfg: AugmentConfig, num_classes: int) -> None:
        self.kinds = [k for k, alpha in (("mixup", cfg.mixup), ("cutmix", cfg.cutmix)) if alpha > 0]
        self.alpha = {"mixup": cfg.mixup, "cutmix": cfg.cutmix}
        self.num_classes = num_classes

    def __bool__(self) -> bool:
        return bool(self.kinds)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed images (``x`` may be changed in place) and ``(B, num_classes)`` target probabilities."""
        if not self.kinds:
            return x, y
        kind = self.kinds[int(torch.randint(len(self.kinds), ()))] if len(self.kinds) > 1 else self.kinds[0]
        alpha = self.alpha[kind]
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(len(x), device=x.device)
        other = x.index_select(0, perm)
        if kind == "mixup":
            x = x.mul_(lam).add_(other, alpha=1 - lam)
        else:
            h, w = x.shape[-2:]
            cut_h, cut_w = round(h * (1 - lam) ** 0.5), round(w * (1 - lam) ** 0.5)
            top, left = (int(torch.randint(n - c + 1, ())) for n, c in ((h, cut_h), (w, cut_w)))
            x[..., top : top + cut_h, left : left + cut_w] = other[..., top : top + cut_h, left : left + cut_w]
            lam = 1 - cut_h * cut_w / (h * w)  # the share of the image that is still its own
        target = F.one_hot(y, self.num_classes).to(x.dtype)
        return x, torch.lerp(target.index_select(0, perm), target, lam)  # lam * own + (1 - lam) * other

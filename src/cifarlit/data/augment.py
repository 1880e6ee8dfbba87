"""Training-set augmentation: batched tensor ops on the training device (fast default) or albumentations.

Two presets, each in both backends:

- ``course``: the lecture's pipeline, RandomCrop(24, 24) -> Resize(32, 32) -> HorizontalFlip ->
  OneOf(ToGray p=0.2, RGBShift p=0.3) (OneOf itself p=0.5, so 20% of images turn gray, 30% get shifted).
- ``crop_flip``: zero-pad 4 pixels, random 32x32 crop, horizontal flip (the usual CIFAR recipe).
- ``flip``: horizontal flip only: the one change that keeps every pixel where an MLP expects it.

The ``batched`` backend draws per-image random parameters and applies crop, resize and flip as one
``grid_sample`` call on the whole batch, on the training device: a per-sample pipeline costs several times an MLP's
own compute per image (benchmarks/README.md, augment_cost). The ``albumentations`` backend runs per sample inside
DataLoader workers, for users who want its catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Preset = Literal["none", "course", "crop_flip", "flip"]
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, what albumentations' ToGray uses
RGB_SHIFT = 20 / 255  # albumentations' RGBShift default: each channel moved by up to +-20 of 255


@dataclass
class AugmentConfig:
    """Augmentation of the training split (val and test are never augmented).

    Args:
        preset: ``none``, ``course`` (crop 3/4 -> resize back -> flip -> gray / RGB shift), ``crop_flip``
            (pad 4 + random crop of the image size + flip) or ``flip`` (horizontal flip only). The colour
            changes of ``course`` apply to RGB images only.
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


class BatchAugment(nn.Module):
    """Augment a float batch ``(B, 3, H, W)`` in [0, 1] with independent random parameters per image.

    The input may be modified in place (the caller passes a fresh float copy of the uint8 batch).
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.cfg.preset == "none":
            return x
        b, _, h, w = x.shape
        # Every random number of the batch in one draw, since a small op costs mostly its fixed overhead
        # (benchmarks/tricks.py): per image, flip, y offset, x offset, the colour choice and three RGB shifts.
        r = torch.rand(b, 7, device=x.device, generator=generator)
        if self.cfg.preset == "flip":  # no resampling needed: mirror the chosen half
            return select_apply(x, r[:, 0] < 0.5, lambda im: im.flip(-1))
        flip = torch.where(r[:, 0] < 0.5, -1.0, 1.0)
        if self.cfg.preset == "course":
            # Crop `crop` pixels at an integer offset, stretched back to (h, w): scale crop/size, shift to the
            # crop's centre, both in grid_sample's [-1, 1] coordinates (align_corners=False = OpenCV's resize).
            ch, cw = self.cfg.crop_pixels(h), self.cfg.crop_pixels(w)
            oy = torch.floor(r[:, 1] * (h - ch + 1))
            ox = torch.floor(r[:, 2] * (w - cw + 1))
            sx, sy = flip * (cw / w), ch / h
            tx, ty = (2 * ox + cw) / w - 1, (2 * oy + ch) / h - 1
            mode = "bilinear"
        else:  # crop_flip: a whole-pixel shift within `pad` pixels of zero padding
            p = self.cfg.pad
            tx = (torch.floor(r[:, 2] * (2 * p + 1)) - p) * 2 / w
            ty = (torch.floor(r[:, 1] * (2 * p + 1)) - p) * 2 / h
            sx, sy = flip, 1.0
            mode = "nearest"
        # The map is separable (scale + shift per axis), so the sampling grid is built from two small
        # (B, W) and (B, H) coordinate rows rather than by F.affine_grid's batched matmul (benchmarks/tricks.py).
        base_x = torch.linspace(1 / w - 1, 1 - 1 / w, w, device=x.device, dtype=x.dtype)  # pixel centres
        base_y = torch.linspace(1 / h - 1, 1 - 1 / h, h, device=x.device, dtype=x.dtype)
        gx = torch.addcmul(tx[:, None], sx[:, None], base_x)[:, None, :].expand(b, h, w)
        gy = (ty[:, None] + sy * base_y)[:, :, None].expand(b, h, w)
        x = F.grid_sample(x, torch.stack((gx, gy), -1), mode=mode, padding_mode="zeros", align_corners=False)
        if self.cfg.preset == "course" and x.shape[1] == 3:  # the colour changes are for RGB images
            x = _gray_or_shift(x, r[:, 3], (r[:, 4:7] * 2 - 1).mul_(RGB_SHIFT).view(b, 3, 1, 1))
        return x


def _gray_or_shift(x: torch.Tensor, u: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """OneOf(ToGray p=0.2, RGBShift p=0.3) at p=0.5: pick one by weight 0.2 : 0.3, apply it to half the images.

    ``u`` is one uniform number per image, ``offsets`` its ``(B, 3, 1, 1)`` channel shifts.
    """

    def gray(im: torch.Tensor) -> torch.Tensor:
        luma = im[:, 0] * GRAY_WEIGHTS[0] + im[:, 1] * GRAY_WEIGHTS[1] + im[:, 2] * GRAY_WEIGHTS[2]
        return luma.unsqueeze(1).expand(-1, 3, -1, -1)

    x = select_apply(x, u < 0.5 * 0.4, gray)
    return select_apply(x, (u >= 0.5 * 0.4) & (u < 0.5), lambda im, off: im.add(off).clamp_(0, 1), offsets)


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


def albumentations_pipeline(cfg: AugmentConfig, size: int = 32, seed: int | None = None, channels: int = 3):
    """The same presets as an albumentations ``Compose`` working on one ``(size, size, channels)`` uint8 image."""
    import os

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never phone home for a version check
    import albumentations as A
    import cv2

    if cfg.preset == "course":
        crop = cfg.crop_pixels(size)
        transforms = [A.RandomCrop(crop, crop), A.Resize(size, size), A.HorizontalFlip()]
        if channels == 3:
            transforms.append(A.OneOf([A.ToGray(p=0.2), A.RGBShift(p=0.3)]))
    elif cfg.preset == "crop_flip":
        transforms = [
            A.PadIfNeeded(size + 2 * cfg.pad, size + 2 * cfg.pad, border_mode=cv2.BORDER_CONSTANT, fill=0),
            A.RandomCrop(size, size),
            A.HorizontalFlip(),
        ]
    elif cfg.preset == "flip":
        transforms = [A.HorizontalFlip()]
    else:
        transforms = []
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

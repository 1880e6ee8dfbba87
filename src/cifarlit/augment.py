"""Training-set augmentation: batched tensor ops on the training device (fast default) or albumentations.

Two presets, each in both backends:

- ``course``: the lecture's pipeline, RandomCrop(24, 24) -> Resize(32, 32) -> HorizontalFlip ->
  OneOf(ToGray p=0.2, RGBShift p=0.3) (OneOf itself p=0.5, so 20% of images turn gray, 30% get shifted).
- ``crop_flip``: zero-pad 4 pixels, random 32x32 crop, horizontal flip (the usual CIFAR recipe).
- ``flip``: horizontal flip only: the one change that keeps every pixel where an MLP expects it.

The ``batched`` backend draws per-image random parameters and applies crop, resize and flip as one
``affine_grid`` + ``grid_sample`` call on the whole batch: on 2 CPU cores a per-sample pipeline costs
200-300 us per image, 5-10x the MLP's own compute, while this costs a few microseconds per image.
The ``albumentations`` backend runs per sample inside DataLoader workers, for users who want its catalogue.
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
        preset: ``none``, ``course`` (crop 24 -> resize 32 -> flip -> gray / RGB shift), ``crop_flip``
            (pad 4 + random crop 32 + flip) or ``flip`` (horizontal flip only).
        backend: ``batched`` (tensor ops on the training device, the fast default) or ``albumentations``
            (per sample, in DataLoader workers).
        pad: padding in pixels for ``crop_flip``.
        crop: crop size in pixels for ``course``, resized back to the image size.
    """

    preset: Preset = "none"
    backend: Literal["batched", "albumentations"] = "batched"
    pad: int = 4
    crop: int = 24


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
        rand = lambda *shape: torch.rand(*shape, device=x.device, generator=generator)  # noqa: E731
        if self.cfg.preset == "flip":  # no resampling needed: mirror the chosen half in place
            idx = torch.nonzero(rand(b) < 0.5).flatten()
            x[idx] = x[idx].flip(-1)
            return x
        flip = torch.where(rand(b) < 0.5, -1.0, 1.0)
        if self.cfg.preset == "course":
            # Crop `crop` pixels at an integer offset, stretched back to (h, w): scale crop/size, shift to the
            # crop's centre, both in grid_sample's [-1, 1] coordinates (align_corners=False = OpenCV's resize).
            ch, cw = min(self.cfg.crop, h), min(self.cfg.crop, w)
            oy = torch.floor(rand(b) * (h - ch + 1))
            ox = torch.floor(rand(b) * (w - cw + 1))
            sx, sy = torch.full_like(ox, cw / w), torch.full_like(oy, ch / h)
            tx, ty = (2 * ox + cw) / w - 1, (2 * oy + ch) / h - 1
            mode = "bilinear"
        else:  # crop_flip: a whole-pixel shift within `pad` pixels of zero padding; flip: no shift
            p = self.cfg.pad if self.cfg.preset == "crop_flip" else 0
            tx = (torch.floor(rand(b) * (2 * p + 1)) - p) * 2 / w
            ty = (torch.floor(rand(b) * (2 * p + 1)) - p) * 2 / h
            sx, sy = torch.ones_like(tx), torch.ones_like(ty)
            mode = "nearest"
        # The map is separable (scale + shift per axis), so the sampling grid is built from two small
        # (B, W) and (B, H) coordinate rows: F.affine_grid's batched matmul cost 0.8 ms per 64 images here.
        base_x = (torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1  # pixel centres in [-1, 1]
        base_y = (torch.arange(h, device=x.device, dtype=x.dtype) * 2 + 1) / h - 1
        gx = ((sx * flip)[:, None] * base_x + tx[:, None])[:, None, :].expand(b, h, w)
        gy = (sy[:, None] * base_y + ty[:, None])[:, :, None].expand(b, h, w)
        x = F.grid_sample(x, torch.stack((gx, gy), -1), mode=mode, padding_mode="zeros", align_corners=False)
        if self.cfg.preset == "course":
            x = _gray_or_shift(x, rand)
        return x


def _gray_or_shift(x: torch.Tensor, rand) -> torch.Tensor:
    """OneOf(ToGray p=0.2, RGBShift p=0.3) at p=0.5: pick one by weight 0.2 : 0.3, apply it to half the images.

    Works on the chosen images only, with per-channel scalar ops: whole-batch `torch.where` and (B, 3, 1, 1)
    broadcasts cost 3 ms per 64 images on 2 CPU cores, this ~0.3 ms.
    """
    b = x.shape[0]
    u = rand(b)
    offsets = (rand(b, 3, 1, 1) * 2 - 1) * RGB_SHIFT
    gray_idx = torch.nonzero(u < 0.5 * 0.4).flatten()
    shift_idx = torch.nonzero((u >= 0.5 * 0.4) & (u < 0.5)).flatten()
    if len(gray_idx):
        g = x[gray_idx]
        luma = g[:, 0] * GRAY_WEIGHTS[0] + g[:, 1] * GRAY_WEIGHTS[1] + g[:, 2] * GRAY_WEIGHTS[2]
        x[gray_idx] = luma.unsqueeze(1).expand(-1, 3, -1, -1)
    if len(shift_idx):
        x[shift_idx] = (x[shift_idx] + offsets[shift_idx]).clamp_(0, 1)
    return x


def albumentations_pipeline(cfg: AugmentConfig, size: int = 32, seed: int | None = None):
    """The same presets as an albumentations ``Compose`` working on one ``(H, W, 3)`` uint8 image."""
    import os

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never phone home for a version check
    import albumentations as A
    import cv2

    if cfg.preset == "course":
        transforms = [
            A.RandomCrop(cfg.crop, cfg.crop),
            A.Resize(size, size),
            A.HorizontalFlip(),
            A.OneOf([A.ToGray(p=0.2), A.RGBShift(p=0.3)]),
        ]
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
    """Apply an albumentations pipeline image by image to a uint8 batch ``(B, 3, H, W)``."""

    def __init__(self, cfg: AugmentConfig, seed: int) -> None:
        self.pipeline = albumentations_pipeline(cfg, seed=seed)

    def reseed(self, seed: int) -> None:
        self.pipeline.set_random_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        images = x.permute(0, 2, 3, 1).numpy()  # (B, 3, H, W) -> (B, H, W, 3), what OpenCV expects
        out = np.stack([self.pipeline(image=np.ascontiguousarray(im))["image"] for im in images])
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

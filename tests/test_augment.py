"""Augmentation: both backends change training images the same kinds of ways; val/test are never touched."""

from __future__ import annotations

import albumentations as A
import pytest
import torch

from cifarlit.data.augment import (
    PRESETS,
    AlbumentationsBatch,
    AugmentConfig,
    BatchAugment,
    albumentations_pipeline,
    albumentations_twin,
    draw,
    select_apply,
)
from cifarlit.data.datamodule import CIFAR10DataModule


def asymmetric_batch(n: int) -> torch.Tensor:
    """uint8 images whose left half is bright and right half dark, so a flip is unmistakable."""
    x = torch.full((n, 3, 32, 32), 40, dtype=torch.uint8)
    x[..., :16] = 220
    x += torch.randint(0, 10, x.shape, dtype=torch.uint8)
    return x


def run_backend(backend: str, cfg: AugmentConfig, x: torch.Tensor) -> torch.Tensor:
    """Augmented float images in [0, 1] from either backend."""
    if backend == "batched":
        return BatchAugment(cfg)(x.float() / 255, generator=torch.Generator().manual_seed(0))
    return AlbumentationsBatch(cfg, seed=0)(x).float() / 255


def flipped(out: torch.Tensor) -> torch.Tensor:
    return out[..., :16].mean((1, 2, 3)) < out[..., 16:].mean((1, 2, 3))


@pytest.mark.parametrize("backend", ["batched", "albumentations"])
@pytest.mark.parametrize("cfg", [{"preset": "flip"}, {"preset": "crop_flip", "pad": 0}], ids=["flip", "pad0"])
def test_flip_only_flips_about_half_and_keeps_pixels(backend, cfg):
    x = asymmetric_batch(2000)
    out = run_backend(backend, AugmentConfig(backend=backend, **cfg), x)
    assert out.shape == x.shape
    frac = flipped(out).float().mean().item()
    assert 0.45 < frac < 0.55
    mirrored = torch.where(flipped(out).view(-1, 1, 1, 1), x.flip(-1), x).float() / 255
    torch.testing.assert_close(out, mirrored, atol=1e-6, rtol=0)  # a pure flip changes no pixel value


@pytest.mark.parametrize("backend", ["batched", "albumentations"])
def test_crop_flip_shifts_within_padding(backend):
    x = torch.randint(1, 256, (500, 3, 32, 32), dtype=torch.uint8)  # no zero pixels in the input
    out = run_backend(backend, AugmentConfig(preset="crop_flip", backend=backend, pad=4), x)
    border = (out == 0).all(1)  # zero padding shows up as black pixels
    zero_rows = border.all(2).sum(1)  # rows fully black
    assert 0 < (zero_rows > 0).float().mean() < 1  # some images moved vertically, some not
    assert zero_rows.max() <= 4


@pytest.mark.parametrize("backend", ["batched", "albumentations"])
def test_course_preset_changes_images_in_range(backend):
    x = asymmetric_batch(1000)
    x[:, 0] = (x[:, 0].float() * 0.5).to(torch.uint8)  # colourful, so ToGray is visible
    out = run_backend(backend, AugmentConfig(preset="course", backend=backend), x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert 0.4 < flipped(out).float().mean().item() < 0.6
    gray = (out[:, 0] - out[:, 1]).abs().amax((1, 2)) < 2 / 255
    assert 0.12 < gray.float().mean().item() < 0.28  # ToGray at 0.5 * 0.2 / (0.2 + 0.3) = 20%
    assert not torch.allclose(out, x.float() / 255)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_runs_in_both_backends_from_one_list(preset, channels):
    cfg = AugmentConfig(preset=preset)
    x = torch.randint(0, 256, (8, channels, 16, 16), dtype=torch.uint8)
    batched = BatchAugment(cfg)(x.float() / 255, generator=torch.Generator().manual_seed(0))
    assert batched.shape == x.shape and 0 <= batched.min() and batched.max() <= 1
    pipeline = albumentations_pipeline(cfg, size=16, seed=0, channels=channels)

    twins = [type(t).__name__ for aug in PRESETS[preset] for t in aug.albumentations(A, cfg, 16, channels)]
    assert [type(t).__name__ for t in pipeline.transforms] == twins  # the Compose is the list's twins, in order
    assert AlbumentationsBatch(cfg, seed=0, shape=(channels, 16, 16))(x).shape == x.shape


def test_a_new_augmentation_is_one_function_with_its_twin(monkeypatch):
    @albumentations_twin(lambda A, cfg, size, channels: [A.VerticalFlip()])
    def batch_flip_ud(x, cfg, generator=None):
        """Mirror a random half of the images upside down (README, "Where to add something")."""
        return select_apply(x, draw(x, 1, generator)[:, 0] < 0.5, lambda im: im.flip(-2))

    monkeypatch.setitem(PRESETS, "flip_ud", [batch_flip_ud])
    x = torch.full((2000, 3, 32, 32), 40, dtype=torch.uint8)
    x[..., :16, :] = 220  # bright top, dark bottom
    for backend in ("batched", "albumentations"):
        out = run_backend(backend, AugmentConfig(preset="flip_ud", backend=backend), x)
        upside_down = out[..., :16, :].mean((1, 2, 3)) < out[..., 16:, :].mean((1, 2, 3))
        assert 0.45 < upside_down.float().mean().item() < 0.55, backend


def test_batched_parameters_differ_per_image():
    x = torch.rand(1, 3, 32, 32).expand(64, -1, -1, -1).contiguous()
    out = BatchAugment(AugmentConfig(preset="course"))(x)
    assert len({tuple(o.flatten()[:50].tolist()) for o in out}) > 10


@pytest.mark.parametrize("backend", ["batched", "albumentations"])
def test_only_the_training_batches_are_augmented(pickle_root, backend):
    dm = CIFAR10DataModule(str(pickle_root), download=False, augment=AugmentConfig("crop_flip", backend))
    plain = CIFAR10DataModule(str(pickle_root), download=False)
    for m in (dm, plain):
        m.setup("fit")
    for split in ("val_dataloader", "test_dataloader"):
        (xa, ya), (xb, yb) = next(iter(getattr(dm, split)())), next(iter(getattr(plain, split)()))
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(dm.on_after_batch_transfer((xa, ya), 0)[0], plain.on_after_batch_transfer((xb, yb), 0)[0])

    class FakeTrainer:
        training = True

    dm.trainer = FakeTrainer()
    x, y = next(iter(dm.train_dataloader()))
    out, _ = dm.on_after_batch_transfer((x, y), 0)
    clean = (x.float() / 255 - dm.mean.view(1, 3, 1, 1)) / dm.std.view(1, 3, 1, 1)
    if backend == "albumentations":  # the loader (in its workers) already augmented the uint8 batch
        assert not torch.equal(dm.train_set.__getitems__(list(range(32)))[0], dm.train_set.x[:32])
    else:
        assert not torch.equal(out, clean)
    assert out.shape == (len(x), 3, 32, 32) and out.dtype == torch.float32


def test_mixup_blends_each_image_with_one_partner_by_one_weight():
    from cifarlit.data.augment import BatchMix

    torch.manual_seed(0)
    x, y = torch.rand(64, 3, 8, 8), torch.randint(0, 10, (64,))
    mixed, soft = BatchMix(AugmentConfig(mixup=0.4), num_classes=10)(x.clone(), y)
    assert soft.shape == (64, 10) and torch.allclose(soft.sum(1), torch.ones(64))
    lam = soft[torch.arange(64), y]  # the own label's share (plus the partner's if it has the same class)
    own = (soft > 0).sum(1) == 2  # images whose partner has another class
    assert own.any() and torch.allclose(lam[own], lam[own][0].expand(int(own.sum())))  # one weight per batch
    weight = float(lam[own][0])
    for i in torch.nonzero(own).flatten().tolist():  # each is weight * itself + (1 - weight) * one other image
        rest = (mixed[i] - weight * x[i]) / (1 - weight)
        assert min(float((rest - other).abs().max()) for other in x) < 1e-5


def test_cutmix_pastes_one_box_and_mixes_the_labels_by_its_area():
    from cifarlit.data.augment import BatchMix

    torch.manual_seed(1)
    x = torch.arange(32).float().view(32, 1, 1, 1).expand(32, 3, 16, 16).contiguous()  # image i is all i
    y = torch.arange(32) % 10
    mixed, soft = BatchMix(AugmentConfig(cutmix=1.0), num_classes=10)(x.clone(), y)
    for i in range(32):
        values = mixed[i].unique()
        assert len(values) <= 2 and float(values.min()) >= 0  # its own pixels and one partner's
        own_share = float((mixed[i] == i).float().mean())
        partner = [v for v in values.tolist() if v != i]
        if partner and int(partner[0]) % 10 != i % 10:
            assert soft[i, i % 10] == pytest.approx(own_share, abs=1e-6)  # labels mixed by the box's area


def test_mixing_touches_training_batches_only_and_trains(pickle_root, tmp_path, monkeypatch):
    from helpers import REPO, run_cli

    monkeypatch.chdir(tmp_path)
    mix = ("--data.augment.mixup", "0.2", "--data.augment.cutmix", "1.0")
    cli = run_cli("fit", "-c", str(REPO / "configs" / "default.yaml"), "--data.data_dir", str(pickle_root), *mix,
                  "--trainer.max_epochs", "2")  # fmt: skip
    dm = cli.datamodule

    class Training:
        training = True

    x, y = next(iter(dm.train_dataloader()))
    dm.trainer = Training()
    _, soft = dm.on_after_batch_transfer((x, y), 0)
    assert soft.shape == (len(y), 10) and soft.is_floating_point()
    dm.trainer.training = False
    vx, vy = next(iter(dm.val_dataloader()))
    assert torch.equal(dm.on_after_batch_transfer((vx, vy), 0)[1], vy)  # val and test keep their labels
    assert cli.trainer.callback_metrics["test/acc"] > 0.3

"""Training augmentation of whole uint8 batches on the device they train on.

The same augmentation as :func:`pneumonia.data.transforms.train_transforms` (the crop, a flip
when asked for, rotation and translation, brightness, contrast, gamma, blur and noise, each
with the same distribution of its parameters), drawn per image but computed for the batch at
once: on a GPU, 16 CPU cores decoding and augmenting one image at a time stop being the limit.
The geometry of each image is two sampling grids (``grid_sample``): its crop, then, after the
flip, its turn and shift with torchvision's black fill; the photometric changes are per-image
factors.

Images of one batch may differ in size (the decode-time resize keeps the aspect ratio):
:class:`PaddedCollate` pads them into one uint8 tensor and keeps each one's height and width,
so that every crop is drawn inside its own image, as the per-image path draws it.

Differences from the per-image path, by design and small: the per-image path rounds to uint8
after every step, this one once at the end; a random-resized crop is resampled bilinearly
without antialiasing (its scale is 0.84 or more per side at the default ``crop_scale``).
``tests/test_batch_augment.py`` checks the two draw the same distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from pneumonia.data.transforms import Augmentation
from pneumonia.errors import InputValueError

AUGMENT_ON = ("loader", "device")


def batch_augment(
    augment_on: str, augmentation: Augmentation, mean: Sequence[float], std: Sequence[float]
) -> BatchAugment | None:
    """The DataModule's ``augment_on``: ``loader`` (None: each image in the loader's workers,
    ``train_transforms``) or ``device`` (a :class:`BatchAugment` of the same settings)."""
    if augment_on not in AUGMENT_ON:
        raise InputValueError(
            f"data.augment_on must be loader (each image, in the loader's workers) or device "
            f"(whole batches on the training device), got {augment_on!r}"
        )
    if augment_on == "loader":
        return None
    return BatchAugment(augmentation, mean=mean, std=std)


def as_is(image: torch.Tensor) -> torch.Tensor:
    """The decoded uint8 image, untouched (the batch is augmented later, on the device)."""
    return image


class PaddedCollate:
    """uint8 (1, H, W) samples of any sizes -> a zero-padded (B, 1, Hmax, Wmax) uint8 batch,
    the (B, 2) heights and widths, and the labels."""

    def __call__(self, batch: list[tuple[torch.Tensor, int]]):
        images = [img.as_subclass(torch.Tensor) for img, _ in batch]
        sizes = torch.tensor([img.shape[-2:] for img in images], dtype=torch.long)
        height, width = (int(v) for v in sizes.max(dim=0).values)
        out = torch.zeros(len(images), 1, height, width, dtype=torch.uint8)
        for i, img in enumerate(images):
            out[i, :, : img.shape[-2], : img.shape[-1]] = img[:1]
        labels = torch.tensor([label for _, label in batch], dtype=torch.long)
        return out, sizes, labels


class BatchAugment(nn.Module):
    """An :class:`~pneumonia.data.transforms.Augmentation` drawn as ``train_transforms`` draws
    it, for a padded uint8 batch on the training device, then the normalisation of
    :class:`~pneumonia.data.transforms.NormalizeCollate`: (B, 3, crop, crop) float."""

    def __init__(
        self, augmentation: Augmentation, *, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        self.aug = augmentation  # the settings, as the per-image path reads them
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    # ------------------------------------------------------------------ geometry
    def _regions(self, sizes: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """(B, 4) top, left, height, width of each image's crop, as the crop transform draws."""
        c = self.aug.crop_size
        h, w = sizes[:, 0].double(), sizes[:, 1].double()
        n = len(sizes)
        if self.aug.crop == "center":
            top, left = torch.round((h - c) / 2), torch.round((w - c) / 2)
            return torch.stack([top, left, torch.full_like(h, c), torch.full_like(w, c)], 1)
        if self.aug.crop == "random":
            top = torch.floor(_uniform(n, g, sizes.device) * (h - c + 1))
            left = torch.floor(_uniform(n, g, sizes.device) * (w - c + 1))
            return torch.stack([top, left, torch.full_like(h, c), torch.full_like(w, c)], 1)
        return self._resized_regions(h, w, g)

    def _resized_regions(self, h: torch.Tensor, w: torch.Tensor, g) -> torch.Tensor:
        """RandomResizedCrop's draw (torchvision's get_params): up to 10 tries of an area in
        ``crop_scale``..1 and an aspect in 3/4..4/3 (log-uniform), else the centre crop at the
        nearest aspect; all tries drawn for the whole batch at once."""
        n, tries, device = len(h), 10, h.device
        area = (h * w)[:, None]
        target = area * (
            self.aug.crop_scale + (1 - self.aug.crop_scale) * _uniform((n, tries), g, device)
        )
        log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * _uniform(
            (n, tries), g, device
        )
        aspect = torch.exp(log_ratio)
        cw, ch = torch.round(torch.sqrt(target * aspect)), torch.round(torch.sqrt(target / aspect))
        fits = (cw > 0) & (cw <= w[:, None]) & (ch > 0) & (ch <= h[:, None])
        first = torch.where(fits.any(1), fits.double().argmax(1), torch.zeros_like(h).long())
        pick = first[:, None]
        cw, ch = cw.gather(1, pick)[:, 0], ch.gather(1, pick)[:, 0]
        ok = fits.any(1)
        # fallback: the whole image at an aspect within 3/4..4/3
        ratio = w / h
        fw = torch.where(ratio < 3 / 4, w, torch.where(ratio > 4 / 3, torch.round(h * 4 / 3), w))
        fh = torch.where(ratio < 3 / 4, torch.round(w / (3 / 4)), h)
        cw, ch = torch.where(ok, cw, fw), torch.where(ok, ch, fh)
        top = torch.where(ok, torch.floor(_uniform(n, g, device) * (h - ch + 1)),
                          torch.round((h - ch) / 2))  # fmt: skip
        left = torch.where(ok, torch.floor(_uniform(n, g, device) * (w - cw + 1)),
                           torch.round((w - cw) / 2))  # fmt: skip
        return torch.stack([top, left, ch, cw], 1)

    def _crops(self, images: torch.Tensor, sizes: torch.Tensor, g) -> torch.Tensor:
        """Each image's crop region at ``crop`` x ``crop``: for the centre and random crops a
        copy of its pixels (one gather for the batch); a random-resized crop is resized as
        torchvision resizes it (bilinear, antialiased), one region at a time."""
        c, device = self.aug.crop_size, images.device
        regions = self._regions(sizes, g).long()
        pixels = images.float() / 255
        if self.aug.crop == "random_resized":
            return torch.cat([
                F.interpolate(pixels[i : i + 1, :, top : top + ch, left : left + cw], size=(c, c),
                              mode="bilinear", antialias=True, align_corners=False)
                for i, (top, left, ch, cw) in enumerate(regions.tolist())
            ]).clamp(0, 1)  # fmt: skip
        offsets = torch.arange(c, device=device)
        rows = (regions[:, 0, None] + offsets)[:, None, :, None]  # (B, 1, c, 1)
        cols = (regions[:, 1, None] + offsets)[:, None, None, :]  # (B, 1, 1, c)
        batch = torch.arange(len(images), device=device)[:, None, None, None]
        return pixels[batch, 0, rows, cols]  # (B, 1, c, c)

    def _affine(self, x: torch.Tensor, g) -> torch.Tensor:
        """RandomAffine's turn and shift of each crop about its centre, bilinear, black where
        nothing of the crop lands (torchvision's fill: the sample times its coverage)."""
        n, c, device = len(x), self.aug.crop_size, x.device
        angle = torch.deg2rad((2 * _uniform(n, g, device) - 1) * self.aug.rotation_degrees)
        shift = self.aug.translate * c
        tx = torch.round((2 * _uniform(n, g, device) - 1) * shift)
        ty = torch.round((2 * _uniform(n, g, device) - 1) * shift)
        centres = torch.arange(c, device=device, dtype=torch.float64) + 0.5
        y, xx = torch.meshgrid(centres, centres, indexing="ij")  # output pixel centres
        half = c / 2
        dx, dy = xx[None] - half - tx[:, None, None], y[None] - half - ty[:, None, None]
        cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        u = cos * dx + sin * dy + half  # the inverse turn: where each output pixel comes from
        v = -sin * dx + cos * dy + half
        grid = torch.stack([2 * u / c - 1, 2 * v / c - 1], dim=-1).float()
        both = torch.cat([x, torch.ones_like(x)], dim=1)
        sampled = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # fmt: skip
        return sampled[:, :1] * sampled[:, 1:]

    # ------------------------------------------------------------------ photometry
    def _photometric(self, x: torch.Tensor, g) -> torch.Tensor:
        n, device = len(x), x.device

        def factor(strength: float) -> torch.Tensor:
            return (1 + (2 * _uniform(n, g, device) - 1) * strength).float().view(-1, 1, 1, 1)

        steps = []
        if self.aug.brightness > 0:
            b = factor(self.aug.brightness)
            steps.append(lambda t, b=b: (t * b).clamp(0, 1))
        if self.aug.contrast > 0:
            k = factor(self.aug.contrast)
            steps.append(
                lambda t, k=k: (
                    (t - t.mean(dim=(1, 2, 3), keepdim=True)) * k
                    + t.mean(dim=(1, 2, 3), keepdim=True)
                ).clamp(0, 1)  # fmt: skip
            )
        if len(steps) == 2:  # ColorJitter applies its parts in a random order, per image
            swap = (_uniform(n, g, device) < 0.5).view(-1, 1, 1, 1)
            x = torch.where(swap, steps[0](steps[1](x)), steps[1](steps[0](x)))
        elif steps:
            x = steps[0](x)
        if self.aug.gamma > 0:
            log_range = math.log1p(self.aug.gamma)
            gam = torch.exp((2 * _uniform(n, g, device) - 1) * log_range).float()
            x = x.clamp_min(0) ** gam.view(-1, 1, 1, 1)
        if self.aug.blur_prob > 0:
            blurred = _gaussian_blur(x, 0.1 + 1.4 * _uniform(n, g, device))
            apply = (_uniform(n, g, device) < self.aug.blur_prob).view(-1, 1, 1, 1)
            x = torch.where(apply, blurred, x)
        if self.aug.noise_std > 0:
            sd = (_uniform(n, g, device) * self.aug.noise_std).float().view(-1, 1, 1, 1)
            noise = torch.randn(x.shape, generator=g, device=device) * sd
            x = (x + noise).clamp(0, 1)
        return x

    def forward(
        self, images: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, 1, H, W) uint8 padded images and their (B, 2) sizes -> (B, 3, crop, crop), in
        the per-image path's order: crop, flip, turn and shift, then the photometry."""
        x = self._crops(images, sizes.to(images.device), generator)
        if self.aug.hflip_prob > 0:
            flip = (_uniform(len(x), generator, x.device) < self.aug.hflip_prob).view(-1, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        if self.aug.rotation_degrees > 0 or self.aug.translate > 0:
            x = self._affine(x, generator)
        x = self._photometric(x, generator)
        x = torch.round(x * 255) / 255  # the per-image path's uint8, once
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return (x - self.mean) / self.std


def _uniform(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, size: int = 5) -> torch.Tensor:
    """Per-image Gaussian blur (kernel ``size``, reflect padding, as torchvision's)."""
    n = len(x)
    offsets = torch.arange(size, device=x.device, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).float()  # (B, size)
    pad = size // 2
    y = F.pad(x.transpose(0, 1), (pad, pad, pad, pad), mode="reflect")  # (1, B, H, W)
    y = F.conv2d(y, kernel[:, None, None, :], groups=n)
    y = F.conv2d(y, kernel[:, None, :, None], groups=n)
    return y.transpose(0, 1)

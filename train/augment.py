"""Batched augmentation and box sampling in torch.

Augmentation (all on the model grid, background kept at exactly 0), so that a G
trained on one template brain sees many plausible ones: random affine (rotation,
scale, anisotropic scale and shear, translation, left-right flip), elastic
deformation at two scales (smooth random displacement fields: the coarse one
bends the whole brain asymmetrically, the fine one moves gyri and ventricle
borders), a random monotone intensity curve (changes the contrast between
tissues, as another scanner or sequence would), gamma and gain, a smooth
multiplicative bias field, a lower resolution (blurred by down- and upsampling),
and Gaussian noise inside the brain. Intensities stay in [0, ``ceiling``], the
preprocessing's (1.0 for version-1 data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from rlp.runtime.core.geometry import WindowGeometry


@dataclass
class AugmentConfig:
    enabled: bool = True
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.05
    flip: bool = True
    aniso: float = 0.0  # extra scale per axis, uniform in [-aniso, aniso] (asymmetric shapes)
    shear: float = 0.0  # shear factor, uniform in [-shear, shear]
    elastic: float = 0.02  # displacement amplitude, fraction of the image side
    elastic_grid: int = 5
    elastic_fine: float = 0.0  # a second, finer field (local anatomy): amplitude, fraction of the side
    elastic_fine_grid: int = 12
    contrast: float = 0.0  # log-normal spread of the slopes of a random monotone intensity curve (0: off)
    contrast_knots: int = 6
    lowres_p: float = 0.0  # share of slices shown at a lower resolution
    lowres_max: float = 2.0  # largest down-sampling factor
    gamma: float = 0.25  # log-uniform in [1/(1+g), 1+g]
    gain: float = 0.1
    bias: float = 0.2
    noise: float = 0.02
    # G's input only (denoising inpainting): smooth noise over the tissue of a share of the
    # slices, while G's targets stay clean, so that G restores healthy tissue from a context
    # that is not healthy instead of continuing whatever surrounds the box.
    context_noise: float = 0.0  # largest standard deviation of the noise (0: off)
    context_noise_p: float = 0.5  # share of slices that get it
    context_noise_grid: int = 16  # the noise is drawn on this grid and upsampled to the slice


def _smooth_field(n: int, grid: int, size: int, channels: int, gen: torch.Generator | None) -> torch.Tensor:
    coarse = torch.randn(n, channels, grid, grid, generator=gen)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)


def _intensity_curve(img: torch.Tensor, strength: float, knots: int, gen: torch.Generator | None) -> torch.Tensor:
    """A random monotone piecewise-linear curve per image, fixed at 0 and at 1 (white matter stays near 1),
    extrapolated with its last slope above the last knot."""
    n = img.shape[0]
    step = 1.0 / (knots - 1)
    inc = torch.exp(torch.randn(n, knots - 1, generator=gen) * strength) * step
    y = torch.cat([torch.zeros(n, 1), inc.cumsum(1)], 1)
    y = y / y[:, -1:]  # y(0) = 0, y(1) = 1
    k = (img / step).floor().clamp(0, knots - 2).long()
    t = img / step - k
    flat = k.view(n, -1)
    y0 = torch.gather(y, 1, flat).view_as(img)
    y1 = torch.gather(y, 1, flat + 1).view_as(img)
    return y0 + t * (y1 - y0)


def augment(images: torch.Tensor, brains: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None,
            ceiling: float = 1.0):
    """images (N,1,S,S) in [0, ceiling], brains (N,1,S,S) float {0,1} -> augmented copies."""
    if not cfg.enabled:
        return images, brains
    n, _, s, _ = images.shape
    u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    ang = (u(n) * 2 - 1) * math.radians(cfg.rotate_deg)
    sc = 1 + (u(n) * 2 - 1) * cfg.scale
    flip = torch.where(u(n) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(n)
    tx, ty = [(u(n) * 2 - 1) * cfg.translate * 2 for _ in range(2)]
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    if cfg.aniso > 0 or cfg.shear > 0:  # anisotropic scale and shear before the rotation
        m = torch.eye(2).repeat(n, 1, 1)
        m[:, 0, 0] = 1 + (u(n) * 2 - 1) * cfg.aniso
        m[:, 1, 1] = 1 + (u(n) * 2 - 1) * cfg.aniso
        m[:, 0, 1] = (u(n) * 2 - 1) * cfg.shear
        theta = torch.cat([theta[:, :, :2] @ m, theta[:, :, 2:]], 2)
    grid = F.affine_grid(theta, (n, 1, s, s), align_corners=False)
    if cfg.elastic > 0:
        disp = _smooth_field(n, cfg.elastic_grid, s, 2, gen).permute(0, 2, 3, 1) * (cfg.elastic * 2)
        grid = grid + disp
    if cfg.elastic_fine > 0:
        grid = grid + _smooth_field(n, cfg.elastic_fine_grid, s, 2, gen).permute(0, 2, 3, 1) * (cfg.elastic_fine * 2)
    img = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    brn = (F.grid_sample(brains, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).float()
    img = img.clamp(0, ceiling)
    if cfg.contrast > 0:
        img = _intensity_curve(img, cfg.contrast, max(2, int(cfg.contrast_knots)), gen)
    g = torch.exp((u(n) * 2 - 1) * math.log1p(cfg.gamma)).view(n, 1, 1, 1)
    img = img.clamp(0, ceiling) ** g
    gain = 1 + (u(n) * 2 - 1) * cfg.gain
    img = img * gain.view(n, 1, 1, 1)
    if cfg.bias > 0:
        img = img * torch.exp(cfg.bias * _smooth_field(n, 3, s, 1, gen))
    if cfg.lowres_p > 0:
        lo = u(n) < cfg.lowres_p
        f = 1 + u(n) * (cfg.lowres_max - 1)
        for i in torch.nonzero(lo).flatten().tolist():
            side = max(4, int(round(s / float(f[i]))))
            small = F.interpolate(img[i : i + 1], size=(side, side), mode="area")
            img[i : i + 1] = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False)
    if cfg.noise > 0:
        sigma = u(n).view(n, 1, 1, 1) * cfg.noise
        img = img + torch.randn(img.shape, generator=gen) * sigma
    img = img.clamp(0, ceiling) * brn
    return img, brn


def corrupt_context(images: torch.Tensor, brains: torch.Tensor, cfg: AugmentConfig,
                    gen: torch.Generator | None = None, ceiling: float = 1.0) -> torch.Tensor:
    """G's input slices (N,1,S,S): a share of them with smooth noise over their tissue
    (background stays 0, tissue stays above 0); the others unchanged."""
    if not cfg.enabled or cfg.context_noise <= 0:
        return images
    n, _, s, _ = images.shape
    amp = torch.rand(n, generator=gen) * cfg.context_noise * (torch.rand(n, generator=gen) < cfg.context_noise_p)
    coarse = torch.randn(n, 1, cfg.context_noise_grid, cfg.context_noise_grid, generator=gen)
    field = F.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False) * amp.view(n, 1, 1, 1)
    return torch.where(brains > 0, (images + field).clamp(1e-3, ceiling), images)


def sample_boxes(brains: torch.Tensor, geom: WindowGeometry, mode: str,
                 gen: torch.Generator | None = None) -> torch.Tensor:
    """Top-left (row, col) of one box per image, (N, 2) long.

    ``brain``: uniformly among positions whose window holds brain tissue by the
    same rule the heatmap uses to evaluate a window (so R trains on what it sees);
    ``middle-third``: the paper's rule; ``uniform``: anywhere.
    """
    n, _, s, _ = brains.shape
    w = geom.window
    hi = s - w + 1
    if mode == "uniform":
        return torch.randint(0, hi, (n, 2), generator=gen)
    if mode == "middle-third":
        lo, up = s // 3, max(s // 3 + 1, (2 * s) // 3 - w + 1)
        return torch.randint(lo, up, (n, 2), generator=gen)
    if mode != "brain":
        raise ValueError(f"unknown box sampling {mode!r}")
    frac = F.avg_pool2d(brains, w, stride=1)[:, 0]  # (N, hi, hi)
    ok = frac >= geom.min_tissue if geom.min_tissue > 0 else frac > 0
    out = torch.empty(n, 2, dtype=torch.long)
    for i in range(n):
        cand = torch.nonzero(ok[i].flatten()).flatten()
        if cand.numel() == 0:
            out[i] = torch.randint(0, hi, (2,), generator=gen)
            continue
        k = cand[torch.randint(0, cand.numel(), (1,), generator=gen)].item()
        out[i, 0], out[i, 1] = k // hi, k % hi
    return out


def crops_and_inpaint(images: torch.Tensor, boxes: torch.Tensor, geom: WindowGeometry):
    """Model inputs for boxes: (inpainted, original, box mask), each (N,1,C,C).

    Same layout as :meth:`WindowGeometry.crops` (the runtime's numpy version).
    """
    n = images.shape[0]
    m = geom.margin
    c = geom.input_size
    w = geom.window
    padded = F.pad(images, (m, m, m, m)) if m else images
    orig = torch.empty(n, 1, c, c, dtype=images.dtype)
    mask = torch.zeros(n, 1, c, c, dtype=images.dtype)
    for i in range(n):
        r, col = int(boxes[i, 0]), int(boxes[i, 1])
        orig[i] = padded[i, :, r : r + c, col : col + c] if m else padded[i]
        br, bc = geom.box_in_input(r, col)
        mask[i, :, br : br + w, bc : bc + w] = 1
    inp = torch.where((mask > 0) & geom.paint_mask(orig), torch.full_like(orig, geom.fill), orig)
    return inp, orig, mask

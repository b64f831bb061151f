"""G (inpainting U-Net with bicubic upsampling), D (PatchGAN) and the predictors R.

Every model is rebuilt from a small JSON-able ``arch`` dict that checkpoints and
bundle manifests carry, so export and evaluation never need the training config.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .config import G_OUTPUTS


def _act():
    return nn.LeakyReLU(0.2, inplace=False)


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: bool = True):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not norm)]
        if norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(_act())
        layers.append(nn.Conv2d(cout, cout, 3, padding=1, bias=not norm))
        if norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(_act())
        super().__init__(*layers)


class Upsample(nn.Module):
    """x2 upsampling; ``mode="bicubic"`` is the paper's choice (PyTorch's a = -0.75, half-pixel)."""

    def __init__(self, mode: str = "bicubic"):
        super().__init__()
        self.mode = mode

    def forward(self, x):
        if self.mode == "nearest":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=False)


def softplus(z: torch.Tensor) -> torch.Tensor:
    """softplus without a branch (exports to ONNX and fp16 as plain elementwise operators)."""
    return F.relu(z) + torch.log(1 + torch.exp(-z.abs()))


#: the smallest scale a Laplace G may predict (normalised intensity units): a floor that keeps
#: |x - mu| / b finite on the background and in flat tissue
LAPLACE_MIN_SCALE = 0.01


class UNetG(nn.Module):
    """Inpainting generator: a U-Net, fully convolutional.

    ``depth`` levels of downsampling (max-pool 2); the input side must be a
    multiple of ``2 ** depth``. ``width`` channels at the top level, doubling per
    level up to ``max_width``.

    ``output``: ``"sigmoid"`` (the paper) gives one channel in [0, 1], the
    reconstruction; ``"laplace"`` gives two, the mean ``mu`` of each pixel
    (unbounded, so it can follow intensities above the healthy range) and its
    scale ``b >= LAPLACE_MIN_SCALE``, trained with the Laplace negative
    log-likelihood |x - mu| / b + log b: ``b`` is the error G expects at that
    pixel of healthy tissue, read from the context only.
    """

    def __init__(self, width: int = 16, depth: int = 4, max_width: int = 256, upsample: str = "bicubic",
                 norm: bool = True,
                 output: str = "sigmoid"):
        super().__init__()
        if output not in G_OUTPUTS:
            raise ValueError(f"G output must be one of {', '.join(G_OUTPUTS)}, not {output!r}")
        self.arch = dict(kind="unet", width=width, depth=depth, max_width=max_width, upsample=upsample, norm=norm)
        if output != "sigmoid":  # the arch of a paper G stays what it was, so its checkpoints rebuild unchanged
            self.arch["output"] = output
        self.output = output
        chans = [min(width * 2**i, max_width) for i in range(depth + 1)]
        self.enc = nn.ModuleList()
        cin = 1
        for c in chans[:-1]:
            self.enc.append(ConvBlock(cin, c, norm))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.bottom = ConvBlock(chans[-2], chans[-1], norm)
        self.up = nn.ModuleList()
        self.upconv = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(depth - 1, -1, -1):
            self.up.append(Upsample(upsample))
            self.upconv.append(nn.Conv2d(chans[i + 1], chans[i], 3, padding=1))
            self.dec.append(ConvBlock(2 * chans[i], chans[i], norm))
        self.head = nn.Conv2d(chans[0], 2 if output == "laplace" else 1, 1)
        self.depth = depth

    def forward(self, x):
        skips = []
        for blk in self.enc:
            x = blk(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, conv, dec, skip in zip(self.up, self.upconv, self.dec, reversed(skips)):
            x = conv(up(x))
            x = dec(torch.cat([x, skip], dim=1))
        y = self.head(x)
        if self.output == "sigmoid":
            return torch.sigmoid(y)
        return torch.cat([y[:, :1], softplus(y[:, 1:]) + LAPLACE_MIN_SCALE], dim=1)


class PatchD(nn.Module):
    """PatchGAN discriminator (pix2pix): a map of real/fake logits."""

    def __init__(self, width: int = 32, n_layers: int = 3):
        super().__init__()
        self.arch = dict(kind="patchgan", width=width, n_layers=n_layers)
        layers: list[nn.Module] = [nn.Conv2d(1, width, 4, 2, 1), _act()]
        c = width
        for i in range(1, n_layers):
            nc = min(width * 2**i, 8 * width)
            layers += [nn.Conv2d(c, nc, 4, 2, 1, bias=False), nn.BatchNorm2d(nc), _act()]
            c = nc
        nc = min(c * 2, 8 * width)
        layers += [nn.Conv2d(c, nc, 4, 1, 1, bias=False), nn.BatchNorm2d(nc), _act(), nn.Conv2d(nc, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class PaperR(nn.Module):
    """The paper's reconstruction-loss predictor, exactly its layer table (1,558,273 parameters).

    Defined for 256x256 inputs (its last conv, kernel 4 padding 1, turns the 2x2
    map into 1x1). At 128x128 (the demo grid) the table is kept with one change:
    MaxPool2d-11 is dropped, so that Conv2d-13 meets the same 2x2 map (same
    parameters, every other layer as in the table). Other sizes are refused.
    """

    SIZES = (256, 128)

    def __init__(self, input_size: int = 256):
        super().__init__()
        if input_size not in self.SIZES:
            raise ValueError(f"the paper's R is defined for 256x256 inputs (and 128x128 without its last max-pool), "
                             f"not {input_size}x{input_size}; use --predictor crop or dense for other sizes")
        self.arch = dict(kind="paper", input_size=input_size)
        last_pool = [nn.MaxPool2d(2)] if input_size == 256 else []  # MaxPool2d-11
        self.net = nn.Sequential(
            nn.Conv2d(1, 64, 3, 2, 1),  # Conv2d-1
            _act(),  # LeakyReLU-2
            nn.Conv2d(64, 128, 3, 2, 1),  # Conv2d-3
            nn.MaxPool2d(2),  # MaxPool2d-4
            _act(),  # LeakyReLU-5
            nn.BatchNorm2d(128),  # BatchNorm2d-6
            nn.Conv2d(128, 256, 3, 2, 1),  # Conv2d-7
            nn.MaxPool2d(2),  # MaxPool2d-8
            _act(),  # LeakyReLU-9
            nn.Conv2d(256, 512, 3, 2, 1),  # Conv2d-10
            *last_pool,
            _act(),  # LeakyReLU-12
            nn.Conv2d(512, 1, 4, 1, 1),  # Conv2d-13
        )

    @property
    def head(self) -> nn.Conv2d:
        return self.net[-1]

    def forward(self, x):
        return torch.sigmoid(self.net(x)).flatten(1)  # Sigmoid-14, (N, 1)


class CropR(nn.Module):
    """A predictor that reads the context crop centred on the box (it is told where the box is).

    Convolutions, then global average pooling and a linear head on the pooled
    channels. A head on the flattened map (thousands of inputs, like the paper's
    last conv) lets one Adam step move the logit by several units: the sigmoid
    saturates and training stops (seen on the demo data at lr 1e-3).
    """

    def __init__(self, input_size: int = 48, width: int = 32, n_down: int = 3):
        super().__init__()
        if input_size % (2**n_down):
            raise ValueError(f"crop predictor input {input_size} must be a multiple of {2**n_down}")
        self.arch = dict(kind="crop", input_size=input_size, width=width, n_down=n_down)
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, 1, 1), _act()]
        c = width
        for i in range(n_down):
            nc = min(width * 2 ** (i + 1), 8 * width)
            layers += [nn.Conv2d(c, nc, 3, 2, 1), _act(), nn.Conv2d(nc, nc, 3, 1, 1), _act()]
            c = nc
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, 1)

    def forward(self, x):
        return torch.sigmoid(self.head(self.pool(self.features(x)).flatten(1)))


class DenseR(nn.Module):
    """A predictor that reads the slice once and predicts G's loss for every window.

    The slice goes in as it is (no box painted); out comes the whole window map,
    ``(N, 1, rows, cols)`` with ``rows = (size - window) / stride + 1``, cell
    ``[i, j]`` being the predicted L1 loss of the window whose top-left corner
    is ``(i * stride, j * stride)``. A feature pyramid (down to ``stride``,
    then ``n_context`` levels further for context, merged back top-down) gives
    a non-negative per-cell loss map at the window stride; the window's loss is
    the mean of the ``window / stride`` x ``window / stride`` cells it covers,
    as the L1 loss is the mean of its pixels' errors. One forward pass per
    slice instead of one per window.
    """

    def __init__(self, size: int = 128, window: int = 8, stride: int = 2, width: int = 16, n_context: int = 3):
        super().__init__()
        levels = int(round(math.log2(stride)))
        if stride < 1 or 2**levels != stride:
            raise ValueError(f"dense predictor needs a power-of-two stride, got {stride}")
        if window % stride or size % (stride * 2**n_context) or (size - window) % stride:
            raise ValueError(f"dense predictor needs window ({window}) and size - window ({size - window}) to be "
                             f"multiples of the stride ({stride}) and size a multiple of {stride * 2 ** n_context}")
        self.arch = dict(kind="dense", size=size, window=window, stride=stride, width=width, n_context=n_context)
        c = width
        stem: list[nn.Module] = [nn.Conv2d(1, c, 3, 1, 1), _act(), nn.Conv2d(c, c, 3, 1, 1), _act()]
        for _ in range(levels):
            stem += [nn.Conv2d(c, 2 * c, 3, 2, 1), _act(), nn.Conv2d(2 * c, 2 * c, 3, 1, 1), _act()]
            c = 2 * c
        self.stem = nn.Sequential(*stem)
        deep = min(2 * c, 128)  # context levels; the top-down path keeps the stem's c channels
        self.down = nn.ModuleList()
        self.lateral = nn.ModuleList([nn.Conv2d(c, c, 1)])
        cin = c
        for _ in range(n_context):
            self.down.append(nn.Sequential(nn.Conv2d(cin, deep, 3, 2, 1), _act(), nn.Conv2d(deep, deep, 3, 1, 1),
                                           _act()))
            self.lateral.append(nn.Conv2d(deep, c, 1))
            cin = deep
        # learned x2 upsampling (ConvTranspose, kernel 2 stride 2): plain convolutions export to fp16 cleanly
        self.up = nn.ModuleList([nn.ConvTranspose2d(c, c, 2, stride=2) for _ in range(n_context)])
        self.smooth = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), _act())
        self.head = nn.Conv2d(c, 1, 1)
        self.pool = nn.AvgPool2d(window // stride, stride=1)

    def forward(self, x):
        feats = [self.stem(x)]
        for d in self.down:
            feats.append(d(feats[-1]))
        y = self.lateral[-1](feats[-1])
        for k in range(len(feats) - 2, -1, -1):
            y = self.up[k](y) + self.lateral[k](feats[k])
        z = self.head(self.smooth(y))
        return self.pool(softplus(z))


def target_scale(score: str) -> float:
    """What a sigmoid predictor's output (crop, paper) is multiplied by to give the score: 1 for the L1
    (in [0, 1] on the model's intensities), 20 for the z score (about 1 on healthy tissue, tens on a lesion)."""
    return 20.0 if score == "z" else 1.0


class ScaledOutput(nn.Module):
    """A sigmoid predictor whose output is multiplied by its target scale: what export writes, so that the
    bundle's model gives the score itself."""

    def __init__(self, module: nn.Module, scale: float):
        super().__init__()
        self.module = module
        self.scale = float(scale)
        self.arch = dict(module.arch, output_scale=self.scale)

    def forward(self, x):
        return self.module(x) * self.scale


def init_head_bias(model: nn.Module, mean_target: float) -> None:
    """Start the head at the mean target: without it the paper's R (sigmoid) collapses to 0.

    The dense predictor's head is a softplus: its bias starts at softplus^-1(mean).
    """
    if isinstance(model, DenseR):  # any positive target (a z score is about 1 on healthy tissue)
        bias = math.log(math.expm1(max(float(mean_target), 1e-4)))
    else:
        p = min(max(float(mean_target), 1e-4), 1 - 1e-4)
        bias = math.log(p / (1 - p))
    with torch.no_grad():
        model.head.bias.fill_(bias)
        model.head.weight.mul_(0.1)


def build(arch: dict) -> nn.Module:
    kind = arch.get("kind")
    args = {k: v for k, v in arch.items() if k != "kind"}
    if kind == "unet":
        return UNetG(**args)
    if kind == "patchgan":
        return PatchD(**args)
    if kind == "paper":
        return PaperR(**args)
    if kind == "crop":
        return CropR(**args)
    if kind == "dense":
        return DenseR(**args)
    raise ValueError(f"unknown model kind {kind!r}")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

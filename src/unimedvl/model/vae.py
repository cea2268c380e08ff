"""FLUX autoencoder (Black Forest Labs), as used by BAGEL / UniMedVL for image generation.

Pixels in [-1, 1], `[B, 3, H, W]` -> latent `[B, 16, H/8, W/8]` and back::

    moments = Encoder(x)                  # [B, 32, h, w]: mean | logvar
    z = scale * (mean - shift)            # posterior mean by default (sample=True draws mean + std*eps)
    x = Decoder(z / scale + shift)

Encoder: conv_in, per level `num_res_blocks` ResNet blocks then a stride-2 conv (after zero padding
(0, 1, 0, 1)) except at the last level, mid (ResNet, single-head pixel attention, ResNet), GroupNorm(32),
swish, conv_out. The decoder mirrors it with nearest-neighbour x2 upsampling.
Module names equal the keys of the released `ae.safetensors`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unimedvl.config import VAEConfig
from unimedvl.model.layers import Conv2d, GroupNorm


def _norm(ch: int) -> GroupNorm:
    return GroupNorm(32, ch, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(in_ch), Conv2d(in_ch, out_ch, 3, 1, 1)
        self.norm2, self.conv2 = _norm(out_ch), Conv2d(out_ch, out_ch, 3, 1, 1)
        if in_ch != out_ch:
            self.nin_shortcut = Conv2d(in_ch, out_ch, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.q, self.k, self.v, self.proj_out = (Conv2d(ch, ch, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        z = self.norm(x)
        q, k, v = (p(z).reshape(b, 1, c, h * w).transpose(2, 3) for p in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # [b, 1, hw, c]
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = Conv2d(ch, ch, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(ch, ch), AttnBlock(ch), ResnetBlock(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList()  # empty in FLUX; kept for the key layout


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        self.conv_in = Conv2d(c.in_channels, c.ch, 3, 1, 1)
        self.down = nn.ModuleList()
        block_in = c.ch
        mults = (1, *c.ch_mult)
        for level, mult in enumerate(c.ch_mult):
            block_in = c.ch * mults[level]
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(ResnetBlock(block_in, c.ch * mult))
                block_in = c.ch * mult
            stage = _Level(blocks)
            if level != len(c.ch_mult) - 1:
                stage.downsample = Downsample(block_in)
            self.down.append(stage)
        self.mid = _Mid(block_in)
        self.norm_out = _norm(block_in)
        self.conv_out = Conv2d(block_in, 2 * c.z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        block_in = c.ch * c.ch_mult[-1]
        self.conv_in = Conv2d(c.z_channels, block_in, 3, 1, 1)
        self.mid = _Mid(block_in)
        levels: list[_Level] = []
        for level in reversed(range(len(c.ch_mult))):
            blocks = []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, c.ch * c.ch_mult[level]))
                block_in = c.ch * c.ch_mult[level]
            stage = _Level(blocks)
            if level != 0:
                stage.upsample = Upsample(block_in)
            levels.insert(0, stage)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = Conv2d(block_in, c.out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoEncoder(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def moments(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output `[B, 2*z, h, w]` (mean | logvar)."""
        return self.encoder(self._in_layout(x)).contiguous()

    def _in_layout(self, x: torch.Tensor) -> torch.Tensor:
        # Weights stored channels-last (a CPU load) want inputs alike: oneDNN's convolutions then run
        # 1.2x faster (bench, 256 px FLUX decoder); outputs are handed back in the usual layout.
        if x.dim() == 4 and self.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last):
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def encode(self, x: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels `[B, 3, H, W]` in [-1, 1] -> scaled latent `[B, z, H/8, W/8]`.

        Args:
            sample: draw from the posterior (the reference behaviour) instead of taking its mean.
            generator: RNG for `sample=True`, so sampling stays reproducible.
        """
        mean, logvar = self.moments(x).chunk(2, dim=1)
        z = mean
        if sample:
            # Draw where the generator lives (a CPU generator stays reproducible on any device).
            where = generator.device if generator is not None else mean.device
            eps = torch.randn(mean.shape, generator=generator, device=where, dtype=mean.dtype).to(mean.device)
            z = mean + torch.exp(0.5 * logvar) * eps
        return self.config.scale_factor * (z - self.config.shift_factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent `[B, z, h, w]` -> pixels `[B, 3, 8h, 8w]` in (about) [-1, 1]."""
        return self.decoder(self._in_layout(z / self.config.scale_factor + self.config.shift_factor)).contiguous()

"""Train a small FLUX-architecture autoencoder on a corpus's images (for a model without FLUX weights).

Loss: L1 reconstruction + beta * KL(posterior || N(0, 1)) on images resized to `size` px, batches
drawn by a generator seeded per step (deterministic). Images come grouped by source and each draw
picks a source with weight size ** `source_balance` (as the model's pack stream does): a corpus that
is 95% grey X-rays otherwise teaches the decoder to paint every image grey. Afterwards the latent
statistics are measured on the training images and stored as `scale_factor = 1 / std` and `shift_factor = mean`, the role
FLUX's 0.3611 / 0.1159 play, so latents enter the flow model with unit scale.
Writes `ae.safetensors` and `vae_config.json` (read by the loader).
"""

from __future__ import annotations

import io
import random
import sys
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from unimedvl.checkpoint.folder import save_vae
from unimedvl.config import VAEConfig
from unimedvl.data.storage import iter_samples
from unimedvl.imaging.pixels import load_image, to_tensor
from unimedvl.model.vae import AutoEncoder
from unimedvl.train.packer import tempered_weights
from unimedvl.train.schedule import lr_factor


def corpus_images(corpus: str | Path, split: str = "train", limit: int | None = None) -> dict[str, list[bytes]]:
    """The distinct images of a corpus split, grouped by source (sources in sorted order)."""
    seen, out, count = set(), {}, 0
    for sample in iter_samples(corpus, split):
        for ref in sample.images():
            if ref.sha256 not in seen:
                seen.add(ref.sha256)
                out.setdefault(sample.source, []).append(ref.data)
                count += 1
                if limit and count >= limit:
                    return dict(sorted(out.items()))
    return dict(sorted(out.items()))


class ImageSampler:
    """Draws one image: a source with weight size ** balance, then an image of it, uniformly.

    Each image is decoded once and kept at `keep_side` px on its short side (fundus photographs and
    endoscopy frames are megapixels; decoding them on every draw made the VAE step I/O-bound); at most
    `max_cached` decoded images are kept, the oldest dropped first, so memory stays bounded.
    """

    def __init__(self, images: dict[str, list[bytes]] | list[bytes], balance: float = 1.0, *, keep_side: int = 128,
                 max_cached: int = 50_000) -> None:
        groups = images if isinstance(images, dict) else {"all": list(images)}
        self.groups = [g for _, g in sorted(groups.items()) if g]
        if not self.groups:
            raise ValueError("no images to train the VAE on")
        self.weights = tempered_weights([len(g) for g in self.groups], balance)
        self.keep_side, self.max_cached = keep_side, max_cached
        self._decoded: dict[tuple[int, int], Image.Image] = {}

    def draw(self, rng: random.Random) -> Image.Image:
        g = rng.choices(range(len(self.groups)), weights=self.weights)[0] if len(self.groups) > 1 else 0
        i = rng.randrange(len(self.groups[g]))
        if (g, i) not in self._decoded:
            image = load_image(Image.open(io.BytesIO(self.groups[g][i])))
            if min(image.size) > self.keep_side:
                ratio = self.keep_side / min(image.size)
                image = image.resize((max(1, round(image.width * ratio)), max(1, round(image.height * ratio))), Image.BICUBIC)
            if len(self._decoded) >= self.max_cached:
                del self._decoded[next(iter(self._decoded))]
            self._decoded[(g, i)] = image
        return self._decoded[(g, i)]


def draw_batch(sampler: ImageSampler, size: int, batch: int, rng: random.Random) -> torch.Tensor:
    """`batch` images in [-1, 1], each a random square crop resized to `size` px."""
    pixels = []
    for _ in range(batch):
        image = sampler.draw(rng)
        side = min(image.size)
        left, top = rng.randint(0, image.width - side), rng.randint(0, image.height - side)
        pixels.append(to_tensor(image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)))
    return torch.stack(pixels)


def vae_loss(model: AutoEncoder, x: torch.Tensor, noise_seed: int,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L1 + beta * KL, L1, KL) of one batch; the latent is drawn from the posterior with `noise_seed`.

    `model` works on raw latents (scale 1, shift 0): the scale and shift are measured after training.
    """
    mean, logvar = model.moments(x).chunk(2, dim=1)
    logvar = logvar.clamp(-30, 20)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=torch.Generator().manual_seed(noise_seed))
    recon = model.decoder(z)
    l1 = (recon - x).abs().mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
    return l1 + beta * kl, l1, kl


def vae_step(model: AutoEncoder, optimizer: torch.optim.Optimizer, x: torch.Tensor, noise_seed: int, beta: float,
             lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on `vae_loss` at learning rate `lr` (gradients clipped to norm 1) -> (L1, KL)."""
    loss, l1, kl = vae_loss(model, x, noise_seed, beta)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return l1.detach(), kl.detach()


def train_vae(images: dict[str, list[bytes]] | list[bytes], out: str | Path, *, config: VAEConfig, steps: int = 500,
              batch: int = 16, size: int = 64, lr: float = 1e-3, beta: float = 1e-4, seed: int = 0,
              source_balance: float = 1.0, log_every: int = 50) -> list[float]:
    sampler = ImageSampler(images, source_balance, keep_side=2 * size)
    torch.manual_seed(seed)
    model = AutoEncoder(replace(config, scale_factor=1.0, shift_factor=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        rng = random.Random(f"{seed}/{step}")
        x = draw_batch(sampler, size, batch, rng)
        step_lr = lr * lr_factor(step, 0, steps, "cosine", 0.0)
        l1, kl = vae_step(model, optimizer, x, rng.randrange(2**31), beta, step_lr)
        losses.append(float(l1))
        if log_every and (step + 1) % log_every == 0:
            print(f"[vae] step {step + 1}/{steps} l1 {losses[-1]:.4f} kl {float(kl):.3f}", file=sys.stderr, flush=True)
    with torch.no_grad():  # latent statistics -> scale / shift, as FLUX's constants
        x = draw_batch(sampler, size, 64, random.Random(f"{seed}/stats"))
        mean = model.moments(x).chunk(2, dim=1)[0]
        final = replace(config, shift_factor=round(float(mean.mean()), 4), scale_factor=round(1.0 / float(mean.std()), 4))
    save_vae(out, model, final)
    return losses

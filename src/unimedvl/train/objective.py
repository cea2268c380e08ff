"""The training loss on one packed sequence: cross-entropy on text + flow-matching MSE on latents.

For each generated image (one timestep per image, BAGEL's recipe)::

    t   = sigmoid(n), n ~ N(0, 1)                      (logit-normal)
    t   = s t / (1 + (s - 1) t)                         (timestep shift s)
    x_t = (1 - t) x_0 + t eps,   target v = eps - x_0   (x_0: clean VAE latent tokens)

Both losses are sums here; the trainer divides them by the *global* token counts (all ranks, all
packs of the step), so gradients do not depend on how packs are spread over ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unimedvl.model.packing import SpecialTokens
from unimedvl.model.unified import UniMedVLModel
from unimedvl.model.vae import AutoEncoder
from unimedvl.train.data import Pack


@dataclass
class LossSums:
    ce_sum: torch.Tensor
    mse_sum: torch.Tensor


def logit_normal_timestep(generator: torch.Generator, shift: float) -> float:
    t = torch.sigmoid(torch.randn((), generator=generator)).item()
    return shift * t / (1 + (shift - 1) * t)


def pack_losses(model: UniMedVLModel, vae: AutoEncoder, pack: Pack, special: SpecialTokens, *,
                timestep_shift: float, checkpoint_layers: bool = False) -> LossSums:
    generator = torch.Generator().manual_seed(pack.seed)
    segments: list[tuple] = []
    latent_rows: list[tuple[int, int]] = []
    targets: list[torch.Tensor] = []
    vae_dtype = next(vae.parameters()).dtype
    vae_device = next(vae.parameters()).device
    for seg in pack.segments:
        if seg.kind == "text":
            segments.append(("text", torch.tensor(seg.ids)))
        elif seg.kind == "vit":
            segments.append(("vit", seg.pixels))
        else:
            with torch.no_grad():  # the VAE is frozen: latents are inputs and targets, not trained
                latent = vae.encode(seg.pixels[None].to(vae_device, vae_dtype), sample=True, generator=generator)[0]
            tokens, grid = model.pack_latent(latent.float())
            if seg.noisy:
                t = logit_normal_timestep(generator, timestep_shift)
                eps = torch.randn(tokens.shape, generator=generator).to(tokens)
                segments.append(("latent", (1 - t) * tokens + t * eps, t, grid))
                latent_rows.append((seg.start + 1, tokens.shape[0]))
                targets.append(eps - tokens)
            else:
                segments.append(("latent", tokens, 0.0, grid))
    logits, velocities, anchor = model(segments, pack.position_ids, pack.gen_mask, pack.attn_mask,
                                       pack.ce_positions, latent_rows, special, checkpoint_layers)
    zero = anchor + logits.sum() * 0.0
    ce_sum = zero
    if pack.num_ce_tokens:
        ce_sum = F.cross_entropy(logits.float(), pack.ce_targets.to(logits.device), reduction="sum") + zero
    mse_sum = zero
    for pred, target in zip(velocities, targets):
        mse_sum = mse_sum + ((pred.float() - target.to(pred.device)) ** 2).mean(dim=-1).sum()
    return LossSums(ce_sum=ce_sum, mse_sum=mse_sum)

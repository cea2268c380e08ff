"""The training loss on one packed sequence: cross-entropy on text + flow-matching MSE on latents.

For each generated image (one timestep per image, BAGEL's recipe)::

    t   = sigmoid(n), n ~ N(0, 1)                      (logit-normal)
    t   = s t / (1 + (s - 1) t)                         (timestep shift s, `model/sampling.py`)
    x_t = (1 - t) x_0 + t eps,   target v = eps - x_0   (x_0: clean VAE latent tokens)

Both losses are sums here; the trainer divides them by the *global* token counts (all ranks, all
packs of the step), so gradients do not depend on how packs are spread over ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from unimedvl.model.packing import LatentSegment, PackedBatch
from unimedvl.model.sampling import shift_time
from unimedvl.model.unified import UniMedVLModel
from unimedvl.model.vae import AutoEncoder


@dataclass
class LossSums:
    ce_sum: torch.Tensor
    mse_sum: torch.Tensor


def logit_normal_timestep(generator: torch.Generator, shift: float) -> float:
    return shift_time(torch.sigmoid(torch.randn((), generator=generator)).item(), shift)


def encode_latents(model: UniMedVLModel, vae: AutoEncoder, batch: PackedBatch, *, timestep_shift: float
                   ) -> tuple[PackedBatch, list[torch.Tensor]]:
    """Fill every latent segment's tokens (VAE posterior sample; noised for generated images).

    Returns the batch the network reads and the velocity target of each noisy image. Draws come
    from a generator seeded by the pack, in segment order: posterior, then timestep and noise.
    """
    generator = torch.Generator().manual_seed(batch.seed)
    vae_dtype = next(vae.parameters()).dtype
    vae_device = next(vae.parameters()).device
    segments, targets = [], []
    for seg in batch.segments:
        if isinstance(seg, LatentSegment):
            with torch.no_grad():  # the VAE is frozen: latents are inputs and targets, not trained
                latent = vae.encode(seg.pixels[None].to(vae_device, vae_dtype), sample=True, generator=generator)[0]
            tokens, _ = model.pack_latent(latent.float())
            if seg.noisy:
                t = logit_normal_timestep(generator, timestep_shift)
                eps = torch.randn(tokens.shape, generator=generator).to(tokens)
                seg = replace(seg, tokens=(1 - t) * tokens + t * eps, timestep=t)
                targets.append(eps - tokens)
            else:
                seg = replace(seg, tokens=tokens, timestep=0.0)
        segments.append(seg)
    return replace(batch, segments=tuple(segments)), targets


def pack_losses(model: UniMedVLModel, vae: AutoEncoder, batch: PackedBatch, *, timestep_shift: float,
                checkpoint_layers: bool = False, per_sample: bool = True) -> LossSums:
    encoded, targets = encode_latents(model, vae, batch, timestep_shift=timestep_shift)
    out = model(encoded, checkpoint_layers=checkpoint_layers, per_sample=per_sample)
    zero = out.logits.sum() * 0.0  # keeps both sums in the graph when a pack has no text or no latent loss
    ce_sum = zero
    if batch.num_ce_tokens:
        ce_sum = F.cross_entropy(out.logits.float(), batch.ce_targets.to(out.logits.device), reduction="sum") + zero
    mse_sum = zero
    for pred, target in zip(out.velocities, targets):
        mse_sum = mse_sum + ((pred.float() - target.to(pred.device)) ** 2).mean(dim=-1).sum()
    return LossSums(ce_sum=ce_sum, mse_sum=mse_sum)

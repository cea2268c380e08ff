"""What FSDP2 needs from the model, kept out of the model: shard units and gradients for every weight.

* Shard units: each MoT decoder layer (every pack runs all of them), then the root holding the rest
  (embeddings, ViT, heads). The ViT is not a unit of its own: a rank whose packs hold no ViT image
  would skip its collectives and desynchronise the others.
* Anchors: every rank must reduce the same gradients, but a pack without latents leaves the
  generation expert unused (and one without images the ViT). Forward hooks add 0 * (sum of the
  unused weights) to a layer's output, so each such weight gets a zero gradient on every rank.
  They are installed for single-process runs too, so an unused weight is treated alike everywhere
  (AdamW steps a zero gradient, but skips a missing one).
"""

from __future__ import annotations

import torch
from torch import nn

from unimedvl.model.qwen2_mot import BlockInputs
from unimedvl.model.unified import UniMedVLModel


def _zero_sum(params: list[nn.Parameter], like: torch.Tensor) -> torch.Tensor:
    return sum((p.sum() for p in params), torch.zeros((), device=like.device)) * 0.0


def _layer_anchor(layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    if not (layer.training and torch.is_grad_enabled()):
        return output
    routing = next(a for a in args if isinstance(a, BlockInputs)).routing
    if routing.gen_rows is None and routing.und_rows is None:
        unused_gen = True  # every row used the understanding expert
    elif routing.gen_rows is None:
        unused_gen = False  # every row used the generation expert
    else:
        return output + torch.zeros((), dtype=layer.input_layernorm.weight.dtype, device=output.device)
    params = [p for n, p in layer.named_parameters() if p.requires_grad and (("_moe_gen" in n) == unused_gen)]
    return output + _zero_sum(params, output)


def install_unused_weight_anchors(model: UniMedVLModel) -> list[torch.utils.hooks.RemovableHandle]:
    """Hook every decoder layer (its unused expert) and the decoder output (every weight outside the layers).

    Install before `fully_shard`: the hooks then run while the weights are still gathered.
    """
    handles = [layer.register_forward_hook(_layer_anchor) for layer in model.shard_units]

    def outside_anchor(decoder: nn.Module, args: tuple, hidden: torch.Tensor) -> torch.Tensor:
        if not (model.training and torch.is_grad_enabled()):
            return hidden
        outside = [p for n, p in model.named_parameters()
                   if p.requires_grad and not n.startswith("language_model.model.layers.")]
        return hidden + _zero_sum(outside, hidden)

    handles.append(model.language_model.model.register_forward_hook(outside_anchor))
    return handles


def shard(model: UniMedVLModel, device_type: str, world: int) -> None:
    """FSDP2 over `world` ranks: one unit per decoder layer, then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (world,))
    for layer in model.shard_units:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)

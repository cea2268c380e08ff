"""SigLIP vision tower in NaViT form: images of any size, packed along one token axis.

Each image `[3, H, W]` (H, W multiples of 14) becomes `(H/14)*(W/14)` patch tokens, row-major,
each a 588-vector ordered (dy, dx, rgb). Then::

    x = patch_embedding(patches) + position_embedding[row * 70 + col]     # [N, D]
    x = encoder layers (pre-LN, bidirectional within each image)          # [N, D]
    out = post_layernorm(x)

The patch embedding is stored as a Linear `[D, 588]` (the reference converts the Conv2d).
Module names equal the released keys under `vit_model.vision_model.`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unimedvl.config import ViTConfig
from unimedvl.model.layers import Embedding, LayerNorm, Linear, gelu_tanh


class SiglipAttention(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        n, d = x.shape
        shape = (n, self.num_heads, d // self.num_heads)
        q, k, v = (p(x).view(shape).transpose(0, 1) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=attn_mask)[0]
        return self.out_proj(out.transpose(0, 1).reshape(n, d))


class SiglipMLP(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.fc1 = Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_tanh(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.layer_norm1 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = SiglipAttention(config)
        self.layer_norm2 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), attn_mask)
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(config) for _ in range(config.num_hidden_layers))


class SiglipEmbeddings(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.patch_embedding = Linear(config.patch_dim, config.hidden_size)
        self.position_embedding = Embedding(config.num_positions, config.hidden_size)


class SiglipVisionTransformer(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.embeddings = SiglipEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class SiglipNaViT(nn.Module):
    """`vit_model` in the released checkpoint."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_model = SiglipVisionTransformer(config)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor, seqlens: list[int]) -> torch.Tensor:
        """Encode packed patches `[N, 588]` of `len(seqlens)` images -> features `[N, D]`."""
        vm = self.vision_model
        x = vm.embeddings.patch_embedding(patches) + vm.embeddings.position_embedding(position_ids, patches.dtype)
        mask = None
        if len(seqlens) > 1:  # block-diagonal: images never attend to each other
            ids = torch.repeat_interleave(torch.arange(len(seqlens), device=x.device),
                                          torch.tensor(seqlens, device=x.device))
            mask = ids[:, None] == ids[None, :]
        for layer in vm.encoder.layers:
            x = layer(x, mask)
        return vm.post_layernorm(x)

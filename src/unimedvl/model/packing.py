"""Packed sequences: token layout, RoPE positions, expert routing and attention rules.

One place owns these rules; training packs and inference blocks are both built from them.

Layout (identical in training and inference)::

    text split   : <|im_start|> t1 ... tn <|im_end|>         causal, RoPE +1 per token
    image split  : <|vision_start|> x1 ... xN <|vision_end|>  one RoPE id for the whole block
                   (ViT patches or VAE latent tokens)          RoPE +1 after it, except for a
                                                              noisy (to-be-generated) image

Attention (query row r may see key column c iff):

* both belong to the same sample (samples in one pack never see each other);
* c's split comes before r's split, unless c's split is a *noise* split (noisy latents are
  hidden from every other split); or
* both are in the same split and the split is bidirectional (``full``/``noise``), or it is
  ``causal`` and c <= r.

Experts: VAE latent tokens (clean or noisy) use the generation expert (`*_moe_gen` weights);
text, markers and ViT tokens use the understanding expert.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch


class SplitKind(IntEnum):
    CAUSAL = 0  # text
    FULL = 1  # ViT image or clean VAE image
    NOISE = 2  # VAE image being generated (has a loss in training; never cached at inference)


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the four tokens that frame text and images (the reference's `new_token_ids`)."""

    bos: int  # <|im_start|>
    eos: int  # <|im_end|>
    start_of_image: int  # <|vision_start|>
    end_of_image: int  # <|vision_end|>


@dataclass(frozen=True)
class PackLayout:
    """Per-token metadata of a packed sequence: `[L]` int tensors."""

    sample_ids: torch.Tensor
    split_ids: torch.Tensor
    split_kinds: torch.Tensor
    position_ids: torch.Tensor
    gen_expert: torch.Tensor  # bool: token goes through the generation expert


class PackBuilder:
    """Appends splits to a pack and records positions, routing and attention kinds.

    Used by the trainer to build whole packs, and by tests to prove that incremental inference
    with a KV cache sees exactly what the packed mask allows.
    """

    def __init__(self) -> None:
        self._sample, self._split, self._kind, self._pos, self._gen = [], [], [], [], []
        self._next_split = 0
        self.rope = 0
        self.sample = 0

    def new_sample(self) -> None:
        self.sample += 1
        self.rope = 0

    def _add(self, n: int, kind: SplitKind, positions: list[int], gen: list[bool]) -> None:
        self._sample += [self.sample] * n
        self._split += [self._next_split] * n
        self._kind += [int(kind)] * n
        self._pos += positions
        self._gen += gen
        self._next_split += 1

    def add_text(self, num_tokens: int) -> None:
        self._add(num_tokens, SplitKind.CAUSAL, list(range(self.rope, self.rope + num_tokens)), [False] * num_tokens)
        self.rope += num_tokens

    def add_image(self, num_tokens: int, *, vae: bool, noisy: bool = False) -> None:
        n = num_tokens + 2
        kind = SplitKind.NOISE if noisy else SplitKind.FULL
        self._add(n, kind, [self.rope] * n, [False] + [vae] * num_tokens + [False])
        if not noisy:
            self.rope += 1

    def build(self) -> PackLayout:
        t = lambda xs, dtype=torch.long: torch.tensor(xs, dtype=dtype)  # noqa: E731
        return PackLayout(t(self._sample), t(self._split), t(self._kind), t(self._pos), t(self._gen, torch.bool))


def pack_attention_mask(query: PackLayout, key: PackLayout | None = None) -> torch.Tensor:
    """Boolean mask `[Lq, Lk]` (True = may attend) implementing the rules in the module docstring.

    Token order inside a split is the order in the pack, so `key` defaults to `query`.
    """
    key = query if key is None else key
    qs, ks = query.split_ids[:, None], key.split_ids[None, :]
    q_idx = torch.arange(len(query.split_ids))[:, None]
    k_idx = torch.arange(len(key.split_ids))[None, :]
    same_sample = query.sample_ids[:, None] == key.sample_ids[None, :]
    key_kind = key.split_kinds[None, :]
    earlier = (ks < qs) & (key_kind != SplitKind.NOISE)
    same = ks == qs
    causal_ok = (query.split_kinds[:, None] != SplitKind.CAUSAL) | (k_idx <= q_idx)
    return same_sample & (earlier | (same & causal_ok))


def block_attention_mask(num_query: int, num_cached: int, *, causal: bool,
                         device: torch.device | None = None) -> torch.Tensor | None:
    """Mask `[Lq, Lc + Lq]` for one query block over [cache, block]; None means "see everything".

    Causal blocks use bottom-right alignment: query r sees key c iff c <= r + Lc.
    """
    if not causal or num_query == 1:
        return None
    rows = torch.arange(num_query, device=device)[:, None]
    cols = torch.arange(num_cached + num_query, device=device)[None, :]
    return cols <= rows + num_cached


def grid_position_ids(rows: int, cols: int, max_per_side: int) -> torch.Tensor:
    """Flattened 2-D position ids `row * max_per_side + col`, row-major `[rows*cols]`."""
    if rows > max_per_side or cols > max_per_side:
        raise ValueError(f"a {rows}x{cols} token grid exceeds the model's {max_per_side} tokens per side")
    r = torch.arange(rows)[:, None] * max_per_side
    return (r + torch.arange(cols)[None, :]).flatten()


def patchify(image: torch.Tensor, patch: int) -> torch.Tensor:
    """`[C, H, W]` -> `[(H/p)*(W/p), p*p*C]`, row-major patches, features ordered (dy, dx, c)."""
    c, h, w = image.shape
    x = image.reshape(c, h // patch, patch, w // patch, patch)
    return torch.einsum("chpwq->hwpqc", x).reshape(-1, patch * patch * c)


def unpatchify(tokens: torch.Tensor, rows: int, cols: int, patch: int, channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: `[rows*cols, p*p*C]` -> `[C, rows*p, cols*p]`."""
    x = tokens.reshape(rows, cols, patch, patch, channels)
    return torch.einsum("hwpqc->chpwq", x).reshape(channels, rows * patch, cols * patch)

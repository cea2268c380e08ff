"""Packed sequences: the segment vocabulary, token layout, RoPE positions, routing and attention rules.

One place owns these rules; training packs (:class:`PackBuilder` -> :class:`PackedBatch`) and
inference blocks (`unified.py`, through :func:`split_positions`, :func:`rope_advance` and
:func:`block_attention_mask`) are both built from them.

Segments (what a packed sequence is made of)::

    TextSegment(ids, loss)            <|im_start|> t1 ... tn <|im_end|>     causal, RoPE +1 per token
    VitSegment(pixels, grid)          <|vision_start|> p1 ... pN <|vision_end|>   ViT patches (understanding)
    LatentSegment(grid, noisy, ...)   <|vision_start|> z1 ... zN <|vision_end|>   VAE latent tokens (generation)

An image split sits at one RoPE position for the whole block; RoPE advances by 1 after it,
except after a noisy (to-be-generated) image.

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

from unimedvl.text.tokenizer import SpecialTokens


class SplitKind(IntEnum):
    CAUSAL = 0  # text
    FULL = 1  # ViT image or clean VAE image
    NOISE = 2  # VAE image being generated (has a loss in training; never cached at inference)


# ------------------------------------------------------------------ segments
@dataclass(frozen=True)
class TextSegment:
    """A causal text split. `ids` are already framed (`<|im_start|> ... <|im_end|>`).

    With `loss`, position k is trained to predict `ids[k + 1]` (cross-entropy).
    """

    ids: tuple[int, ...]
    loss: bool = False

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class VitSegment:
    """An understanding image split: the ViT patches of `pixels` `[3, H, W]` in [-1, 1].

    `grid` is (rows, cols) of patches; the split holds rows * cols tokens plus the two markers.
    """

    pixels: torch.Tensor
    grid: tuple[int, int]

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] + 2


@dataclass(frozen=True)
class LatentSegment:
    """A VAE image split (generation expert): clean (a condition, t = 0) or noisy (to generate).

    A training pack holds the image (`pixels` `[3, H, W]`); the objective encodes it with the VAE
    and fills `tokens` (`[rows * cols, 64]` latent tokens, noised to flow time `timestep` when
    `noisy`), which is what the network reads. `grid` is (rows, cols) of latent tokens.
    """

    grid: tuple[int, int]
    noisy: bool = False
    pixels: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    timestep: float = 0.0

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] + 2


Segment = TextSegment | VitSegment | LatentSegment


def split_kind(segment: Segment) -> SplitKind:
    if isinstance(segment, TextSegment):
        return SplitKind.CAUSAL
    return SplitKind.NOISE if isinstance(segment, LatentSegment) and segment.noisy else SplitKind.FULL


def split_positions(kind: SplitKind, rope: int, num_tokens: int) -> list[int]:
    """RoPE ids of a split that starts at position `rope`: +1 per text token, one id for an image."""
    return list(range(rope, rope + num_tokens)) if kind == SplitKind.CAUSAL else [rope] * num_tokens


def rope_advance(kind: SplitKind, num_tokens: int) -> int:
    """How far the next split's RoPE position moves: the text length, 1 after a clean image, 0 after a noisy one."""
    return num_tokens if kind == SplitKind.CAUSAL else int(kind == SplitKind.FULL)


# ------------------------------------------------------------------ packs
@dataclass(frozen=True)
class PackLayout:
    """Per-token metadata of a packed sequence: `[L]` int tensors."""

    sample_ids: torch.Tensor
    split_ids: torch.Tensor
    split_kinds: torch.Tensor
    position_ids: torch.Tensor
    gen_expert: torch.Tensor  # bool: token goes through the generation expert

    def rows(self, start: int, end: int) -> "PackLayout":
        """The layout of rows `start:end` (one sample's span, for its own attention mask)."""
        return PackLayout(*(t[start:end] for t in (self.sample_ids, self.split_ids, self.split_kinds,
                                                   self.position_ids, self.gen_expert)))

    def sample_spans(self) -> tuple[tuple[int, int], ...]:
        """(first row, end row) of each sample; a builder lays samples out one after another."""
        _, counts = torch.unique_consecutive(self.sample_ids, return_counts=True)
        ends = counts.cumsum(0).tolist()
        return tuple(zip([0, *ends[:-1]], ends))


@dataclass(frozen=True)
class SampleAttention:
    """A pack's attention as one block per sample (samples never see each other): row spans and masks.

    Attending sample by sample costs the sum of each sample's length squared instead of the pack's,
    and never materialises the `[L, L]` mask (the "varlen" form of packed attention).
    """

    spans: tuple[tuple[int, int], ...]
    masks: tuple[torch.Tensor, ...]  # [l, l] bool per sample, True = may attend

    def to(self, device: torch.device | str) -> "SampleAttention":
        return SampleAttention(self.spans, tuple(m.to(device) for m in self.masks))


@dataclass(frozen=True)
class PackedBatch:
    """One packed training sequence: what `UniMedVLModel.forward` reads.

    `starts[i]` is the first row of `segments[i]` (for images: its `<|vision_start|>` marker).
    `ce_positions` / `ce_targets` `[Nc]` are the rows trained with cross-entropy and the token
    each must predict. `sample_ids` names the corpus samples packed here and `seed` seeds the
    pack's own random draws (VAE posterior, timesteps, noise), so a pack is a function of the stream.
    """

    segments: tuple[Segment, ...]
    starts: tuple[int, ...]
    layout: PackLayout
    ce_positions: torch.Tensor
    ce_targets: torch.Tensor
    special: SpecialTokens
    sample_ids: tuple[str, ...] = ()
    seed: int = 0

    @property
    def num_tokens(self) -> int:
        return int(self.layout.position_ids.numel())

    @property
    def attention_mask(self) -> torch.Tensor:
        """The whole pack's mask `[L, L]` (True = may attend): the dense form of :meth:`sample_attention`."""
        return pack_attention_mask(self.layout)

    def sample_attention(self) -> SampleAttention:
        """The same rules as :attr:`attention_mask`, one block per sample."""
        spans = self.layout.sample_spans()
        return SampleAttention(spans, tuple(pack_attention_mask(self.layout.rows(s, e)) for s, e in spans))

    @property
    def num_ce_tokens(self) -> int:
        return int(self.ce_targets.numel())

    @property
    def num_mse_tokens(self) -> int:
        return sum(s.num_tokens - 2 for s in self.segments if isinstance(s, LatentSegment) and s.noisy)

    def noisy_latent_rows(self) -> list[tuple[int, int]]:
        """(first row, rows) of the latent tokens of each noisy image, markers excluded."""
        return [(start + 1, seg.num_tokens - 2) for seg, start in zip(self.segments, self.starts)
                if isinstance(seg, LatentSegment) and seg.noisy]


class PackBuilder:
    """Appends segments to a pack and records positions, routing, attention kinds and CE targets.

    Used by the trainer to build whole packs, and by tests to prove that incremental inference
    with a KV cache sees exactly what the packed mask allows.
    """

    def __init__(self, special: SpecialTokens) -> None:
        self.special = special
        self.rope = 0  # RoPE position of the next split
        self.sample = 0  # index of the current sample in the pack
        self._segments: list[Segment] = []
        self._starts: list[int] = []
        self._columns: tuple[list[int], ...] = ([], [], [], [], [])  # sample, split, kind, position, gen expert
        self._ce: tuple[list[int], list[int]] = ([], [])  # CE rows and their targets

    @property
    def num_tokens(self) -> int:
        return len(self._columns[0])

    def new_sample(self) -> None:
        """Start the next sample: it sees nothing of the previous ones, and its RoPE restarts at 0."""
        self.sample += 1
        self.rope = 0

    def skip_image(self) -> None:
        """An image removed by condition dropout still takes its RoPE slot (as the reference does)."""
        self.rope += 1

    def add(self, segment: Segment) -> None:
        kind, start, n = split_kind(segment), self.num_tokens, segment.num_tokens
        samples, splits, kinds, positions, gen = self._columns
        samples += [self.sample] * n
        splits += [len(self._segments)] * n
        kinds += [int(kind)] * n
        positions += split_positions(kind, self.rope, n)
        vae = isinstance(segment, LatentSegment)
        gen += [False] * n if kind == SplitKind.CAUSAL else [False] + [vae] * (n - 2) + [False]
        if isinstance(segment, TextSegment) and segment.loss:
            self._ce[0].extend(start + k for k in range(n - 1))
            self._ce[1].extend(segment.ids[1:])
        self._segments.append(segment)
        self._starts.append(start)
        self.rope += rope_advance(kind, n)

    def layout(self) -> PackLayout:
        samples, splits, kinds, positions, gen = (torch.tensor(c, dtype=torch.long) for c in self._columns)
        return PackLayout(samples, splits, kinds, positions, gen.bool())

    def build(self, *, sample_ids: tuple[str, ...] = (), seed: int = 0) -> PackedBatch:
        layout = self.layout()
        ce_positions, ce_targets = (torch.tensor(c, dtype=torch.long) for c in self._ce)
        return PackedBatch(tuple(self._segments), tuple(self._starts), layout, ce_positions, ce_targets,
                           self.special, tuple(sample_ids), seed)


# ------------------------------------------------------------------ masks
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


# ------------------------------------------------------------------ grids
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

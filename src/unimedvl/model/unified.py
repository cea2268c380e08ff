"""The unified network (the reference `Bagel`): Qwen2-MoT + SigLIP + generation heads.

State-dict layout (equal to the released `ema.safetensors`)::

    language_model.*   Qwen2 MoT decoder and lm_head            (qwen2_mot.py)
    time_embedder.*    t -> [H]                                 (connectors.py)
    vae2llm, llm2vae   Linear 64 <-> H
    latent_pos_embed   sin-cos table [64*64, H]
    vit_model.*        SigLIP NaViT                             (siglip_navit.py)
    connector.*        ViT features -> H
    vit_pos_embed      sin-cos table [70*70, H]

The VAE lives outside this module (its weights ship separately in `ae.safetensors`).

Inference is a sequence of *blocks* run against a :class:`KVCache` context. Each primitive here
builds one block with the layout rules of `packing.py` and returns what the caller needs:

    prefill_text(cache, ids)          causal text split, cached             -> hidden [T, H] (or the last rows)
    prefill_vit_image(cache, pixels)  ViT image split, cached               -> ViT features
    prefill_vae_image(cache, latent)  clean VAE image split (t = 0), cached
    decode_step(cache, ids)           one token, cached                     -> logits [1, V]
    decode_batch(caches, ids)         one token in each of B contexts       -> logits [B, V]
    velocity(cache, embeds)           noisy VAE image split, NOT cached     -> v [h*w, 64]
    velocity_batch(caches, embeds)    the same block over B contexts at once -> B x v [h*w, 64]

Training runs a whole :class:`PackedBatch` (`packing.py`) through `forward`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from unimedvl.config import UnifiedConfig
from unimedvl.model.connectors import MLPconnector, PositionEmbedding, TimestepEmbedder
from unimedvl.model.kv_cache import KVCache
from unimedvl.model.layers import Linear
from unimedvl.model.packing import (
    PackedBatch,
    SplitKind,
    TextSegment,
    VitSegment,
    grid_position_ids,
    patchify,
    rope_advance,
    split_positions,
)
from unimedvl.model.qwen2_mot import Qwen2MoTForCausalLM
from unimedvl.model.siglip_navit import SiglipNaViT
from unimedvl.text.tokenizer import SpecialTokens


@dataclass
class ImageBlockOutput:
    """What an image prefill returns (intermediates kept for parity checks and debugging)."""

    encoder_out: torch.Tensor  # ViT post-layernorm features [N, Dv] (ViT) or packed latent [N, 64] (VAE)
    tokens: torch.Tensor  # the N image-token embeddings fed to the LLM [N, H]


@dataclass
class PackedOutput:
    """What a packed training forward returns."""

    logits: torch.Tensor  # [Nc, V] at the batch's CE rows
    velocities: list[torch.Tensor]  # one [N, 64] per noisy image, in pack order


class UniMedVLModel(nn.Module):
    def __init__(self, config: UnifiedConfig) -> None:
        super().__init__()
        self.config = config
        # What a CPU computes in: fp32 unless the loader chose bf16 (a CPU with bf16 matrix units, AMX).
        self.cpu_compute_dtype = torch.float32
        h = config.llm.hidden_size
        self.language_model = Qwen2MoTForCausalLM(config.llm)
        self.time_embedder = TimestepEmbedder(h, config.timestep_embed_dim)
        self.vae2llm = Linear(config.patch_latent_dim, h)
        self.llm2vae = Linear(h, config.patch_latent_dim)
        self.latent_pos_embed = PositionEmbedding(config.max_latent_size, h)
        self.vit_model = SiglipNaViT(config.vit)
        self.connector = MLPconnector(config.vit.hidden_size, h)
        self.vit_pos_embed = PositionEmbedding(config.vit_max_num_patch_per_side, h)

    # ----------------------------------------------------------------- helpers
    @property
    def shard_units(self) -> list[nn.Module]:
        """The decoder layers: every forward runs each in full, so they are the FSDP shard units
        (the root holds the rest) and the places where training hooks per-layer work."""
        return list(self.language_model.model.layers)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The weight dtype on GPU; on CPU `cpu_compute_dtype`: fp32 whatever the storage dtype (most CPUs have
        no native bf16, where a bf16 matmul is hundreds of times slower), bf16 where the loader chose it."""
        weight = self.language_model.model.embed_tokens.weight
        return self.cpu_compute_dtype if weight.device.type == "cpu" else weight.dtype

    @property
    def device(self) -> torch.device:
        return self.language_model.model.embed_tokens.weight.device

    def new_cache(self, capacity: int = 0) -> KVCache:
        return self.language_model.new_cache(dtype=self.compute_dtype, device=self.device, capacity=capacity)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.model.embed_tokens(ids.to(self.device), self.compute_dtype)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.lm_head(hidden)

    def _run_block(self, cache: KVCache, embeds: torch.Tensor, kind: SplitKind, *,
                   gen_mask: torch.Tensor | None = None, keep_last: int | None = None) -> torch.Tensor:
        """One split `[L, H]` against the context, laid out by the rules of `packing.py`.

        Text is causal and image blocks bidirectional; both are committed to the cache. A noisy
        latent block (`SplitKind.NOISE`) sees the whole context but is not cached. `keep_last`: only
        the last rows' hidden states are returned (and computed in the last layer; see `Qwen2MoTModel`).
        """
        n = embeds.shape[0]
        positions = torch.tensor(split_positions(kind, cache.rope, n), device=self.device)
        causal = kind == SplitKind.CAUSAL  # the rule of block_attention_mask, without materialising it
        commit = kind != SplitKind.NOISE
        hidden = self.language_model.model(embeds, positions, gen_mask=gen_mask, causal=causal,
                                           cache=cache.open_block(n, commit=commit), keep_last=keep_last)
        if commit:
            cache.commit(n, rope_advance(kind, n))
        return hidden

    def frame_image_block(self, tokens: torch.Tensor, special: SpecialTokens) -> torch.Tensor:
        markers = self.embed_ids(torch.tensor([special.start_of_image, special.end_of_image]))
        return torch.cat([markers[:1], tokens, markers[1:]], dim=0)

    # -------------------------------------------------------------- primitives
    def prefill_text(self, cache: KVCache, ids: torch.Tensor, *, keep_last: int | None = None) -> torch.Tensor:
        """Causal text block `[T]` ids (already framed by bos/eos) at RoPE rope..rope+T-1 -> hidden `[T, H]`.

        `keep_last=k`: the hidden states of the last k tokens only (1 for next-token logits, 0 when only the
        cache is needed), which skips the last layer's queries, attention and MLP for the other tokens.
        """
        return self._run_block(cache, self.embed_ids(ids), SplitKind.CAUSAL, keep_last=keep_last)

    def decode_step(self, cache: KVCache, ids: torch.Tensor) -> torch.Tensor:
        """Feed one token `[1]`, append it to the cache, return next-token logits `[1, V]`."""
        return self.logits(self.prefill_text(cache, ids))

    def decode_batch(self, caches: list[KVCache], ids: torch.Tensor) -> torch.Tensor:
        """Feed token `ids[i]` to context `caches[i]` for every i in one forward; returns logits `[B, V]`.

        Decoding is bound by reading the weights; here they are read once for all B rows. Two forks of
        one context in the same batch would write the same rows: the later one gets its own copy first.
        """
        if len(caches) != ids.shape[0] or not caches:
            raise ValueError(f"{len(caches)} contexts for {ids.shape[0]} tokens")
        stores: set[int] = set()
        for cache in caches:
            cache.reserve(1)  # each context owns its tail before any row writes
            if id(cache.store) in stores:
                cache.separate(extra_tokens=64)
            stores.add(id(cache.store))
        positions = torch.tensor([c.rope for c in caches], device=self.device)
        blocks = tuple(c.open_block(1, commit=True) for c in caches)  # committed: each writes in place
        hidden = self.language_model.model(self.embed_ids(ids), positions, row_caches=blocks)
        for cache in caches:
            cache.commit(1, rope_advance(SplitKind.CAUSAL, 1))
        return self.logits(hidden)

    def encode_vit(self, pixels: torch.Tensor) -> ImageBlockOutput:
        """`[3, H, W]` in [-1, 1], sides multiples of the patch size -> ViT features and LLM tokens."""
        p = self.config.vit.patch_size
        _, hgt, wid = pixels.shape
        pos = grid_position_ids(hgt // p, wid // p, self.config.vit_max_num_patch_per_side).to(self.device)
        patches = patchify(pixels.to(self.device, self.compute_dtype), p)
        features = self.vit_model(patches, pos, [patches.shape[0]])
        tokens = self.connector(features) + self.vit_pos_embed(pos, features.dtype)
        return ImageBlockOutput(encoder_out=features, tokens=tokens)

    def prefill_vit_image(self, cache: KVCache, pixels: torch.Tensor, special: SpecialTokens) -> ImageBlockOutput:
        """ViT image block (understanding expert, bidirectional, cached) at one RoPE position; rope += 1."""
        out = self.encode_vit(pixels)
        self._run_block(cache, self.frame_image_block(out.tokens, special), SplitKind.FULL, keep_last=0)  # cache only
        return out

    def pack_latent(self, latent: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """VAE latent `[z, 2h, 2w]` -> tokens `[h*w, 64]` (2x2 patches, order (dy, dx, c)) and (h, w)."""
        p = self.config.latent_patch_size
        _, lh, lw = latent.shape
        h, w = lh // p, lw // p
        return patchify(latent[:, : h * p, : w * p], p), (h, w)

    def embed_latents(self, tokens: torch.Tensor, t: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Latent tokens `[N, 64]` at flow time `t` (scalar or `[N]`) -> `vae2llm(x) + temb(t) + pos` `[N, H]`."""
        dtype = self.compute_dtype
        pos = grid_position_ids(*grid, self.config.max_latent_size).to(self.device)
        t = torch.as_tensor(t, dtype=torch.float32, device=self.device).expand(tokens.shape[0])
        return self.vae2llm(tokens.to(self.device, dtype)) + self.time_embedder(t, dtype) + self.latent_pos_embed(pos, dtype)

    def _latent_block(self, cache: KVCache, embeds: torch.Tensor, special: SpecialTokens, kind: SplitKind,
                      keep_last: int | None = None) -> torch.Tensor:
        block = self.frame_image_block(embeds, special)
        gen_mask = torch.ones(block.shape[0], dtype=torch.bool, device=self.device)
        gen_mask[0] = gen_mask[-1] = False  # the markers stay with the understanding expert
        return self._run_block(cache, block, kind, gen_mask=gen_mask, keep_last=keep_last)

    def prefill_vae_image(self, cache: KVCache, latent: torch.Tensor, special: SpecialTokens) -> ImageBlockOutput:
        """Clean VAE image block (latent `[z, 2h, 2w]`, t = 0), generation expert, cached; rope += 1."""
        tokens, grid = self.pack_latent(latent)
        embeds = self.embed_latents(tokens, torch.tensor(0.0), grid)
        self._latent_block(cache, embeds, special, SplitKind.FULL, keep_last=0)  # only its cache is needed
        return ImageBlockOutput(encoder_out=tokens, tokens=embeds)

    def noisy_latent_hidden(self, cache: KVCache, embeds: torch.Tensor, special: SpecialTokens) -> torch.Tensor:
        """Final hidden states `[N + 2, H]` (markers included) of a noisy latent block; not cached."""
        return self._latent_block(cache, embeds, special, SplitKind.NOISE)

    def velocity(self, cache: KVCache, embeds: torch.Tensor, special: SpecialTokens) -> torch.Tensor:
        """Predicted flow velocity `[N, 64]` for embedded noisy latents `[N, H]` (see `embed_latents`).

        The block sits at the context's RoPE position, sees the whole context and is not cached.
        """
        return self.llm2vae(self.noisy_latent_hidden(cache, embeds, special)[1:-1])

    # -------------------------------------------------------------- training
    def velocity_batch(self, caches: list[KVCache], embeds: torch.Tensor, special: SpecialTokens) -> list[torch.Tensor]:
        """`velocity` of one noisy block against each of several contexts (the guidance branches), in one forward.

        The projections and MLPs run once over all B copies of the block; each copy attends to its own
        context, through its own scratch rows past the store's end (contexts sharing a store take
        successive rows; rows that are not theirs are masked out, nothing is copied).
        """
        block = self.frame_image_block(embeds, special)
        m, count = block.shape[0], len(caches)
        gen_mask = torch.ones(m, dtype=torch.bool, device=self.device)
        gen_mask[0] = gen_mask[-1] = False  # the markers stay with the understanding expert
        positions = torch.tensor([p for c in caches for p in split_positions(SplitKind.NOISE, c.rope, m)],
                                 device=self.device)
        blocks, scratch_used = [], {}  # rows of scratch each store already gives this forward
        for cache in caches:
            blocks.append(cache.open_block(m, commit=False, scratch_after=scratch_used.get(id(cache.store), 0)))
            scratch_used[id(cache.store)] = scratch_used.get(id(cache.store), 0) + m
        hidden = self.language_model.model(block.repeat(count, 1), positions, gen_mask=gen_mask.repeat(count),
                                           branch_caches=tuple(blocks))
        return [self.llm2vae(hidden[b * m + 1:(b + 1) * m - 1]) for b in range(count)]

    def forward(self, batch: PackedBatch, *, checkpoint_layers: bool = False, per_sample: bool = True) -> PackedOutput:
        """A packed training sequence -> logits at its CE rows and a velocity per noisy image.

        Every latent segment must carry its latent `tokens` (the objective encodes the pack's
        images with the VAE first). Everything that touches the weights runs here, inside forward,
        so FSDP2 can gather them. `per_sample` attends one sample at a time (the same rules; faster
        as packs grow); False runs one attention over the pack's whole `[L, L]` mask, whose float
        sums differ in the last bits (what UniMedVL-tiny was trained with).
        """
        # Every token id of the pack (texts and image markers) in one embedding lookup: each lookup's
        # backward fills a dense vocabulary-sized gradient, which 25 lookups per pack made 40% of a step.
        special = batch.special
        ids: list[int] = []
        for seg in batch.segments:
            ids.extend(seg.ids if isinstance(seg, TextSegment) else (special.start_of_image, special.end_of_image))
        table = self.embed_ids(torch.tensor(ids, dtype=torch.long))
        pieces, cursor = [], 0
        for seg in batch.segments:
            if isinstance(seg, TextSegment):
                pieces.append(table[cursor:cursor + len(seg.ids)])
                cursor += len(seg.ids)
                continue
            markers = table[cursor:cursor + 2]
            cursor += 2
            if isinstance(seg, VitSegment):
                tokens = self.encode_vit(seg.pixels).tokens
            else:
                if seg.tokens is None:
                    raise ValueError("a latent segment reached the network without latent tokens; encode it first")
                tokens = self.embed_latents(seg.tokens, torch.tensor(seg.timestep), seg.grid)
            pieces.append(torch.cat([markers[:1], tokens.to(markers.dtype), markers[1:]], dim=0))
        embeds = torch.cat(pieces, dim=0).to(self.compute_dtype)
        layout = batch.layout
        hidden = self.language_model.model(embeds, layout.position_ids.to(self.device),
                                           gen_mask=layout.gen_expert.to(self.device),
                                           attn_mask=None if per_sample else batch.attention_mask.to(self.device),
                                           samples=batch.sample_attention().to(self.device) if per_sample else None,
                                           checkpoint_layers=checkpoint_layers)
        logits = self.logits(hidden[batch.ce_positions.to(self.device)])
        velocities = [self.llm2vae(hidden[first:first + rows]) for first, rows in batch.noisy_latent_rows()]
        return PackedOutput(logits=logits, velocities=velocities)

"""Qwen2 decoder with Mixture-of-Transformers experts (BAGEL / UniMedVL language model).

Every decoder layer holds two full copies of its weights: the understanding expert (plain Qwen2
names) and the generation expert (the same names with `_moe_gen`). Routing is by token, not by a
learned router: each token passes through exactly one expert's norms, projections and MLP, while
attention is **shared** - all tokens' Q/K/V meet in one joint GQA attention (one KV cache).

Per token, one layer computes (pre-norm)::

    h   = x + o_proj(Attn(RoPE(q_norm(q_proj(RMSNorm(x)))), RoPE(k_norm(k_proj(...))), v_proj(...)))
    out = h + MLP(RMSNorm(h))          MLP(z) = down(silu(gate(z)) * up(z))

Shapes: hidden `[L, H]`, q `[L, Hq, D]`, k/v `[L, Hkv, D]`, with D = H / Hq.
Module names equal the released state-dict keys under `language_model.`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from unimedvl.config import LLMConfig
from unimedvl.model.decode_attention import DECODE_ATTENTION
from unimedvl.model.decode_layer import FUSED
from unimedvl.model.kv_cache import KVBlock, KVCache
from unimedvl.model.layers import Embedding, Linear, RMSNorm, apply_rope
from unimedvl.model.packing import SampleAttention


@dataclass(frozen=True)
class Routing:
    """Which rows of a block use which expert. `gen_rows` None or empty means all understanding."""

    und_rows: torch.Tensor | None = None
    gen_rows: torch.Tensor | None = None

    @classmethod
    def from_mask(cls, gen_mask: torch.Tensor | None) -> "Routing":
        if gen_mask is None or not bool(gen_mask.any()):
            return cls()
        if bool(gen_mask.all()):
            return cls(und_rows=gen_mask.new_zeros(0, dtype=torch.long), gen_rows=None)
        return cls(und_rows=(~gen_mask).nonzero().squeeze(1), gen_rows=gen_mask.nonzero().squeeze(1))

    @property
    def single_expert(self) -> bool | None:
        """False: every row is understanding; True: every row is generation; None: mixed."""
        if self.gen_rows is None:
            return self.und_rows is not None
        return None

    def last(self, keep: int, total: int) -> "Routing":
        """The routing of the last `keep` of `total` rows (a block whose earlier rows' outputs are not needed)."""
        if self.single_expert is not None:
            return self
        offset = total - keep
        und = self.und_rows[self.und_rows >= offset] - offset
        gen = self.gen_rows[self.gen_rows >= offset] - offset
        if not gen.numel():
            return Routing()  # all understanding
        return Routing(und_rows=und, gen_rows=gen if und.numel() else None)  # mixed, or all generation

    def apply(self, x: torch.Tensor, und: Callable[[torch.Tensor], torch.Tensor],
              gen: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.single_expert is not None:
            return gen(x) if self.single_expert else und(x)
        und_out = und(x[self.und_rows])
        gen_out = gen(x[self.gen_rows])
        # Under autocast the experts' outputs are bf16 while x may be fp32: the result takes their dtype.
        out = und_out.new_empty((x.shape[0], *und_out.shape[1:]), dtype=torch.promote_types(und_out.dtype, gen_out.dtype))
        out[self.und_rows] = und_out
        out[self.gen_rows] = gen_out
        return out


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden, intermediate, bias=False)
        self.up_proj = Linear(hidden, intermediate, bias=False)
        self.down_proj = Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2 rotary tables `[L, D]` (computed in fp32, like the reference)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim))
    freqs = position_ids.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class RopeTable:
    """`rope_cos_sin` precomputed for positions 0..n-1 (grown by doubling), so a forward only gathers rows.

    Each row is computed exactly as `rope_cos_sin` computes it, so the values are the same bits.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        self.head_dim, self.theta = head_dim, theta
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (position_ids.device, dtype)
        needed = int(position_ids.max()) + 1 if position_ids.numel() else 1
        table = self._tables.get(key)
        if table is None or table[0].shape[0] < needed:
            size = max(256, 1 << (needed - 1).bit_length())
            table = rope_cos_sin(torch.arange(size, device=position_ids.device), self.head_dim, self.theta, dtype)
            self._tables[key] = table
        return table[0][position_ids], table[1][position_ids]


@dataclass(frozen=True)
class BlockInputs:
    """What every layer of one forward reads besides the hidden states."""

    routing: Routing
    cos: torch.Tensor  # RoPE tables [L, D]
    sin: torch.Tensor
    attn_mask: torch.Tensor | None  # [L, Lc + L] bool; None = every row sees every key (unless causal)
    cache: KVBlock | None  # None: a whole packed sequence (training) that attends only to itself
    causal: bool = False  # a causal text block over its cache: bottom-right causal, no mask materialised
    row_caches: tuple[KVBlock, ...] | None = None  # batched decoding: row i is one token of its own context
    branch_caches: tuple[KVBlock, ...] | None = None  # batched guidance: equal row groups, each over its context
    samples: SampleAttention | None = None  # a whole pack attended sample by sample (instead of `attn_mask`)


class MoTAttention(nn.Module):
    def __init__(self, config: LLMConfig, layer_idx: int) -> None:
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        kv, eps = self.num_kv_heads * d, config.rms_norm_eps
        # Understanding expert, then generation expert (registration order = the released key order).
        self.q_proj, self.k_proj, self.v_proj = Linear(h, h, bias=True), Linear(h, kv, bias=True), Linear(h, kv, bias=True)
        self.o_proj = Linear(h, h, bias=False)
        self.q_norm, self.k_norm = RMSNorm(d, eps=eps), RMSNorm(d, eps=eps)
        self.q_proj_moe_gen, self.k_proj_moe_gen = Linear(h, h, bias=True), Linear(h, kv, bias=True)
        self.v_proj_moe_gen = Linear(h, kv, bias=True)
        self.o_proj_moe_gen = Linear(h, h, bias=False)
        self.q_norm_moe_gen, self.k_norm_moe_gen = RMSNorm(d, eps=eps), RMSNorm(d, eps=eps)

    def _q(self, x: torch.Tensor, *, gen: bool) -> torch.Tensor:
        q_proj, q_norm = (self.q_proj_moe_gen, self.q_norm_moe_gen) if gen else (self.q_proj, self.q_norm)
        return q_norm(q_proj(x).view(x.shape[0], self.num_heads, self.head_dim))

    def _kv_parts(self, x: torch.Tensor, *, gen: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if gen:
            k_proj, v_proj, k_norm = self.k_proj_moe_gen, self.v_proj_moe_gen, self.k_norm_moe_gen
        else:
            k_proj, v_proj, k_norm = self.k_proj, self.v_proj, self.k_norm
        n = x.shape[0]
        return k_norm(k_proj(x).view(n, self.num_kv_heads, self.head_dim)), v_proj(x).view(n, self.num_kv_heads, self.head_dim)

    def _qkv_parts(self, x: torch.Tensor, *, gen: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self._q(x, gen=gen), *self._kv_parts(x, gen=gen))

    def _qkv(self, x: torch.Tensor, *, gen: bool) -> torch.Tensor:
        return torch.cat(self._qkv_parts(x, gen=gen), dim=1)  # [n, Hq + 2*Hkv, D], for mixed-expert blocks

    def _kv(self, x: torch.Tensor, *, gen: bool) -> torch.Tensor:
        return torch.cat(self._kv_parts(x, gen=gen), dim=1)  # [n, 2*Hkv, D], for mixed-expert blocks

    def _attend_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: tuple[KVBlock, ...]
                     ) -> torch.Tensor:
        """Batched decoding: row i's query attends to its own context's keys (projections were shared).

        Each row's key and value are written straight into its context's preallocated row (decoding
        blocks are committed, so they write in place) and attended there: no copies, few Python steps.
        """
        outs = []
        for i, block in enumerate(rows):
            store, start = block.cache.store, block.start
            keys, values = store.keys[self.layer_idx], store.values[self.layer_idx]
            keys[:, start] = k[i]
            values[:, start] = v[i]
            k_all, v_all = keys[:, : start + 1], values[:, : start + 1]
            if k_all.dtype != q.dtype:
                k_all, v_all = k_all.to(q.dtype), v_all.to(q.dtype)
            outs.append(DECODE_ATTENTION(q[i], k_all, v_all))  # SDPA, or the CPU kernel on long fp32 caches
        return torch.stack(outs).reshape(q.shape[0], -1)  # [B, Hq * D]

    def _attend_branches(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks: tuple[KVBlock, ...]
                         ) -> torch.Tensor:
        """Batched guidance: the rows are equal groups, one per context; each group sees its context and itself."""
        m = q.shape[0] // len(blocks)
        outs = []
        for b, block in enumerate(blocks):
            rows = slice(b * m, (b + 1) * m)
            k_all, v_all = block.layer_kv(self.layer_idx, k[rows], v[rows])
            out = F.scaled_dot_product_attention(
                q[rows].transpose(0, 1).unsqueeze(0), k_all.unsqueeze(0).to(q.dtype), v_all.unsqueeze(0).to(q.dtype),
                attn_mask=block.key_mask(m), enable_gqa=self.num_heads != self.num_kv_heads)
            outs.append(out[0].transpose(0, 1).reshape(m, -1))
        return torch.cat(outs)

    def _attend_samples(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, samples: SampleAttention
                        ) -> torch.Tensor:
        """A training pack, each sample over its own rows with its own mask (no `[L, L]` work or mask)."""
        outs = []
        for (start, end), mask in zip(samples.spans, samples.masks):
            q_s, k_s, v_s = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q_s, k_s, v_s, attn_mask=mask,
                                                 enable_gqa=self.num_heads != self.num_kv_heads)
            outs.append(out[0].transpose(0, 1).reshape(end - start, -1))
        return torch.cat(outs)

    def forward(self, x: torch.Tensor, inputs: BlockInputs, keep: int | None = None) -> torch.Tensor:
        """Attention output after o_proj `[L, H]`; with `keep`, of the block's last `keep` rows only (see `forward_last`)."""
        if keep is not None:
            return self.forward_last(x, inputs, keep)
        routing = inputs.routing
        if routing.single_expert is not None:  # one expert: no joined copy of q, k, v
            q, k, v = self._qkv_parts(x, gen=routing.single_expert)
        else:
            qkv = routing.apply(x, lambda z: self._qkv(z, gen=False), lambda z: self._qkv(z, gen=True))
            q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=1)
        q, k = apply_rope(q, inputs.cos, inputs.sin), apply_rope(k, inputs.cos, inputs.sin)
        if inputs.row_caches is not None:
            return inputs.routing.apply(self._attend_rows(q, k, v, inputs.row_caches), self.o_proj, self.o_proj_moe_gen)
        if inputs.branch_caches is not None:
            return inputs.routing.apply(self._attend_branches(q, k, v, inputs.branch_caches), self.o_proj,
                                        self.o_proj_moe_gen)
        return inputs.routing.apply(self.attend(q, k, v, inputs), self.o_proj, self.o_proj_moe_gen)

    def forward_last(self, x: torch.Tensor, inputs: BlockInputs, keep: int) -> torch.Tensor:
        """A cached block of which only the last `keep` rows' outputs are needed (a prefill's last layer).

        Every row's key and value enter the cache, exactly as `forward` computes them; queries,
        attention and o_proj run for the kept rows alone -> `[keep, H]` (`keep` may be 0: cache only).
        """
        routing, n = inputs.routing, x.shape[0]
        if routing.single_expert is not None:
            k, v = self._kv_parts(x, gen=routing.single_expert)
        else:
            kv = routing.apply(x, lambda z: self._kv(z, gen=False), lambda z: self._kv(z, gen=True))
            k, v = kv.split([self.num_kv_heads, self.num_kv_heads], dim=1)
        k = apply_rope(k, inputs.cos, inputs.sin)
        if keep == 0:
            inputs.cache.layer_kv(self.layer_idx, k, v)
            return x[:0]
        tail = routing.last(keep, n)
        q = tail.apply(x[n - keep:], lambda z: self._q(z, gen=False), lambda z: self._q(z, gen=True))
        q = apply_rope(q, inputs.cos[n - keep:], inputs.sin[n - keep:])
        return tail.apply(self.attend(q, k, v, inputs), self.o_proj, self.o_proj_moe_gen)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
        """Joint attention of a block (keys: its cache and itself) -> `[Lq, Hq * D]`, before o_proj.

        `q` may hold only the block's last rows (`forward_last`); `k` and `v` hold all of them.
        """
        if inputs.samples is not None:
            return self._attend_samples(q, k, v, inputs.samples)
        if inputs.cache is None:  # a whole packed sequence (training): keys are the block itself
            k_all, v_all = k.transpose(0, 1), v.transpose(0, 1)
        else:
            k_all, v_all = inputs.cache.layer_kv(self.layer_idx, k, v)  # [Hkv, Lk, D]
        mask = inputs.attn_mask
        if mask is not None and q.shape[0] != k.shape[0]:
            mask = mask[-q.shape[0]:]  # the kept queries' rows
        if inputs.cache is not None and mask is None:
            mask = inputs.cache.key_mask(k.shape[0])  # a fork behind the store's tail: skip the owner's rows
        if mask is None and q.shape[0] == 1 and DECODE_ATTENTION.applies(q[0], k_all):  # a decoding row, long cache
            return DECODE_ATTENTION.run(q[0], k_all, v_all).reshape(1, -1)
        if inputs.causal:
            # SDPA takes the causal kernel for this (a dense boolean mask forces the slower masked path);
            # lower-right alignment: query r sees cached keys and block keys up to r.
            mask = causal_lower_right(q.shape[0], k_all.shape[1])
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0), k_all.unsqueeze(0).to(q.dtype), v_all.unsqueeze(0).to(q.dtype),
            attn_mask=mask, enable_gqa=self.num_heads != self.num_kv_heads,
        )  # [1, Hq, L, D]
        return out[0].transpose(0, 1).reshape(q.shape[0], -1)


class MoTDecoderLayer(nn.Module):
    """One pre-norm MoT layer (the FSDP shard unit in training)."""

    def __init__(self, config: LLMConfig, layer_idx: int) -> None:
        super().__init__()
        h = config.hidden_size
        self.self_attn = MoTAttention(config, layer_idx)
        self.mlp = MLP(h, config.intermediate_size)
        self.mlp_moe_gen = MLP(h, config.intermediate_size)
        self.input_layernorm = RMSNorm(h, eps=config.rms_norm_eps)
        self.input_layernorm_moe_gen = RMSNorm(h, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(h, eps=config.rms_norm_eps)
        self.post_attention_layernorm_moe_gen = RMSNorm(h, eps=config.rms_norm_eps)

    def forward(self, x: torch.Tensor, inputs: BlockInputs, keep: int | None = None) -> torch.Tensor:
        """`[L, H]` -> `[L, H]`; with `keep`, the outputs of the last `keep` rows only (all rows still cached)."""
        if keep is not None:
            return self._forward(x, inputs, keep)
        if FUSED.applies(x, inputs):  # one decoding row: two compiled graphs where this machine runs them faster
            return FUSED(self, x, inputs, lambda row: self._forward(row, inputs))
        return self._forward(x, inputs)

    def _forward(self, x: torch.Tensor, inputs: BlockInputs, keep: int | None = None) -> torch.Tensor:
        routing = inputs.routing
        h = routing.apply(x, self.input_layernorm, self.input_layernorm_moe_gen)
        attended = self.self_attn(h, inputs, keep=keep)
        if keep is not None:  # the earlier rows needed only their keys and values: no o_proj or MLP for them
            routing, x = routing.last(keep, x.shape[0]), x[x.shape[0] - keep:]
        x = x + attended
        h = routing.apply(x, self.post_attention_layernorm, self.post_attention_layernorm_moe_gen)
        return x + routing.apply(h, self.mlp, self.mlp_moe_gen)


class Qwen2MoTModel(nn.Module):
    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MoTDecoderLayer(config, idx) for idx in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.norm_moe_gen = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rope = RopeTable(config.head_dim, config.rope_theta)  # not a module or buffer: not in the state dict

    def forward(self, embeds: torch.Tensor, position_ids: torch.Tensor, *, gen_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, cache: KVBlock | None = None,
                checkpoint_layers: bool = False, causal: bool = False,
                row_caches: tuple[KVBlock, ...] | None = None,
                branch_caches: tuple[KVBlock, ...] | None = None, keep_last: int | None = None,
                samples: SampleAttention | None = None) -> torch.Tensor:
        """Run one query block `[L, H]`; returns final-normed hidden states `[L, H]` (`[keep_last, H]` with it).

        Args:
            embeds: input embeddings of the block.
            position_ids: RoPE positions `[L]`.
            gen_mask: `[L]` bool, rows routed to the generation expert (None: all understanding).
            attn_mask: `[L, Lc + L]` boolean mask over [cached keys, block keys]; None: see everything.
            cache: where the block reads and writes keys/values (`KVCache.open_block`); None for a
                whole packed sequence (training), which attends only to itself.
            checkpoint_layers: recompute each layer in backward (activation checkpointing, training).
            causal: the block is causal over [cached keys, block keys] (bottom-right); `attn_mask` must be None.
            row_caches: batched decoding instead of `cache`: row i is one new token of the context `row_caches[i]`
                (the weights are read once for every row; each row attends only to its own keys).
            branch_caches: batched guidance instead of `cache`: the rows are `len(branch_caches)` equal groups,
                group b an uncached block over the context `branch_caches[b]` (bidirectional, no mask).
            keep_last: with `cache`, return only the last `keep_last` rows' hidden states (0: none, the block
                only fills the cache). The last layer then computes keys and values for every row but queries,
                attention, o_proj and MLP for the kept rows alone: a prompt prefill needs its cache and at most
                the last row. The cache is the same as without it.
            samples: a whole pack (no cache) attended one sample at a time instead of through `attn_mask`:
                the same rules at the cost of each sample's length squared (`PackedBatch.sample_attention`).
        """
        routing = Routing.from_mask(gen_mask)
        cos, sin = self.rope(position_ids, embeds.dtype)
        if causal and attn_mask is not None:
            raise ValueError("give a causal block or an attention mask, not both")
        if row_caches is not None and (cache is not None or attn_mask is not None or len(row_caches) != embeds.shape[0]):
            raise ValueError("batched decoding takes one row cache per row and no block cache or mask")
        if branch_caches is not None and (cache is not None or attn_mask is not None or causal
                                          or embeds.shape[0] % len(branch_caches)):
            raise ValueError("batched guidance takes equal row groups, one cache each, and no block cache or mask")
        n = embeds.shape[0]
        if samples is not None and (cache is not None or attn_mask is not None or causal or row_caches is not None
                                    or branch_caches is not None or not samples.spans or samples.spans[-1][1] != n):
            raise ValueError("sample-wise attention takes a whole pack: no cache or mask, and spans covering every row")
        if keep_last is not None and (cache is None or not 0 <= keep_last <= n):
            raise ValueError(f"keep_last takes a cached block and 0..{n} rows, got {keep_last}")
        if keep_last == n:
            keep_last = None
        inputs = BlockInputs(routing, cos, sin, attn_mask, cache, causal=causal and n > 1,
                             row_caches=row_caches, branch_caches=branch_caches, samples=samples)
        x = embeds
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            if checkpoint_layers and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(layer, x, inputs, use_reentrant=False)
            else:
                x = layer(x, inputs, keep=keep_last if index == last else None)
        if keep_last is not None:
            routing = routing.last(keep_last, n)
        return routing.apply(x, self.norm, self.norm_moe_gen)


class Qwen2MoTForCausalLM(nn.Module):
    """`language_model` in the released checkpoint: `model.*` plus an untied `lm_head`."""

    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Qwen2MoTModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)

    def new_cache(self, *, dtype: torch.dtype, device: torch.device | str, capacity: int = 0) -> KVCache:
        c = self.config
        return KVCache.empty(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, dtype=dtype,
                             device=device, capacity=capacity)

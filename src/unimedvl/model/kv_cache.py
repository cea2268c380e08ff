"""Key/value cache for the shared MoT attention, grown in place and forked without copying.

A :class:`KVCache` is one *context* (the reference's `{kv_lens, ropes, past_key_values}`): a view
of the first `length` tokens of a :class:`KVStore`, plus the next RoPE position `rope`.

* Appending writes into preallocated capacity (`reserve()` sizes it ahead, so a decode loop never
  reallocates); capacity otherwise grows geometrically.
* `fork()` is free: the fork shares the store. The context that appends first while another shares
  the same tail keeps writing in place; the other one copies its prefix only if it appends later
  (copy-on-write). Classifier-free-guidance contexts are prefixes of one another, so they share
  storage.
* Blocks that must not enter the cache (noisy latents) are attended to as scratch rows past the
  end and never committed.

Layout per layer: keys and values `[kv_heads, capacity, head_dim]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class KVStore:
    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, *, dtype: torch.dtype,
                 device: torch.device | str, capacity: int = 0) -> None:
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.filled = 0  # tokens committed by the context that owns the tail
        self._allocate(capacity)

    def _allocate(self, capacity: int, keep: int = 0) -> None:
        new_k, new_v = [], []
        for layer in range(self.num_layers):
            k = torch.empty(self.kv_heads, capacity, self.head_dim, dtype=self.dtype, device=self.device)
            v = torch.empty_like(k)
            if keep:
                k[:, :keep] = self.keys[layer][:, :keep]
                v[:, :keep] = self.values[layer][:, :keep]
            new_k.append(k)
            new_v.append(v)
        self.keys, self.values, self.capacity = new_k, new_v, capacity

    def ensure_capacity(self, needed: int, keep: int) -> None:
        if needed > self.capacity:
            self._allocate(max(needed, 2 * self.capacity, 64), keep=keep)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


@dataclass
class KVCache:
    """A context: the first `length` cached tokens of `store`, and the next RoPE position."""

    store: KVStore
    length: int = 0
    rope: int = 0

    @classmethod
    def empty(cls, num_layers: int, kv_heads: int, head_dim: int, *, dtype: torch.dtype,
              device: torch.device | str, capacity: int = 0) -> "KVCache":
        return cls(KVStore(num_layers, kv_heads, head_dim, dtype=dtype, device=device, capacity=capacity))

    def fork(self) -> "KVCache":
        """A new context with the same tokens; shares storage until one of them appends."""
        return KVCache(self.store, self.length, self.rope)

    def reserve(self, extra_tokens: int) -> None:
        """Make room for `extra_tokens` more tokens so later appends do not reallocate."""
        self._own_tail()
        self.store.ensure_capacity(self.length + extra_tokens, keep=self.length)

    def _own_tail(self) -> None:
        # Another context sharing the store has committed past our end: copy our prefix away.
        if self.store.filled != self.length:
            self.separate()

    def separate(self, extra_tokens: int = 0) -> None:
        """Copy this context's tokens into a store of its own (room for `extra_tokens` more).

        Needed only when two forks of one context append in the same forward (batched decoding).
        """
        old = self.store
        fresh = KVStore(old.num_layers, old.kv_heads, old.head_dim, dtype=old.dtype, device=old.device,
                        capacity=max(self.length + extra_tokens, 64))
        for layer in range(old.num_layers):
            fresh.keys[layer][:, : self.length] = old.keys[layer][:, : self.length]
            fresh.values[layer][:, : self.length] = old.values[layer][:, : self.length]
        fresh.filled = self.length
        self.store = fresh

    def open_block(self, num_tokens: int, *, commit: bool, scratch_after: int = 0) -> "KVBlock":
        """Prepare one forward of `num_tokens` query tokens over this context; returns where it writes.

        Committed blocks always write in place (copying our prefix first if the tail is shared).
        Uncommitted blocks write scratch rows past the store's filled end, `scratch_after` rows
        further when other blocks of the same forward use the first ones; a context behind the
        store's tail (a fork the owner has since appended to) masks the owner's rows out instead of
        copying its own prefix. Either way the context does not grow.
        """
        if commit:
            self.reserve(num_tokens)
            return KVBlock(self, start=self.length)
        start = self.store.filled + scratch_after
        self.store.ensure_capacity(start + num_tokens, keep=self.store.filled)
        return KVBlock(self, start=start)

    def commit(self, num_tokens: int, rope_advance: int) -> None:
        """The block's rows become part of the context; the next split starts `rope_advance` positions later."""
        self.length += num_tokens
        self.store.filled = self.length
        self.rope += rope_advance


@dataclass(frozen=True)
class KVBlock:
    """One forward's view of a context: each layer's keys/values are the context's plus the block's own."""

    cache: KVCache
    start: int  # the store row the block's first token is written to: the context's end, or scratch past it

    def key_mask(self, num_tokens: int) -> torch.Tensor | None:
        """`[1, keys]` boolean: which keys of `layer_kv` the block sees (None: all of them)."""
        if self.start == self.cache.length:
            return None
        mask = torch.zeros(1, self.start + num_tokens, dtype=torch.bool, device=self.cache.store.device)
        mask[:, : self.cache.length] = True  # the context's own rows, then the block's; other contexts' rows between
        mask[:, self.start:] = True
        return mask

    def layer_kv(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values `[kv_heads, start + n, head_dim]` for attention, with `k_new` `[n, kv_heads, hd]`
        (rows of other contexts between the context's end and `start` are masked out, see `key_mask`)."""
        store, end = self.cache.store, self.start + k_new.shape[0]
        store.keys[layer][:, self.start:end] = k_new.transpose(0, 1)
        store.values[layer][:, self.start:end] = v_new.transpose(0, 1)
        return store.keys[layer][:, :end], store.values[layer][:, :end]

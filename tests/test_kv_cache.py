from __future__ import annotations

import torch

from unimedvl.model.kv_cache import KVCache


def _cache(capacity: int = 0) -> KVCache:
    return KVCache.empty(1, 1, 2, dtype=torch.float32, device="cpu", capacity=capacity)


def _append(cache: KVCache, values: list[float]) -> None:
    k = torch.tensor(values).reshape(len(values), 1, 1).expand(-1, 1, 2)
    cache.open_block(len(values), commit=True).layer_kv(0, k, k)
    cache.commit(len(values), rope_advance=len(values))


def _keys(cache: KVCache) -> list[float]:
    return cache.store.keys[0][0, : cache.length, 0].tolist()


def test_reserve_then_append_never_reallocates() -> None:
    cache = _cache()
    cache.reserve(100)
    storage = cache.store.keys[0].data_ptr()
    for i in range(100):
        _append(cache, [float(i)])
    assert cache.store.keys[0].data_ptr() == storage
    assert _keys(cache) == [float(i) for i in range(100)] and cache.rope == 100


def test_growth_keeps_contents() -> None:
    cache = _cache()
    for i in range(10):
        _append(cache, [float(i), float(i)])
    assert _keys(cache) == [float(i // 2) for i in range(20)]


def test_fork_shares_storage_and_copies_on_write() -> None:
    parent = _cache(16)
    _append(parent, [1.0, 2.0])
    child = parent.fork()
    assert child.store is parent.store
    _append(parent, [3.0])  # the parent owns the tail: writes in place
    assert child.store is parent.store and _keys(child) == [1.0, 2.0]
    _append(child, [9.0])  # the child's tail is taken: it copies its prefix first
    assert child.store is not parent.store
    assert _keys(parent) == [1.0, 2.0, 3.0] and _keys(child) == [1.0, 2.0, 9.0]


def test_uncommitted_blocks_leave_the_cache_unchanged() -> None:
    cache = _cache(8)
    _append(cache, [1.0])
    fork = cache.fork()
    _append(cache, [2.0])
    for ctx in (cache, fork):  # both write scratch rows past the filled end; the fork masks the owner's row out
        k = torch.full((2, 1, 2), 7.0)
        block = ctx.open_block(2, commit=False)
        keys, _ = block.layer_kv(0, k, k)
        mask = block.key_mask(2)
        visible = keys[:, mask[0]] if mask is not None else keys
        assert visible.shape[1] == ctx.length + 2 and float(visible[0, -1, 0]) == 7.0
        assert (mask is None) == (ctx is cache)  # no copy of the fork's prefix: a mask instead
    assert mask is not None and mask[0].tolist() == [True, False, True, True]
    assert _keys(cache) == [1.0, 2.0] and _keys(fork) == [1.0]
    assert cache.length == 2 and fork.length == 1

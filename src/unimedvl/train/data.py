"""Packed training sequences from a built corpus.

The stream is a pure function of (seed, step, pack index): which family is drawn (the stage's mix),
which sample, the condition dropout, the flow timesteps and the noise. Resuming at step s therefore
reproduces exactly what an uninterrupted run sees, whatever the number of ranks.

Each pack concatenates whole samples (never split) until `tokens_per_pack` is reached. Layout,
positions, routing and attention come from `model/packing.py`, as at inference. Text splits are
`[<|im_start|>] + ids + [<|im_end|>]`; with a loss, position k predicts token k+1 of the split.
Condition dropout applies only to the inputs of samples that generate an image (the reference's
`enable_cfg` items): a dropped text disappears, a dropped image still advances RoPE by one.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from unimedvl.data.schema import Sample
from unimedvl.data.storage import iter_samples
from unimedvl.errors import ConfigError
from unimedvl.images import ResizeRule, load_image, to_tensor
from unimedvl.model.packing import PackBuilder, pack_attention_mask
from unimedvl.tokenizer import TextTokenizer
from unimedvl.train.config import FAMILIES, DataConfig


@dataclass
class Segment:
    kind: str  # "text" | "vit" | "vae"
    start: int  # first row of the segment in the pack (for images: the <|vision_start|> marker)
    ids: list[int] | None = None
    pixels: torch.Tensor | None = None
    noisy: bool = False
    grid: tuple[int, int] | None = None


@dataclass
class Pack:
    segments: list[Segment]
    position_ids: torch.Tensor
    gen_mask: torch.Tensor
    attn_mask: torch.Tensor
    ce_positions: torch.Tensor
    ce_targets: torch.Tensor
    num_tokens: int
    num_mse_tokens: int
    sample_ids: list[str] = field(default_factory=list)
    seed: int = 0

    @property
    def num_ce_tokens(self) -> int:
        return int(self.ce_targets.numel())


def tempered_weights(sizes: list[int], balance: float) -> list[float]:
    """Draw weights of sources with these sizes: size ** balance.

    balance 1.0 draws every sample equally often (sources in proportion to their size);
    0.0 draws every source equally often; values between temper the large sources.
    """
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"source_balance must lie in [0, 1], got {balance}")
    return [size**balance for size in sizes]


class CorpusIndex:
    """The samples of one split, grouped by task family and, within a family, by source.

    Kept in memory: sized for small corpora. Sources are kept apart so that a stage can temper
    their sizes (`DataConfig.source_balance`): one large set must not drown the small ones.
    """

    def __init__(self, corpus: str | Path, split: str = "train") -> None:
        root = Path(corpus)
        if not (root / "manifest.json").is_file():
            raise ConfigError(f"{root} is not a built corpus (no manifest.json); run `unimedvl data build` first")
        self.by_source: dict[str, dict[str, list[Sample]]] = {f: {} for f in FAMILIES}
        for sample in iter_samples(root, split):
            self.by_source[sample.family].setdefault(sample.source, []).append(sample)
        if not any(self.by_source.values()):
            raise ConfigError(f"{root} has no samples in split {split!r}")

    @property
    def by_family(self) -> dict[str, list[Sample]]:
        """All samples of each family (sources concatenated)."""
        return {f: [s for rows in self.by_source[f].values() for s in rows] for f in FAMILIES}

    def source_weights(self, family: str, balance: float) -> tuple[list[str], list[float]]:
        """Sources of a family (sorted, for a stable stream) and their `tempered_weights`."""
        names = sorted(self.by_source[family])
        return names, tempered_weights([len(self.by_source[family][n]) for n in names], balance)

    def families(self, mix: dict[str, float]) -> tuple[list[str], list[float]]:
        names = [f for f in FAMILIES if mix.get(f, 0) > 0 and self.by_source[f]]
        if not names:
            raise ConfigError(f"none of the mixed families {sorted(mix)} has samples in this corpus")
        return names, [mix[f] for f in names]


class PackMaker:
    def __init__(self, index: CorpusIndex, tokenizer: TextTokenizer, config: DataConfig, *, seed: int,
                 latent_downsample: int = 16, vit_patch: int = 14) -> None:
        self.index, self.tokenizer, self.config, self.seed = index, tokenizer, config, seed
        self.vae_rule = ResizeRule(config.vae_max, config.vae_min, latent_downsample)
        self.vit_rule = ResizeRule(config.vit_max, config.vit_min, vit_patch)
        self.ds, self.patch = latent_downsample, vit_patch
        self.families, self.weights = index.families(config.mix)
        self.sources = {f: index.source_weights(f, config.balance_for(f)) for f in self.families}

    def _image(self, data: bytes) -> Image.Image:
        return load_image(Image.open(io.BytesIO(data)))

    def make(self, step: int, pack_index: int) -> Pack:
        rng = random.Random(f"{self.seed}/{step}/{pack_index}")
        builder = PackBuilder()
        segments: list[Segment] = []
        ce_pos: list[int] = []
        ce_tgt: list[int] = []
        ids_used: list[str] = []
        mse_tokens = 0
        cursor = 0
        attempts = 0
        while cursor < self.config.tokens_per_pack and attempts < 50:
            attempts += 1
            family = rng.choices(self.families, self.weights)[0]
            names, weights = self.sources[family]
            pool = self.index.by_source[family][rng.choices(names, weights)[0]]
            sample = pool[rng.randrange(len(pool))]
            planned = self._plan(sample, rng)
            size = sum(n for _, n, _ in planned)
            if size > self.config.max_tokens_per_sample:
                continue
            if ids_used:
                builder.new_sample()
            ids_used.append(sample.id)
            for segment, n, loss in planned:
                if segment.kind == "dropped_image":
                    builder.rope += 1  # a dropped image still takes its RoPE slot
                    continue
                segment.start = cursor
                if segment.kind == "text":
                    builder.add_text(n)
                    if loss:
                        for k in range(n - 1):
                            ce_pos.append(cursor + k)
                            ce_tgt.append(segment.ids[k + 1])  # type: ignore[index]
                else:
                    builder.add_image(n - 2, vae=segment.kind == "vae", noisy=segment.noisy)
                    if segment.noisy:
                        mse_tokens += n - 2
                segments.append(segment)
                cursor += n
        layout = builder.build()
        return Pack(segments=segments, position_ids=layout.position_ids, gen_mask=layout.gen_expert,
                    attn_mask=pack_attention_mask(layout), ce_positions=torch.tensor(ce_pos, dtype=torch.long),
                    ce_targets=torch.tensor(ce_tgt, dtype=torch.long), num_tokens=cursor, num_mse_tokens=mse_tokens,
                    sample_ids=ids_used, seed=rng.randrange(2**31))

    def _plan(self, sample: Sample, rng: random.Random) -> list[tuple[Segment, int, bool]]:
        """Segments (with token counts) of one sample after condition dropout."""
        generates = any(it.loss and it.kind == "image" for it in sample.items)
        c = self.config
        out: list[tuple[Segment, int, bool]] = []
        for item in sample.items:
            if item.kind == "text":
                if generates and not item.loss and rng.random() < c.text_dropout:
                    continue
                ids = self.tokenizer.frame(item.text or "")
                out.append((Segment("text", 0, ids=ids), len(ids), item.loss))
                continue
            image = self._image(item.image.data)  # type: ignore[union-attr]
            uses = ["vae", "vit"] if item.use == "vae+vit" else [item.use]
            for use in uses:
                if use == "vit":
                    resized = self.vit_rule(image)
                    n = (resized.height // self.patch) * (resized.width // self.patch) + 2
                    dropped = generates and rng.random() < c.vit_dropout
                    segment = Segment("vit", 0, pixels=to_tensor(resized))
                else:
                    resized = self.vae_rule(image)
                    grid = (resized.height // self.ds, resized.width // self.ds)
                    n = grid[0] * grid[1] + 2
                    dropped = generates and not item.loss and rng.random() < c.vae_dropout
                    segment = Segment("vae", 0, pixels=to_tensor(resized), noisy=item.loss, grid=grid)
                if dropped:
                    out.append((Segment("dropped_image", 0), 0, False))
                else:
                    out.append((segment, n, False))
        return out

"""Packed training sequences from a built corpus.

The stream is a pure function of (seed, step, pack index): which family is drawn (the stage's mix),
which sample, the condition dropout, the flow timesteps and the noise. Resuming at step s therefore
reproduces exactly what an uninterrupted run sees, whatever the number of ranks.

Each pack concatenates whole samples (never split) until `tokens_per_pack` is reached; a sample
becomes segments through :func:`plan_sample`, the one mapping (held-out losses use it too).
Layout, positions, routing and attention come from `model/packing.py`, as at inference. Text
splits are `[<|im_start|>] + ids + [<|im_end|>]`; with a loss, position k predicts token k+1.
Condition dropout applies only to the inputs of samples that generate an image (the reference's
`enable_cfg` items): a dropped text disappears, a dropped image still advances RoPE by one.
"""

from __future__ import annotations

import io
import random
import warnings
from pathlib import Path

from PIL import Image

from unimedvl.config import ImageConfig, UnifiedConfig
from unimedvl.data.schema import Sample
from unimedvl.data.storage import iter_samples
from unimedvl.errors import ConfigError
from unimedvl.imaging.augment import augment_for_reading
from unimedvl.imaging.pixels import load_image, to_tensor
from unimedvl.imaging.resize import ResizeRule, resize_by
from unimedvl.model.packing import LatentSegment, PackBuilder, PackedBatch, Segment, TextSegment, VitSegment
from unimedvl.text.tokenizer import TextTokenizer
from unimedvl.train.config import FAMILIES, DataConfig


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

    def source_weights(self, family: str, balance: float, extra: dict[str, float] | None = None
                       ) -> tuple[list[str], list[float]]:
        """Sources of a family (sorted, for a stable stream) and their `tempered_weights`, times the
        `extra` multiplier of named sources (`DataConfig.source_weights`)."""
        names = sorted(self.by_source[family])
        extra = extra or {}
        unknown = sorted(set(extra) - set(names))
        if unknown:  # a recipe may be run on another corpus (a test's, a fine-tuning set): say so, go on
            warnings.warn(f"data.source_weights.{family} names sources this corpus's {family} samples do not "
                          f"come from: {unknown} (ignored); its sources are {names}", stacklevel=2)
        weights = tempered_weights([len(self.by_source[family][n]) for n in names], balance)
        weights = [w * float(extra.get(n, 1.0)) for n, w in zip(names, weights)]
        if not any(w > 0 for w in weights):
            raise ConfigError(f"data.source_weights.{family} leaves no source of {family} samples to draw")
        return names, weights

    def families(self, mix: dict[str, float]) -> tuple[list[str], list[float]]:
        names = [f for f in FAMILIES if mix.get(f, 0) > 0 and self.by_source[f]]
        if not names:
            raise ConfigError(f"none of the mixed families {sorted(mix)} has samples in this corpus")
        return names, [mix[f] for f in names]


def plan_sample(sample: Sample, tokenizer: TextTokenizer, sizes: ImageConfig, model: UnifiedConfig,
                rng: random.Random | None = None, stage: DataConfig | None = None) -> list[Segment | None]:
    """The one mapping from a corpus sample to packed segments, in order (training and held-out losses).

    Items map as the corpus schema documents: a text item is a :class:`TextSegment` (loss on
    assistant turns); an image item a :class:`VitSegment` (`use="vit"`), a :class:`LatentSegment`
    (`use="vae"`; noisy when it carries the loss) or both, VAE first (`use="vae+vit"`).
    Given `rng` and the `stage`'s data config (training):
    * condition dropout applies only to the inputs of samples that generate an image: a dropped text
      disappears, a dropped image becomes `None` (it keeps its RoPE slot, :meth:`PackBuilder.skip_image`);
    * a sample that generates an image draws its size from `stage.vae_sizes` (other VAE images scaled alike);
    * the images of samples that only read are augmented with probability `stage.augment`.
    """
    generates = any(it.loss and it.kind == "image" for it in sample.items)
    drops = rng is not None and stage is not None and generates
    vit_rule = ResizeRule.from_bounds(sizes.generation_vit, model.vit.patch_size)
    vae_rule = ResizeRule.from_bounds(sizes.vae, model.latent_downsample)
    scale = None
    if drops and stage.vae_sizes:  # type: ignore[union-attr]
        target = next(it.image for it in sample.items if it.loss and it.kind == "image")
        scale = rng.choice(stage.vae_sizes) / max(target.width, target.height)  # type: ignore[union-attr]
    augments = rng is not None and stage is not None and not generates and stage.augment > 0
    out: list[Segment | None] = []
    for item in sample.items:
        if item.kind == "text":
            if drops and not item.loss and rng.random() < stage.text_dropout:  # type: ignore[union-attr]
                continue
            out.append(TextSegment(tuple(tokenizer.frame(item.text or "")), loss=item.loss))
            continue
        image = load_image(Image.open(io.BytesIO(item.image.data)))  # type: ignore[union-attr]
        for use in (["vae", "vit"] if item.use == "vae+vit" else [item.use]):
            if use == "vit":
                read = image
                if augments and rng.random() < stage.augment:  # type: ignore[union-attr]
                    read = augment_for_reading(image, rng)  # type: ignore[arg-type]
                resized = vit_rule(read)
                segment: Segment = VitSegment(to_tensor(resized), _grid(resized, model.vit.patch_size))
                dropped = drops and rng.random() < stage.vit_dropout  # type: ignore[union-attr]
            else:
                resized = vae_rule(image) if scale is None else resize_by(image, scale, model.latent_downsample)
                segment = LatentSegment(_grid(resized, model.latent_downsample), noisy=item.loss,
                                        pixels=to_tensor(resized))
                dropped = drops and not item.loss and rng.random() < stage.vae_dropout  # type: ignore[union-attr]
            out.append(None if dropped else segment)
    return out


def _grid(image: Image.Image, cell: int) -> tuple[int, int]:
    return image.height // cell, image.width // cell


def _by_label(samples: list[Sample]) -> dict[str, list[Sample]]:
    """Samples grouped by the label they were made from (samples without one share the group "")."""
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(str(sample.provenance.get("label") or ""), []).append(sample)
    return groups


class PackMaker:
    """Packs whole corpus samples into :class:`PackedBatch` es; a pure function of (seed, step, pack index)."""

    def __init__(self, index: CorpusIndex, tokenizer: TextTokenizer, config: DataConfig, model: UnifiedConfig, *,
                 seed: int) -> None:
        self.index, self.tokenizer, self.config, self.model, self.seed = index, tokenizer, config, model, seed
        self.sizes = config.image_config
        self.families, self.weights = index.families(config.mix)
        self.sources = {f: index.source_weights(f, config.balance_for(f), config.source_weights.get(f))
                        for f in self.families}
        known = {name for f in self.families for name in index.by_source[f]}
        unknown = sorted(set(config.natural_label_variants) - known)
        if unknown:
            raise ConfigError(f"data.natural_label_variants names sources this corpus does not hold: {unknown}; "
                              f"it holds {sorted(known)}")
        self.labels: dict[str, dict[str, dict[str, list[Sample]]]] = {}
        self.natural: dict[str, dict[str, tuple[list[Sample], float]]] = {}  # family -> source -> (pool, share)
        if config.label_balance:
            for f in self.families:
                self.labels[f], self.natural[f] = {}, {}
                for name, rows in index.by_source[f].items():
                    variants = set(config.natural_label_variants.get(name, ()))
                    natural = [s for s in rows if s.provenance.get("variant") in variants]
                    if natural:
                        self.natural[f][name] = (natural, len(natural) / len(rows))
                    self.labels[f][name] = _by_label([s for s in rows if s.provenance.get("variant") not in variants]
                                                     or rows)

    def make(self, step: int, pack_index: int) -> PackedBatch:
        rng = random.Random(f"{self.seed}/{step}/{pack_index}")
        builder = PackBuilder(self.tokenizer.special)
        ids_used: list[str] = []
        attempts = 0
        while builder.num_tokens < self.config.tokens_per_pack and attempts < 50:
            attempts += 1
            family = rng.choices(self.families, self.weights)[0]
            names, weights = self.sources[family]
            source = rng.choices(names, weights)[0]
            natural = self.natural.get(family, {}).get(source)
            if natural is not None and rng.random() < natural[1]:
                pool = natural[0]  # these variants at the source's own class frequencies
            elif self.config.label_balance:
                labels = self.labels[family][source]
                pool = labels[sorted(labels)[rng.randrange(len(labels))]]
            else:
                pool = self.index.by_source[family][source]
            sample = pool[rng.randrange(len(pool))]
            planned = plan_sample(sample, self.tokenizer, self.sizes, self.model, rng, self.config)
            if sum(s.num_tokens for s in planned if s is not None) > self.config.max_tokens_per_sample:
                continue
            if ids_used:
                builder.new_sample()
            ids_used.append(sample.id)
            for segment in planned:
                if segment is None:
                    builder.skip_image()
                else:
                    builder.add(segment)
        return builder.build(sample_ids=tuple(ids_used), seed=rng.randrange(2**31))

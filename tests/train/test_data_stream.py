"""The packed training stream: source balancing within a family, and its determinism."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from unimedvl.assets import REFERENCE_TINY
from unimedvl.config import UnifiedConfig
from unimedvl.errors import ConfigError
from unimedvl.text.tokenizer import TextTokenizer
from unimedvl.train.config import DataConfig, TrainConfig
from unimedvl.train.packer import CorpusIndex, PackMaker


def _sources_drawn(index: CorpusIndex, balance: float, packs: int = 40) -> Counter:
    config = DataConfig(mix={"understanding": 1.0}, tokens_per_pack=160, max_tokens_per_sample=200,
                        source_balance=balance)
    maker = PackMaker(index, TextTokenizer.from_dir(REFERENCE_TINY), config, UnifiedConfig.tiny(), seed=0)
    source_of = {s.id: s.source for s in index.by_family["understanding"]}
    drawn: Counter = Counter()
    for i in range(packs):
        drawn.update(source_of[sid] for sid in maker.make(0, i).sample_ids)
    return drawn


def test_source_balance_tempers_a_large_source(train_corpus: Path) -> None:
    index = CorpusIndex(train_corpus)
    sizes = {name: len(rows) for name, rows in index.by_source["understanding"].items()}
    assert sizes["pneumonia"] > 5 * sizes["msd"]  # the corpus has one large and one small source
    names, weights = index.source_weights("understanding", 0.0)
    assert names == sorted(sizes) and weights == [1.0, 1.0]
    assert index.source_weights("understanding", 1.0)[1] == [float(sizes[n]) for n in names]

    proportional, uniform = _sources_drawn(index, 1.0), _sources_drawn(index, 0.0)
    share = lambda c: c["msd"] / sum(c.values())  # noqa: E731
    expected = sizes["msd"] / sum(sizes.values())
    assert abs(share(proportional) - expected) < 0.08  # every sample equally often
    assert abs(share(uniform) - 0.5) < 0.12  # every source equally often
    assert _sources_drawn(index, 0.0, packs=5) == _sources_drawn(index, 0.0, packs=5)  # a function of the seed


def test_source_balance_is_checked() -> None:
    with pytest.raises(ConfigError, match="source_balance"):
        DataConfig(source_balance=1.5)


def test_source_balance_per_family(train_corpus: Path) -> None:
    config = DataConfig(mix={"understanding": 1.0}, source_balance={"understanding": 0.0})
    assert config.balance_for("understanding") == 0.0 and config.balance_for("generation") == 1.0
    index = CorpusIndex(train_corpus)
    maker = PackMaker(index, TextTokenizer.from_dir(REFERENCE_TINY),
                      DataConfig(mix={"understanding": 1.0}, tokens_per_pack=160, max_tokens_per_sample=200,
                                 source_balance={"understanding": 0.0, "generation": 1.0}), UnifiedConfig.tiny(), seed=0)
    assert maker.sources["understanding"][1] == [1.0, 1.0]  # the understanding family's own balance
    # A recipe writes it as a YAML mapping; it survives the round trip through the recipe loader.
    raw = TrainConfig().to_dict()
    raw["data"]["source_balance"] = {"generation": 0, "understanding": 0.4}
    assert TrainConfig.from_dict(raw).data.balance_for("generation") == 0.0


def test_source_weights_multiply_a_named_source(train_corpus: Path) -> None:
    index = CorpusIndex(train_corpus)
    names, weights = index.source_weights("understanding", 0.0, {"msd": 3.0})
    assert dict(zip(names, weights)) == {"msd": 3.0, "pneumonia": 1.0}
    config = DataConfig(mix={"understanding": 1.0}, tokens_per_pack=160, max_tokens_per_sample=200,
                        source_balance=0.0, source_weights={"understanding": {"msd": 3.0}})
    maker = PackMaker(index, TextTokenizer.from_dir(REFERENCE_TINY), config, UnifiedConfig.tiny(), seed=0)
    source_of = {s.id: s.source for rows in index.by_source["understanding"].values() for s in rows}
    drawn = Counter(source_of[sid] for i in range(40) for sid in maker.make(0, i).sample_ids)
    assert 0.6 <= drawn["msd"] / sum(drawn.values()) <= 0.9  # 3 : 1 -> 75 %
    raw = TrainConfig().to_dict()
    raw["data"]["source_weights"] = {"understanding": {"msd": 2}}
    assert TrainConfig.from_dict(raw).data.source_weights == {"understanding": {"msd": 2}}
    with pytest.warns(UserWarning, match=r"source_weights\.understanding names sources .*'nowhere'"):
        assert index.source_weights("understanding", 0.0, {"nowhere": 2.0})[1] == [1.0, 1.0]
    with pytest.raises(ConfigError, match="leaves no source"):
        index.source_weights("understanding", 0.0, {"msd": 0, "pneumonia": 0})
    for bad, message in (({"pictures": {"msd": 2}}, "maps families"), ({"understanding": {"msd": -1}}, "non-negative"),
                         ({"understanding": [1]}, "non-negative")):
        with pytest.raises(ConfigError, match=message):
            DataConfig(source_weights=bad)


@pytest.mark.parametrize("balance, message", [({"pictures": 0.5}, "unknown families"),
                                              ({"generation": 2.0}, r"source_balance\.generation"),
                                              ({"generation": "half"}, r"source_balance\.generation"),
                                              (True, "source_balance must be a number")])
def test_bad_source_balance_is_named(balance: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DataConfig(source_balance=balance)


# ---------------------------------------------------------------- v2 stream features
def _maker(index: CorpusIndex, **data) -> PackMaker:  # noqa: ANN003
    config = DataConfig(**{"tokens_per_pack": 160, "max_tokens_per_sample": 200, **data})
    return PackMaker(index, TextTokenizer.from_dir(REFERENCE_TINY), config, UnifiedConfig.tiny(), seed=0)


@pytest.fixture(scope="module")
def imbalanced_corpus(tmp_path_factory) -> Path:  # noqa: ANN001
    """120 real PneumoniaMNIST images as class folders: 30 normal, 90 pneumonia."""
    import numpy as np
    import yaml
    from PIL import Image

    from unimedvl.assets import SAMPLE_CORPUS_CONFIG
    from unimedvl.data.pipeline import BuildConfig, build_corpus

    folder = tmp_path_factory.mktemp("imbalanced")
    arrays = np.load(SAMPLE_CORPUS_CONFIG.parent / "medmnist/pneumoniamnist_no_test.npz")
    labels = arrays["train_labels"].reshape(-1)
    for name, label, count in (("normal", 0, 30), ("pneumonia", 1, 90)):
        (folder / "data" / name).mkdir(parents=True)
        for i in np.flatnonzero(labels == label)[:count]:
            Image.fromarray(arrays["train_images"][i]).save(folder / "data" / name / f"{i}.png")
    config = {"name": "imbalanced", "seed": 0, "deid_salt": "x", "splits": {"train": 1.0, "val": 0.0, "test": 0.0},
              "sources": [{"name": "pneumonia", "adapter": "class_folder", "path": "data", "modality": "chest_xray",
                           "licence": "CC-BY-4.0", "tasks": ["vqa"],
                           "options": {"label_names": {"normal": "no pneumonia", "pneumonia": "pneumonia"},
                                       "class_names": {"no pneumonia": "normal", "pneumonia": "pneumonia"}}}]}
    (folder / "build.yaml").write_text(yaml.safe_dump(config))
    build_corpus(BuildConfig.from_yaml(folder / "build.yaml"), folder / "corpus", workers=1, log=lambda m: None)
    return folder / "corpus"


def test_label_balance_draws_every_class_equally_often(imbalanced_corpus: Path) -> None:
    index = CorpusIndex(imbalanced_corpus)
    label_of = {s.id: s.provenance.get("label") for s in index.by_family["understanding"]}
    share = {}
    for balance in (False, True):
        maker = _maker(index, mix={"understanding": 1.0}, source_balance=1.0, label_balance=balance)
        drawn = Counter(label_of[sid] for i in range(60) for sid in maker.make(0, i).sample_ids if sid in label_of)
        share[balance] = drawn["pneumonia"] / (drawn["pneumonia"] + drawn["no pneumonia"])
    natural = sum(v == "pneumonia" for v in label_of.values()) / len(label_of)
    assert natural > 0.65  # PneumoniaMNIST is mostly pneumonia ...
    assert abs(share[False] - natural) < 0.1 and abs(share[True] - 0.5) < 0.1  # ... a balanced stream is not


def test_natural_label_variants_keep_the_class_frequencies_of_choice_questions_only(imbalanced_corpus: Path) -> None:
    index = CorpusIndex(imbalanced_corpus)
    rows = {s.id: s for s in index.by_family["understanding"]}
    choice = {sid for sid, s in rows.items() if s.provenance.get("variant") == "choice"}
    assert choice and len(choice) < len(rows)
    maker = _maker(index, mix={"understanding": 1.0}, source_balance=1.0, label_balance=True,
                   natural_label_variants={"pneumonia": ["choice"]})
    drawn = [sid for i in range(120) for sid in maker.make(0, i).sample_ids if sid in rows]

    def pneumonia_share(ids: list[str]) -> float:
        return sum(rows[sid].provenance.get("label") == "pneumonia" for sid in ids) / len(ids)

    natural = pneumonia_share([sid for sid in rows if sid in choice])
    assert natural > 0.65
    assert abs(pneumonia_share([d for d in drawn if d in choice]) - natural) < 0.1  # the base rate is kept ...
    assert abs(pneumonia_share([d for d in drawn if d not in choice]) - 0.5) < 0.1  # ... yes / no stays balanced
    assert abs(sum(d in choice for d in drawn) / len(drawn) - len(choice) / len(rows)) < 0.1  # and its share
    with pytest.raises(ConfigError, match="does not hold"):
        _maker(index, mix={"understanding": 1.0}, label_balance=True, natural_label_variants={"busi": ["choice"]})
    with pytest.raises(ConfigError, match="natural_label_variants"):
        DataConfig(natural_label_variants={"pneumonia": "choice"})


def test_generated_images_are_drawn_at_the_listed_sizes_and_inputs_keep_their_relative_size(train_corpus: Path) -> None:
    from unimedvl.model.packing import LatentSegment

    index = CorpusIndex(train_corpus)
    maker = _maker(index, mix={"generation": 0.5, "interleaved": 0.5}, vae_min=32, vae_max=128, vae_sizes=(64, 128),
                   tokens_per_pack=400, max_tokens_per_sample=400)
    cell = UnifiedConfig.tiny().latent_downsample
    noisy_sides, ratios = Counter(), set()
    for i in range(30):
        latents = [s for s in maker.make(0, i).segments if isinstance(s, LatentSegment)]
        for j, segment in enumerate(latents):
            if segment.noisy:
                noisy_sides[max(segment.grid) * cell] += 1
                if j and not latents[j - 1].noisy:  # a super-resolution pair: clean input, then the target
                    ratios.add(max(segment.grid) / max(latents[j - 1].grid))
    assert set(noisy_sides) == {64, 128}, noisy_sides
    assert ratios == {2.0, 4.0}  # x2 and x4 pairs: the input keeps its size relative to the output


def test_reading_augmentation_is_seeded_and_changes_understanding_images_only(train_corpus: Path) -> None:
    from unimedvl.model.packing import LatentSegment, VitSegment

    index = CorpusIndex(train_corpus)
    plain, augmented = (_maker(index, mix={"understanding": 1.0}, augment=p) for p in (0.0, 1.0))
    a, b = plain.make(0, 0), augmented.make(0, 0)
    vit = lambda batch: [s.pixels for s in batch.segments if isinstance(s, VitSegment)]  # noqa: E731
    assert any(not torch.equal(x, y) for x, y in zip(vit(a), vit(b)))
    assert all(torch.equal(x, y) for x, y in zip(vit(b), vit(augmented.make(0, 0))))  # a function of the seed
    generation = _maker(index, mix={"generation": 1.0}, augment=1.0).make(0, 0)
    reference = _maker(index, mix={"generation": 1.0}).make(0, 0)
    targets = lambda batch: [s.pixels for s in batch.segments if isinstance(s, LatentSegment)]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(targets(generation), targets(reference)))


@pytest.mark.parametrize("data, message", [({"vae_sizes": (256,)}, "vae_sizes"), ({"vae_sizes": (48.5,)}, "vae_sizes"),
                                           ({"augment": 1.5}, "augment")])
def test_bad_stream_options_are_named(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DataConfig(**data)


def test_reading_augmentation_keeps_mode_and_size_and_varies() -> None:
    import random

    import numpy as np
    from PIL import Image

    from unimedvl.imaging.augment import augment_for_reading

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8))
    outs = [augment_for_reading(image, random.Random(seed)) for seed in range(4)]
    assert all(o.mode == "RGB" and 0.7 * 224 - 1 <= min(o.size) <= 224 for o in outs)
    assert len({o.tobytes() for o in outs}) == 4
    assert augment_for_reading(image, random.Random(2)).tobytes() == outs[2].tobytes()
    small = Image.fromarray(np.random.default_rng(1).integers(0, 255, (28, 28, 3), dtype=np.uint8))
    sides = [min(augment_for_reading(small, random.Random(seed)).size) for seed in range(50)]
    assert min(sides) >= round(0.9 * 28) and len(set(sides)) > 1  # small images are cropped less, still cropped

"""The packed training stream: source balancing within a family, and its determinism."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("balance, message", [({"pictures": 0.5}, "unknown families"),
                                              ({"generation": 2.0}, r"source_balance\.generation"),
                                              ({"generation": "half"}, r"source_balance\.generation"),
                                              (True, "source_balance must be a number")])
def test_bad_source_balance_is_named(balance: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DataConfig(source_balance=balance)

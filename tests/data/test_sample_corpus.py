"""`unimedvl data build --sample`: the bundled corpus, its manifest, reports, card and resume."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from data_helpers import plan_kinds

from unimedvl.cli import main
from unimedvl.data.manifest import Manifest
from unimedvl.data.schema import SCHEMA_VERSION, Sample
from unimedvl.data.storage import iter_samples, sha256_file


def test_manifest_counts_and_checksums(sample_corpus) -> None:
    out, manifest = sample_corpus
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest.to_json_dict() and manifest.schema == SCHEMA_VERSION
    assert Manifest.read(out) == manifest
    assert set(manifest.counts["modality"]) == {"chest_xray", "ct", "mri", "oct", "ultrasound"}
    assert {"vqa", "caption", "text_to_image", "super_resolution"} <= set(manifest.counts["task"])
    assert sum(manifest.counts["modality"].values()) == manifest.total == sum(s.rows for s in manifest.shards)
    for shard in manifest.shards:
        assert sha256_file(out / shard.path) == shard.sha256
        assert pq.ParquetFile(out / shard.path).metadata.num_rows == shard.rows
    assert manifest.total > 20000


def test_reports_card_and_review_sample_exist(sample_corpus) -> None:
    out, manifest = sample_corpus
    for name in ("qc/stage1.md", "qc/stage1.json", "qc/stage2.md", "qc/stage2.json", "qc/stage3/report.md",
                 "qc/stage3/review_sample.jsonl", "README.md", "plots/modality.png", "plots/resolution.png"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "cross_modal" in card and "Not faked" in card  # tasks without real pairs are named, not faked
    assert "CC-BY-4.0" in card
    review = [json.loads(x) for x in (out / "qc/stage3/review_sample.jsonl").read_text().splitlines()]
    strata = {(r["modality"], r["task"]) for r in review}
    assert len(strata) >= 8 and all(sum(1 for r in review if (r["modality"], r["task"]) == s) <= 5 for s in strata)


def test_samples_round_trip_and_map_onto_training_plans(sample_corpus) -> None:
    out, _ = sample_corpus
    seen_tasks = {}
    for sample in iter_samples(out, "val"):
        seen_tasks.setdefault(sample.task, sample)
    vqa, t2i = seen_tasks["vqa"], seen_tasks["text_to_image"]
    assert plan_kinds(vqa) == [("vit",), ("text", False), ("text", True)]
    assert plan_kinds(t2i) == [("text", False), ("latent", True)]
    assert Sample.from_row(vqa.to_row()) == vqa
    assert vqa.template_made and vqa.split == "val"


def test_splits_are_leak_free(sample_corpus) -> None:
    out, _ = sample_corpus
    groups, images = {}, {}
    for sample in iter_samples(out):
        groups.setdefault(sample.group, set()).add(sample.split)
        for ref in sample.images():
            images.setdefault(ref.sha256, set()).add(sample.split)
    assert all(len(s) == 1 for s in groups.values())
    assert not any("train" in s and len(s) > 1 for s in images.values())


def test_second_run_reuses_chunks_and_gives_the_same_manifest(sample_corpus, capsys) -> None:
    out, manifest = sample_corpus
    assert main(["data", "build", "--sample", "--out", str(out), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "0 to build" in err and "reused" in err
    assert Manifest.read(out) == manifest


def test_training_plans_pack_with_the_models_layout_rules(sample_corpus) -> None:
    """A sample's segments map one-to-one onto pack splits (the rules the model and trainer share)."""
    from unimedvl.assets import REFERENCE_TINY
    from unimedvl.config import ImageConfig, UnifiedConfig
    from unimedvl.model.packing import LatentSegment, PackBuilder, SplitKind, split_kind
    from unimedvl.text.tokenizer import TextTokenizer
    from unimedvl.train.packer import plan_sample

    out, _ = sample_corpus
    tokenizer = TextTokenizer.from_dir(REFERENCE_TINY)
    sizes = ImageConfig.trained(vit_max=56, vit_min=28, vae_max=64, vae_min=32)
    for sample in iter_samples(out, "test"):
        segments = plan_sample(sample, tokenizer, sizes, UnifiedConfig.tiny())
        builder = PackBuilder(tokenizer.special)
        for segment in segments:
            builder.add(segment)
        layout = builder.build().layout
        per_split = [SplitKind(int(layout.split_kinds[layout.split_ids == i][0])) for i in layout.split_ids.unique().tolist()]
        assert per_split == [split_kind(s) for s in segments]
        assert SplitKind.NOISE in per_split if sample.family == "generation" else True
        latent_tokens = sum(s.num_tokens - 2 for s in segments if isinstance(s, LatentSegment))
        assert int(layout.gen_expert.sum()) == latent_tokens

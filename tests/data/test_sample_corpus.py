"""`unimedvl data build --sample`: the bundled corpus, its manifest, reports, card and resume."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from unimedvl.cli import main
from unimedvl.data.schema import SCHEMA_VERSION, Sample
from unimedvl.data.storage import iter_samples, sha256_file


def test_manifest_counts_and_checksums(sample_corpus) -> None:
    out, manifest = sample_corpus
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest and manifest["schema"] == SCHEMA_VERSION
    assert set(manifest["counts"]["modality"]) == {"chest_xray", "ct", "mri", "oct", "ultrasound"}
    assert {"vqa", "caption", "text_to_image", "super_resolution"} <= set(manifest["counts"]["task"])
    assert sum(manifest["counts"]["modality"].values()) == manifest["total"] == sum(s["rows"] for s in manifest["shards"])
    for shard in manifest["shards"]:
        assert sha256_file(out / shard["path"]) == shard["sha256"]
        assert pq.ParquetFile(out / shard["path"]).metadata.num_rows == shard["rows"]
    assert manifest["total"] > 20000


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
    assert [p["split"] for p in vqa.training_plan()] == ["vit_image", "text", "text"]
    assert [p["loss"] for p in vqa.training_plan()] == [False, False, True]
    assert t2i.training_plan() == [{"split": "text", "loss": False}, {"split": "vae_image", "loss": True, "noisy": True}]
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
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_training_plans_pack_with_the_models_layout_rules(sample_corpus) -> None:
    """A sample's plan maps one-to-one onto PackBuilder splits (the rules the model and trainer share)."""
    from unimedvl.model.packing import PackBuilder, SplitKind

    out, _ = sample_corpus
    for sample in iter_samples(out, "test"):
        builder = PackBuilder()
        for step in sample.training_plan():
            if step["split"] == "text":
                builder.add_text(5)
            else:
                builder.add_image(4, vae=step["split"] == "vae_image", noisy=step.get("noisy", False))
        layout = builder.build()
        per_split = [SplitKind(int(layout.split_kinds[layout.split_ids == i][0])) for i in layout.split_ids.unique().tolist()]
        expected = [SplitKind.CAUSAL if p["split"] == "text" else SplitKind.NOISE if p.get("noisy") else SplitKind.FULL
                    for p in sample.training_plan()]
        assert per_split == expected
        assert int(layout.gen_expert.sum()) == 4 * sum(p["split"] == "vae_image" for p in sample.training_plan())

"""Generation and counterfactual scores: the proxy extractor, AUROC / F1 against direct counts, the commands."""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import table_row
from PIL import Image

from unimedvl.assets import JUDGE
from unimedvl.cli import main
from unimedvl.data.schema import MODALITIES
from unimedvl.errors import CheckpointError
from unimedvl.eval.classifier import SmallCNN
from unimedvl.eval.compare import compare, parse_runs
from unimedvl.eval.features import JudgeExtractor, auroc, f1


def test_auroc_equals_pair_counting_and_f1_a_hand_count() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(40), 1)  # rounded: many ties
    labels = rng.integers(0, 2, 40)
    pos, neg = scores[labels == 1], scores[labels == 0]
    direct = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(pos, neg)) / (len(pos) * len(neg))
    assert auroc(scores, labels) == pytest.approx(direct, abs=1e-12)
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))
    assert f1([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)  # tp 1, fp 1, fn 1


def test_the_extractor_round_trips_through_the_strict_loader(tmp_path: Path) -> None:
    torch.manual_seed(0)
    facts = {"modality_width": 1, "grid": 4}
    judge = JudgeExtractor.from_models(SmallCNN(len(MODALITIES), width=1), SmallCNN(2), facts)
    judge.save(tmp_path / "judge")
    again = JudgeExtractor.load(tmp_path / "judge")
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (70, 50, 3), dtype=np.uint8)) for i in range(3)]
    assert np.array_equal(judge.features(images), again.features(images)) and again.features(images).shape == (3, 1024)
    assert len(again.sha256) == 64 and again.proxy
    with pytest.raises(CheckpointError, match="no judge in"):
        JudgeExtractor.load(tmp_path / "nowhere")


def test_the_bundled_judge_reads_real_images() -> None:
    from unimedvl.assets import EVAL_SETS
    from unimedvl.eval.benchmarks import bundled

    judge = JudgeExtractor.load(JUDGE)
    items = [i for i in bundled.load(EVAL_SETS / "modality")]
    images = [Image.open(i.image).convert("RGB") for i in items]
    wanted = [MODALITIES.index(i.groups["modality"]) for i in items]
    recognised = (judge.modality_probabilities(images).argmax(1) == np.array(wanted)).mean()
    assert recognised > 0.8 and judge.features(images).shape == (len(items), 2048)


def test_generation_and_counterfactual_commands(tmp_path: Path, fixture_dir: Path) -> None:
    assert main(["eval", "generation", "--seeds", "2", "--steps", "2", "--size", "32", "-c", str(fixture_dir),
                 "--out", str(tmp_path / "g")]) == 0
    results = json.loads((tmp_path / "g" / "results.json").read_text())
    assert set(results["per_modality"]) == set(MODALITIES) - {"other"}
    assert len(results["extractors"]["proxy"]["sha256"]) == 64
    row = results["per_modality"]["chest_xray"]
    assert row["n"] == 4 and row["references"] == 78 and row["fid_proxy"] > 0 and 0 <= row["image_text_proxy"] <= 1
    assert results["per_modality"]["fundus"]["fid_proxy"] is None  # no bundled real fundus images
    for modality, per in results["per_modality"].items():  # every image read as one modality, hits counted
        assert sum(per["judged_as"].values()) == per["n"] and set(per["judged_as"]) <= set(MODALITIES)
        assert per["judged_as"].get(modality, 0) / per["n"] == per["recognised"]
        low, high = per["recognised_interval"]  # 95 % Wilson interval of 4 images: wide, around the share
        assert 0 <= low <= per["recognised"] <= high <= 1 and high - low > 0.4
    assert len(list((tmp_path / "g" / "images").glob("*.png"))) == 18
    distance = results["distance"]
    assert 0 < distance["between_prompts_same_seed"] < 1 and 0 < distance["between_seeds_same_prompt"] < 1
    tables = compare(parse_runs([f"tiny={tmp_path / 'g'}"]))  # `eval compare` reads the run as generation
    cells = dict(zip(table_row(tables, "model", "size"), table_row(tables, "tiny", "32")))
    low, high = row["recognised_interval"]
    assert cells["chest_xray"] == f"{row['recognised']:.2f} ({low:.2f}-{high:.2f})" and cells["pneumonia AUROC"] == f"{row['pneumonia_auroc']:.2f}"
    assert main(["eval", "counterfactual", "--limit", "4", "--steps", "2", "-c", str(fixture_dir),
                 "--out", str(tmp_path / "c")]) == 0
    cf = json.loads((tmp_path / "c" / "results.json").read_text())
    assert cf["n"] == 4 and 0 <= cf["auroc"] <= 1 and set(cf["explanation"]) >= {"bleu_3", "rouge_l"}
    assert main(["eval", "generation", "--seeds", "1"]) == 2


def test_the_fid_inception_network_loads_its_weights_strictly(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from unimedvl.eval.inception import FIDInception, InceptionExtractor

    torch.manual_seed(0)
    state = {k: v for k, v in FIDInception().state_dict().items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # as pytorch-fid's file holds
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "fid_inception.safetensors"))
    extractor = InceptionExtractor.load(tmp_path / "fid_inception.safetensors")
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 80, 3), dtype=np.uint8)) for i in range(2)]
    features = extractor.features(images)
    assert features.shape == (2, 2048) and np.isfinite(features).all() and not extractor.proxy
    state.pop("Mixed_6a.branch3x3.conv.weight")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match="1 missing: Mixed_6a.branch3x3.conv.weight"):
        InceptionExtractor.load(tmp_path / "partial.safetensors")


def test_pairwise_distances_tell_a_prompt_blind_model_apart() -> None:
    from unimedvl.eval.generation_bench import pairwise_distances

    noise = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)) for i in range(2)]
    blind = {("a", 0): noise[0], ("b", 0): noise[0], ("a", 1): noise[1], ("b", 1): noise[1]}
    distances = pairwise_distances(blind)
    assert distances["between_prompts_same_seed"] == 0.0 and distances["between_seeds_same_prompt"] > 0.2
    black, white = Image.new("RGB", (16, 16)), Image.new("RGB", (16, 16), (255, 255, 255))
    assert pairwise_distances({("a", 0): black, ("b", 0): white})["between_prompts_same_seed"] == 1.0


def test_edit_benchmark_scores_held_out_super_resolution_against_bicubic(tmp_path: Path, fixture_dir: Path,
                                                                         train_corpus: Path) -> None:
    assert main(["eval", "edits", "--corpus", str(train_corpus), "--steps", "2", "--size", "64", "-c", str(fixture_dir),
                 "--out", str(tmp_path / "sr")]) == 0
    results = json.loads((tmp_path / "sr" / "results.json").read_text())
    assert results["baseline"] == "bicubic" and results["per_image"]
    for row in results["per_image"]:
        assert max(row["size"]) == 64 and max(row["input_size"]) in (16, 32)  # x4 and x2 pairs, fed as trained
        assert row["bicubic_psnr"] > 5 and row["psnr"] > 0
        assert 0 < row["vae_round_trip_psnr"] < 99 and 0 < row["vae_residual_psnr"] < 99
    for modality, row in results["per_modality"].items():
        assert 0 <= row["beats_baseline_psnr"] <= row["n"] and 0 <= row["residual_beats_baseline_psnr"] <= row["n"]
    tables = compare(parse_runs([f"tiny={tmp_path / 'sr'}"]))  # `eval compare` reads the run as edits
    assert "## Editing, super_resolution" in tables
    cells = dict(zip(table_row(tables, "model", "size"), table_row(tables, "tiny", "64")))
    assert cells[modality] == (f"{row['psnr']:.1f} vs {row['bicubic_psnr']:.1f} ({row['beats_baseline_psnr']}/{row['n']}); "
                               f"ceilings {row['vae_round_trip_psnr']:.1f} / {row['vae_residual_psnr']:.1f}")
    assert main(["eval", "edits", "--corpus", str(tmp_path), "-c", str(fixture_dir)]) == 2  # not a corpus
    assert main(["eval", "edits", "--corpus", str(train_corpus), "--task", "segmentation"]) == 2


def test_vae_ceilings_are_exact_for_a_lossless_autoencoder() -> None:
    """With an identity VAE the round trip is the target itself and the residual correction recovers it."""
    from unimedvl.eval.edit_bench import vae_ceilings
    from unimedvl.eval.metrics.image import psnr

    class Identity(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return x

        def decode(self, z: torch.Tensor) -> torch.Tensor:
            return z

    rng = np.random.default_rng(0)
    target = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    blurred = target.resize((16, 16), Image.BICUBIC).resize((32, 32), Image.BICUBIC)
    round_trip, residual = vae_ceilings(Identity(), target, blurred)
    assert psnr(round_trip, target) > 45 and psnr(residual, target) > 45 > psnr(blurred, target)

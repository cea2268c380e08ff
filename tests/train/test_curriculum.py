"""The curriculum as a recipe (`unimedvl train curriculum.yaml`), end to end at a tiny scale: two runs give
identical files, a killed run resumes at its first incomplete step, and bad curricula are refused by name."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from train_helpers import REPO

from unimedvl.assets import SAMPLE_CORPUS_CONFIG, UNIMEDVL_TINY
from unimedvl.errors import ConfigError
from unimedvl.train.curriculum import CURRICULUM_FILES, MODEL_FILES, Curriculum

RECIPES = REPO / "recipes" / "unimedvl-tiny"


def _curriculum(folder: Path) -> Path:
    """The shipped curriculum and stage recipes, on a small corpus of the bundled real data."""
    data = SAMPLE_CORPUS_CONFIG.parent
    corpus = {"name": "repro", "seed": 0, "deid_salt": "x", "chunk_size": 200,
              "sources": [{"name": "pneumonia", "adapter": "medmnist",
                           "path": str(data / "medmnist/pneumoniamnist_no_test.npz"), "modality": "chest_xray",
                           "licence": "CC-BY-4.0", "limit": 150, "tasks": ["vqa", "caption", "text_to_image"],
                           "options": {"label_names": {0: "no pneumonia", 1: "pneumonia"},
                                       "class_names": {"no pneumonia": "normal"}, "states": ["normal"]}},
                          {"name": "msd", "adapter": "image_table", "path": str(data / "msd-nih-slices"),
                           "licence": "CC-BY-SA-4.0", "tasks": ["vqa", "caption", "text_to_image", "super_resolution"],
                           "options": {"table": "labels.csv", "sr_factors": [2]}}]}
    folder.mkdir(parents=True, exist_ok=True)
    for recipe in RECIPES.glob("stage*.yaml"):
        shutil.copy(recipe, folder / recipe.name)
    (folder / "corpus.yaml").write_text(yaml.safe_dump(corpus))
    curriculum = yaml.safe_load((RECIPES / "curriculum.yaml").read_text())
    (folder / "curriculum.yaml").write_text(yaml.safe_dump(curriculum))
    return folder / "curriculum.yaml"


def _train(curriculum: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unimedvl", "train", str(curriculum), "--out", str(out),
                           "--scale", "0.002", *extra], capture_output=True, text=True, timeout=600)


SHIPPED_FILES = (*MODEL_FILES, *CURRICULUM_FILES)  # the last written from the curriculum's `sampling`


def _digests(model: Path) -> dict[str, str]:
    return {name: hashlib.sha256((model / name).read_bytes()).hexdigest() for name in SHIPPED_FILES}


@pytest.mark.slow
def test_two_runs_are_identical_resume_and_check(tmp_path: Path) -> None:
    curriculum = _curriculum(tmp_path / "recipe")
    first = _train(curriculum, tmp_path / "a")
    assert first.returncode == 0, first.stderr[-3000:]
    digests = _digests(tmp_path / "a" / "model")
    sums = tmp_path / "sums"
    sums.mkdir()
    (sums / "SHA256SUMS").write_text("".join(f"{d}  {n}\n" for n, d in digests.items()))
    # A second run from scratch reproduces every file; --check says so (and exits 0).
    second = _train(curriculum, tmp_path / "b", "--check", str(sums))
    assert second.returncode == 0, second.stderr[-3000:]
    assert all(f"{name}: identical" in second.stdout for name in SHIPPED_FILES)
    # Against the shipped model a 0.2 % run differs, and the command says which file and exits 1.
    shipped = _train(curriculum, tmp_path / "b", "--check", str(UNIMEDVL_TINY))
    assert shipped.returncode == 1 and "ema.safetensors: DIFFERS" in shipped.stdout
    # A run killed during stage 3: steps.json lacks it; the rerun redoes stage 3 only and gets the same files.
    steps = json.loads((tmp_path / "a" / "steps.json").read_text())
    assert list(steps) == ["corpus", "tokenizer", "vae", "instruction-corpus", "vit-warmup", "stage1-foundation",
                           "stage2-instruction", "stage3-unified", "model"]
    for name in ("stage3-unified", "model"):
        del steps[name]
    (tmp_path / "a" / "steps.json").write_text(json.dumps(steps))
    shutil.rmtree(tmp_path / "a" / "stage3-unified")
    (tmp_path / "a" / "model" / "ema.safetensors").unlink()
    resumed = _train(curriculum, tmp_path / "a")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage2-instruction: complete" in resumed.stderr and "stage3-unified: running" in resumed.stderr
    assert _digests(tmp_path / "a" / "model") == digests
    # The model records what it was trained for: generation sizes and think mode.
    image_config = json.loads((tmp_path / "a" / "model" / "image_config.json").read_text())
    assert image_config["generation_sizes"] == [64, 128]
    assert json.loads((tmp_path / "a" / "model" / "capabilities.json").read_text()) == {"think": True}
    # ... and the guidance it recommends, as the curriculum names it.
    assert json.loads((tmp_path / "a" / "model" / "sampling_config.json").read_text()) == \
        yaml.safe_load(curriculum.read_text())["sampling"]


def test_the_shipped_curriculum_parses_and_names_every_step() -> None:
    curriculum = Curriculum.from_yaml(RECIPES / "curriculum.yaml")
    assert [s.name for s in curriculum.stages] == ["stage1-foundation", "stage2-instruction", "stage3-unified"]
    assert curriculum.corpus == RECIPES / "corpus.yaml" and curriculum.corpus.is_file()
    assert all(s.recipe.is_file() for s in curriculum.stages)
    config = curriculum.model_config(curriculum.vae_config())
    assert config.llm.vocab_size == curriculum.vocab_size + 16


@pytest.mark.parametrize("change, message", [
    ({"kind": "stage"}, "kind: curriculum"),
    ({"stages": []}, "no stages"),
    ({"stages": [{"corpus": "corpus"}]}, "needs a `recipe`"),
    ({"stages": [{"recipe": "s.yaml", "corpus": "other"}]}, "must be 'corpus' or 'instruction'"),
    ({"vae": {"ch": 32, "colour": 3}}, "unknown key(s) colour"),
    ({"model": {"llm": {"hidden_size": 190, "num_attention_heads": 4}}}, "model.llm"),
    ({"extra": 1}, "unknown key(s) extra"),
    ({"sampling": [6.0]}, "sampling must map"),
    ({"sampling": {"text_to_image": {"scale": 6.0}}}, "unknown setting(s) scale"),
    ({"sampling": {"editing": {"image_scale": -2}}}, "scales must be >= 0"),
])
def test_bad_curricula_are_refused_by_name(tmp_path: Path, change: dict, message: str) -> None:
    data = {**yaml.safe_load((RECIPES / "curriculum.yaml").read_text()), **change}
    path = tmp_path / "curriculum.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Curriculum.from_yaml(path)


def test_the_cli_needs_an_out_folder_for_a_curriculum() -> None:
    result = subprocess.run([sys.executable, "-m", "unimedvl", "train", str(RECIPES / "curriculum.yaml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--out" in result.stderr and "Traceback" not in result.stderr

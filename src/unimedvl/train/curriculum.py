"""A whole model from raw data, as one recipe: corpus -> tokenizer -> VAE -> three curriculum stages.

    unimedvl train recipes/unimedvl-tiny/curriculum.yaml --out outputs/unimedvl-tiny [--scale 0.01] [--check DIR]

The curriculum YAML (`kind: curriculum`) names every step; paths in it are relative to the YAML:

    kind: curriculum
    corpus: corpus.yaml                      # a `unimedvl data build` config
    tokenizer: {vocab_size: 2048}            # byte-level BPE on the corpus text (+ the Qwen specials)
    vae: {ch: 32, ch_mult: [1, 1, 2, 2], num_res_blocks: 1, steps: 1500, batch: 16, size: 64, lr: 1.0e-3,
          source_balance: 0.0}
    model: {llm: {...LLMConfig fields}, vit: {...ViTConfig fields}}
    instruction_corpus: {teacher: labels, fraction: 0.25}   # label-made chain-of-thought and captions
    vit_warmup: {steps: 1500, batch: 32, lr: 1.0e-3}        # optional: the ViT first learns the corpus labels
    stages:                                  # stage recipes; `corpus: instruction` trains on the one above
      - {recipe: stage1-foundation.yaml, corpus: corpus}
      - {recipe: stage2-instruction.yaml, corpus: instruction}
      - {recipe: stage3-unified.yaml, corpus: corpus}

Every step writes into its own folder of OUT and is marked complete in `OUT/steps.json` only once its
outputs are written, so a killed run resumes at the first incomplete step (a stage resumes from its
last checkpoint). Every random draw is seeded, so a rerun on the same machine reproduces every file;
`--scale` multiplies the step counts (smoke runs). OUT/model is the last stage's export.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from unimedvl.config import LLMConfig, UnifiedConfig, VAEConfig, ViTConfig
from unimedvl.errors import ConfigError, InputError
from unimedvl.model.sampling import SAMPLING_FILE, SamplingDefaults
from unimedvl.train.config import TrainConfig, VitWarmup
from unimedvl.utils.files import atomic_write_text, read_yaml_mapping

MODEL_FILES = ("ema.safetensors", "ae.safetensors", "llm_config.json", "vit_config.json", "vae_config.json",
               "tokenizer.json", "image_config.json", "capabilities.json")
# Written by the curriculum itself (from its `sampling` section), not copied from the last stage; absent when
# the recipe recommends nothing.
CURRICULUM_FILES = (SAMPLING_FILE,)
_VAE_TRAINING = ("steps", "batch", "size", "lr", "source_balance")


@dataclass(frozen=True)
class StageStep:
    recipe: Path
    corpus: str = "corpus"  # "corpus" or "instruction"

    @property
    def name(self) -> str:
        return self.recipe.stem


@dataclass(frozen=True)
class Curriculum:
    corpus: Path
    vocab_size: int
    vae: dict[str, Any]
    llm: dict[str, Any]
    vit: dict[str, Any]
    stages: tuple[StageStep, ...]
    instruction: dict[str, Any] = field(default_factory=dict)
    vit_warmup: VitWarmup | None = None
    source: Path = Path("curriculum.yaml")
    # the guidance recommended to users of the trained model (chosen by evaluation), written as sampling_config.json
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Curriculum":
        path = Path(path)
        data = read_yaml_mapping(path, "curriculum")
        known = {"kind", "name", "corpus", "tokenizer", "vae", "model", "instruction_corpus", "vit_warmup", "stages",
                 "sampling"}
        unknown = sorted(map(str, set(data) - known))
        if unknown:
            raise ConfigError(f"{path.name}: unknown key(s) {', '.join(unknown)}")
        if data.get("kind") != "curriculum":
            raise ConfigError(f"{path.name}: a curriculum declares `kind: curriculum`")
        for key in ("corpus", "tokenizer", "vae", "model", "stages"):
            if key not in data:
                raise ConfigError(f"{path.name}: missing required key {key!r}")
        stages = []
        for index, entry in enumerate(data["stages"] or []):
            if not isinstance(entry, dict) or "recipe" not in entry:
                raise ConfigError(f"{path.name}: stages[{index}] needs a `recipe`")
            corpus = entry.get("corpus", "corpus")
            if corpus not in ("corpus", "instruction"):
                raise ConfigError(f"{path.name}: stages[{index}].corpus must be 'corpus' or 'instruction', got {corpus!r}")
            if corpus == "instruction" and not data.get("instruction_corpus"):
                raise ConfigError(f"{path.name}: stages[{index}] trains on the instruction corpus, which is not declared")
            stages.append(StageStep(path.parent / entry["recipe"], corpus))
        if not stages:
            raise ConfigError(f"{path.name}: no stages listed")
        model = data["model"] or {}
        warmup = data.get("vit_warmup")
        if warmup is not None and not isinstance(warmup, dict):
            raise ConfigError(f"{path.name}: vit_warmup must be a mapping of settings, got {warmup!r}")
        sampling = data.get("sampling") or {}
        if not isinstance(sampling, dict):
            raise ConfigError(f"{path.name}: sampling must map text_to_image / editing to guidance settings, "
                              f"got {sampling!r}")
        try:
            defaults = SamplingDefaults.from_json_dict(sampling)
        except InputError as exc:
            raise ConfigError(f"{path.name}: {exc}") from None
        curriculum = cls(corpus=path.parent / data["corpus"], vocab_size=int(data["tokenizer"]["vocab_size"]),
                         vae=dict(data["vae"]), llm=dict(model.get("llm") or {}), vit=dict(model.get("vit") or {}),
                         stages=tuple(stages), instruction=dict(data.get("instruction_corpus") or {}),
                         vit_warmup=None if warmup is None else VitWarmup.from_dict(warmup), source=path,
                         sampling=defaults)
        curriculum.vae_config()  # refuse bad architecture fields now, not after the corpus is built
        curriculum.model_config(curriculum.vae_config())
        return curriculum

    def vae_config(self) -> VAEConfig:
        fields = {k: v for k, v in self.vae.items() if k not in _VAE_TRAINING}
        if "ch_mult" in fields:
            fields["ch_mult"] = tuple(fields["ch_mult"])
        return _build(VAEConfig, fields, f"{self.source.name}: vae")

    def model_config(self, vae: VAEConfig) -> UnifiedConfig:
        vocab = self.vocab_size + 16  # the specials follow the BPE entries
        llm = _build(LLMConfig, {"vocab_size": vocab, **self.llm}, f"{self.source.name}: model.llm")
        return UnifiedConfig(llm=llm, vit=_build(ViTConfig, self.vit, f"{self.source.name}: model.vit"), vae=vae)


def _build(kind: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(map(str, set(values) - names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    try:
        return kind(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


class _Steps:
    """`OUT/steps.json`: which steps are complete, and how long each took (rewritten atomically)."""

    def __init__(self, out: Path) -> None:
        self.path = out / "steps.json"
        self.state: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def done(self, name: str) -> bool:
        return name in self.state

    def mark(self, name: str, seconds: float) -> None:
        self.state[name] = {"seconds": round(seconds, 1)}
        atomic_write_text(self.path, json.dumps(self.state, indent=2) + "\n")


def run_curriculum(path: str | Path, out: str | Path, *, scale: float = 1.0,
                   log: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) every step of a curriculum into `out`; returns `out/model`."""
    import torch

    from unimedvl.data.distillation import LabelTeacher, transform_corpus
    from unimedvl.data.pipeline import BuildConfig, build_corpus
    from unimedvl.train.tokenizer_training import corpus_texts, train_tokenizer
    from unimedvl.train.trainer import Trainer
    from unimedvl.train.vae_training import corpus_images, train_vae

    if not 0 < scale <= 1:
        raise ConfigError(f"--scale must lie in (0, 1], got {scale}")
    say = log or (lambda message: print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True))
    curriculum = Curriculum.from_yaml(path)
    recipes = [TrainConfig.from_yaml(stage.recipe) for stage in curriculum.stages]  # all checked before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = _Steps(out)
    corpus, base, instruction = out / "corpus", out / "base", out / "corpus-instruction"

    def step(name: str, work: Callable[[], None]) -> None:
        if steps.done(name):
            say(f"{name}: complete")
            return
        say(f"{name}: running")
        started = time.perf_counter()
        work()
        steps.mark(name, time.perf_counter() - started)

    step("corpus", lambda: build_corpus(BuildConfig.from_yaml(curriculum.corpus), corpus))  # resumes by itself
    step("tokenizer", lambda: train_tokenizer(corpus_texts(corpus), base, vocab_size=curriculum.vocab_size))
    vae = curriculum.vae

    def vae_step() -> None:
        train_vae(corpus_images(corpus), base, config=curriculum.vae_config(),
                  steps=max(10, int(vae.get("steps", 1500) * scale)), batch=int(vae.get("batch", 16)),
                  size=int(vae.get("size", 64)), lr=float(vae.get("lr", 1e-3)),
                  source_balance=float(vae.get("source_balance", 1.0)))
        vae_config = VAEConfig.from_json_dict(json.loads((base / "vae_config.json").read_text()))
        curriculum.model_config(vae_config).save_to_dir(base)

    step("vae", vae_step)
    if curriculum.instruction:
        teacher = curriculum.instruction.get("teacher", "labels")
        if teacher != "labels":
            raise ConfigError(f"instruction_corpus.teacher: only 'labels' runs offline in a recipe, got {teacher!r}")
        step("instruction-corpus", lambda: _fresh(instruction, lambda: transform_corpus(
            corpus, instruction, LabelTeacher(), fraction=float(curriculum.instruction.get("fraction", 0.25)))))
    warm_vit: Path | None = None
    if curriculum.vit_warmup is not None:
        from unimedvl.train.vit_warmup import train_vit_warmup

        warm_vit = out / "vit-warmup"
        settings = dataclasses.replace(curriculum.vit_warmup,
                                       steps=max(10, int(curriculum.vit_warmup.steps * scale)))
        vit_config = curriculum.model_config(curriculum.vae_config()).vit
        step("vit-warmup", lambda: train_vit_warmup(corpus, warm_vit, vit_config, settings, seed=recipes[0].seed,
                                                    log=say))
    previous: Path | None = None
    for stage, recipe in zip(curriculum.stages, recipes):
        export = out / stage.name / "export"

        def train_stage(stage: StageStep = stage, recipe: TrainConfig = recipe, previous: Path | None = previous) -> None:
            config = stage_config(out, stage, recipe, previous=previous, warm_vit=warm_vit is not None, scale=scale)
            say(f"{stage.name}: {config.total_steps} steps")
            trainer = Trainer(config)
            try:
                trainer.fit()
                trainer.export(export)
            finally:
                trainer.close()

        step(stage.name, train_stage)
        previous = export

    def final() -> None:
        model = out / "model"
        model.mkdir(exist_ok=True)
        for name in MODEL_FILES:
            shutil.copyfile(previous / name, model / name)  # type: ignore[operator]
        curriculum.sampling.save_to_dir(model)
        run = {"steps": steps.state, "scale": scale, "threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": platform.python_version(), "machine": platform.machine(),
               "curriculum": str(curriculum.source)}
        atomic_write_text(out / "run.json", json.dumps(run, indent=2) + "\n")

    step("model", final)
    return out / "model"


def stage_config(out: Path, stage: StageStep, recipe: TrainConfig, *, previous: Path | None = None,
                 warm_vit: bool = False, scale: float = 1.0) -> TrainConfig:
    """A stage recipe as a curriculum run in `out` trains it: on `out`'s corpus (or its instruction corpus),
    from the previous stage's export or, for the first stage, from `out/base` (and `out/vit-warmup`'s ViT
    when the curriculum has that step); its step counts multiplied by `scale`."""
    from unimedvl.train.vit_warmup import WEIGHTS

    base = out / "base"
    raw = recipe.to_dict()
    raw["model"] = ({"checkpoint": str(previous)} if previous else
                    {"preset": None, "config_dir": str(base), "tokenizer": str(base), "vae": str(base / "ae.safetensors"),
                     **({"vit": str(out / "vit-warmup" / WEIGHTS)} if warm_vit else {})})
    raw["data"]["corpus"] = str(out / ("corpus" if stage.corpus == "corpus" else "corpus-instruction"))
    raw["output_dir"] = str(out / stage.name)
    raw["total_steps"] = max(2, int(recipe.total_steps * scale))
    raw["save_every"] = max(1, min(recipe.save_every, raw["total_steps"]))
    return TrainConfig.from_dict(raw, stage.recipe.name)


def _fresh(folder: Path, work: Callable[[], Any]) -> None:
    if folder.exists():
        shutil.rmtree(folder)  # left by a killed run before the step was marked complete
    work()


def compare_with(model: str | Path, reference: str | Path) -> list[tuple[str, bool]]:
    """(file, identical?) for every file a reference folder's SHA256SUMS lists."""
    sums = Path(reference) / "SHA256SUMS"
    if not sums.is_file():
        raise ConfigError(f"{sums} does not exist; nothing to compare with")
    result = []
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = Path(model) / name
        ours = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
        result.append((name, ours == digest))
    return result

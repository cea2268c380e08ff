"""Reproduce UniMedVL-tiny from the shared data folder, end to end, on a CPU.

    .venv/bin/python scripts/train_unimedvl_tiny.py --out outputs/unimedvl-tiny [--scale 1.0] [--check]

1. corpus: `recipes/unimedvl-tiny/corpus.yaml` (every research-use set of the shared data folder, 8 modalities);
2. tokenizer: byte-level BPE trained on the corpus text (Qwen layout, 2048 entries + 14 specials);
3. VAE: the FLUX architecture at tiny width, trained on the corpus images (every source drawn equally often);
4. model: the tiny architecture below, random init, then the three curriculum stages
   (stage 2 on the corpus with label-made chain-of-thought and captions), each exported;
5. the stage-3 export is the model (`OUT/model`), in the released layout.

Every random draw is seeded; `--scale` multiplies the step counts (1.0 = the shipped model).
`--check` compares the result, file by file, with the shipped model's SHA256SUMS (exit 1 on a mismatch).
OUT/run.json records the wall time of each phase, the thread count and the library versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

TINY = {
    "llm": {"vocab_size": 2064, "hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2},
    "vit": {"hidden_size": 128, "intermediate_size": 384, "num_attention_heads": 4, "num_hidden_layers": 3},
    "vae": {"ch": 32, "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1},
}

# The corpus is ~95% grey X-ray and ultrasound images: a VAE trained on images as they come paints
# fundus photographs, endoscopy and H&E slides grey (measured), so its batches draw sources evenly.
VAE_STEPS, VAE_BALANCE = 1500, 0.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


SHIPPED = REPO / "src" / "unimedvl" / "assets" / "unimedvl-tiny"


def check_against_shipped(model: Path) -> bool:
    """Compare OUT/model with the shipped files' hashes; print one line per file."""
    sums = SHIPPED / "SHA256SUMS"
    if not sums.is_file():
        log(f"--check: {sums} does not exist; nothing to compare with")
        return False
    same = True
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        ours = hashlib.sha256((model / name).read_bytes()).hexdigest() if (model / name).is_file() else "missing"
        same &= ours == digest
        log(f"--check: {name}: {'identical' if ours == digest else 'DIFFERS'}")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "unimedvl-tiny")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step count (smoke runs: 0.01)")
    parser.add_argument("--vae-steps", type=int, default=VAE_STEPS)
    parser.add_argument("--vae-balance", type=float, default=VAE_BALANCE,
                        help="VAE batches draw each source with weight size ** this (0 = every source equally often)")
    parser.add_argument("--corpus-config", type=Path, default=REPO / "recipes/unimedvl-tiny/corpus.yaml",
                        help="the corpus build recipe (default: every research-use set of the shared data folder)")
    parser.add_argument("--check", action="store_true", help="compare the result with the shipped model, bit for bit")
    args = parser.parse_args()
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def timed(name: str, since: float) -> float:
        now = time.perf_counter()
        phases[name] = round(now - since, 1)
        return now

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    from unimedvl.config import LLMConfig, UnifiedConfig, VAEConfig, ViTConfig
    from unimedvl.data.distillation import LabelTeacher, transform_corpus
    from unimedvl.data.pipeline import BuildConfig, build_corpus
    from unimedvl.train.config import TrainConfig
    from unimedvl.train.tokenizer_training import corpus_texts, train_tokenizer
    from unimedvl.train.trainer import Trainer
    from unimedvl.train.vae_training import corpus_images, train_vae

    out = args.out
    corpus = out / "corpus"
    mark = time.perf_counter()
    if not (corpus / "manifest.json").is_file():
        log("building the corpus")
        build_corpus(BuildConfig.from_yaml(args.corpus_config), corpus)
    base = out / "base"
    if not (base / "tokenizer.json").is_file():
        log("training the tokenizer")
        train_tokenizer(corpus_texts(corpus), base, vocab_size=TINY["llm"]["vocab_size"] - 16)
    if not (base / "ae.safetensors").is_file():
        log("training the VAE")
        train_vae(corpus_images(corpus), base, config=VAEConfig(**{**TINY["vae"], "ch_mult": tuple(TINY["vae"]["ch_mult"])}),
                  steps=max(10, int(args.vae_steps * args.scale)), batch=16, size=64, lr=1e-3,
                  source_balance=args.vae_balance)
    vae_config = VAEConfig.from_json_dict(json.loads((base / "vae_config.json").read_text()))
    UnifiedConfig(llm=LLMConfig(**TINY["llm"]), vit=ViTConfig(**TINY["vit"]), vae=vae_config).save_to_dir(base)
    stage2_corpus = out / "corpus-stage2"
    if not (stage2_corpus / "manifest.json").is_file():
        log("stage-2 corpus: label-made chain-of-thought and captions")
        transform_corpus(corpus, stage2_corpus, LabelTeacher(), fraction=0.25)
    mark = timed("data, tokenizer and VAE", mark)
    previous = None
    for name, data in (("stage1-foundation", corpus), ("stage2-instruction", stage2_corpus), ("stage3-unified", corpus)):
        export = out / name / "export"
        if (export / "ema.safetensors").is_file():
            previous = export
            continue
        model = ({"checkpoint": str(previous)} if previous else
                 {"preset": None, "config_dir": str(base), "tokenizer": str(base), "vae": str(base / "ae.safetensors")})
        recipe = TrainConfig.from_yaml(REPO / f"recipes/unimedvl-tiny/{name}.yaml")
        raw = recipe.to_dict()
        raw["model"] = model
        raw["data"]["corpus"] = str(data)
        raw["output_dir"] = str(out / name)
        raw["total_steps"] = max(2, int(recipe.total_steps * args.scale))
        raw["save_every"] = max(1, min(recipe.save_every, raw["total_steps"]))
        config = TrainConfig.from_dict(raw)
        log(f"{name}: {config.total_steps} steps")
        trainer = Trainer(config)
        trainer.fit()
        trainer.export(export)
        trainer.close()
        previous = export
        mark = timed(name, mark)
    final = out / "model"
    if previous and not (final / "ema.safetensors").is_file():
        import shutil

        shutil.copytree(previous, final, dirs_exist_ok=True)
    run = {"seconds": round(time.perf_counter() - started, 1), "phases": phases, "threads": torch.get_num_threads(),
           "scale": args.scale, "vae_steps": args.vae_steps, "vae_balance": args.vae_balance,
           "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()}
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    log(f"done: {final} ({run['seconds'] / 60:.1f} min)")
    if args.check and not check_against_shipped(final):
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The GPU check (issue 14, item 5): CPU-GPU parity in bf16, then speed on the GPU; within 8 minutes on one H100/H200.

    bash bench/gpu_check.sh            # or: .venv/bin/python bench/gpu_check.py [--config small] [--full-t2i]

1. CPU (always): a random model of the preset (seeded) answers one question about a real chest X-ray
   and predicts one velocity, in fp32: the reference outputs.
2. Device check: without CUDA the script says so and stops here (exit 0): this is how it is tested on CPU.
3. GPU parity: the same weights in bf16 on the GPU; logits and velocity against the CPU reference
   (relative L2 error, top-1 agreement of the next-token logits).
4. GPU speed: decode tokens/s (one request and 16 batched), text-to-image seconds at 256 px, and with
   --full-t2i the released 14B layout (random bf16 weights built on the GPU, 29 GB) drawing one 1024 x 1024
   image with 50 steps and guidance, to set beside vLLM-Omni's ~10.7 s on an H200 and BAGEL's ~5 s on an H800.
Prints a table and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from unimedvl.assets import REFERENCE_TINY, SAMPLES, default_checkpoint
from unimedvl.checkpoint.folder import LoadedCheckpoint
from unimedvl.config import ImageConfig, UnifiedConfig
from unimedvl.inference.engine import TextOptions, UniMedVL
from unimedvl.model.builder import build_model, build_vae
from unimedvl.model.sampling import GuidanceOptions
from unimedvl.text.tokenizer import TextTokenizer

QUESTION = "Is there pneumonia?"


def random_engine(config: UnifiedConfig, device: str, dtype: torch.dtype, seed: int = 0) -> UniMedVL:
    """A seeded random model and VAE of `config` (the same weights on any device), as a loaded engine."""
    torch.manual_seed(seed)
    model = build_model(config, device="cpu")
    vae = build_vae(config.vae, device="cpu")
    with torch.no_grad():
        for module in (model, vae):
            for name, p in module.named_parameters():
                if p.dim() > 1:
                    torch.nn.init.normal_(p, std=0.02)
                elif name.endswith("weight"):
                    p.fill_(1.0)
                else:
                    p.zero_()
    model = model.to(device=device, dtype=dtype).eval()
    vae = vae.to(device=device, dtype=torch.float32 if device == "cpu" else dtype).eval()
    # A tokenizer whose ids fit the vocabulary: the fixture's for the tiny preset, UniMedVL-tiny's otherwise.
    tokenizer = TextTokenizer.from_dir(REFERENCE_TINY if config.llm.vocab_size < 2064 else default_checkpoint())
    sizes = ImageConfig.reference()
    loaded = LoadedCheckpoint(config=config, model=model, vae=vae, tokenizer=tokenizer, reports=[], image_config=sizes)
    return UniMedVL(loaded)


@torch.no_grad()
def reference_outputs(engine: UniMedVL) -> dict[str, torch.Tensor]:
    """Next-token logits after an image question, and one velocity of a seeded noisy 16 x 16 latent block."""
    context = engine.ask_context([SAMPLES / "chest_xray_nih.png"], QUESTION)
    logits: list[torch.Tensor] = []
    engine.generate_text(context, TextOptions(max_new_tokens=1), on_logits=logits.append)
    gen = engine.new_context()
    engine.add_text(gen, "A chest X-ray with pneumonia.")
    noise = torch.randn(256, engine.config.patch_latent_dim, generator=torch.Generator().manual_seed(0))
    embeds = engine.model.embed_latents(noise.to(engine.device), torch.tensor(0.8), (16, 16))
    velocity = engine.model.velocity(gen, embeds, engine.special)
    return {"logits": logits[0].float().cpu(), "velocity": velocity.float().cpu()}


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def timed(fn, sync: bool = True) -> float:  # noqa: ANN001
    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def gpu_speed(engine: UniMedVL, full_t2i: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    context = engine.ask_context([SAMPLES / "chest_xray_nih.png"], QUESTION)
    options = TextOptions(max_new_tokens=64, min_new_tokens=64)
    engine.generate_text(context, TextOptions(max_new_tokens=4))  # warm-up
    out["decode_tok_s"] = 64 / timed(lambda: engine.generate_text(context, options))
    out["decode_16_tok_s"] = 16 * 64 / timed(lambda: engine.generate_text_batch([context] * 16, options))
    guidance = GuidanceOptions.text_to_image(num_timesteps=50)
    engine.generate("A chest X-ray.", height=256, width=256, seed=0, guidance=GuidanceOptions.text_to_image(num_timesteps=4))
    out["t2i_256_s"] = timed(lambda: engine.generate("A chest X-ray.", height=256, width=256, seed=0, guidance=guidance))
    if full_t2i:
        del engine
        torch.cuda.empty_cache()
        big = random_engine(UnifiedConfig.full(), "cuda", torch.bfloat16)
        big.generate("A chest X-ray.", height=256, width=256, seed=0, guidance=GuidanceOptions.text_to_image(num_timesteps=4))
        out["full_t2i_1024_s"] = timed(lambda: big.generate("A chest X-ray with pneumonia.", height=1024, width=1024,
                                                            seed=0, guidance=guidance))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="small", help="preset for parity and speed (small, tiny)")
    parser.add_argument("--full-t2i", action="store_true", help="also time the 14B layout at 1024 px, 50 steps")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = UnifiedConfig.preset(args.config)
    start = time.perf_counter()
    cpu = reference_outputs(random_engine(config, "cpu", torch.float32))
    print(f"CPU reference ({args.config} preset, fp32): logits {tuple(cpu['logits'].shape)}, "
          f"velocity {tuple(cpu['velocity'].shape)} in {time.perf_counter() - start:.1f} s", flush=True)
    result: dict[str, object] = {"config": args.config, "cpu_seconds": time.perf_counter() - start}
    if not torch.cuda.is_available():
        print("device check: no CUDA device here; the CPU half ran, stopping before the GPU part")
        result["gpu"] = None
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return 0
    name = torch.cuda.get_device_name(0)
    engine = random_engine(config, "cuda", torch.bfloat16)
    gpu = reference_outputs(engine)
    parity = {"logits_relative_l2": relative_l2(gpu["logits"], cpu["logits"]),
              "top1_agrees": bool(gpu["logits"].argmax() == cpu["logits"].argmax()),
              "velocity_relative_l2": relative_l2(gpu["velocity"], cpu["velocity"])}
    print(f"GPU parity on {name} (bf16 vs CPU fp32): {parity}", flush=True)
    speed = gpu_speed(engine, args.full_t2i)
    result.update(device=name, parity=parity, speed=speed, total_seconds=time.perf_counter() - start)
    print("\n| check | value |\n|---|---|")
    for key, value in {**parity, **speed}.items():
        print(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
    if "full_t2i_1024_s" in speed:
        print(f"\n14B layout, 1024 x 1024, 50 steps with guidance: {speed['full_t2i_1024_s']:.1f} s "
              "(vLLM-Omni ~10.7 s on an H200; BAGEL ~5 s on an H800)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    ok = parity["velocity_relative_l2"] < 0.05 and parity["logits_relative_l2"] < 0.05
    print("parity: " + ("within bf16 tolerance (5% relative L2)" if ok else "OUTSIDE the 5% bf16 tolerance"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

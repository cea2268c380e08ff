"""Write a fixture folder in the reference-tiny format from *our* implementation, at any size.

Used by tests to show that `unimedvl.tools.reference_check` reads everything (sizes, prompts, settings,
tolerances) from the folder and hard-codes nothing: a fixture with another seed, other model sizes,
prompts and image sizes must pass, and the same folder with one recorded number changed must fail.
(The numbers here come from our own code, so this proves the checker's generality, not parity;
parity is proven by the fixture recorded from the original implementation.)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from unimedvl.assets import REFERENCE_TINY
from unimedvl.checkpoint.folder import load_checkpoint
from unimedvl.config import LLMConfig, UnifiedConfig, VAEConfig, ViTConfig
from unimedvl.imaging.pixels import to_tensor
from unimedvl.inference.engine import GenerationTrace, TextOptions, UniMedVL
from unimedvl.model.builder import build_model, build_vae
from unimedvl.model.sampling import GuidanceOptions
from unimedvl.tools.reference_check import IDENTITY_SIZES, SCHEMA


@dataclass
class Variant:
    seed: int = 7
    hidden: int = 96
    layers: int = 3
    heads: int = 6
    kv_heads: int = 3
    vit_hidden: int = 48
    prompts: tuple[str, str, str, str] = ("What organ is shown?", "Sagittal MRI of the knee.",
                                          "A fundus photograph with drusen.", "Stain this slide with HER2.")
    und_hw: tuple[int, int] = (42, 56)
    gen_hw: tuple[int, int] = (32, 80)
    edit_hw: tuple[int, int] = (64, 48)
    vae_hw: tuple[int, int] = (40, 24)


def _tol(atol: float) -> dict:
    return {"atol": atol, "rtol": 0.0}


def write_fixture(out: Path, v: Variant) -> None:
    out.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(REFERENCE_TINY / name, out / name)
    cfg = UnifiedConfig(
        llm=LLMConfig(vocab_size=320, hidden_size=v.hidden, intermediate_size=2 * v.hidden, num_hidden_layers=v.layers,
                      num_attention_heads=v.heads, num_key_value_heads=v.kv_heads),
        vit=ViTConfig(hidden_size=v.vit_hidden, intermediate_size=2 * v.vit_hidden, num_attention_heads=4,
                      num_hidden_layers=2),
        vae=VAEConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1),
    )
    cfg.save_to_dir(out)
    gen = torch.Generator().manual_seed(v.seed)
    model, vae = build_model(cfg, device="cpu"), build_vae(cfg.vae, device="cpu")
    for module in (model, vae):
        for name, p in module.named_parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) / (p.shape[-1] ** 0.5 if p.ndim > 1 else 5.0)
                        + (1.0 if name.endswith("norm.weight") or "layernorm" in name or "norm1" in name
                           or "norm2" in name else 0.0))
    save_file({k: t.to(torch.bfloat16).contiguous() for k, t in model.state_dict().items()}, str(out / "ema.safetensors"))
    save_file({k: t.contiguous() for k, t in vae.state_dict().items()}, str(out / "ae.safetensors"))

    engine = UniMedVL(load_checkpoint(out), image_config=IDENTITY_SIZES)
    m, sp, tok = engine.model, engine.special, engine.tokenizer
    rng = np.random.default_rng(v.seed)

    def image(hw: tuple[int, int]) -> np.ndarray:
        return rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)

    cases, tolerances = {}, {}
    with torch.no_grad():
        # case a
        img = image(v.und_hw)
        pixels = to_tensor(Image.fromarray(img))
        ctx = m.new_cache()
        vit = m.prefill_vit_image(ctx, pixels, sp)
        logits = m.logits(m.prefill_text(ctx, torch.tensor(tok.frame(v.prompts[0]))))
        decode: list[torch.Tensor] = []
        answer = engine.generate_text(ctx, TextOptions(max_new_tokens=7), on_logits=decode.append)
        seq = [sp.bos, *answer.token_ids][:7]
        a = {"image": pixels, "image_u8": torch.from_numpy(img), "vit_encoder_out": vit.encoder_out,
             "connector_out": m.connector(vit.encoder_out), "prefill_text_logits": logits,
             "final_prefill_logits": logits[-1], "decode_logits": torch.stack(decode),
             "generated_sequence": torch.tensor(seq), "greedy_ids": torch.tensor(seq[1:])}
        cases["case_a"] = ({"prompt": v.prompts[0], "prompt_ids": tok.encode(v.prompts[0])}, a)
        tolerances["case_a"] = {**{k: _tol(5e-5) for k in a}, "image": "input", "image_u8": "input",
                                "generated_sequence": "exact", "greedy_ids": "exact"}
        # case b
        ctx = m.new_cache()
        m.prefill_text(ctx, torch.tensor(tok.frame(v.prompts[1])))
        grid = (v.gen_hw[0] // 16, v.gen_hw[1] // 16)
        x_t = torch.randn(grid[0] * grid[1], 64, generator=gen)
        emb = m.embed_latents(x_t, torch.tensor(0.3), grid)
        hidden = m.noisy_latent_hidden(ctx, emb, sp)
        b = {"x_t": x_t, "velocity": m.llm2vae(hidden[1:-1]), "time_embedding": m.time_embedder(torch.tensor([0.3]), torch.float32)[0],
             "query_embeddings": m.frame_image_block(emb, sp), "final_hidden": hidden}
        cases["case_b"] = ({"prompt": v.prompts[1], "prompt_ids": tok.encode(v.prompts[1]), "timestep": 0.3,
                            "image_hw": list(v.gen_hw)}, b)
        tolerances["case_b"] = {**{k: _tol(5e-5) for k in b}, "x_t": "input"}
        # cases c and d
        for case, items_hw, prompt, guidance in (
            ("case_c", None, v.prompts[2], GuidanceOptions(num_timesteps=5, timestep_shift=2.0, text_scale=3.0,
                                                         image_scale=1.5, interval=(0.3, 1.0))),
            ("case_d", v.edit_hw, v.prompts[3], GuidanceOptions.editing(num_timesteps=4, renorm_min=0.2)),
        ):
            out_hw = items_hw or v.gen_hw
            noise = torch.randn((out_hw[0] // 16) * (out_hw[1] // 16), 64, generator=gen)
            items: list[object] = [prompt]
            tensors: dict[str, torch.Tensor] = {"noise": noise}
            if items_hw:
                img = image(items_hw)
                items.insert(0, Image.fromarray(img))
                tensors["image_u8"] = torch.from_numpy(img)
                tensors["context_vae_latent"] = engine.encode_image(Image.fromarray(img))
            trace = GenerationTrace()
            engine.interleave(items, height=out_hw[0], width=out_hw[1], guidance=guidance, noise=noise, trace=trace)
            for i, step in enumerate(trace.steps):
                tensors[f"step{i}.v"] = step.v
                tensors[f"step{i}.v_cond"] = step.branches["cond"]
            tensors.update(final_latent=trace.final_latent, decoder_input=trace.decoder_input, decoded=trace.decoded)
            names = {"cond": "gen_context", "text_uncond": "cfg_text_context", "image_uncond": "cfg_img_context"}
            cases[case] = ({"prompt": prompt, "prompt_ids": tok.encode(prompt), "image_hw": list(out_hw),
                            "num_timesteps": guidance.num_timesteps, "timestep_shift": guidance.timestep_shift,
                            "cfg_text_scale": guidance.text_scale, "cfg_img_scale": guidance.image_scale,
                            "cfg_interval": list(guidance.interval), "cfg_renorm_type": guidance.renorm_type,
                            "cfg_renorm_min": guidance.renorm_min,
                            "contexts": {names[k]: {"kv_lens": [n], "ropes": [r]} for k, (n, r) in trace.contexts.items()}},
                           tensors)
            tolerances[case] = {**{k: _tol(1e-4) for k in tensors}, "noise": "input", "image_u8": "input"}
        # case e
        img = image(v.vae_hw)
        pixels = to_tensor(Image.fromarray(img))
        e = {"image": pixels, "image_u8": torch.from_numpy(img), "encoder_moments": engine.vae.moments(pixels[None])[0],
             "latent": engine.vae.encode(pixels[None])[0]}
        e["decoded"] = engine.vae.decode(e["latent"][None])[0]
        cases["case_e"] = ({"image_hw": list(v.vae_hw)}, e)
        tolerances["case_e"] = {**{k: _tol(5e-5) for k in e}, "image": "input", "image_u8": "input"}

    meta = {"schema": SCHEMA, "cases": {}, "tolerances": tolerances}
    for case, (spec, tensors) in cases.items():
        name = f"{case}.safetensors"
        save_file({k: t.detach().clone().contiguous() for k, t in tensors.items()}, str(out / name))
        meta["cases"][case] = {**spec, "files": {"file": name}, "output_tensors": [
            k for k, t in tolerances[case].items() if t != "input"]}
    (out / "fixture.json").write_text(json.dumps(meta, indent=1))

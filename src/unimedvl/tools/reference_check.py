"""Reproduce a reference fixture folder and report every checked tensor.

    python -m unimedvl.tools.reference_check tests/fixtures/reference-tiny

A fixture folder holds a checkpoint in the released layout plus `fixture.json` and
`case_*.safetensors` recorded from the original UniMedVL code (schema `unimedvl-refcheck-fixture/1`).
Every case is rebuilt from its recorded inputs and settings through the public loader and engine,
and each recorded output is compared within the tolerance the JSON states. One line per tensor:

    case  name  max_err  tolerance  PASS|FAIL

Exit status 0 when everything passes, 1 on any failure, 2 when the folder cannot be read.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from unimedvl.checkpoint.folder import load_checkpoint
from unimedvl.config import ImageConfig, ResizeBounds
from unimedvl.errors import UnimedvlError
from unimedvl.imaging.pixels import to_tensor
from unimedvl.imaging.resize import RESIZE_RULES, ResizeRule, generation_target_size
from unimedvl.inference.engine import GenerationTrace, TextOptions, UniMedVL
from unimedvl.model.sampling import GuidanceOptions

SCHEMA = "unimedvl-refcheck-fixture/1"
BRANCH_NAMES = {"v_cond": "cond", "v_text_uncond": "text_uncond", "v_img_uncond": "image_uncond"}


@dataclass
class Check:
    case: str
    name: str
    error: float
    tolerance: float
    exact: bool = False

    @property
    def passed(self) -> bool:
        return self.error == 0 if self.exact else self.error <= self.tolerance

    def line(self) -> str:
        tol = "exact" if self.exact else f"{self.tolerance:.1e}"
        return f"{self.case:<8} {self.name:<28} max_err={self.error:.3e}  tol={tol:<8} {'PASS' if self.passed else 'FAIL'}"


# The golden run bypasses resizing; sides are already multiples of the stride.
_NO_RESIZE = ResizeBounds(max_size=10**6, min_size=1, max_pixels=10**12)
IDENTITY_SIZES = ImageConfig(understanding_vit=_NO_RESIZE, generation_vit=_NO_RESIZE, vae=_NO_RESIZE, default_size=1024)


class FixtureRunner:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        meta_path = folder / "fixture.json"
        if not meta_path.is_file():
            raise UnimedvlError(f"{folder} has no fixture.json")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.meta.get("schema") != SCHEMA:
            raise UnimedvlError(f"fixture.json schema is {self.meta.get('schema')!r}, expected {SCHEMA!r}")
        loaded = load_checkpoint(folder, dtype="float32", device="cpu")
        self.engine = UniMedVL(loaded, image_config=IDENTITY_SIZES)
        self.model, self.special = self.engine.model, self.engine.special
        self.checks: list[Check] = []

    # ---------------------------------------------------------------- compare
    def _tolerance(self, case: str, name: str) -> tuple[float, bool] | None:
        spec = self.meta["tolerances"].get(case, {}).get(name)
        if spec is None or spec == "input":
            return None
        if spec == "exact":
            return 0.0, True
        if isinstance(spec, dict):
            return float(spec.get("atol", 0.0)), False
        match = re.search(r"<=\s*([0-9.eE+-]+)", str(spec))
        if match:
            return float(match.group(1)), False
        raise UnimedvlError(f"cannot read tolerance {spec!r} for {case}.{name}")

    def compare(self, case: str, name: str, ours: torch.Tensor | list[int], golden: torch.Tensor) -> None:
        tol = self._tolerance(case, name)
        if tol is None:
            return
        ours_t = torch.as_tensor(ours)
        if tuple(ours_t.shape) != tuple(golden.shape):
            self.checks.append(Check(case, f"{name} (shape {list(ours_t.shape)} vs {list(golden.shape)})",
                                     float("inf"), tol[0], tol[1]))
            return
        err = (ours_t.double() - golden.double()).abs().max().item() if golden.numel() else 0.0
        self.checks.append(Check(case, name, err, tol[0], tol[1]))

    def compare_value(self, case: str, name: str, ours: object, golden: object) -> None:
        self.checks.append(Check(case, name, 0.0 if ours == golden else float("inf"), 0.0, exact=True))

    def _tensors(self, case: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.folder / self.meta["cases"][case]["files"]["file"]))

    def _pixels(self, case: str, tensors: dict[str, torch.Tensor]) -> tuple[Image.Image, torch.Tensor]:
        image = Image.fromarray(tensors["image_u8"].numpy())
        pixels = to_tensor(image)
        if "image" in tensors:  # our uint8 -> [-1, 1] conversion must give the recorded pixel tensor
            err = (pixels - tensors["image"]).abs().max().item()
            self.checks.append(Check(case, "pixels from image_u8", err, 1e-6))
        return image, pixels

    def _prompt_ids(self, case: str) -> list[int]:
        spec = self.meta["cases"][case]
        ids = self.engine.tokenizer.encode(spec["prompt"])
        if "prompt_ids" in spec:
            self.compare_value(case, "prompt_ids", ids, spec["prompt_ids"])
        return self.engine.tokenizer.frame(spec["prompt"])

    # ------------------------------------------------------------------ cases
    @torch.no_grad()
    def case_a(self) -> None:
        case, t = "case_a", self._tensors("case_a")
        _, pixels = self._pixels(case, t)
        ctx = self.model.new_cache()
        vit = self.model.prefill_vit_image(ctx, pixels, self.special)
        self.compare(case, "vit_encoder_out", vit.encoder_out, t["vit_encoder_out"])
        self.compare(case, "connector_out", self.model.connector(vit.encoder_out), t["connector_out"])
        hidden = self.model.prefill_text(ctx, torch.tensor(self._prompt_ids(case)))
        logits = self.model.logits(hidden)
        self.compare(case, "prefill_text_logits", logits, t["prefill_text_logits"])
        self.compare(case, "final_prefill_logits", logits[-1], t["final_prefill_logits"])
        steps = t["decode_logits"].shape[0]
        # The reference runs `max_length` steps and returns the first max_length - 1 argmaxes.
        decode_logits: list[torch.Tensor] = []
        answer = self.engine.generate_text(ctx, TextOptions(max_new_tokens=steps), on_logits=decode_logits.append)
        self.compare(case, "decode_logits", torch.stack(decode_logits)[:steps], t["decode_logits"][: len(decode_logits)])
        sequence = [self.special.bos, *answer.token_ids][: steps]
        self.compare(case, "generated_sequence", sequence, t["generated_sequence"])
        self.compare(case, "greedy_ids", sequence[1:], t["greedy_ids"])

    @torch.no_grad()
    def case_b(self) -> None:
        case, t = "case_b", self._tensors("case_b")
        spec = self.meta["cases"][case]
        ctx = self.model.new_cache()
        self.model.prefill_text(ctx, torch.tensor(self._prompt_ids(case)))
        h, w = spec["image_hw"]
        ds = self.model.config.latent_downsample
        timestep = torch.tensor(float(spec["timestep"]))
        embeds = self.model.embed_latents(t["x_t"], timestep, (h // ds, w // ds))
        self.compare(case, "time_embedding", self.model.time_embedder(timestep[None], torch.float32)[0],
                     t["time_embedding"])
        block = self.model.frame_image_block(embeds, self.special)
        self.compare(case, "query_embeddings", block, t["query_embeddings"])
        hidden = self.model.noisy_latent_hidden(ctx, embeds, self.special)
        self.compare(case, "final_hidden", hidden, t["final_hidden"])
        self.compare(case, "velocity", self.model.llm2vae(hidden[1:-1]), t["velocity"])

    def _generation_case(self, case: str, with_image: bool) -> None:
        t, spec = self._tensors(case), self.meta["cases"][case]
        guidance = GuidanceOptions(
            num_timesteps=int(spec["num_timesteps"]), timestep_shift=float(spec["timestep_shift"]),
            text_scale=float(spec["cfg_text_scale"]), image_scale=float(spec["cfg_img_scale"]),
            interval=tuple(spec["cfg_interval"]), renorm_type=spec["cfg_renorm_type"],
            renorm_min=float(spec["cfg_renorm_min"]),
        )
        self._prompt_ids(case)
        items: list[object] = []
        if with_image:
            image, pixels = self._pixels(case, t)
            items.append(image)
            if "context_vae_latent" in t:
                self.compare(case, "context_vae_latent", self.engine.encode_image(image), t["context_vae_latent"])
            if "context_vit_encoder_out" in t:
                self.compare(case, "context_vit_encoder_out", self.model.encode_vit(pixels).encoder_out,
                             t["context_vit_encoder_out"])
        items.append(spec["prompt"])
        trace = GenerationTrace()
        height, width = spec["image_hw"]
        image_out, _ = self.engine.interleave(items, height=height, width=width, guidance=guidance,
                                              noise=t["noise"], trace=trace)
        names = {"gen_context": "cond", "cfg_text_context": "text_uncond", "cfg_img_context": "image_uncond"}
        for ref_name, state in spec.get("contexts", {}).items():
            ours = trace.contexts[names[ref_name]]
            if ref_name == "cfg_img_context" and guidance.image_scale <= 1.0:
                continue  # unused by the reference at this scale; we may share the cond context instead
            self.compare_value(case, f"{ref_name} kv/rope", list(ours), [state["kv_lens"][0], state["ropes"][0]])
        for key in t:
            match = re.fullmatch(r"step(\d+)\.(\w+)", key)
            if not match:
                continue
            record = trace.steps[int(match.group(1))]
            field_name = match.group(2)
            if field_name == "v":
                ours = record.v
            elif BRANCH_NAMES.get(field_name) in record.branches:
                ours = record.branches[BRANCH_NAMES[field_name]]
            else:
                self.checks.append(Check(case, f"{key} (branch not evaluated)", float("inf"), 0.0))
                continue
            self.compare(case, key, ours.cpu(), t[key])
        self.compare(case, "final_latent", trace.final_latent.cpu(), t["final_latent"])
        if "decoder_input" in t:
            self.compare(case, "decoder_input", trace.decoder_input.cpu(), t["decoder_input"])
        if "decoded" in t:
            self.compare(case, "decoded", trace.decoded.cpu(), t["decoded"])
        if "output_image_u8" in t:
            self.compare(case, "output_image_u8", torch.tensor(np.asarray(image_out), dtype=torch.int32),
                         t["output_image_u8"].int())

    def case_c(self) -> None:
        self._generation_case("case_c", with_image=False)

    def case_d(self) -> None:
        self._generation_case("case_d", with_image=True)

    @torch.no_grad()
    def case_e(self) -> None:
        case, t = "case_e", self._tensors("case_e")
        _, pixels = self._pixels(case, t)
        vae = self.engine.vae
        assert vae is not None
        self.compare(case, "encoder_moments", vae.moments(pixels[None])[0], t["encoder_moments"])
        latent = vae.encode(pixels[None])[0]
        self.compare(case, "latent", latent, t["latent"])
        self.compare(case, "decoded", vae.decode(t["latent"][None])[0], t["decoded"])

    def case_f(self) -> None:
        rules = self.meta["cases"]["case_f"]["resize_rules"]
        for name, spec in rules.items():
            if name == "inferencer_target_size_hw":
                bad = sum(list(generation_target_size(*r["in_wh"])) != r["out_hw"] for r in spec)
                self.checks.append(Check("case_f", name, float(bad), 0.0, exact=True))
                continue
            rule = ResizeRule(spec["max_size"], spec["min_size"], spec["stride"], spec["max_pixels"])
            if name in RESIZE_RULES and RESIZE_RULES[name] != rule:
                self.checks.append(Check("case_f", f"{name} preset", float("inf"), 0.0, exact=True))
            bad = sum(list(rule.target_size(*r["in_wh"])) != r["out_wh"] for r in spec["results"])
            self.checks.append(Check("case_f", name, float(bad), 0.0, exact=True))

    def run(self) -> list[Check]:
        for case in self.meta["cases"]:
            runner = getattr(self, case, None)
            if runner is None:
                self.checks.append(Check(case, "(unknown case)", float("inf"), 0.0))
                continue
            runner()
        return self.checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unimedvl.tools.reference_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="fixture folder (checkpoint + fixture.json + case_*.safetensors)")
    args = parser.parse_args(argv)
    try:
        with torch.no_grad():  # local: never switch autograd off for the caller's process
            checks = FixtureRunner(args.folder).run()
    except UnimedvlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for check in checks:
        print(check.line())
    failed = sum(not c.passed for c in checks)
    print(f"{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

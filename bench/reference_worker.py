"""The original UniMedVL code as a benchmark peer: loads a checkpoint once, then times calls sent on stdin.

Run by bench/reference_peer.py under a Python that has the reference's own dependencies
(transformers 4.49, einops, safetensors; see that script). It imports nothing from unimedvl.

    python bench/reference_worker.py --src UniMedVL/codes --checkpoint DIR

The reference needs two things a CPU does not have, replaced here and nowhere else:
* `flash_attn.flash_attn_varlen_func`: a stand-in that runs PyTorch's scaled_dot_product_attention on
  each packed segment (grouped-query heads, flash-attn's bottom-right causal alignment);
* its inference path casts q / k / v and some hidden states to bfloat16 (CUDA autocast does the rest
  on a GPU): on a CPU without native bf16 that is ~370x slower, so the sources are read from a copy in
  which `torch.bfloat16` reads `torch.float32` (qwen2_navit.py and siglip_navit.py only), and the whole
  run is float32, as ours is. The VAE returns its posterior mean (`reg.sample = False`), as ours does.
  `--dtype bfloat16` instead runs the sources as written under CPU autocast to bf16, as its CUDA autocast
  does on a GPU (for CPUs with AMX, beside ours with `compute="bfloat16"`); with bf16 weights and no
  autocast it stops on mixed dtypes (qwen2_navit.py line 617).

Protocol: one JSON object per line on stdin, one per line on stdout:
    {"task": "text-to-image" | "editing", "prompt": str, "image": path (editing), "size": int,
     "guidance": {...interleave_inference keyword arguments}, "noise": path.npy, "out": path.png}
    -> {"seconds": float, "prompt_ids": [...]}
"""

from __future__ import annotations

import argparse
import atexit
import importlib.machinery
import json
import shutil
import sys
import tempfile
import time
import types
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PATCHED_FILES = ("modeling/unimedvl/qwen2_navit.py", "modeling/unimedvl/siglip_navit.py")


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, max_seqlen_q: int = 0, max_seqlen_k: int = 0,
                     dropout_p: float = 0.0, softmax_scale: float | None = None, causal: bool = False,
                     **_: object) -> torch.Tensor:
    """flash_attn_varlen_func on a CPU: q `[total_q, Hq, D]`, k / v `[total_k, Hk, D]` -> `[total_q, Hq, D]`."""
    out = torch.empty_like(q)
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(starts_q) - 1):
        q0, q1, k0, k1 = starts_q[i], starts_q[i + 1], starts_k[i], starts_k[i + 1]
        qs, ks, vs = (x.transpose(0, 1).unsqueeze(0) for x in (q[q0:q1], k[k0:k1], v[k0:k1]))
        mask = None
        if causal and q1 - q0 != k1 - k0:  # flash-attn aligns the causal mask to the bottom right
            rows = torch.arange(q1 - q0).unsqueeze(1) + (k1 - k0) - (q1 - q0)
            mask = torch.arange(k1 - k0).unsqueeze(0) <= rows
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, is_causal=causal and mask is None,
                                           scale=softmax_scale, enable_gqa=qs.shape[1] != ks.shape[1])
        out[q0:q1] = o.squeeze(0).transpose(0, 1)
    return out


def install_flash_attn_stand_in() -> None:
    module = types.ModuleType("flash_attn")
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    module.__version__ = "2.7.0"
    module.flash_attn_varlen_func = varlen_attention
    sys.modules["flash_attn"] = module


def fp32_copy(src: Path) -> Path:
    """A copy of the reference `codes` folder whose inference path stays in float32."""
    root = Path(tempfile.mkdtemp(prefix="unimedvl-reference-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    out = root / "codes"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.pyc", "__pycache__"))
    for name in PATCHED_FILES:
        path = out / name
        path.write_text(path.read_text().replace("torch.bfloat16", "torch.float32"))
    return out


class FixedResize:
    """The reference transforms' interface for images already at a multiple of the stride (no resizing)."""

    def __init__(self, stride: int) -> None:
        self.stride, self.max_size, self.min_size, self.max_pixels = stride, 10**6, 1, 10**12

    def __call__(self, image: Image.Image, img_num: int = 1) -> Image.Image:
        if image.width % self.stride or image.height % self.stride:
            raise ValueError(f"{image.size} is not a multiple of {self.stride}")
        return image


class FixedTransform:
    def __init__(self, stride: int) -> None:
        self.stride, self.resize_transform = stride, FixedResize(stride)

    def __call__(self, image: Image.Image, img_num: int = 1) -> torch.Tensor:
        array = np.asarray(self.resize_transform(image).convert("RGB"), dtype=np.float32) / 255.0
        return (torch.from_numpy(array).permute(2, 0, 1) - 0.5) / 0.5


def load_reference(checkpoint: Path):  # noqa: ANN201 - the reference's own types
    from data.data_utils import add_special_tokens
    from inferencer import InterleaveInferencer
    from modeling.autoencoder import load_ae
    from modeling.unimedvl import (
        Bagel,
        BagelConfig,
        Qwen2Config,
        Qwen2ForCausalLM,
        SiglipVisionConfig,
        SiglipVisionModel,
    )
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    llm_config = Qwen2Config.from_json_file(str(checkpoint / "llm_config.json"))
    llm_config.qk_norm, llm_config.tie_word_embeddings = True, False
    llm_config.layer_module = "Qwen2MoTDecoderLayer"
    llm_config._attn_implementation = "eager"  # the packed attention never reads it
    vit_config = SiglipVisionConfig.from_json_file(str(checkpoint / "vit_config.json"))
    vit_config.rope = False
    vit_config.num_hidden_layers -= 1
    vae_model, vae_config = load_vae(checkpoint, load_ae)
    vae_model.reg.sample = False
    config = BagelConfig(visual_gen=True, visual_und=True, llm_config=llm_config, vit_config=vit_config,
                         vae_config=vae_config, vit_max_num_patch_per_side=70, connector_act="gelu_pytorch_tanh",
                         latent_patch_size=2, max_latent_size=64)
    model = Bagel(Qwen2ForCausalLM(llm_config), SiglipVisionModel(vit_config), config)
    model.vit_model.vision_model.embeddings.convert_conv2d_to_linear(vit_config)
    index = checkpoint / "ema.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["ema.safetensors"]
    state = {}
    for name in files:
        state.update({k: v.float() for k, v in load_file(str(checkpoint / name)).items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise SystemExit(f"reference load: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    vae_model.eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(checkpoint / "tokenizer.json"))
    tokenizer, new_token_ids, _ = add_special_tokens(tokenizer)
    return InterleaveInferencer(model, vae_model, tokenizer, FixedTransform(16), FixedTransform(14), new_token_ids)


def load_vae(checkpoint: Path, load_ae):  # noqa: ANN001, ANN201
    """`load_ae`, whose FLUX sizes are hard-coded, unless `vae_config.json` names others (the tiny fixture):
    then the same autoencoder class at those sizes, loaded with load_ae's own key handling."""
    from modeling.autoencoder import AutoEncoder, AutoEncoderParams
    from safetensors.torch import load_file

    vae_model, params = load_ae(local_path=None)
    config_file = checkpoint / "vae_config.json"
    if config_file.is_file():
        stored = json.loads(config_file.read_text()).get("params", {})
        wanted = {k: stored.get(k, v) for k, v in vars(params).items()}
        if wanted != vars(params):
            params = AutoEncoderParams(**wanted)
            vae_model = AutoEncoder(params)
    state = {k.replace("module.", ""): v for k, v in load_file(str(checkpoint / "ae.safetensors")).items()}
    missing, unexpected = vae_model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise SystemExit(f"reference VAE load: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return vae_model.float(), params


def with_noise(model, noise: torch.Tensor) -> None:  # noqa: ANN001
    """Make the reference's `prepare_vae_latent` start from the given noise (it draws torch.randn)."""
    original = type(model).prepare_vae_latent

    def prepare(self, *args, **kwargs):  # noqa: ANN001, ANN202
        out = original(self, *args, **kwargs)
        if out["packed_init_noises"].shape != noise.shape:
            raise ValueError(f"noise {tuple(noise.shape)} does not fit {tuple(out['packed_init_noises'].shape)}")
        out["packed_init_noises"] = noise.clone()
        return out

    model.prepare_vae_latent = types.MethodType(prepare, model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, required=True, help="the reference checkout's codes/ folder")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    install_flash_attn_stand_in()
    sys.path.insert(0, str(fp32_copy(args.src) if args.dtype == "float32" else args.src))
    inferencer = load_reference(args.checkpoint)
    autocast = args.dtype == "bfloat16"
    print(json.dumps({"ready": True, "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        with_noise(inferencer.model, torch.from_numpy(np.load(request["noise"])))
        items: list = [request["prompt"]]
        if request["task"] == "editing":
            items = [Image.open(request["image"]).convert("RGB"), request["prompt"]]
        guidance = deepcopy(request["guidance"])
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = inferencer.interleave_inference(items, understanding_output=False,
                                                  image_shapes=(request["size"], request["size"]), **guidance)
        seconds = time.perf_counter() - start
        out[-1].save(request["out"])
        print(json.dumps({"seconds": seconds, "prompt_ids": inferencer.tokenizer.encode(request["prompt"])}), flush=True)


if __name__ == "__main__":
    main()

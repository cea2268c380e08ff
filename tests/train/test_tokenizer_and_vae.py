"""Our own tokenizer (BPE on corpus text, Qwen layout) and a small VAE trained on corpus images."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from unimedvl.checkpoint.folder import load_vae
from unimedvl.config import VAEConfig
from unimedvl.text.tokenizer import TextTokenizer
from unimedvl.train.tokenizer_training import QWEN_SPECIALS, corpus_texts, train_tokenizer
from unimedvl.train.vae_training import corpus_images, train_vae


def test_tokenizer_trained_on_corpus_text(train_corpus: Path, tmp_path: Path) -> None:
    train_tokenizer(corpus_texts(train_corpus), tmp_path, vocab_size=400)
    tok = TextTokenizer.from_dir(tmp_path)
    assert tok.vocab_size == 400 + len(QWEN_SPECIALS)  # 256 bytes + 144 merges, then the specials
    assert tok.special.bos == 400 + 1 and tok.special.end_of_image == 400 + 10
    text = "Does this chest X-ray show pneumonia? Ünïcode and 数字 123."
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("What imaging modality is this?")) < len("What imaging modality is this?") / 2
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["added_tokens_decoder"][str(tok.special.eos)]["content"] == "<|im_end|>"


def test_vae_learns_to_reconstruct(train_corpus: Path, tmp_path: Path) -> None:
    images = corpus_images(train_corpus, limit=64)
    assert sum(len(v) for v in images.values()) == 64 and list(images) == sorted(images)
    config = VAEConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1)
    losses = train_vae(images, tmp_path, config=config, steps=40, batch=8, size=32, lr=2e-3, source_balance=0.5, log_every=0)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    saved = VAEConfig.from_json_dict(json.loads((tmp_path / "vae_config.json").read_text()))
    assert saved.scale_factor > 0 and saved.ch == 32
    vae, report = load_vae(tmp_path / "ae.safetensors", saved, dtype=torch.float32, device=torch.device("cpu"))
    assert report.ok and report.loaded == len(vae.state_dict()) and not any(p.is_meta for p in vae.parameters())



def _png(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_sampler_tempers_sources_and_decodes_once() -> None:
    import random

    import pytest

    from unimedvl.train.vae_training import ImageSampler

    grey, red = [_png((v, v, v)) for v in range(90)], [_png((200, 10, 10), (400, 300))]
    draws = 3000
    for balance, expected in ((1.0, 1 / 91), (0.0, 0.5)):
        sampler = ImageSampler({"xray": grey, "fundus": red}, balance, keep_side=64)
        rng = random.Random(0)
        picks = [sampler.draw(rng) for _ in range(draws)]
        share = sum(p.getpixel((0, 0)) == (200, 10, 10) for p in picks) / draws
        assert abs(share - expected) < 0.03, (balance, share)
    # the 400x300 image is decoded once, kept at 64 px on its short side
    kept = [p for p in picks if p.getpixel((0, 0)) == (200, 10, 10)]
    assert kept[0].size == (85, 64) and all(p is kept[0] for p in kept)
    bounded = ImageSampler({"xray": grey}, keep_side=64, max_cached=5)
    rng = random.Random(1)
    levels = [bounded.draw(rng).getpixel((0, 0))[0] for _ in range(200)]
    assert len(bounded._decoded) == 5 and len(set(levels)) > 5
    assert bounded.draw(random.Random(1)).getpixel((0, 0))[0] == levels[0]  # evicted images are decoded again, the same
    with pytest.raises(ValueError, match="source_balance"):
        ImageSampler({"a": grey}, 1.5)
    with pytest.raises(ValueError, match="no images"):
        ImageSampler({"a": []})

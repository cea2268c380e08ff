"""Train a byte-level BPE tokenizer on a corpus's text, laid out like Qwen2.5's.

Same pre-tokenizer regex and NFC normalisation as Qwen2, byte-level alphabet (any text encodes),
BPE merges learnt from the corpus, then the 14 Qwen special tokens appended after the BPE entries
(so `<|im_start|>`, `<|im_end|>`, `<|vision_start|>`, `<|vision_end|>` exist, as the model needs).
Writes `tokenizer.json` and a Qwen-style `tokenizer_config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers

from unimedvl.data.storage import iter_samples
from unimedvl.text.tokenizer import qwen2_byte_level
from unimedvl.utils.files import atomic_write_text

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


def corpus_texts(corpus: str | Path, split: str = "train") -> Iterable[str]:
    for sample in iter_samples(corpus, split):
        yield from sample.texts()


def train_tokenizer(texts: Iterable[str], out: str | Path, *, vocab_size: int = 4096, extra: Iterable[str] = ()) -> Tokenizer:
    """BPE with `vocab_size` entries (bytes + merges), plus the specials after them."""
    tok = qwen2_byte_level(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator((t for stream in (texts, extra) for t in stream), trainer=trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in QWEN_SPECIALS])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "tokenizer.json", tok.to_str(pretty=True))
    base = tok.token_to_id(QWEN_SPECIALS[0])
    config = {"add_bos_token": False, "add_prefix_space": False, "bos_token": None, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "unk_token": None, "model_max_length": 32768,
              "tokenizer_class": "Qwen2Tokenizer",
              "added_tokens_decoder": {str(base + i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                                       "single_word": False, "special": True}
                                       for i, s in enumerate(QWEN_SPECIALS)}}
    atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    return tok

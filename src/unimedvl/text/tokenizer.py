"""Text tokenizer read from a checkpoint folder, through the `tokenizers` library.

Qwen2.5 folders ship `tokenizer.json`; when only `vocab.json` + `merges.txt` are present (the
files the reference's slow `Qwen2Tokenizer` reads), the same byte-level BPE is built from them with
Qwen2's pre-tokenizer regex and NFC normalisation, and the added tokens of `tokenizer_config.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from unimedvl.errors import CheckpointError, InputError

QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the four tokens that frame text and images (the reference's `new_token_ids`)."""

    bos: int  # <|im_start|>
    eos: int  # <|im_end|>
    start_of_image: int  # <|vision_start|>
    end_of_image: int  # <|vision_end|>


SPECIAL_TOKEN_NAMES = {
    "bos": "<|im_start|>",
    "eos": "<|im_end|>",
    "start_of_image": "<|vision_start|>",
    "end_of_image": "<|vision_end|>",
}


def qwen2_byte_level(bpe: models.BPE) -> Tokenizer:
    """A byte-level BPE tokenizer with Qwen2's normalisation (NFC), pre-tokenizer regex and decoder."""
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def _from_vocab_and_merges(folder: Path) -> Tokenizer:
    tok = qwen2_byte_level(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        added = sorted(config.get("added_tokens_decoder", {}).items(), key=lambda kv: int(kv[0]))
        for token_id, spec in added:
            tok.add_special_tokens([AddedToken(spec["content"], special=spec.get("special", True), normalized=False)])
            if tok.token_to_id(spec["content"]) != int(token_id):
                raise CheckpointError(
                    f"tokenizer_config.json: {spec['content']!r} should have id {token_id}, "
                    f"but the vocabulary gives {tok.token_to_id(spec['content'])}"
                )
    return tok


class TextTokenizer:
    """Encodes prompts and decodes generated ids; knows the four framing tokens."""

    def __init__(self, backend: Tokenizer) -> None:
        self.backend = backend
        ids = {}
        for field, token in SPECIAL_TOKEN_NAMES.items():
            token_id = backend.token_to_id(token)
            if token_id is None:
                raise CheckpointError(f"tokenizer has no {token} token; a Qwen2.5 vocabulary is required")
            ids[field] = token_id
        self.special = SpecialTokens(**ids)
        self._added_tokens = tuple(t.content for t in backend.get_added_tokens_decoder().values())

    @classmethod
    def from_dir(cls, folder: str | Path) -> "TextTokenizer":
        folder = Path(folder)
        try:
            if (folder / "tokenizer.json").is_file():
                return cls(Tokenizer.from_file(str(folder / "tokenizer.json")))
            if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
                return cls(_from_vocab_and_merges(folder))
        except CheckpointError:
            raise
        except Exception as exc:  # tokenizers raises plain Exceptions for malformed files
            raise CheckpointError(f"cannot read the tokenizer in {folder}: {exc}") from None
        raise CheckpointError(f"no tokenizer in {folder}: expected tokenizer.json, or vocab.json and merges.txt")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of user or corpus text. Control tokens typed in it (`<|im_end|>`, `<|vision_start|>`, ...)
        are encoded as the characters they are, never as the control tokens: text cannot forge a turn or an
        image delimiter. Framing comes only from :meth:`frame` and the packing code."""
        if not isinstance(text, str):
            raise InputError(f"prompt must be a string, got {type(text).__name__}")
        if not any(token in text for token in self._added_tokens):
            return self.backend.encode(text, add_special_tokens=False).ids
        self.backend.encode_special_tokens = True
        try:
            return self.backend.encode(text, add_special_tokens=False).ids
        finally:
            self.backend.encode_special_tokens = False

    def frame(self, text: str) -> list[int]:
        """`[<|im_start|>] + encode(text) + [<|im_end|>]`: how every text segment enters the model."""
        return [self.special.bos, *self.encode(text), self.special.eos]

    def save(self, folder: str | Path) -> None:
        """Write `tokenizer.json` (atomically), the file `from_dir` reads first."""
        from unimedvl.utils.files import atomic_write_text

        atomic_write_text(Path(folder) / "tokenizer.json", self.backend.to_str(pretty=True))

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

"""One loaded model serving every task: questions and reports, text-to-image, editing, interleaved.

    >>> mv = UniMedVL.from_pretrained("tests/fixtures/reference-tiny")
    >>> mv.ask(["cxr.png"], "Describe the findings.").text
    >>> mv.generate("A chest X-ray with pneumonia.", height=256, width=256, seed=0)   # PIL image
    >>> mv.edit("he.png", "Convert this H&E stain to a HER2 IHC stain.", seed=0)

Contexts follow the reference inferencer exactly (reference-architecture.md §3):

* understanding (`ask`, the reference `Bagel.chat`): each image as a ViT block (VQA resize rule),
  then the question as one text segment, then decoding from `<|im_start|>`;
* generation (`interleave`, the reference `interleave_inference`): every input image is resized by
  the VAE rule and enters as a VAE block then a ViT block; three contexts are kept - the full one,
  a text-unconditional one (state before the last text) and an image-unconditional one (texts only).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence

import torch
from PIL import Image

from unimedvl.checkpoint.folder import LoadedCheckpoint, load_checkpoint
from unimedvl.config import ImageConfig, UnifiedConfig
from unimedvl.errors import InputError
from unimedvl.imaging.pixels import ImageLike, load_image, to_tensor, to_uint8
from unimedvl.imaging.resize import ResizeRule, scaled_to_stride
from unimedvl.model.kv_cache import KVCache
from unimedvl.model.packing import unpatchify
from unimedvl.model.sampling import Branch, GuidanceKind, GuidanceOptions, StepRecord, sample_flow
from unimedvl.text.prompts import GEN_THINK_SYSTEM_PROMPT, VLM_THINK_SYSTEM_PROMPT
from unimedvl.utils.numbers import is_finite_number

_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
ProgressFn = Callable[[int, int], None]


@dataclass
class Answer:
    """Generated text. `thinking` holds the `<think>` part when think mode produced one."""

    text: str
    token_ids: list[int]
    finished: bool  # stopped at <|im_end|> (False: hit max_new_tokens)
    thinking: str | None = None

    @property
    def answer(self) -> str:
        """The text after the reasoning (the whole text when there is none)."""
        return _THINK_RE.sub("", self.text).strip() if self.thinking is not None else self.text


# Limits, each refused with a clear error before any large allocation.
MAX_PROMPT_CHARS = 32_000
MAX_NEW_TOKENS = 8_192
MAX_CONTEXT_TOKENS = 32_768
CPU_BATCH_MAX_LATENTS = 256  # batched guidance on a CPU up to 256 latent tokens (256 x 256 px)


@dataclass
class TextOptions:
    """Decoding: greedy by default; sampling with temperature and nucleus (top-p) when `do_sample`."""

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    min_new_tokens: int = 0  # `<|im_end|>` is not chosen before this many tokens (throughput benchmarks)

    def __post_init__(self) -> None:
        if not is_finite_number(self.max_new_tokens, integer=True) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise InputError(f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS}], got {self.max_new_tokens!r}")
        if not is_finite_number(self.min_new_tokens, integer=True) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise InputError(f"min_new_tokens must be an integer in [0, max_new_tokens], got {self.min_new_tokens!r}")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if not is_finite_number(value):
                raise InputError(f"{name} must be a finite number, got {value!r}")
        if self.do_sample and not self.temperature > 0:
            raise InputError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class DecodeState:
    """One request being decoded: its own context (a fork), options, sampler and the tokens so far."""

    context: KVCache
    options: TextOptions
    generator: torch.Generator | None
    on_token: Callable[[int], None] | None
    token: int  # the last token fed (or to feed next)
    ids: list[int] = field(default_factory=list)
    finished: bool = False  # stopped at <|im_end|>
    done: bool = False  # finished, or max_new_tokens reached


@dataclass
class GenerationTrace:
    """Optional record of a sampling run (for parity checks and debugging)."""

    noise: torch.Tensor | None = None
    steps: list[StepRecord] = field(default_factory=list)
    final_latent: torch.Tensor | None = None
    decoder_input: torch.Tensor | None = None
    decoded: torch.Tensor | None = None
    contexts: dict[str, tuple[int, int]] = field(default_factory=dict)


def _check_prompt(text: object, what: str = "prompt") -> str:
    if not isinstance(text, str):
        raise InputError(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"{what} is empty")
    if len(text) > MAX_PROMPT_CHARS:  # refused before tokenizing: an 80k-character prompt tried to allocate 25 GB
        raise InputError(f"{what} has {len(text):,} characters; at most {MAX_PROMPT_CHARS:,} are accepted")
    return text


def check_generation_size(config: UnifiedConfig, height: object, width: object) -> None:
    """Refuse an output size the network cannot draw (callable before any weights are loaded)."""
    ds = config.latent_downsample
    limit = ds * config.max_latent_size
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < ds or value % ds or value > limit:
            raise InputError(f"{name} must be a multiple of {ds} between {ds} and {limit}, got {value!r}")


class UniMedVL:
    """The model, its VAE and tokenizer, loaded once; every task is a method.

    Images are sized by the checkpoint's :class:`~unimedvl.config.ImageConfig` (`image_config.json`,
    or the reference rules for a released checkpoint); `image_config` overrides it.
    """

    def __init__(self, loaded: LoadedCheckpoint, *, image_config: ImageConfig | None = None) -> None:
        self.config = loaded.config
        self.model = loaded.model
        self.vae = loaded.vae
        self.tokenizer = loaded.tokenizer
        self.special = loaded.tokenizer.special
        self.load_reports = loaded.reports
        self.image_config = image_config or loaded.image_config
        self.think_trained = loaded.think_trained
        self.load_mode, self.quantize = loaded.mode, loaded.quantize
        self.sampling = loaded.sampling  # the checkpoint's recommended guidance (sampling_config.json)
        self._warned_sizes: set[tuple[int, int]] = set()
        # Guidance branches (2 for text-to-image, 3 for editing) in one forward (True), one by one (False),
        # or "auto": in one forward on a GPU, and on a CPU for blocks of at most CPU_BATCH_MAX_LATENTS latent
        # tokens (bench/image.py on 2 cores: 1.05-1.6x up to 256 px, 0.90x at 512 px). Same outputs within
        # float tolerance either way.
        self.batch_guidance: bool | str = "auto"
        sizes, patch, cell = self.image_config, self.config.vit.patch_size, self.config.latent_downsample
        self.vqa_vit_rule = ResizeRule.from_bounds(sizes.understanding_vit, patch)
        self.gen_vit_rule = ResizeRule.from_bounds(sizes.generation_vit, patch)
        self.gen_vae_rule = ResizeRule.from_bounds(sizes.vae, cell)

    @classmethod
    def from_pretrained(cls, folder: str | Path, **load_options: object) -> "UniMedVL":
        """Load from a folder in the released layout (see :func:`unimedvl.checkpoint.folder.load_checkpoint`)."""
        return cls(load_checkpoint(folder, **load_options))  # type: ignore[arg-type]

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------ contexts
    def new_context(self) -> KVCache:
        return self.model.new_cache()

    @torch.no_grad()
    def add_text(self, context: KVCache, text: str) -> None:
        """Append `<|im_start|> text <|im_end|>` to the context (its keys and values; no hidden states are kept)."""
        ids = self.tokenizer.frame(text)
        self._check_context(context, len(ids), "the prompt")
        self.model.prefill_text(context, torch.tensor(ids, dtype=torch.long), keep_last=0)

    def _check_context(self, context: KVCache, extra: int, what: str) -> None:
        """Refuse a context that would outgrow the model's positions (attention cost grows with its square)."""
        limit = min(self.config.llm.max_position_embeddings, MAX_CONTEXT_TOKENS)
        if context.length + extra > limit:
            raise InputError(f"{what} needs {extra:,} more tokens after {context.length:,}; this model takes at most "
                             f"{limit:,} in one context")

    @torch.no_grad()
    def add_image(self, context: KVCache, image: Image.Image, *, vae: bool, vit: bool, vit_rule: ResizeRule,
                  sample_posterior: bool = False, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Append an image as a VAE block and/or a ViT block (VAE first), as the reference does."""
        out: dict[str, torch.Tensor] = {}
        if vae:
            latent = self.encode_image(image, sample=sample_posterior, generator=generator)
            self.model.prefill_vae_image(context, latent, self.special)
            out["vae_latent"] = latent
        if vit:
            resized = vit_rule(image)
            patch = self.config.vit.patch_size
            self._check_context(context, (resized.width // patch) * (resized.height // patch) + 2, "the image")
            pixels = to_tensor(resized)
            out["vit_encoder_out"] = self.model.prefill_vit_image(context, pixels, self.special).encoder_out
        return out

    def _require_vae(self) -> None:
        if self.load_mode == "understanding":
            raise InputError("this model was loaded for understanding only (no generation expert, no VAE); "
                             "load it in full mode to generate or edit images")
        if self.vae is None:
            raise InputError("this checkpoint has no ae.safetensors, so it cannot generate or edit images")

    @torch.no_grad()
    def encode_image(self, image: Image.Image, *, sample: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """PIL (sides multiples of 16) -> scaled VAE latent `[16, H/8, W/8]`; posterior mean unless `sample`."""
        self._require_vae()
        # The VAE computes in its own dtype: fp32 on CPU unless the model was loaded with bf16 compute.
        pixels = to_tensor(image)[None].to(self.device, next(self.vae.parameters()).dtype)
        return self.vae.encode(pixels, sample=sample, generator=generator)[0]

    @torch.no_grad()
    def decode_latent(self, tokens: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent tokens `[h*w, 64]` -> (decoder input `[16, 2h, 2w]`, pixels `[3, H, W]` in [-1, 1])."""
        self._require_vae()
        p, ds = self.config.latent_patch_size, self.config.latent_downsample
        latent = unpatchify(tokens, height // ds, width // ds, p, self.config.vae.z_channels)
        decoded = self.vae.decode(latent[None].to(self.device, next(self.vae.parameters()).dtype))
        return latent, decoded[0]

    # ------------------------------------------------------------ text
    def _sample_next(self, logits: torch.Tensor, options: TextOptions, generator: torch.Generator | None) -> int:
        logits = logits[-1].float()
        if not options.do_sample:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / options.temperature, dim=-1)
        if options.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, 0) - sorted_probs < options.top_p  # always keeps the top token
            probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs.cpu(), 1, generator=generator))

    def start_decoding(self, context: KVCache, options: TextOptions | None = None, *,
                       generator: torch.Generator | None = None,
                       on_token: Callable[[int], None] | None = None) -> "DecodeState":
        """Begin decoding after `context` (on a fork: the context itself is not extended).

        Advance one or many states with :meth:`decode_together`; the server decodes all its running
        requests that way, one forward per token for all of them.
        """
        options = options or TextOptions()
        self._check_context(context, options.max_new_tokens + 1, f"max_new_tokens={options.max_new_tokens}")
        ctx = context.fork()
        ctx.reserve(options.max_new_tokens + 1)
        return DecodeState(ctx, options, generator, on_token, token=self.special.bos)

    @torch.no_grad()
    def decode_together(self, states: Sequence["DecodeState"],
                        on_logits: Callable[[torch.Tensor], None] | None = None) -> None:
        """One token for every unfinished state, in one forward (a single state takes the matrix-vector path)."""
        active = [s for s in states if not s.done]
        if not active:
            return
        tokens = torch.tensor([s.token for s in active])
        if len(active) == 1:
            logits = self.model.decode_step(active[0].context, tokens)
        else:
            logits = self.model.decode_batch([s.context for s in active], tokens)
        for row, state in enumerate(active):
            if on_logits is not None:
                on_logits(logits[row])
            row_logits = logits[row:row + 1]
            if len(state.ids) < state.options.min_new_tokens:
                row_logits = row_logits.clone()
                row_logits[:, self.special.eos] = float("-inf")
            token = self._sample_next(row_logits, state.options, state.generator)
            state.token = token
            if state.on_token is not None:
                state.on_token(token)
            if token == self.special.eos:
                state.finished = state.done = True
            else:
                state.ids.append(token)
                state.done = len(state.ids) >= state.options.max_new_tokens

    def answer(self, state: "DecodeState") -> Answer:
        """The text decoded so far by `state`."""
        text = self.tokenizer.decode(state.ids)
        match = _THINK_RE.search(text)
        return Answer(text=text, token_ids=list(state.ids), finished=state.finished,
                      thinking=match.group(1).strip() if match else None)

    @torch.no_grad()
    def generate_text(self, context: KVCache, options: TextOptions | None = None, *,
                      generator: torch.Generator | None = None,
                      on_logits: Callable[[torch.Tensor], None] | None = None,
                      on_token: Callable[[int], None] | None = None) -> Answer:
        """Decode from `<|im_start|>` after `context` until `<|im_end|>` or `max_new_tokens` tokens.

        The context itself is not extended (decoding runs on a fork, as the reference deep-copies).
        `on_token` is called with every sampled id as it is chosen (the closing `<|im_end|>` included).
        """
        state = self.start_decoding(context, options, generator=generator, on_token=on_token)
        while not state.done:
            self.decode_together([state], on_logits=on_logits)
        return self.answer(state)

    @torch.no_grad()
    def generate_text_batch(self, contexts: Sequence[KVCache], options: TextOptions | Sequence[TextOptions] | None = None,
                            *, generators: Sequence[torch.Generator | None] | None = None) -> list[Answer]:
        """Decode after several contexts at once (one forward per token for all of them)."""
        option_list = list(options) if isinstance(options, Sequence) else [options or TextOptions()] * len(contexts)
        generator_list = list(generators) if generators is not None else [None] * len(contexts)
        if not len(option_list) == len(generator_list) == len(contexts):
            raise InputError("give one options and one generator per context")
        states = [self.start_decoding(c, o, generator=g) for c, o, g in zip(contexts, option_list, generator_list)]
        while not all(s.done for s in states):
            self.decode_together(states)
        return [self.answer(s) for s in states]

    def _generator(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        if not is_finite_number(seed, integer=True) or not 0 <= seed < 2**63:
            # torch keeps 64 bits: larger seeds would collide silently with smaller ones
            raise InputError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        return torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def ask(self, images: ImageLike | Sequence[ImageLike], question: str, *, think: bool = False,
            options: TextOptions | None = None, seed: int | None = None,
            on_token: Callable[[int], None] | None = None, **text_options: object) -> Answer:
        """Answer a question (or write a report) about one or more images.

        Args:
            images: one image or a list (path, PIL or numpy); may be empty for a text-only question.
            question: the prompt, sent as one text segment with no role names (as the reference).
            think: prefill the reference's reasoning system prompt first; `Answer.thinking` holds it.
            options / text_options: :class:`TextOptions` (max_new_tokens, do_sample, temperature, top_p).
            seed: makes sampling reproducible.
            on_token: called with each generated token id as it is chosen (streaming, timing).
        """
        options = options or TextOptions(**text_options)  # type: ignore[arg-type]
        ctx = self.ask_context(images, question, think=think)
        return self.generate_text(ctx, options, generator=self._generator(seed), on_token=on_token)

    @torch.no_grad()
    def ask_context(self, images: ImageLike | Sequence[ImageLike], question: str, *, think: bool = False) -> KVCache:
        """The context `ask` decodes after: (the reasoning prompt,) each image as a ViT block, the question."""
        _check_prompt(question, "question")
        if isinstance(images, (str, Path, bytes, Image.Image)) or hasattr(images, "shape"):
            images = [images]  # type: ignore[list-item]
        # A str here is a path; in a conversation a str is text, so paths go on as Path (read once, there).
        pictures = [Path(image) if isinstance(image, str) else image for image in images]  # type: ignore[union-attr]
        return self.chat_context([*pictures, question], think=think)

    @torch.no_grad()
    def chat_context(self, items: Sequence[str | ImageLike], *, think: bool = False) -> KVCache:
        """Texts and images in order as an understanding context (images as ViT blocks, by the VQA rule).

        A `str` item is text; images are paths (`Path`), bytes, PIL images or arrays.

        A conversation is its turns in order, each text framed as its own block (the reference frames
        every text segment the same way); `ask` is `[*images, question]`.
        """
        if not items:
            raise InputError("a conversation needs at least one text or image")
        texts = [item for item in items if isinstance(item, str)]
        for text in texts:
            _check_prompt(text)
        pictures = [item if isinstance(item, str) else load_image(item) for item in items]  # all checked first
        ctx = self.new_context()
        if think:
            self._require_think()
            self.add_text(ctx, VLM_THINK_SYSTEM_PROMPT)
        for item in pictures:
            if isinstance(item, str):
                self.add_text(ctx, item)
            else:
                self.add_image(ctx, item, vae=False, vit=True, vit_rule=self.vqa_vit_rule)
        return ctx

    # ------------------------------------------------------------ images
    @torch.no_grad()
    def interleave(self, items: Sequence[str | ImageLike], *, output: Literal["image", "text"] = "image",
                   height: int | None = None, width: int | None = None, guidance: GuidanceOptions | None = None,
                   think: bool = False, text_options: TextOptions | None = None, seed: int | None = None,
                   noise: torch.Tensor | None = None, sample_posterior: bool = False,
                   progress: ProgressFn | None = None, trace: GenerationTrace | None = None
                   ) -> tuple[Image.Image | None, Answer | None]:
        """The reference `interleave_inference`: texts and images in order, then a text or an image.

        Args:
            items: strings and images, in order.
            output: "text" answers from the full context (images ViT-only, as the reference does);
                "image" generates one image with guidance.
            height, width: output size; default: the last input image's (resized) size, else the
                image config's default size (1024 for a released checkpoint).
            guidance: sampling options; default :meth:`guidance` ("editing" if an image is given, else
                "text_to_image").
            think: plan first (reasoning system prompt, then decoded text added to the context).
            seed: seeds the initial noise (and text sampling, VAE posterior sampling).
            noise: explicit initial noise `[h*w, 64]` (overrides `seed` for the noise).
            sample_posterior: sample the VAE posterior for input images (the reference's behaviour)
                instead of its mean.
            progress: called as progress(step, total) after each denoising step.
            trace: filled with noise, per-step velocities and decoder tensors when given.
        Returns:
            (image or None, the thinking/answer text or None).
        """
        if not items:
            raise InputError("interleave needs at least one text or image")
        understanding = output == "text"
        if output not in ("image", "text"):
            raise InputError(f"output must be 'image' or 'text', got {output!r}")
        generator = self._generator(seed)
        gen_ctx = self.new_context()
        text_uncond_ctx = gen_ctx.fork()
        # The image-unconditional context sees the texts only; it is built after the loop, and only
        # if it differs from the full context (for text-to-image it does not).
        image_uncond_texts: list[str] = []
        has_image = False
        if think:
            self._require_think()
            system = VLM_THINK_SYSTEM_PROMPT if understanding else GEN_THINK_SYSTEM_PROMPT
            self.add_text(gen_ctx, system)
            image_uncond_texts.append(system)
        last_size: tuple[int, int] | None = None
        for item in items:
            if isinstance(item, str):
                _check_prompt(item)
                text_uncond_ctx = gen_ctx.fork()
                self.add_text(gen_ctx, item)
                image_uncond_texts.append(item)
            else:
                image = self.gen_vae_rule(load_image(item))
                if not understanding:
                    self._require_vae()
                self.add_image(gen_ctx, image, vae=not understanding, vit=True, vit_rule=self.gen_vit_rule,
                               sample_posterior=sample_posterior, generator=generator)
                has_image = True
                last_size = (image.height, image.width)
                text_uncond_ctx = gen_ctx.fork()
        text_options = text_options or TextOptions(max_new_tokens=1000)
        if understanding:
            return None, self.generate_text(gen_ctx, text_options, generator=generator)
        self._require_vae()
        image_uncond_ctx = gen_ctx.fork()
        if has_image:
            image_uncond_ctx = self.new_context()
            for text in image_uncond_texts:
                self.add_text(image_uncond_ctx, text)
        answer = None
        if think:
            answer = self.generate_text(gen_ctx, text_options, generator=generator)
            self.add_text(gen_ctx, answer.text)
        if height is None and width is None:
            height, width = last_size or (self.image_config.default_size,) * 2
        elif height is None or width is None:
            raise InputError("give both height and width, or neither")
        guidance = guidance or self.guidance("editing" if last_size else "text_to_image")
        image = self._generate_image(gen_ctx, text_uncond_ctx, image_uncond_ctx, height, width, guidance,
                                     generator=generator, noise=noise, progress=progress, trace=trace)
        return image, answer

    def _require_think(self) -> None:
        if self.think_trained is False:
            raise InputError("this checkpoint was not trained for think mode (its capabilities.json says "
                             "\"think\": false); ask without think")

    def _warn_untrained_size(self, height: int, width: int) -> None:
        """Warn once per size that generation was not trained at (the checkpoint's `generation_sizes`)."""
        untrained = self.image_config.untrained_sides(height, width)
        if untrained and (height, width) not in self._warned_sizes:
            self._warned_sizes.add((height, width))
            trained = ", ".join(str(s) for s in self.image_config.generation_sizes)
            warnings.warn(f"{height}x{width}: this checkpoint was trained to generate at sides {trained} px only; "
                          "other sizes may give poor images", UserWarning, stacklevel=3)

    def _generate_image(self, cond: KVCache, text_uncond: KVCache, image_uncond: KVCache, height: int, width: int,
                        guidance: GuidanceOptions, *, generator: torch.Generator | None, noise: torch.Tensor | None,
                        progress: ProgressFn | None, trace: GenerationTrace | None) -> Image.Image:
        check_generation_size(self.config, height, width)
        self._warn_untrained_size(height, width)
        ds = self.config.latent_downsample
        grid = (height // ds, width // ds)
        shape = (grid[0] * grid[1], self.config.patch_latent_dim)
        if noise is None:
            noise = torch.randn(shape, generator=generator, dtype=torch.float32)  # drawn on CPU: same on any device
        elif tuple(noise.shape) != shape:
            raise InputError(f"noise must have shape {list(shape)} for a {height}x{width} image, got {list(noise.shape)}")
        contexts = {"cond": cond, "text_uncond": text_uncond, "image_uncond": image_uncond}
        same_as_cond = {name for name, ctx in contexts.items()
                        if ctx.store is cond.store and ctx.length == cond.length and ctx.rope == cond.rope}

        def velocities(branches: list[Branch], x: torch.Tensor, t: torch.Tensor) -> dict[Branch, torch.Tensor]:
            # One embedding per step for every branch (the branches differ only in their contexts), then
            # one forward for all distinct contexts (T2I: the image-unconditional context is the full one).
            embeds = self.model.embed_latents(x, t, grid)
            sources = list(dict.fromkeys("cond" if b in same_as_cond else b for b in branches))
            batch = self.batch_guidance
            if batch == "auto":
                batch = self.device.type != "cpu" or x.shape[0] <= CPU_BATCH_MAX_LATENTS
            if batch and len(sources) > 1:
                outs = self.model.velocity_batch([contexts[s] for s in sources], embeds, self.special)
            else:
                outs = [self.model.velocity(contexts[s], embeds, self.special) for s in sources]
            by_source = {s: v.float() for s, v in zip(sources, outs)}
            return {b: by_source["cond" if b in same_as_cond else b] for b in branches}

        def on_step(i: int, total: int, record: StepRecord) -> None:
            if trace is not None:
                trace.steps.append(record)
            if progress is not None:
                progress(i + 1, total)

        final = sample_flow(noise.to(self.device, torch.float32), None, guidance, on_step=on_step, velocities=velocities)
        decoder_input, decoded = self.decode_latent(final, height, width)
        if trace is not None:
            trace.noise, trace.final_latent = noise, final
            trace.decoder_input, trace.decoded = decoder_input, decoded
            trace.contexts = {k: (c.length, c.rope) for k, c in contexts.items()}
        return Image.fromarray(to_uint8(decoded))

    def guidance(self, kind: GuidanceKind, **overrides: object) -> GuidanceOptions:
        """Sampling options for a `kind` call ("text_to_image" or "editing"): the built-in defaults, then the
        checkpoint's recommendation (`sampling_config.json`), then `overrides`."""
        return self.sampling.options(kind, **overrides)

    def generate(self, prompt: str, *, height: int | None = None, width: int | None = None,
                 guidance: GuidanceOptions | None = None,
                 think: bool = False, seed: int | None = None, progress: ProgressFn | None = None,
                 **kwargs: object) -> Image.Image:
        """Text-to-image. Defaults follow BAGEL's T2I settings (scale 4, interval (0.4, 1], shift 3, 50 steps)
        with the checkpoint's recommendation on top (:meth:`guidance`);
        the size defaults to the image config's (1024 for a released checkpoint, the training size for ours)."""
        _check_prompt(prompt)
        height = self.image_config.default_size if height is None else height
        width = self.image_config.default_size if width is None else width
        image, _ = self.interleave([prompt], height=height, width=width,
                                   guidance=guidance or self.guidance("text_to_image"), think=think, seed=seed,
                                   progress=progress, **kwargs)  # type: ignore[arg-type]
        assert image is not None
        return image

    def edit(self, image: ImageLike, instruction: str, *, guidance: GuidanceOptions | None = None,
             understand_first: bool = False, think: bool = False, seed: int | None = None,
             height: int | None = None, width: int | None = None, progress: ProgressFn | None = None,
             **kwargs: object) -> Image.Image:
        """Image-to-image with text and image guidance (UniMedVL's editing defaults).

        Args:
            understand_first: UniMedVL's interactive flow: first describe the image for the instruction
                (greedy, image ViT-only) and append that text to the instruction.
        The output keeps the input's (resized) size unless height and width are given; for a checkpoint that
        records its trained generation sizes, that size is scaled to the nearest of them (aspect kept).
        """
        _check_prompt(instruction, "instruction")
        source = load_image(image)
        if height is None and width is None:
            height, width = self.edit_size(source.width, source.height)
        if understand_first:
            _, analysis = self.interleave([source, instruction], output="text", seed=seed,
                                          text_options=TextOptions(max_new_tokens=800))
            assert analysis is not None
            instruction = f"{instruction}\n\n{analysis.text}"
        result, _ = self.interleave([source, instruction], guidance=guidance or self.guidance("editing"),
                                    think=think, seed=seed, height=height, width=width, progress=progress,
                                    **kwargs)  # type: ignore[arg-type]
        assert result is not None
        return result

    def edit_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) of an edit of a width x height input: the VAE rule's size, scaled to the nearest
        trained generation side when the checkpoint records them."""
        w, h = self.gen_vae_rule.target_size(width, height)
        sizes = self.image_config.generation_sizes
        if not sizes or max(h, w) in sizes:
            return h, w
        side = min(sizes, key=lambda s: (abs(s - max(h, w)), -s))
        return scaled_to_stride((h, w), side / max(h, w), self.config.latent_downsample)

    def ask_many(self, requests: Iterable[tuple[Sequence[ImageLike], str]], **options: object) -> Iterable[Answer]:
        """Answer several (images, question) pairs with the one loaded model."""
        for images, question in requests:
            yield self.ask(images, question, **options)  # type: ignore[arg-type]

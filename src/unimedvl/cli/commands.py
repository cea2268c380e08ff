"""The model and training commands: each checks its inputs and outputs, then calls one library function."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from unimedvl.cli.options import (
    AxisOpt,
    CheckpointOpt,
    ComputeOpt,
    DeviceOpt,
    DtypeOpt,
    Int8DynamicOpt,
    Int8Opt,
    ModelChoice,
    SliceOpt,
    WindowOpt,
    progress,
    read_options,
    with_guidance,
)


def ask(
    images: List[Path] = typer.Argument(None, help="Image file(s) to ask about: PNG, JPEG, WebP (8 or 16 bit), "
                                        "DICOM or NIfTI."),
    question: Optional[str] = typer.Option(None, "--question", "-q", help="The question or report request."),
    batch: Optional[Path] = typer.Option(None, "--batch", help='JSONL file of {"image": path|[paths], '
                                         '"question": text} lines, answered with one loaded model.'),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the JSON lines here instead of stdout."),
    max_new_tokens: int = typer.Option(512, help="Most tokens to generate."),
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, help="Sampling temperature."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling threshold."),
    think: bool = typer.Option(False, "--think", help="Reason in <think> tags before answering."),
    seed: Optional[int] = typer.Option(None, help="Seed for sampling."),
    checkpoint: Optional[Path] = CheckpointOpt, dtype: Optional[str] = DtypeOpt, device: Optional[str] = DeviceOpt,
    int8: bool = Int8Opt, int8_dynamic: bool = Int8DynamicOpt, compute: Optional[str] = ComputeOpt,
    slice_index: Optional[int] = SliceOpt, axis: int = AxisOpt, window: Optional[str] = WindowOpt,
) -> None:
    """Answer a question or write a report about medical images (loads the understanding path only)."""
    from unimedvl.errors import InputError
    from unimedvl.imaging.pixels import load_image
    from unimedvl.inference.engine import TextOptions

    options = TextOptions(max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature, top_p=top_p)
    choice = ModelChoice(checkpoint, dtype, device, mode="understanding", int8=int8, int8_dynamic=int8_dynamic,
                         compute=compute)
    if batch is None:
        if question is None:
            raise InputError("give --question (or --batch FILE.jsonl)")
        reading = read_options(slice_index, axis, window)
        pictures = [load_image(p, options=reading) for p in images or []]  # refused before the model loads
        print(choice.load().ask(pictures, question, think=think, options=options, seed=seed).text)
        return
    if images or question:
        raise InputError("--batch takes its images and questions from the file; do not pass them as well")
    if not batch.is_file():
        raise InputError(f"batch file not found: {batch}")
    from unimedvl.inference.batch import answer_file, answered_lines

    if out is not None:
        answered_lines(out)  # a foreign --out file is refused before the model loads

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def show(line: int, total: int) -> None:
        print(f"\ranswered line {line}/{total}", end="", file=sys.stderr, flush=True)

    count = answer_file(choice.load(), batch, out, options=options, think=think, seed=seed, write=write,
                        progress=show)
    print(f"\n{count} lines answered" + (f" -> {out}" if out is not None else ""), file=sys.stderr)


@with_guidance("text_to_image")
def generate(
    prompt: str = typer.Argument(..., help="What to draw, e.g. 'A chest X-ray with pneumonia.'"),
    out: Path = typer.Option(Path("generated.png"), "--out", "-o", help="Output image file (.png, .jpg, .webp)."),
    height: Optional[int] = typer.Option(None, help="Output height (multiple of 16; default: the model's size)."),
    width: Optional[int] = typer.Option(None, help="Output width (multiple of 16; default: the model's size)."),
    seed: int = typer.Option(0, help="Seed of the initial noise."),
    think: bool = typer.Option(False, "--think", help="Plan in <think> tags first."),
    checkpoint: Optional[Path] = CheckpointOpt, dtype: Optional[str] = DtypeOpt, device: Optional[str] = DeviceOpt,
    compute: Optional[str] = ComputeOpt,
    *, guidance: dict,  # the guidance flags given, filled by with_guidance
) -> None:
    """Generate an image from text."""
    from unimedvl.imaging.pixels import output_format, save_image
    from unimedvl.inference.engine import check_generation_size

    output_format(out)
    choice = ModelChoice(checkpoint, dtype, device, compute=compute)
    config, sizes = choice.configs()
    check_generation_size(config, sizes.default_size if height is None else height,
                          sizes.default_size if width is None else width)
    model = choice.load()
    start = time.perf_counter()
    image = model.generate(prompt, height=height, width=width, guidance=model.guidance("text_to_image", **guidance),
                           think=think, seed=seed, progress=progress("generate"))
    save_image(image, out)
    print(f"wrote {out} ({image.width}x{image.height}) in {time.perf_counter() - start:.1f} s")


@with_guidance("editing")
def edit(
    image: Path = typer.Argument(..., help="Input image: PNG, JPEG, WebP (8 or 16 bit), DICOM or NIfTI."),
    instruction: str = typer.Argument(..., help="Edit instruction, e.g. 'Convert this H&E stain to HER2 IHC.'"),
    out: Path = typer.Option(Path("edited.png"), "--out", "-o", help="Output image file (.png, .jpg, .webp)."),
    seed: int = typer.Option(0, help="Seed of the initial noise."),
    understand_first: bool = typer.Option(False, "--understand-first",
                                          help="Describe the image first and append that to the instruction."),
    sample_posterior: bool = typer.Option(False, "--sample-posterior",
                                          help="Sample the VAE posterior (reference behaviour) instead of its mean."),
    think: bool = typer.Option(False, "--think", help="Plan in <think> tags first."),
    height: Optional[int] = typer.Option(None, help="Output height (default: the input's, sized for the model)."),
    width: Optional[int] = typer.Option(None, help="Output width (default: the input's, sized for the model)."),
    checkpoint: Optional[Path] = CheckpointOpt, dtype: Optional[str] = DtypeOpt, device: Optional[str] = DeviceOpt,
    compute: Optional[str] = ComputeOpt,
    slice_index: Optional[int] = SliceOpt, axis: int = AxisOpt, window: Optional[str] = WindowOpt,
    *, guidance: dict,  # the guidance flags given, filled by with_guidance
) -> None:
    """Edit an image following a text instruction (text and image guidance)."""
    from unimedvl.imaging.pixels import load_image, output_format, save_image
    from unimedvl.inference.engine import check_generation_size

    output_format(out)
    source = load_image(image, options=read_options(slice_index, axis, window))  # refused before the model loads
    if (height is None) != (width is None):
        raise typer.BadParameter("give both --height and --width, or neither")
    choice = ModelChoice(checkpoint, dtype, device, compute=compute)
    if height is not None:
        check_generation_size(choice.configs()[0], height, width)
    model = choice.load()
    start = time.perf_counter()
    result = model.edit(source, instruction, guidance=model.guidance("editing", **guidance),
                        understand_first=understand_first, think=think, seed=seed,
                        sample_posterior=sample_posterior, height=height, width=width, progress=progress("edit"))
    save_image(result, out)
    resized = "" if result.size == source.size or height is not None else (
        f"; the {source.width}x{source.height} input was sized to the model's trained sizes")
    print(f"wrote {out} ({result.width}x{result.height}{resized}) in {time.perf_counter() - start:.1f} s")


def serve(
    checkpoint: Optional[Path] = CheckpointOpt, dtype: Optional[str] = DtypeOpt, device: Optional[str] = DeviceOpt,
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback unless --api-key or --allow-remote)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="UNIMEDVL_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' on every API route "
                                          "(or set UNIMEDVL_API_KEY)."),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Listen on a non-loopback address without a key."),
    understanding_only: bool = typer.Option(False, "--understanding-only",
                                            help="Load the understanding path only (no images drawn; less memory)."),
    int8: bool = Int8Opt, int8_dynamic: bool = Int8DynamicOpt, compute: Optional[str] = ComputeOpt,
    max_running: int = typer.Option(16, help="Text requests decoded together in one batch."),
    max_queue: int = typer.Option(64, help="Requests waiting before new ones get 429."),
    timeout: float = typer.Option(300.0, help="Seconds a request may take, queue included."),
    threads: Optional[int] = typer.Option(None, help="Torch threads for the model (default: all cores but one, "
                                          "which reads images and answers HTTP)."),
) -> None:
    """Serve the model: OpenAI-compatible HTTP API (chat, images) and a web page at http://HOST:PORT/."""
    from unimedvl.serve.run import serve as run_server
    from unimedvl.serve.settings import ServerSettings, check_bind

    settings = ServerSettings(api_key=api_key, max_running=max_running, max_queue=max_queue,
                              request_timeout_s=timeout)
    check_bind(host, api_key, allow_remote)  # refused before the model loads
    choice = ModelChoice(checkpoint, dtype, device, mode="understanding" if understanding_only else "full", int8=int8,
                         int8_dynamic=int8_dynamic, compute=compute)
    model = choice.load()
    print(f"serving {choice.label} on http://{host}:{port}/ (Ctrl-C stops)", file=sys.stderr)
    run_server(model, settings, host=host, port=port, allow_remote=allow_remote, threads=threads)


def info(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Read the configs of this folder."),
    config: Optional[str] = typer.Option(None, "--config", help="A preset instead: full or tiny."),
) -> None:
    """Parameter counts per component and memory per dtype (built on the meta device, nothing allocated)."""
    from unimedvl.config import UnifiedConfig
    from unimedvl.errors import InputError
    from unimedvl.tools.model_size import describe

    if checkpoint is not None and config is not None:
        raise InputError("give --checkpoint or --config, not both")
    if config is not None:
        print("\n".join(describe(UnifiedConfig.preset(config), f"preset {config!r}")))
        return
    folder = ModelChoice(checkpoint).folder
    print("\n".join(describe(UnifiedConfig.from_checkpoint_dir(folder), str(folder), folder=folder)))


def demo(
    out: Path = typer.Option(Path("outputs/demo"), "--out", "-o", help="Folder for the demo's outputs."),
    checkpoint: Optional[Path] = CheckpointOpt,
    steps: int = typer.Option(20, help="Timesteps per generated image."),
    size: Optional[int] = typer.Option(None, help="Generated image side (default: the model's training size)."),
) -> None:
    """Run every task once on bundled real images; write the results and an HTML report to a folder."""
    from unimedvl.inference.engine import check_generation_size
    from unimedvl.model.sampling import GuidanceOptions
    from unimedvl.tools.demo import run_demo

    choice = ModelChoice(checkpoint)
    GuidanceOptions(num_timesteps=steps)  # refuse bad values before loading
    config, sizes = choice.configs()
    side = sizes.default_size if size is None else size
    check_generation_size(config, side, side)
    report = run_demo(choice.load(), out, steps=steps, size=size, label=choice.label, progress=progress)
    for answer in report["answers"]:  # type: ignore[union-attr]
        print(f"Q ({answer['image']}): {answer['question']}\nA: {answer['answer']}")
    print(f"wrote {out}/demo.html (questions, 3 generated images, 1 edit)")


def train(
    recipe: Path = typer.Argument(..., help="A stage recipe or a curriculum YAML (see recipes/)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. optim.lr=3e-4 total_steps=20"),
    export: Optional[Path] = typer.Option(None, "--export", help="Write the released layout here when training ends."),
    out: Optional[Path] = typer.Option(None, "--out", help="Curriculum: the run folder (resumes what it holds)."),
    scale: float = typer.Option(1.0, "--scale", help="Curriculum: multiply every step count (smoke runs: 0.01)."),
    check: Optional[Path] = typer.Option(None, "--check", help="Curriculum: compare the model with this folder's "
                                         "SHA256SUMS, file by file (exit 1 on a difference)."),
) -> None:
    """Train one curriculum stage in this process (`torchrun ... -m unimedvl.train` for several), or a whole
    curriculum (a YAML with `kind: curriculum`: corpus, tokenizer, VAE and stages, resumable step by step)."""
    from unimedvl.utils.files import read_yaml_mapping

    if read_yaml_mapping(recipe, "recipe").get("kind") == "curriculum":
        from unimedvl.train.curriculum import compare_with, run_curriculum

        if out is None:
            raise typer.BadParameter("a curriculum needs --out DIR", param_hint="--out")
        if overrides or export is not None:
            raise typer.BadParameter("a curriculum takes no overrides or --export (its stages export themselves)")
        model = run_curriculum(recipe, out, scale=scale)
        print(f"model: {model}")
        if check is not None:
            results = compare_with(model, check)
            for name, same in results:
                print(f"{name}: {'identical' if same else 'DIFFERS'}")
            if not all(same for _, same in results):
                raise typer.Exit(1)
        return
    from unimedvl.train.run import run_recipe

    history = run_recipe(recipe, list(overrides or []), export=export)
    if export is not None:
        print(f"exported {export}")
    if history:
        print(f"step {history[-1]['step']}: loss {history[-1]['loss']:.4f}")

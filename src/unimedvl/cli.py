"""Command line: `unimedvl ask | generate | edit | info | demo`.

Each command is a thin wrapper over :class:`unimedvl.engine.UniMedVL`; every command that needs a
model takes `--checkpoint DIR` (default: the built-in tiny model). Bad input prints one line
`error: ...` and exits with status 2.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from unimedvl.errors import UnimedvlError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="UniMedVL: one model for medical image understanding and generation.")

CheckpointOpt = typer.Option(None, "--checkpoint", "-c", help="Checkpoint folder in the released layout "
                             "(default: the built-in tiny model).")
DtypeOpt = typer.Option(None, "--dtype", help="Weight dtype: float32, bfloat16 (float16 on GPU). Default: "
                        "float32 on CPU, bfloat16 on GPU.")
DeviceOpt = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available).")


def _progress(label: str):  # noqa: ANN202
    def report(step: int, total: int) -> None:
        end = "\n" if step == total else ""
        print(f"\r{label}: step {step}/{total}", end=end, file=sys.stderr, flush=True)

    return report


def _load(checkpoint: Optional[Path], dtype: Optional[str], device: Optional[str]):  # noqa: ANN202
    from unimedvl.assets import default_checkpoint
    from unimedvl.engine import UniMedVL

    return UniMedVL.from_pretrained(checkpoint or default_checkpoint(), dtype=dtype, device=device)


def _guidance(kind: str, steps: Optional[int], shift: Optional[float], cfg_text: Optional[float],
              cfg_image: Optional[float], cfg_interval: Optional[str], renorm: Optional[str],
              renorm_min: Optional[float]):  # noqa: ANN202
    from unimedvl.errors import InputError
    from unimedvl.sampling import GuidanceOptions

    overrides: dict[str, object] = {}
    for name, value in (("num_timesteps", steps), ("timestep_shift", shift), ("text_scale", cfg_text),
                        ("image_scale", cfg_image), ("renorm_type", renorm), ("renorm_min", renorm_min)):
        if value is not None:
            overrides[name] = value
    if cfg_interval is not None:
        try:
            lo, hi = (float(v) for v in cfg_interval.split(","))
        except ValueError:
            raise InputError(f"--cfg-interval must look like 0.4,1.0, got {cfg_interval!r}") from None
        overrides["interval"] = (lo, hi)
    factory = GuidanceOptions.editing if kind == "edit" else GuidanceOptions.text_to_image
    return factory(**overrides)


def _save_image(image, out: Path) -> None:  # noqa: ANN001
    from io import BytesIO

    from unimedvl.errors import InputError
    from unimedvl.io_utils import atomic_write_bytes

    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(out.suffix.lower())
    if fmt is None:
        raise InputError(f"--out must end in .png, .jpg or .webp, got {out.name}")
    buffer = BytesIO()
    image.save(buffer, format=fmt)
    atomic_write_bytes(out, buffer.getvalue())


@app.command()
def ask(
    images: List[Path] = typer.Argument(None, help="Image file(s) to ask about."),
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
) -> None:
    """Answer a question or write a report about medical images."""
    from unimedvl.engine import TextOptions
    from unimedvl.errors import InputError

    options = TextOptions(max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature, top_p=top_p)
    if batch is None:
        if question is None:
            raise InputError("give --question (or --batch FILE.jsonl)")
        model = _load(checkpoint, dtype, device)
        answer = model.ask(list(images or []), question, think=think, options=options, seed=seed)
        print(answer.text)
        return
    if images or question:
        raise InputError("--batch takes its images and questions from the file; do not pass them as well")
    if not batch.is_file():
        raise InputError(f"batch file not found: {batch}")
    model = _load(checkpoint, dtype, device)
    results = []
    lines = batch.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record: dict[str, object] = {"line": number}
        try:
            item = json.loads(line)
            if not isinstance(item, dict) or "question" not in item:
                raise InputError('each line must be a JSON object with "question" (and "image")')
            record.update({k: item[k] for k in ("id",) if k in item})
            paths = item.get("image", [])
            paths = [paths] if isinstance(paths, str) else paths
            if not isinstance(paths, list):
                raise InputError('"image" must be a path or a list of paths')
            paths = [str((batch.parent / p) if not Path(p).is_absolute() else p) for p in paths]
            answer = model.ask(paths, item["question"], think=think, options=options, seed=seed)
            record["answer"] = answer.text
        except json.JSONDecodeError as exc:
            record["error"] = f"invalid JSON: {exc.msg}"
        except UnimedvlError as exc:
            record["error"] = str(exc)
        results.append(json.dumps(record, ensure_ascii=False))
        print(f"\ranswered {number}/{len(lines)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    text = "\n".join(results) + ("\n" if results else "")
    if out is None:
        sys.stdout.write(text)
    else:
        from unimedvl.io_utils import atomic_write_text

        atomic_write_text(out, text)


def _image_options(kind: str):  # noqa: ANN202
    """Options shared by generate and edit."""
    return dict(
        steps=typer.Option(None, "--steps", help="Number of timesteps (N-1 model calls). Default 50."),
        shift=typer.Option(None, "--shift", help="Timestep shift. Default 3.0."),
        cfg_text=typer.Option(None, "--cfg-text", help="Text guidance scale. Default 4.0."),
        cfg_image=typer.Option(None, "--cfg-image", help=f"Image guidance scale. Default {2.0 if kind == 'edit' else 1.0}."),
        cfg_interval=typer.Option(None, "--cfg-interval", help="Guidance interval lo,hi on the shifted time."),
        renorm=typer.Option(None, "--renorm", help="global, channel or text_channel."),
        renorm_min=typer.Option(None, "--renorm-min", help="Lower clamp of the renorm factor."),
    )


_GEN = _image_options("generate")
_EDIT = _image_options("edit")


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What to draw, e.g. 'A chest X-ray with pneumonia.'"),
    out: Path = typer.Option(Path("generated.png"), "--out", "-o", help="Output image file."),
    height: Optional[int] = typer.Option(None, help="Output height (multiple of 16; default: the model's size)."),
    width: Optional[int] = typer.Option(None, help="Output width (multiple of 16; default: the model's size)."),
    seed: int = typer.Option(0, help="Seed of the initial noise."),
    think: bool = typer.Option(False, "--think", help="Plan in <think> tags first."),
    steps: Optional[int] = _GEN["steps"], shift: Optional[float] = _GEN["shift"],
    cfg_text: Optional[float] = _GEN["cfg_text"], cfg_image: Optional[float] = _GEN["cfg_image"],
    cfg_interval: Optional[str] = _GEN["cfg_interval"], renorm: Optional[str] = _GEN["renorm"],
    renorm_min: Optional[float] = _GEN["renorm_min"],
    checkpoint: Optional[Path] = CheckpointOpt, dtype: Optional[str] = DtypeOpt, device: Optional[str] = DeviceOpt,
) -> None:
    """Generate an image from text."""
    guidance = _guidance("generate", steps, shift, cfg_text, cfg_image, cfg_interval, renorm, renorm_min)
    model = _load(checkpoint, dtype, device)
    start = time.perf_counter()
    image = model.generate(prompt, height=height, width=width, guidance=guidance, think=think, seed=seed,
                           progress=_progress("generate"))
    _save_image(image, out)
    print(f"wrote {out} ({image.width}x{image.height}) in {time.perf_counter() - start:.1f} s")


@app.command()
def edit(
    image: Path = typer.Argument(..., help="Input image."),
    instruction: str = typer.Argument(..., help="Edit instruction, e.g. 'Convert this H&E stain to HER2 IHC.'"),
    out: Path = typer.Option(Path("edited.png"), "--out", "-o", help="Output image file."),
    seed: int = typer.Option(0, help="Seed of the initial noise."),
    understand_first: bool = typer.Option(False, "--understand-first",
                                          help="Describe the image first and append that to the instruction."),
    sample_posterior: bool = typer.Option(False, "--sample-posterior",
                                          help="Sample the VAE posterior (reference behaviour) instead of its mean."),
    think: bool = typer.Option(False, "--think", help="Plan in <think> tags first."),
    steps: Optional[int] = _EDIT["steps"], shift: Optional[float] = _EDIT["shift"],
    cfg_text: Optional[float] = _EDIT["cfg_text"], cfg_image: Optional[float] = _EDIT["cfg_image"],
    cfg_interval: Optional[str] = _EDIT["cfg_interval"], renorm: Optional[str] = _EDIT["renorm"],
    renorm_min: Optional[float] = _EDIT["renorm_min"],
    checkpoint: Optional[Path] = CheckpointOpt, dtype: Optional[str] = DtypeOpt, device: Optional[str] = DeviceOpt,
) -> None:
    """Edit an image following a text instruction (text and image guidance)."""
    guidance = _guidance("edit", steps, shift, cfg_text, cfg_image, cfg_interval, renorm, renorm_min)
    model = _load(checkpoint, dtype, device)
    start = time.perf_counter()
    result = model.edit(image, instruction, guidance=guidance, understand_first=understand_first, think=think,
                        seed=seed, sample_posterior=sample_posterior, progress=_progress("edit"))
    _save_image(result, out)
    print(f"wrote {out} ({result.width}x{result.height}) in {time.perf_counter() - start:.1f} s")


@app.command()
def info(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Read the configs of this folder."),
    config: Optional[str] = typer.Option(None, "--config", help="A preset instead: full or tiny."),
) -> None:
    """Parameter counts per component and memory per dtype (built on the meta device, nothing allocated)."""
    from unimedvl.assets import default_checkpoint
    from unimedvl.checkpoint import weight_files
    from unimedvl.config import UnifiedConfig
    from unimedvl.errors import InputError
    from unimedvl.info import model_size, weights_file_summary

    if checkpoint is not None and config is not None:
        raise InputError("give --checkpoint or --config, not both")
    if config is not None:
        cfg, source = UnifiedConfig.preset(config), f"preset {config!r}"
    else:
        folder = checkpoint or default_checkpoint()
        if not folder.is_dir():
            raise InputError(f"checkpoint folder not found: {folder}")
        cfg, source = UnifiedConfig.from_checkpoint_dir(folder), str(folder)
    llm, vit = cfg.llm, cfg.vit
    print(f"config: {source}")
    print(f"LLM: {llm.num_hidden_layers} MoT layers, hidden {llm.hidden_size}, {llm.num_attention_heads} heads / "
          f"{llm.num_key_value_heads} KV heads, MLP {llm.intermediate_size}, vocab {llm.vocab_size}")
    print(f"ViT: {vit.num_hidden_layers} layers used, hidden {vit.hidden_size}, patch {vit.patch_size}; "
          f"VAE: ch {cfg.vae.ch} x {list(cfg.vae.ch_mult)}, z {cfg.vae.z_channels}")
    for line in model_size(cfg).lines():
        print(line)
    if config is None:
        try:
            print(weights_file_summary(weight_files(folder, "ema")))
        except UnimedvlError as exc:
            print(f"weights file: {exc}")


@app.command()
def demo(
    out: Path = typer.Option(Path("outputs/demo"), "--out", "-o", help="Folder for the demo's outputs."),
    checkpoint: Optional[Path] = CheckpointOpt,
    steps: int = typer.Option(20, help="Timesteps per generated image."),
    size: Optional[int] = typer.Option(None, help="Generated image side (default: the model's training size)."),
) -> None:
    """Run every task once on bundled real images; write the results and an HTML report to a folder."""
    import base64
    import html
    import io

    from unimedvl.assets import SAMPLES
    from unimedvl.io_utils import atomic_write_text
    from unimedvl.sampling import GuidanceOptions

    model = _load(checkpoint, None, None)
    cxr, mri = SAMPLES / "chest_xray_nih.png", SAMPLES / "brain_mri_msd.png"
    questions = [(cxr, "What imaging modality is this?"), (cxr, "Does this chest X-ray show pneumonia?"),
                 (mri, "What imaging modality is this?"), (mri, "What does this MRI scan show?")]
    report: dict[str, object] = {"checkpoint": str(checkpoint or "built-in model"), "answers": []}
    start = time.perf_counter()
    for image, question in questions:
        answer = model.ask([image], question, max_new_tokens=32).text
        report["answers"].append({"image": image.name, "question": question, "answer": answer})  # type: ignore[union-attr]
    report["ask_seconds"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    prompts = ["A chest X-ray with pneumonia.", "A fundus photograph.", "A brain MRI scan."]
    generated = [model.generate(p, seed=0, height=size, width=size, guidance=GuidanceOptions.text_to_image(num_timesteps=steps, interval=(0.0, 1.0)),
                                progress=_progress("generate")) for p in prompts]
    report["generate_seconds"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    instruction = "Increase the resolution of this MRI scan 2 times."
    edited = model.edit(mri, instruction, seed=0, guidance=GuidanceOptions.editing(num_timesteps=steps),
                        progress=_progress("edit"))
    report["edit_seconds"] = round(time.perf_counter() - start, 3)
    for index, image in enumerate(generated):
        _save_image(image, out / f"generated_{index}.png")
    _save_image(edited, out / "edited_mri.png")

    def data_url(image) -> str:  # noqa: ANN001
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    from PIL import Image

    rows = "".join(f"<tr><td><img src='{data_url(Image.open(SAMPLES / a['image']).convert('RGB').resize((128, 128)))}'></td>"
                   f"<td>{html.escape(a['question'])}</td><td>{html.escape(a['answer'])}</td></tr>"
                   for a in report["answers"])  # type: ignore[union-attr]
    gens = "".join(f"<figure><img src='{data_url(g.resize((128, 128)))}'><figcaption>{html.escape(p)}</figcaption></figure>"
                   for p, g in zip(prompts, generated))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>unimedvl demo</title><style>body{{font-family:sans-serif;"
            f"max-width:900px;margin:auto}} figure{{display:inline-block;margin:6px}} td{{padding:4px;border-bottom:1px solid #ddd}}"
            f"</style></head><body><h1>unimedvl demo</h1><p>Model: {html.escape(str(report['checkpoint']))}</p>"
            f"<h2>Questions about real images</h2><table><tr><th>image</th><th>question</th><th>answer</th></tr>{rows}</table>"
            f"<h2>Text-to-image</h2>{gens}<h2>Editing</h2><figure><img src='{data_url(Image.open(mri).convert('RGB').resize((128, 128)))}'>"
            f"<figcaption>input</figcaption></figure><figure><img src='{data_url(edited.resize((128, 128)))}'><figcaption>"
            f"{html.escape(instruction)}</figcaption></figure><p>Times: ask {report['ask_seconds']} s, generate "
            f"{report['generate_seconds']} s, edit {report['edit_seconds']} s (CPU).</p></body></html>")
    atomic_write_text(out / "demo.html", page)
    atomic_write_text(out / "demo.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for answer in report["answers"]:  # type: ignore[union-attr]
        print(f"Q ({answer['image']}): {answer['question']}\nA: {answer['answer']}")
    print(f"wrote {out}/demo.html (questions, {len(generated)} generated images, 1 edit)")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train(
    recipe: Path = typer.Argument(..., help="A recipe YAML (see recipes/)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. optim.lr=3e-4 total_steps=20"),
    export: Optional[Path] = typer.Option(None, "--export", help="Write the released layout here when training ends."),
) -> None:
    """Train one curriculum stage in this process (use `torchrun ... -m unimedvl.train` for several)."""
    from unimedvl.train.config import TrainConfig
    from unimedvl.train.trainer import Trainer

    trainer = Trainer(TrainConfig.from_yaml(recipe, list(overrides or [])))
    try:
        history = trainer.fit()
        if export is not None:
            trainer.export(export)
            print(f"exported {export}")
    finally:
        trainer.close()
    if history:
        print(f"step {history[-1]['step']}: loss {history[-1]['loss']:.4f}")


data_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build and review multimodal corpora.")
app.add_typer(data_app, name="data")


@data_app.command("build")
def data_build(
    config: Optional[Path] = typer.Argument(None, help="Build config YAML (sources, splits, QC)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (re-running resumes and reuses finished chunks)."),
    sample: bool = typer.Option(False, "--sample", help="Build the bundled sample corpus from the bundled real data."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: the config's, else all cores)."),
    executor: Optional[str] = typer.Option(None, help="local or ray (overrides the config)."),
) -> None:
    """Build a corpus: sources -> QC stages 1-2 -> sharded Parquet, manifest, QC reports, dataset card."""
    from unimedvl.assets import SAMPLE_CORPUS_CONFIG
    from unimedvl.data.pipeline import BuildConfig, build_corpus
    from unimedvl.errors import InputError

    if sample == (config is not None):
        raise InputError("give a CONFIG file or --sample (not both)")
    build_config = BuildConfig.from_yaml(SAMPLE_CORPUS_CONFIG if sample else config)
    if executor is not None:
        if executor not in ("local", "ray"):
            raise InputError("--executor must be local or ray")
        build_config.executor = executor
    manifest = build_corpus(build_config, out, workers=workers)
    print(f"{manifest['total']} samples; by modality: {manifest['counts']['modality']}")
    print(f"by task: {manifest['counts']['task']}")
    print(f"manifest: {out / 'manifest.json'}; dataset card: {out / 'README.md'}; QC reports: {out / 'qc'}")


@data_app.command("transform")
def data_transform(
    corpus: Path = typer.Argument(..., help="A built corpus folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output corpus folder."),
    teacher: str = typer.Option("labels", help="labels | local:CHECKPOINT_DIR | openai:URL#MODEL"),
    cot: bool = typer.Option(True, "--cot/--no-cot", help="Distilled chain-of-thought answers."),
    captions: bool = typer.Option(True, "--captions/--no-captions", help="Caption-augmented generation prompts."),
    fraction: float = typer.Option(0.5, help="Share of eligible samples to transform (originals are kept)."),
) -> None:
    """Stage-2 transforms: chain-of-thought answers and caption-augmented prompts from a teacher."""
    from unimedvl.data.transforms import make_teacher, transform_corpus

    manifest = transform_corpus(corpus, out, make_teacher(teacher, out / "work"), cot=cot, captions=captions,
                                fraction=fraction)
    print(f"{manifest['total']} samples; transformed: {manifest['counts']['transform']}; "
          f"teacher failures: {manifest['teacher_failures']}")


@data_app.command("review")
def data_review(
    corpus: Path = typer.Argument(..., help="A built corpus folder."),
    port: int = typer.Option(8765, help="Port on 127.0.0.1."),
) -> None:
    """Serve the stage-3 review page locally; verdicts are stored in SQLite under qc/stage3/."""
    from unimedvl.data.qc.review import make_server
    from unimedvl.errors import InputError

    if not (corpus / "qc" / "stage3" / "review_sample.jsonl").is_file():
        raise InputError(f"{corpus} has no review sample; build the corpus first")
    server = make_server(corpus, port=port)
    print(f"review page: http://127.0.0.1:{port}/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@data_app.command("agreement")
def data_agreement(corpus: Path = typer.Argument(..., help="A built corpus folder.")) -> None:
    """Write the stage-3 report (Cohen's and Fleiss' kappa) from the stored reviews."""
    from unimedvl.data.qc.review import agreement_report

    report = agreement_report(corpus)
    print(json.dumps(report, indent=2))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        app(args=argv, prog_name="unimedvl", standalone_mode=False)
    except UnimedvlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

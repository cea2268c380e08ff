"""The corpus commands (`unimedvl data ...`): each a thin wrapper over the data package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def build(
    config: Optional[Path] = typer.Argument(None, help="Build config YAML (sources, splits, QC)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (re-running resumes and reuses finished chunks)."),
    sample: bool = typer.Option(False, "--sample", help="Build the bundled sample corpus from the bundled real data."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: the config's, else all cores)."),
    executor: Optional[str] = typer.Option(None, help="local or ray (overrides the config)."),
) -> None:
    """Build a corpus: sources -> QC stages 1-2 -> sharded Parquet, manifest, QC reports, dataset card."""
    from dataclasses import replace

    from unimedvl.assets import SAMPLE_CORPUS_CONFIG
    from unimedvl.data.pipeline import BuildConfig, build_corpus
    from unimedvl.errors import InputError

    if sample == (config is not None):
        raise InputError("give a CONFIG file or --sample (not both)")
    if executor is not None and executor not in ("local", "ray"):
        raise InputError("--executor must be local or ray")
    build_config = BuildConfig.from_yaml(SAMPLE_CORPUS_CONFIG if sample else config)
    if executor is not None:
        build_config = replace(build_config, executor=executor)
    manifest = build_corpus(build_config, out, workers=workers)
    print(f"{manifest.total} samples; by modality: {manifest.counts['modality']}")
    print(f"by task: {manifest.counts['task']}")
    print(f"manifest: {out / 'manifest.json'}; dataset card: {out / 'README.md'}; QC reports: {out / 'qc'}")


def transform(
    corpus: Path = typer.Argument(..., help="A built corpus folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output corpus folder."),
    teacher: str = typer.Option("labels", help="labels | local:CHECKPOINT_DIR | openai:URL#MODEL"),
    cot: bool = typer.Option(True, "--cot/--no-cot", help="Distilled chain-of-thought answers."),
    captions: bool = typer.Option(True, "--captions/--no-captions", help="Caption-augmented generation prompts."),
    fraction: float = typer.Option(0.5, help="Share of eligible samples to transform (originals are kept)."),
) -> None:
    """Stage-2 distillation: chain-of-thought answers and caption-augmented prompts from a teacher."""
    from unimedvl.data.distillation import make_teacher, transform_corpus
    from unimedvl.data.manifest import Manifest

    Manifest.read(corpus)  # a missing or broken corpus is refused before a teacher model loads

    def load_local(folder: str):  # noqa: ANN202
        from unimedvl.inference.engine import UniMedVL

        return UniMedVL.from_pretrained(folder)

    manifest = transform_corpus(corpus, out, make_teacher(teacher, out / "work", load_local=load_local), cot=cot,
                                captions=captions, fraction=fraction)
    print(f"{manifest.total} samples; transformed: {manifest.counts['transform']}; "
          f"teacher failures: {manifest.origin['teacher_failures']}")


def review(
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


def agreement(corpus: Path = typer.Argument(..., help="A built corpus folder.")) -> None:
    """Write the stage-3 report (Cohen's and Fleiss' kappa) from the stored reviews."""
    from unimedvl.data.qc.review import agreement_report

    print(json.dumps(agreement_report(corpus), indent=2))

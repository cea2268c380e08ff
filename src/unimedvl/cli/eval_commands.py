"""`unimedvl eval ...`: one command per benchmark, `all` over the bundled sets, `pairs` and `merge`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, List, Optional

import typer

from unimedvl.cli.options import CheckpointOpt, DeviceOpt, DtypeOpt, ModelChoice, guidance_options

DataOpt = typer.Option(None, "--data", help="The benchmark's folder in its release layout (default: the bundled copy).")
EndpointOpt = typer.Option(None, "--endpoint", help="Evaluate an OpenAI-compatible endpoint instead: URL#MODEL "
                           "(key from OPENAI_API_KEY).")
LimitOpt = typer.Option(None, "--limit", help="Only the first N items of a seeded order (the same N for every model).")
ShardOpt = typer.Option("0/1", "--shard", help="i/n: answer every n-th item into OUT/shard-i-of-n (then `eval merge`).")
ChecksOpt = typer.Option(None, "--check", help="Run only these checks (image_dependence, phrasing, resolution); "
                         "repeat the option. Default: all three.")
NoChecksOpt = typer.Option(False, "--no-checks", help="Skip the checks (accuracy only).")
RayOpt = typer.Option(0, "--ray", help="Answer on N Ray workers, one loaded model each (0: this process).")
SeedOpt = typer.Option(0, "--seed", help="Seed of the item order (with --limit); noise images are seeded by item id.")
BatchOpt = typer.Option(8, "--batch-size", help="Items answered per call (and written per line batch).")
JudgeOpt = typer.Option(None, "--judge", help="Also grade open answers by meaning with an LLM judge: URL#MODEL "
                        "(OpenAI-compatible, cached in OUT/judge_cache.sqlite).")


def _predictor(choice: ModelChoice, endpoint: Optional[str], ray: int):  # noqa: ANN202
    """(predictor, model description) from --checkpoint / --endpoint / --ray; checked before a model loads."""
    from unimedvl.errors import InputError
    from unimedvl.eval.predictors import EndpointPredictor, EnginePredictor, parse_endpoint

    if endpoint is not None:
        if choice.checkpoint is not None or ray:
            raise InputError("--endpoint evaluates a served model: do not pass --checkpoint or --ray with it")
        url, model = parse_endpoint(endpoint)
        return EndpointPredictor(url, model, api_key=os.environ.get("OPENAI_API_KEY")), {"name": f"{model} @ {url}"}
    folder = choice.folder
    weights = folder / "ema.safetensors"
    from unimedvl.data.storage import sha256_file

    digest = sha256_file(weights)[:16] if weights.is_file() else None  # streamed: a 14B file is not read into memory
    model = {"name": choice.label if choice.checkpoint else f"built-in ({folder.name})", "checkpoint": str(folder),
             "ema_sha256_16": digest}
    if ray:
        from unimedvl.eval.ray_runner import EngineFactory, RayPredictor

        return RayPredictor(EngineFactory(str(folder), choice.dtype, choice.device), ray, model["name"]), model
    return EnginePredictor(choice.load(), model["name"]), model


def _options(limit: Optional[int], shard: str, checks: Optional[List[str]], no_checks: bool, seed: int, batch: int,
             ray: int, judge: Optional[str] = None, out: Optional[Path] = None):  # noqa: ANN202
    from unimedvl.eval.checks import CHECKS
    from unimedvl.eval.predictors import parse_endpoint
    from unimedvl.eval.runner import RunOptions, parse_shard

    chosen = () if no_checks else tuple(checks or CHECKS)
    grader = None
    if judge is not None:
        from unimedvl.eval.judge import LLMJudge

        url, model = parse_endpoint(judge)
        grader = LLMJudge(url, model, (out or Path("outputs/eval")) / "judge_cache.sqlite",
                          api_key=os.environ.get("OPENAI_API_KEY"))
    # On Ray every pending item goes out in one call, so the actors share the work.
    return RunOptions(limit=limit, seed=seed, shard=parse_shard(shard), checks=chosen,
                      batch_size=10**9 if ray else batch, judge=grader)


def _data_dir(benchmark, data: Optional[Path]) -> Path:  # noqa: ANN001
    from unimedvl.errors import InputError

    folder = data or benchmark.bundled
    if folder is None:
        raise InputError(f"{benchmark.name} is not bundled: give --data with {benchmark.layout}")
    if not folder.exists():
        raise InputError(f"--data folder not found: {folder}")
    return folder


def _summary(results: dict) -> str:
    if "metrics" in results:
        return ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in results["metrics"].items())
    interval = results.get("accuracy_interval")
    line = f"accuracy {results['accuracy']:.3f} on {results['n']} items"
    if interval:
        line += f" (95 % interval {interval[0]:.3f}-{interval[1]:.3f})"
    base = results.get("majority_baseline") or {}
    if "p_above" in base:
        line += f"; majority {base['accuracy']:.3f} (p {base['p_above']:.2g} that the model is above it)"
    for name, check in results.get("checks", {}).items():
        line += f"; {name} {'pass' if check['passed'] else 'FAIL'}"
    return line


def benchmark_command(name: str) -> Callable[..., None]:
    def run(
        data: Optional[Path] = DataOpt,
        out: Optional[Path] = typer.Option(None, "--out", "-o", help=f"Output folder (default: outputs/eval/{name})."),
        limit: Optional[int] = LimitOpt, shard: str = ShardOpt, check: Optional[List[str]] = ChecksOpt,
        no_checks: bool = NoChecksOpt, seed: int = SeedOpt, batch_size: int = BatchOpt, ray: int = RayOpt,
        endpoint: Optional[str] = EndpointOpt, judge: Optional[str] = JudgeOpt,
        checkpoint: Optional[Path] = CheckpointOpt, dtype: Optional[str] = DtypeOpt, device: Optional[str] = DeviceOpt,
    ) -> None:
        from unimedvl.eval.benchmarks import get
        from unimedvl.eval.runner import log_progress, run_benchmark

        benchmark = get(name)
        folder = _data_dir(benchmark, data)
        target = out or Path("outputs/eval") / name
        options = _options(limit, shard, check, no_checks, seed, batch_size, ray, judge, target)
        predictor, model = _predictor(ModelChoice(checkpoint, dtype, device), endpoint, ray)
        results = run_benchmark(benchmark, folder, predictor, target, options=options, model=model, progress=log_progress)
        if options.shard[1] > 1:
            print(f"wrote shard {options.shard[0]}/{options.shard[1]} to {target}; run `unimedvl eval merge "
                  f"{name} --out {target}` when every shard is done")
            return
        print(f"{name}: {_summary(results)}; {target / 'report.md'}")

    run.__doc__ = f"Evaluate a model on {name} (see docs/evaluation.md)."
    return run


def evaluate_all(
    out: Path = typer.Option(Path("outputs/eval"), "--out", "-o", help="One folder per benchmark, and report.md."),
    limit: Optional[int] = LimitOpt, check: Optional[List[str]] = ChecksOpt, no_checks: bool = NoChecksOpt,
    seed: int = SeedOpt, batch_size: int = BatchOpt, endpoint: Optional[str] = EndpointOpt,
    checkpoint: Optional[Path] = CheckpointOpt, dtype: Optional[str] = DtypeOpt, device: Optional[str] = DeviceOpt,
) -> None:
    """Every bundled held-out set with one loaded model; a combined report."""
    from unimedvl.eval.benchmarks import BUNDLED, get
    from unimedvl.eval.report import write_combined
    from unimedvl.eval.runner import log_progress, run_benchmark

    options = _options(limit, "0/1", check, no_checks, seed, batch_size, 0)
    predictor, model = _predictor(ModelChoice(checkpoint, dtype, device), endpoint, 0)
    rows = []
    for name in BUNDLED:
        benchmark = get(name)
        results = run_benchmark(benchmark, benchmark.bundled, predictor, out / name, options=options, model=model,
                                progress=log_progress)
        rows.append((benchmark, results))
        print(f"{name}: {_summary(results)}")
    write_combined(out, rows)
    print(f"wrote {out / 'report.md'}")


def merge(
    benchmark_name: str = typer.Argument(..., help="The benchmark the shards belong to."),
    out: Path = typer.Option(..., "--out", "-o", help="The folder holding shard-*-of-n/ (as given to the shards)."),
) -> None:
    """Combine finished shards into one results.json and report (the same as one process gives)."""
    from unimedvl.eval.benchmarks import get
    from unimedvl.eval.runner import merge_shards

    results = merge_shards(get(benchmark_name), out)
    print(f"{benchmark_name}: {_summary(results)}; {out / 'report.md'}")


def pairs(
    pred: Path = typer.Option(..., "--pred", help="Folder of generated images (or masks)."),
    target: Path = typer.Option(..., "--target", help="Folder of reference images, matched by file name."),
    out: Path = typer.Option(Path("outputs/eval/pairs"), "--out", "-o", help="Where results.json goes."),
    masks: bool = typer.Option(False, "--masks", help="Score masks: Dice and IoU instead of PSNR and SSIM."),
) -> None:
    """Score image pairs: PSNR and SSIM (8-bit RGB), or Dice and IoU with --masks."""
    from unimedvl.eval.pairs import write_pairs

    results = write_pairs(pred, target, out, masks=masks)
    keys = ("dice", "iou") if masks else ("psnr", "ssim")
    print(json.dumps({"n": results["n"], **{k: round(results[k], 4) for k in keys}}), f"-> {out / 'results.json'}")


def _judge():  # noqa: ANN202
    from unimedvl.assets import JUDGE
    from unimedvl.eval.features import JudgeExtractor

    return JudgeExtractor.load(JUDGE)


ExtractorOpt = typer.Option(None, "--extractor", help="FID Inception weights as safetensors (converted from "
                            "pytorch-fid's pt_inception-2015-12-05): adds a real FID beside the proxy one.")


def _inception(path: Optional[Path]):  # noqa: ANN202
    if path is None:
        return None
    from unimedvl.eval.inception import InceptionExtractor

    return InceptionExtractor.load(path)


def generation(
    out: Path = typer.Option(Path("outputs/eval/generation"), "--out", "-o", help="Images and results.json."),
    seeds: int = typer.Option(32, "--seeds", help="Images per prompt (seeds 0 .. N-1); one image is 1/N of a modality's share (on UniMedVL-tiny 8 seeds differed from 32 by up to 0.31 in a cell)."),
    steps: int = typer.Option(20, "--steps", help="Timesteps per image."),
    size: Optional[int] = typer.Option(None, "--size", help="Image side (default: the model's)."),
    cfg_text: Optional[float] = typer.Option(None, "--cfg-text", help="Text guidance scale (default: the "
                                             "checkpoint's recommendation, as `unimedvl generate` uses)."),
    shift: Optional[float] = typer.Option(None, "--shift", help="Timestep shift (default: as --cfg-text)."),
    cfg_interval: Optional[str] = typer.Option(None, "--cfg-interval", help="Guidance interval lo,hi "
                                               "(default: as --cfg-text)."),
    extractor: Optional[Path] = ExtractorOpt,
    checkpoint: Optional[Path] = CheckpointOpt, dtype: Optional[str] = DtypeOpt, device: Optional[str] = DeviceOpt,
) -> None:
    """Text-to-image against real held-out images: proxy FID, recognition, proxy image-text score."""
    from unimedvl.errors import InputError
    from unimedvl.eval.generation_bench import evaluate_generation
    from unimedvl.eval.report import with_interval
    from unimedvl.eval.runner import log_progress
    from unimedvl.inference.engine import check_generation_size
    from unimedvl.model.sampling import GuidanceOptions

    if seeds < 2:
        raise InputError(f"--seeds must be at least 2 (a Fréchet distance needs two images), got {seeds}")
    GuidanceOptions(num_timesteps=steps)
    choice = ModelChoice(checkpoint, dtype, device)
    config, sizes = choice.configs()
    side = sizes.default_size if size is None else size
    check_generation_size(config, side, side)
    overrides = guidance_options("text_to_image", cfg_text=cfg_text, shift=shift, cfg_interval=cfg_interval)
    judge, inception = _judge(), _inception(extractor)
    results = evaluate_generation(choice.load(), judge, out, seeds=seeds, steps=steps, size=size, inception=inception,
                                  guidance=overrides, progress=log_progress("generate"))
    for modality, row in results["per_modality"].items():
        fid = "n/a (no bundled real images)" if row["fid_proxy"] is None else f"{row['fid_proxy']:.1f}"
        misses = ", ".join(f"{m} {n}" for m, n in row["judged_as"].items() if m != modality) or "none"
        recognised = with_interval(row["recognised"], row.get("recognised_interval"), percent=False)
        print(f"{modality}: recognised {recognised} (misses read as: {misses}), image-text proxy "
              f"{row['image_text_proxy']:.3f}, FID proxy {fid}")
    distance = results["distance"]
    print(f"pixel distance: different prompts, same seed {distance['between_prompts_same_seed']:.3f}; "
          f"same prompt, different seeds {distance['between_seeds_same_prompt']:.3f}")
    used = results["guidance"]
    print(f"sampled with text scale {used['text_scale']}, shift {used['timestep_shift']}, interval "
          f"{used['interval']}, {used['num_timesteps']} timesteps")
    print(f"wrote {out / 'results.json'}")


def edits(
    corpus: Path = typer.Option(..., "--corpus", help="A built corpus: its val and test splits are the held-out pairs."),
    task: str = typer.Option("super_resolution", "--task",
                             help="super_resolution (against bicubic), virtual_staining, cross_modal or counterfactual "
                                  "(against the identity)."),
    out: Path = typer.Option(Path("outputs/eval/edits"), "--out", "-o", help="Edited images and results.json."),
    size: Optional[int] = typer.Option(None, "--size", help="Output side (default: the largest trained one)."),
    per_modality: int = typer.Option(20, "--per-modality", help="At most N pairs per modality."),
    steps: int = typer.Option(20, "--steps", help="Timesteps per edit."),
    checkpoint: Optional[Path] = CheckpointOpt, dtype: Optional[str] = DtypeOpt, device: Optional[str] = DeviceOpt,
) -> None:
    """Image-to-image on held-out corpus pairs: PSNR / SSIM per modality against bicubic or the identity."""
    from unimedvl.eval.edit_bench import evaluate_edits, held_out_pairs
    from unimedvl.eval.runner import log_progress
    from unimedvl.model.sampling import GuidanceOptions

    GuidanceOptions(num_timesteps=steps)
    held_out_pairs(corpus, task, per_modality=1)  # a bad corpus or task is refused before the model loads
    results = evaluate_edits(ModelChoice(checkpoint, dtype, device).load(), corpus, out, task=task, size=size,
                             steps=steps, per_modality=per_modality, progress=log_progress("edit"))
    base = results["baseline"]
    for modality, row in results["per_modality"].items():
        print(f"{modality}: PSNR {row['psnr']:.2f} vs {base} {row[base + '_psnr']:.2f} (better on "
              f"{row['beats_baseline_psnr']}/{row['n']}), SSIM {row['ssim']:.3f} vs {row[base + '_ssim']:.3f}; "
              f"VAE ceilings: round trip {row['vae_round_trip_psnr']:.2f}, {base} + latent difference "
              f"{row['vae_residual_psnr']:.2f}")
    print(f"wrote {out / 'results.json'}")


def counterfactual(
    out: Path = typer.Option(Path("outputs/eval/counterfactual"), "--out", "-o", help="Edited images and results.json."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Edit only N of the held-out chest X-rays."),
    steps: int = typer.Option(20, "--steps", help="Timesteps per edit."),
    extractor: Optional[Path] = ExtractorOpt,
    checkpoint: Optional[Path] = CheckpointOpt, dtype: Optional[str] = DtypeOpt, device: Optional[str] = DeviceOpt,
) -> None:
    """Counterfactual chest X-rays (pneumonia added or removed): judge AUROC / F1, proxy FID, explanation metrics."""
    from unimedvl.eval.generation_bench import evaluate_counterfactual
    from unimedvl.eval.runner import log_progress
    from unimedvl.model.sampling import GuidanceOptions

    GuidanceOptions(num_timesteps=steps)
    choice = ModelChoice(checkpoint, dtype, device)
    judge, inception = _judge(), _inception(extractor)
    results = evaluate_counterfactual(choice.load(), judge, out, steps=steps, limit=limit, inception=inception,
                                      progress=log_progress("edit"))
    print(f"counterfactual: AUROC {results['auroc']:.3f}, F1 {results['f1']:.3f} on {results['n']} edits; "
          f"{out / 'results.json'}")


def compare(
    runs: List[str] = typer.Argument(..., help="Finished runs as LABEL=DIR (eval all, one benchmark, generation "
                                               "or edits folders), in the order the tables list them."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the tables to this markdown file."),
) -> None:
    """Side-by-side tables of finished runs (v1 against v2), read from their results.json."""
    from unimedvl.eval.compare import compare as tables
    from unimedvl.eval.compare import parse_runs
    from unimedvl.utils.files import atomic_write_text

    text = tables(parse_runs(runs))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    print(text, end="")

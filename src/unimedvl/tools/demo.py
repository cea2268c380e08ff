"""`unimedvl demo`: every task once on bundled real images, with an HTML report of what came out."""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Callable

from PIL import Image

from unimedvl.assets import SAMPLES
from unimedvl.imaging.pixels import load_image, save_image
from unimedvl.inference.engine import UniMedVL
from unimedvl.utils.files import atomic_write_text

QUESTIONS = (("chest_xray_nih.png", "What imaging modality is this?"),
             ("chest_xray_nih.png", "Does this chest X-ray show pneumonia?"),
             ("brain_mri_msd.png", "What imaging modality is this?"),
             ("brain_mri_msd.png", "What does this MRI scan show?"))
PROMPTS = ("A chest X-ray with pneumonia.", "A fundus photograph.", "A brain MRI scan.")
EDIT = ("brain_mri_msd.png", "Increase the resolution of this MRI scan 2 times.")


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _thumbnail(image: Image.Image) -> str:
    return _data_url(image.convert("RGB").resize((128, 128)))


def run_demo(model: UniMedVL, out: Path, *, steps: int = 20, size: int | None = None, label: str = "built-in model",
             progress: Callable[[str], Callable[[int, int], None]] | None = None) -> dict[str, object]:
    """Ask, generate and edit on the bundled samples; write images, `demo.json` and `demo.html` to `out`."""
    report: dict[str, object] = {"checkpoint": label, "answers": []}
    start = time.perf_counter()
    for name, question in QUESTIONS:
        answer = model.ask([SAMPLES / name], question, max_new_tokens=32).text
        report["answers"].append({"image": name, "question": question, "answer": answer})  # type: ignore[union-attr]
    report["ask_seconds"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    guidance = model.guidance("text_to_image", num_timesteps=steps)  # what `unimedvl generate` samples with
    generated = [model.generate(p, seed=0, height=size, width=size, guidance=guidance,
                                progress=progress("generate") if progress else None) for p in PROMPTS]
    report["generate_seconds"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    source, instruction = load_image(SAMPLES / EDIT[0]), EDIT[1]
    height = width = None
    sizes = model.image_config.generation_sizes
    if len(sizes) > 1:  # x2 super-resolution as trained: the input at half the largest trained side
        side = max(sizes)
        source = source.resize((side // 2, side // 2), Image.BICUBIC)
        height = width = side
    edited = model.edit(source, instruction, seed=0, guidance=model.guidance("editing", num_timesteps=steps),
                        height=height, width=width, progress=progress("edit") if progress else None)
    report["edit_sizes"] = {"input": list(source.size), "output": list(edited.size)}
    report["edit_seconds"] = round(time.perf_counter() - start, 3)
    for index, image in enumerate(generated):
        save_image(image, out / f"generated_{index}.png")
    save_image(edited, out / "edited_mri.png")

    rows = "".join(f"<tr><td><img src='{_thumbnail(load_image(SAMPLES / a['image']))}'></td>"
                   f"<td>{html.escape(a['question'])}</td><td>{html.escape(a['answer'])}</td></tr>"
                   for a in report["answers"])  # type: ignore[union-attr]
    gens = "".join(f"<figure><img src='{_thumbnail(g)}'><figcaption>{html.escape(p)}</figcaption></figure>"
                   for p, g in zip(PROMPTS, generated))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>unimedvl demo</title><style>body{{font-family:sans-serif;"
            f"max-width:900px;margin:auto}} figure{{display:inline-block;margin:6px}} td{{padding:4px;border-bottom:1px solid #ddd}}"
            f"</style></head><body><h1>unimedvl demo</h1><p>Model: {html.escape(label)}</p>"
            f"<h2>Questions about real images</h2><table><tr><th>image</th><th>question</th><th>answer</th></tr>{rows}</table>"
            f"<h2>Text-to-image</h2>{gens}<h2>Editing</h2><figure><img src='{_thumbnail(source)}'>"
            f"<figcaption>input {source.width}x{source.height}</figcaption></figure><figure><img src='{_thumbnail(edited)}'><figcaption>"
            f"{html.escape(instruction)}</figcaption></figure><p>Times: ask {report['ask_seconds']} s, generate "
            f"{report['generate_seconds']} s, edit {report['edit_seconds']} s (CPU).</p></body></html>")
    atomic_write_text(out / "demo.html", page)
    atomic_write_text(out / "demo.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report

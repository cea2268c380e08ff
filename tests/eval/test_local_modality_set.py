"""scripts/build_local_modality_set.py: a modality set from a corpus' held-out split, in the bundled layout."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from PIL import Image

from unimedvl.data.storage import iter_samples
from unimedvl.data.tasks import MODALITY_ANSWERS, MODALITY_QUESTIONS
from unimedvl.eval.benchmarks import bundled

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_local_modality_set.py"


def test_it_writes_held_out_images_of_every_modality(train_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "modality"
    run = subprocess.run([sys.executable, str(SCRIPT), "--corpus", str(train_corpus), "--out", str(out),
                          "--split", "val", "--per-modality", "3"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    items = bundled.load(out)
    held_out = {}  # modality -> the val split's distinct input images
    for sample in iter_samples(train_corpus, "val"):
        image = next((i.image for i in sample.items if i.kind == "image" and i.role == "user"), None)
        if image is not None:
            held_out.setdefault(sample.modality, set()).add(image.sha256[:12])
    images = Counter(item.groups["modality"] for item in items if item.groups["phrasing"] == "training")
    assert images == {m: min(3, len(shas)) for m, shas in held_out.items()}  # every modality, at most 3 images each
    for item in items:
        assert item.answer == MODALITY_ANSWERS[item.groups["modality"]]
        assert item.id.split("/")[0].split("-")[-1] in held_out[item.groups["modality"]]  # a held-out image
        assert (item.question in MODALITY_QUESTIONS) == (item.groups["phrasing"] == "training")
    first = items[0]
    assert Image.open(out / "images" / f"{first.id.split('/')[0]}.png").size[0] > 0
    assert (out / "LICENSE.md").read_text().count("- ") >= 1  # the sources' licences travel with the images


def test_it_refuses_a_corpus_without_the_split(train_corpus: Path, tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(SCRIPT), "--corpus", str(train_corpus), "--out", str(tmp_path / "m"),
                          "--split", "test"], capture_output=True, text=True)
    assert run.returncode != 0 and "no built 'test' split" in run.stderr

"""Local experiment: can a ViT of UniMedVL-tiny's size (3 layers, hidden 128, patch 14), trained alone from scratch
with a linear head, tell the classes apart at the side the model reads (56 px) and at twice it (112 px)?

    .venv/bin/python scripts/vit_probe.py [--sets breast,cxr --kermany DIR] [--sides 56,112]

Training images: BreastMNIST's train split (bundled with the package) and, for `cxr`, the Kermany 224 px
training folder given by --kermany (NORMAL/, PNEUMONIA/; not bundled) without the patients of the bundled
cxr-pneumonia set (the corpus recipe's held-out list and group pattern). Held out: the bundled cxr-pneumonia
and breast-ultrasound images. Classes drawn equally often, 800 AdamW steps of 32 images, two seeds. It
separates what the vision encoder can learn from what the whole curriculum makes of it; not a test.
"""

import argparse
import random
import re
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from unimedvl.assets import ASSETS, EVAL_SETS
from unimedvl.config import ViTConfig
from unimedvl.eval.benchmarks import bundled
from unimedvl.model.packing import grid_position_ids, patchify
from unimedvl.model.siglip_navit import SiglipNaViT

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "unimedvl-tiny"


def load(path):
    return Image.open(path).convert("L")


def evalset(name, positive):
    """(image, 1 if its label is `positive`) for each distinct image of a bundled held-out set."""
    images = {}
    for item in bundled.load(EVAL_SETS / name):
        images.setdefault(item.image, int(item.groups["label"] == positive))
    return [(load(path), label) for path, label in images.items()]


def cxr_train(folder: Path):
    """The Kermany folder without the held-out patients, grouped by the corpus recipe's own pattern."""
    source = next(s for s in yaml.safe_load((RECIPE / "corpus.yaml").read_text())["sources"]
                  if isinstance(s, dict) and s["name"] == "kermany-cxr-224")
    pattern = re.compile(source["options"]["group_pattern"])
    held = {line.strip() for line in (RECIPE / source["options"]["exclude_patients_of"]).read_text().splitlines()
            if line.strip()}
    held_groups = {m.group(1) for m in map(pattern.match, held) if m}
    out = []
    for cls, y in (("NORMAL", 0), ("PNEUMONIA", 1)):
        for path in sorted((folder / cls).iterdir()):
            match = pattern.match(path.stem)
            if path.name not in held and not (match and match.group(1) in held_groups):
                out.append((load(path), y))
    return out


def breast_train():
    d = np.load(ASSETS / "sample_data" / "medmnist" / "breastmnist_no_test.npz")
    return [(Image.fromarray(im), int(label == 0)) for im, label in zip(d["train_images"], d["train_labels"].ravel())]


def tensor(img, side):
    a = np.asarray(img.resize((side, side), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(a)[None].expand(3, -1, -1)


def run(train, test, side, steps=800, batch=32):
    cfg = ViTConfig(hidden_size=128, intermediate_size=384, num_attention_heads=4, num_hidden_layers=3)
    vit = SiglipNaViT(cfg)
    head = torch.nn.Linear(128, 2)
    params = list(vit.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    n = side // 14
    pos = grid_position_ids(n, n, cfg.image_size // cfg.patch_size)
    X = [patchify(tensor(i, side), 14) for i, _ in train]
    Y = torch.tensor([y for _, y in train])
    # class-balanced draws, as the trainer's label_balance does
    by = {c: [k for k in range(len(Y)) if Y[k] == c] for c in (0, 1)}

    def fwd(xs):
        f = vit(torch.cat(xs), pos.repeat(len(xs)), [n * n] * len(xs))
        return head(f.view(len(xs), n * n, -1).mean(1))

    t = time.time()
    for s in range(steps):
        idx = [random.choice(by[s2 % 2]) for s2 in range(batch)]
        loss = torch.nn.functional.cross_entropy(fwd([X[k] for k in idx]), Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        xt = [patchify(tensor(i, side), 14) for i, _ in test]
        yt = torch.tensor([y for _, y in test])
        pred = torch.cat([fwd(xt[k : k + 26]).argmax(-1) for k in range(0, len(xt), 26)])
    acc = (pred == yt).float().mean().item()
    per = [((pred == yt) & (yt == c)).sum().item() / (yt == c).sum().item() for c in (0, 1)]
    return acc, per, time.time() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="breast", help="comma-separated: breast, cxr")
    parser.add_argument("--kermany", type=Path, help="the Kermany 224 px training folder (needed for cxr)")
    parser.add_argument("--sides", default="56,112")
    args = parser.parse_args()
    names = args.sets.split(",")
    if "cxr" in names and not (args.kermany and (args.kermany / "NORMAL").is_dir()):
        parser.error("--sets cxr needs --kermany DIR holding NORMAL/ and PNEUMONIA/")
    loaders = {"cxr": lambda: (cxr_train(args.kermany), evalset("cxr-pneumonia", "pneumonia")),
               "breast": lambda: (breast_train(), evalset("breast-ultrasound", "malignant"))}
    for name in names:
        tr, te = loaders[name]()
        maj = max(sum(y for _, y in te), len(te) - sum(y for _, y in te)) / len(te)
        for side in (int(v) for v in args.sides.split(",")):
            for seed in (0, 1):
                torch.manual_seed(seed)
                random.seed(seed)
                acc, per, sec = run(tr, te, side)
                print(f"{name} train {len(tr)} test {len(te)} (majority {maj:.3f}) side {side} seed {seed}: "
                      f"acc {acc:.3f} per class {per[0]:.2f}/{per[1]:.2f} ({sec:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

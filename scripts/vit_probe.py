"""Local experiment: can a ViT of UniMedVL-tiny's size (3 layers, hidden 128, patch 14), trained alone from scratch
with a linear head, tell the classes apart at the side the model reads (56 px) and at twice it (112 px)?

    .venv/bin/python scripts/vit_probe.py [cxr] [breast] [quick]

Training images: the Kermany 224 px set without the patients of the bundled cxr-pneumonia set, and BreastMNIST's
train split (both from ../shared/data); held out: the bundled cxr-pneumonia and breast-ultrasound images. Classes
drawn equally often, 800 AdamW steps of 32 images, two seeds; `quick` runs 56 px only. Not a test: it needs the
shared data folder. It separates what the vision encoder can learn from what the whole curriculum makes of it."""

import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unimedvl.config import ViTConfig
from unimedvl.model.packing import grid_position_ids, patchify
from unimedvl.model.siglip_navit import SiglipNaViT

ROOT = Path(__file__).resolve().parents[1]
SH = ROOT.parent / "shared" / "data"
EV = ROOT / "src/unimedvl/assets/eval_sets"


def load(p):
    return Image.open(p).convert("L")


def evalset(name, pos):
    items = [json.loads(line) for line in open(EV / name / "items.jsonl")]
    seen, out = set(), []
    for it in items:
        if it["image"] in seen:
            continue
        seen.add(it["image"])
        out.append((load(EV / name / it["image"]), int(it["groups"]["label"] == pos)))
    return out


def cxr_train():
    held = set(line.strip() for line in open(ROOT / "recipes/unimedvl-tiny/held-out-kermany.txt") if line.strip())
    pat = re.compile(r"^((?:NORMAL2-)?IM-\d+|person\d+)")
    held_groups = {pat.match(h).group(1) for h in held if pat.match(h)}
    out = []
    for cls, y in (("NORMAL", 0), ("PNEUMONIA", 1)):
        for p in sorted((SH / "cxr-pneumonia-kermany-224-train" / cls).iterdir()):
            g = pat.match(p.stem)
            if p.name in held or (g and g.group(1) in held_groups):
                continue
            out.append((load(p), y))
    return out


def breast_train():
    d = np.load(SH / "medmnist/breastmnist_no_test.npz")
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


sets = {
    "cxr": (cxr_train(), evalset("cxr-pneumonia", "pneumonia")),
    "breast": (breast_train(), evalset("breast-ultrasound", "malignant")),
}
sets = {k: v for k, v in sets.items() if k in sys.argv[1:] or len(sys.argv) == 1}
for name, (tr, te) in sets.items():
    maj = max(sum(y for _, y in te), len(te) - sum(y for _, y in te)) / len(te)
    for side in (56,) if "quick" in sys.argv else (56, 112):
        for seed in (0, 1):
            torch.manual_seed(seed)
            random.seed(seed)
            acc, per, sec = run(tr, te, side)
            print(
                f"{name} train {len(tr)} test {len(te)} (majority {maj:.3f}) side {side} seed {seed}: "
                f"acc {acc:.3f} per class {per[0]:.2f}/{per[1]:.2f} ({sec:.0f} s)",
                flush=True,
            )

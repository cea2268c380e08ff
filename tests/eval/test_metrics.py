"""Every metric against an independent implementation on the same inputs."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from scipy import linalg

from unimedvl.assets import SAMPLES
from unimedvl.eval.metrics.image import dice_iou, frechet_distance, psnr, ssim
from unimedvl.eval.metrics.text import bleu, cider, meteor, rouge_l, tokenize

PREDICTIONS = ["Heart size is normal. No focal consolidation or effusion.", "There is a small left pleural effusion.",
               "Cardiomegaly with mild pulmonary edema.", "no acute cardiopulmonary abnormality"]
REFERENCES = ["The heart size is normal. No focal consolidation, effusion or pneumothorax.",
              "Small left pleural effusion. No pneumothorax.", "Mild cardiomegaly. Pulmonary vascular congestion.",
              "No acute cardiopulmonary process."]


def _real_pair() -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(Image.open(SAMPLES / "brain_mri_msd.png").convert("RGB"), dtype=np.uint8)
    rng = np.random.default_rng(0)
    noisy = np.clip(image.astype(int) + rng.integers(-25, 26, image.shape), 0, 255).astype(np.uint8)
    return noisy, image


def test_psnr_and_ssim_equal_scikit_image() -> None:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    pred, target = _real_pair()
    assert psnr(pred, target) == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=255), abs=1e-10)
    assert ssim(pred, target) == pytest.approx(structural_similarity(target, pred, channel_axis=-1, data_range=255), abs=1e-10)
    grey = np.asarray(Image.open(SAMPLES / "chest_xray_nih.png").convert("L"))
    shifted = np.roll(grey, 3, axis=1)
    assert ssim(shifted, grey) == pytest.approx(structural_similarity(grey, shifted, data_range=255), abs=1e-10)
    assert psnr(target, target) == math.inf and ssim(target, target) == pytest.approx(1.0)


def test_bleu_equals_nltk_corpus_bleu() -> None:
    from nltk.translate.bleu_score import corpus_bleu

    ours = bleu(PREDICTIONS, REFERENCES)
    refs = [[tokenize(r).split()] for r in REFERENCES]
    hyps = [tokenize(p).split() for p in PREDICTIONS]
    for n in range(1, 5):
        weights = tuple([1.0 / n] * n)
        assert ours[n - 1] == pytest.approx(corpus_bleu(refs, hyps, weights=weights), rel=1e-6)


def test_rouge_l_equals_rouge_score_lcs_with_beta_1_2() -> None:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    beta = 1.2
    scores = []
    for p, r in zip(PREDICTIONS, REFERENCES):
        s = scorer.score(tokenize(r), tokenize(p))["rougeL"]
        prec, rec = s.precision, s.recall
        scores.append(0.0 if prec == 0 or rec == 0 else (1 + beta**2) * prec * rec / (rec + beta**2 * prec))
    assert rouge_l(PREDICTIONS, REFERENCES) == pytest.approx(np.mean(scores), rel=1e-9)


def _cider_d(predictions: list[str], references: list[str], n_max: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D written out from Vedantam et al. (2015), as coco-caption defines it (one reference each)."""
    def grams(text: str, n: int) -> Counter:
        words = tokenize(text).split()
        return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))

    refs = [[grams(r, n) for n in range(1, n_max + 1)] for r in references]
    doc_freq = Counter(g for ref in refs for counts in ref for g in counts)
    log_docs = math.log(float(len(references)))
    total = 0.0
    for pred, ref_text, ref in zip(predictions, references, refs):
        hyp = [grams(pred, n) for n in range(1, n_max + 1)]
        len_h, len_r = len(tokenize(pred).split()), len(tokenize(ref_text).split())
        score = 0.0
        for n in range(n_max):
            vec = lambda c: {g: tf * (log_docs - math.log(max(1.0, doc_freq[g]))) for g, tf in c.items()}  # noqa: E731
            vh, vr = vec(hyp[n]), vec(ref[n])
            norm_h = math.sqrt(sum(v * v for v in vh.values()))
            norm_r = math.sqrt(sum(v * v for v in vr.values()))
            dot = sum(min(vh[g], vr[g]) * vr[g] for g in vh if g in vr)
            if norm_h and norm_r:
                score += dot / (norm_h * norm_r) * math.exp(-((len_h - len_r) ** 2) / (2 * sigma**2))
        total += score / n_max * 10.0
    return total / len(predictions)


def test_cider_equals_a_direct_computation() -> None:
    assert cider(PREDICTIONS, REFERENCES) == pytest.approx(_cider_d(PREDICTIONS, REFERENCES), rel=1e-9)


def test_meteor_runs_and_orders_reports() -> None:
    import shutil

    if shutil.which("java") is None:
        assert meteor(PREDICTIONS, REFERENCES) is None
        return
    same = meteor(REFERENCES, REFERENCES)
    unrelated = meteor(["The knee joint space is preserved."] * 4, REFERENCES)
    assert same > 0.9 and unrelated < 0.1 < meteor(PREDICTIONS, REFERENCES) < same


def test_frechet_distance_equals_scipy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 16)), rng.normal(0.5, 1.5, size=(250, 16)) @ rng.normal(size=(16, 16))
    mu_a, mu_b, s_a, s_b = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    direct = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * linalg.sqrtm(s_a @ s_b).real)
    assert frechet_distance(a, b) == pytest.approx(direct, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_dice_and_iou_by_hand() -> None:
    pred = np.zeros((4, 4), dtype=np.uint8)
    pred[:2, :] = 255  # 8 pixels
    target = np.zeros((4, 4), dtype=np.uint8)
    target[1:3, :] = 1  # 8 pixels, 4 shared
    assert dice_iou(pred, target) == (pytest.approx(0.5), pytest.approx(4 / 12))
    assert dice_iou(np.zeros((3, 3)), np.zeros((3, 3))) == (1.0, 1.0)

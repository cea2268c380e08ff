"""Metrics: report text (`text.py`, through pycocoevalcap) and images (`image.py`: PSNR, SSIM, Dice, IoU, FID)."""

"""Evaluation on held-out corpus splits: VQA accuracy against a majority baseline, and whether
generated images are recognised by an independent classifier trained on real images."""

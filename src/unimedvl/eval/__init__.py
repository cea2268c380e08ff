"""Evaluation: the benchmark harness behind `unimedvl eval` (`benchmarks/`, `runner.py`, `scoring.py`,
`checks.py`, `metrics/`, `predictors.py`, `generation_bench.py`; docs/evaluation.md), and the tiny
model's held-out evaluation on its own corpus (`corpus_eval.py`: VQA per template, an independent
image judge, VAE reconstruction, held-out losses)."""

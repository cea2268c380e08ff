"""Observation level: turn unimodal medical datasets into a unified multimodal corpus.

    sources (YAML per dataset) -> records -> task builders -> samples
      -> QC stage 1 (coarse) -> QC stage 2 (alignment) -> global dedup / leakage / splits
      -> sharded Parquet + manifest + QC reports + dataset card;  QC stage 3 = expert review.
"""

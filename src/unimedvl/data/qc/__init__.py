"""Quality control: stage 1 coarse filters, stage 2 medical alignment, stage 3 expert review."""

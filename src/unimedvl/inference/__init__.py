"""Analysis level: one loaded model serving every task (`engine.py`), and batches of questions (`batch.py`)."""

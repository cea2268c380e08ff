"""Images in and out: reading files, arrays and PIL images as RGB, tensors in [-1, 1] (`pixels.py`), and the reference resize rules (`resize.py`)."""

"""Tools around the model: compatibility proof against recorded reference outputs (`reference_check.py`),
parameter and memory counts (`model_size.py`), and the demo (`demo.py`)."""

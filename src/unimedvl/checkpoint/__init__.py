"""The checkpoint format in one place: the released folder layout (`folder.py`), strict safetensors
loading with one report (`weights.py`) and the key maps of every weights format we read (`keymaps.py`)."""

"""Text conventions of the model: the Qwen2.5 tokenizer with its framing tokens (`tokenizer.py`) and the reference system prompts (`prompts.py`)."""

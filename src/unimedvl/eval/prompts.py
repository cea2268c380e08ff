"""How an item is asked: the same text for every model, so baselines are re-run under one protocol."""

from __future__ import annotations

from unimedvl.eval.benchmarks.base import EvalItem

CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def prompt_for(item: EvalItem, question: str | None = None) -> str:
    """The question (or `question`, a rephrasing of it), with the options listed for multiple choice."""
    text = question if question is not None else item.question
    if item.kind != "choice":
        return text
    options = "\n".join(f"{letter}. {option}" for letter, option in item.options)
    return f"{text}\n{options}\n{CHOICE_INSTRUCTION}"

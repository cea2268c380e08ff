"""An optional LLM judge for open answers, through any OpenAI-compatible endpoint, cached on disk.

Exact match under-counts open answers that say the same thing in other words ("left lung base" for
"left lower lobe"?); a judge model can grade meaning instead. The rubric below is the whole
instruction; replies are cached by (model, rubric, question, reference, answer) in SQLite, so a
rerun asks nothing twice. The judge's verdict is reported beside exact match, never instead of it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from unimedvl.data.llm_client import CachedChatClient

RUBRIC = ("You grade answers to medical visual questions. You are given the question, the reference answer and a "
          "candidate answer. The candidate is correct if it states the same finding, location, count or choice as the "
          "reference, even in other words; it is incorrect if it contradicts the reference, adds a different "
          "diagnosis, or is too vague to be checked. Reply with JSON only: {\"correct\": true} or {\"correct\": false}.")


def _verdict(reply: str) -> bool | None:
    match = re.search(r"\{.*\}", reply, re.DOTALL)
    try:
        value = json.loads(match.group(0)).get("correct") if match else None
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, bool) else None


class LLMJudge:
    def __init__(self, endpoint: str, model: str, cache: Path, *, api_key: str | None = None) -> None:
        self.client = CachedChatClient(endpoint, model, cache, api_key=api_key)
        self.name = f"judge:{model}"

    def grade(self, question: str, reference: str, answer: str) -> bool | None:
        """True / False, or None when the endpoint fails or replies with no verdict (reported, not guessed)."""
        user = f"Question: {question}\nReference answer: {reference}\nCandidate answer: {answer}"
        reply = self.client.complete(RUBRIC, user, accept=lambda text: _verdict(text) is not None)
        return None if reply is None else _verdict(reply)

"""A small client for OpenAI-compatible `/chat/completions` endpoints, with an on-disk answer cache.

Used by the stage-2 LLM judge and the stage-2 training-data teachers. Answers are cached in SQLite
by (model, system prompt, user prompt), so a rebuild sends nothing twice; failed or rejected
answers are not cached and are retried next time. Only the standard library is used.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable


class CachedChatClient:
    def __init__(self, endpoint: str, model: str, cache_path: str | Path, *, api_key: str | None = None,
                 timeout: float = 60.0, temperature: float = 0.0) -> None:
        self.endpoint, self.model, self.api_key = endpoint.rstrip("/"), model, api_key
        self.timeout, self.temperature = timeout, temperature
        self.cache_path = Path(cache_path)
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, content TEXT)")
        self.requests = 0

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.cache_path, timeout=30)

    def complete(self, system: str, user: str, *, accept: Callable[[str], bool] = lambda c: True) -> str | None:
        """The model's reply (cached), or None when the endpoint fails or `accept` rejects the reply."""
        key = hashlib.sha256(f"{self.model}\x1f{system}\x1f{user}".encode()).hexdigest()
        with self._lock, self._db() as db:
            row = db.execute("SELECT content FROM replies WHERE key = ?", (key,)).fetchone()
        if row:
            return row[0]
        body = json.dumps({"model": self.model, "temperature": self.temperature,
                           "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]})
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.endpoint}/chat/completions", data=body.encode(), headers=headers)
        self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                content = json.loads(response.read())["choices"][0]["message"]["content"]
        except (urllib.error.URLError, TimeoutError, KeyError, IndexError, ValueError, json.JSONDecodeError):
            return None
        if not isinstance(content, str) or not accept(content):
            return None
        with self._lock, self._db() as db:
            db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?)", (key, content))
        return content

"""`ask --batch` survives every bad line and streams: results are written as they complete and a rerun
after a kill redoes nothing that was finished (issue 13, item 2)."""

from __future__ import annotations

import json
from pathlib import Path

from unimedvl.cli import main
from unimedvl.inference.batch import answer_file, answered_lines
from unimedvl.inference.engine import TextOptions

BAD_LINES = [
    (b"\xff\xfe not utf-8", "not valid UTF-8"),
    (b'{"question": "\\ud800", "image": []}', "lone surrogate"),
    (b'{"question": "x", "image": [5]}', '"image" must be a path'),
    (b'{"question": "x", "image": ["a.png", null]}', '"image" must be a path'),
    (b'{"question": "x", "n": ' + b"9" * 5000 + b"}", "invalid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid JSON"),
    (b'{"question": 7}', '"question" must be a string'),
    (b'{"question": "x", "id": {"a": 1}}', '"id" must be'),
    (b'{"question": "' + b"a" * 1_100_000 + b'"}', "at most 1,000,000"),
]


def _batch(tmp_path: Path, cxr_path: Path) -> Path:
    good = json.dumps({"id": "ok", "image": str(cxr_path), "question": "Is there pneumonia?"}).encode()
    lines = [good] + [line for line, _ in BAD_LINES] + [good]
    path = tmp_path / "batch.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_every_bad_line_gets_its_own_error_and_the_rest_are_answered(engine, tmp_path: Path, cxr_path: Path) -> None:  # noqa: ANN001
    batch, out = _batch(tmp_path, cxr_path), tmp_path / "answers.jsonl"
    assert answer_file(engine, batch, out, options=TextOptions(max_new_tokens=2)) == len(BAD_LINES) + 2
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in records] == list(range(1, len(BAD_LINES) + 3))
    assert "answer" in records[0] and "answer" in records[-1] and records[-1]["id"] == "ok"
    for record, (_, message) in zip(records[1:-1], BAD_LINES):
        assert message in record["error"], (message, record)


def test_a_killed_batch_resumes_without_redoing_finished_lines(engine, tmp_path: Path, cxr_path: Path) -> None:  # noqa: ANN001
    batch, out = _batch(tmp_path, cxr_path), tmp_path / "answers.jsonl"
    answer_file(engine, batch, out, options=TextOptions(max_new_tokens=2))
    full = out.read_bytes()
    lines = full.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:4]) + lines[4][:7])  # killed while writing the fifth record
    assert answered_lines(out) == {1, 2, 3, 4} and out.read_bytes() == b"".join(lines[:4])  # torn record cut
    assert answer_file(engine, batch, out, options=TextOptions(max_new_tokens=2)) == len(BAD_LINES) + 2 - 4
    assert out.read_bytes() == full  # the same file as an uninterrupted run


def test_the_cli_streams_to_stdout_and_refuses_a_foreign_out_file(tmp_path: Path, cxr_path: Path, capsys) -> None:  # noqa: ANN001
    batch = _batch(tmp_path, cxr_path)
    assert main(["ask", "--batch", str(batch), "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == len(BAD_LINES) + 2 and "Traceback" not in captured.err
    foreign = tmp_path / "notes.txt"
    foreign.write_text("my notes\n")
    assert main(["ask", "--batch", str(batch), "--out", str(foreign)]) == 2
    assert "not an answer record" in capsys.readouterr().err and foreign.read_text() == "my notes\n"

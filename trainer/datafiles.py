"""Training data files: their formats, line-numbered errors, writing, `prepare`.

Files may be JSONL, JSON (a list), CSV or TXT, with rows shaped
`{"question", "answer"}` (GSM8K rows are this shape), `{"prompt", "completion"}`
or `{"messages": [...]}` (chat; the last assistant turn is the target). A JSON
row may list other ways to ask its question (`"also_asked": ["…"]`). Every bad
line is reported with its file and line number, all at once, so a file is fixed
in one pass. JSONL lines are read, and every file's rows checked, by storage/jsonl.py:
the same reader as the bot's pair imports.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage import Pair

# write_jsonl is also the trainer's JSONL writer for other modules (versions, pipeline)
from storage.jsonl import jsonl_rows, parse_rows, write_jsonl
from storage.pairs import clean_also_asked

from .data import DataError, Example, dedup_key

SUFFIXES = (".jsonl", ".json", ".csv", ".txt", ".tsv")
ROLES = ("system", "user", "assistant")


# --- parsing one row -----------------------------------------------------------------

def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' must be a non-empty string")
    return value.strip()


def example_from_row(row: Any, source: str = "") -> Example:
    """One record in any accepted shape → an Example; ValueError says what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    if "messages" in row:
        return _example_from_messages(row["messages"], source)
    system = row.get("system") or ""
    if not isinstance(system, str):
        raise ValueError("'system' must be a string")
    if "question" in row or "answer" in row:
        question = _text(row, "question")
        return Example(question, _text(row, "answer"), system.strip(), source=source,
                       also_asked=clean_also_asked(row.get("also_asked") or [], question))
    if "prompt" in row or "completion" in row:
        prompt = _text(row, "prompt")
        return Example(prompt, _text(row, "completion"), system.strip(), source=source,
                       also_asked=clean_also_asked(row.get("also_asked") or [], prompt))
    keys = ", ".join(sorted(map(str, row))) or "none"
    raise ValueError(f"unknown shape (keys: {keys}); expected question/answer, "
                     f"prompt/completion or messages")


def _example_from_messages(messages: Any, source: str) -> Example:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    turns = []
    for i, message in enumerate(messages):
        if (not isinstance(message, dict) or message.get("role") not in ROLES
                or not isinstance(message.get("content"), str)):
            raise ValueError(f"messages[{i}] must be {{\"role\": one of {', '.join(ROLES)}, "
                             f"\"content\": text}}")
        turns.append({"role": message["role"], "content": message["content"].strip()})
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
    if last is None:
        raise ValueError("'messages' has no assistant turn to learn")
    if last == 0 or turns[last - 1]["role"] != "user":
        raise ValueError(f"messages[{last}] (the last assistant turn) must follow a user turn")
    if not turns[last]["content"]:
        raise ValueError(f"messages[{last}] (the last assistant turn) is empty")
    if not turns[last - 1]["content"]:
        raise ValueError(f"messages[{last - 1}] (the question) is empty")
    # turns after the last assistant turn have no answer to learn: they are dropped
    system = ""
    earlier = turns[:last - 1]
    if earlier and earlier[0]["role"] == "system":
        system, earlier = earlier[0]["content"], earlier[1:]
    if any(t["role"] == "system" for t in earlier):
        raise ValueError("a system message may only come first")
    return Example(turns[last - 1]["content"], turns[last]["content"], system, earlier, source)


_QA_LINE = re.compile(r"^\s*Q:\s*(?P<q>.+?)\s+A:\s*(?P<a>.+?)\s*$", re.IGNORECASE)


def parse_text_line(line: str) -> tuple[str, str]:
    """`question<TAB>answer` or `Q: question A: answer`; ValueError otherwise."""
    if "\t" in line:
        question, _, answer = line.partition("\t")
        if question.strip() and answer.strip():
            return question.strip(), answer.strip()
        raise ValueError("empty question or answer around the tab")
    match = _QA_LINE.match(line)
    if match:
        return match["q"], match["a"]
    raise ValueError("expected 'question<TAB>answer' or 'Q: question A: answer'")


# --- reading files -------------------------------------------------------------------

def read_examples(path: str | Path) -> list[Example]:
    """Every example of one file; DataError lists every bad line with its number."""
    path = Path(path)
    if not path.is_file():
        raise DataError([f"{path}: file not found"], header="cannot read training data")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError([f"{path}: unknown file type {suffix or '(none)'}; use "
                         f"{', '.join(SUFFIXES)}"], header="cannot read training data")
    readers = {".jsonl": jsonl_rows, ".json": _json_rows, ".csv": _csv_rows,
               ".txt": _text_rows, ".tsv": _text_rows}
    examples, problems = parse_rows(
        path, readers[suffix], lambda row, number: example_from_row(row, f"{path.name}:{number}"))
    if problems:
        raise DataError(problems, header=f"bad training data in {path}")
    if not examples:
        raise DataError([f"{path}: no examples in the file"], header="no training data")
    return examples


def read_pairs(path: str | Path, adapter: str | None = None) -> list[Pair]:
    """A data file (any shape read_examples reads) as pairs to store as approved: each
    with its other ways to ask and where it came from ("faq.csv:12"). A bad row fails
    the whole file (DataError, with every bad line's number): nothing half-imported."""
    return [Pair(e.question, e.answer, adapter, context=list(e.history),
                 also_asked=list(e.also_asked), origin=e.source)
            for e in read_examples(path)]


def _json_rows(path: Path, problems: list[str]) -> Iterator[tuple[int, Any]]:
    """The items of a JSON list, each with the line it starts on."""
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    at = ws.match(text, 0).end()
    if not text.startswith("[", at):
        problems.append(f"{path}:{text.count(chr(10), 0, at) + 1}: expected a JSON list "
                        f"([...]) of examples")
        return
    at = ws.match(text, at + 1).end()
    if text.startswith("]", at):
        return
    while True:
        line = text.count("\n", 0, at) + 1
        try:
            item, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column "
                            f"{exc.colno})")
            return  # past a syntax error the rest cannot be located reliably
        yield line, item
        at = ws.match(text, at).end()
        if text.startswith(",", at):
            at = ws.match(text, at + 1).end()
        elif text.startswith("]", at):
            return
        else:
            problems.append(f"{path}:{text.count(chr(10), 0, at) + 1}: expected ',' or ']' "
                            f"after an example")
            return


def _csv_rows(path: Path, problems: list[str]) -> Iterator[tuple[int, Any]]:
    # utf-8-sig: spreadsheet programs start the file with an invisible byte-order mark
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        pairs = [p for p in (("question", "answer"), ("prompt", "completion"))
                 if set(p) <= set(columns)]
        if not pairs:
            problems.append(f"{path}:1: the header must name the columns question,answer or "
                            f"prompt,completion (found: {', '.join(columns) or 'nothing'})")
            return
        reader.fieldnames = columns
        start = reader.line_num + 1
        for row in _csv_records(reader, path, problems):
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                start = reader.line_num + 1
                continue
            # line_num is the last physical line read; a quoted field may span several
            record = {k: v for k, v in row.items() if k in pairs[0]}
            if (row.get("also_asked") or "").strip():  # other ways to ask, "a | b"
                record["also_asked"] = row["also_asked"].split("|")
            yield start, record
            start = reader.line_num + 1


def _csv_records(reader: Any, path: Path, problems: list[str]) -> Iterator[dict[str, Any]]:
    """The reader's rows; a row the csv module cannot parse ends the file with its line."""
    while True:
        line = reader.line_num + 1
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.append(f"{path}:{line}: not readable as CSV ({exc}); check its quotes, "
                            f"or split a field longer than {csv.field_size_limit():,} characters")
            return


def _text_rows(path: Path, problems: list[str]) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                question, answer = parse_text_line(line.rstrip("\n"))
            except ValueError as exc:
                problems.append(f"{path}:{number}: {exc}")
                continue
            yield number, {"question": question, "answer": answer}


@dataclass
class PrepareReport:
    written: int = 0
    duplicates: int = 0
    skipped: list[str] = field(default_factory=list)  # "line N: why"


def prepare_raw(raw: str | Path, out: str | Path) -> PrepareReport:
    """A raw text file (one example a line) → clean de-duplicated JSONL; bad lines skipped."""
    raw = Path(raw)
    if not raw.is_file():
        raise DataError([f"{raw}: file not found"], header="cannot prepare data")
    report = PrepareReport()
    rows, seen = [], set()
    with raw.open(encoding="utf-8", errors="strict") as lines:
        try:
            for number, line in enumerate(lines, 1):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                try:
                    question, answer = parse_text_line(line.rstrip("\r\n"))
                except ValueError as exc:
                    report.skipped.append(f"line {number}: {exc}")
                    continue
                key = dedup_key(question, answer)
                if key in seen:
                    report.duplicates += 1
                    continue
                seen.add(key)
                rows.append({"question": question, "answer": answer})
        except UnicodeDecodeError as exc:
            raise DataError([f"{raw}: not UTF-8 text ({exc.reason}); save it as UTF-8"],
                            header="cannot prepare data") from None
    report.written = write_jsonl(rows, out)
    return report

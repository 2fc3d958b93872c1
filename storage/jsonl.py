"""JSONL files, read and written one way for the whole project.

Reading reports every bad line with its file and number, all at once, so a file
is fixed in one pass (storage's pair imports and every trainer data format share
`parse_rows`). Writing goes to a temporary file beside the target, which is then
renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
MAX_PROBLEMS_SHOWN = 20

# (path, problems) → (line number, decoded row) pairs; a line that cannot be decoded is
# appended to `problems` ("path:line: why") and skipped
RowReader = Callable[[Path, list[str]], Iterator[tuple[int, Any]]]


def json_line(row: Any) -> str:
    """One JSONL line: UTF-8 kept as is (not \\u-escaped), ending in a newline."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_text_atomic(path: str | Path, text: str | Iterable[str]) -> None:
    """`text` (or its pieces, in order) at `path`, whole or not at all: written beside it,
    synced, renamed into place (a reader — a resumed run, the engine — never sees half a
    file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            out.writelines([text] if isinstance(text, str) else text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, payload: Any) -> None:
    """A JSON document (indented, UTF-8 as is), written atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False, default=str)
                      + "\n")


def write_jsonl(rows: Iterable[Any], path: str | Path) -> int:
    """Write rows as JSONL, atomically; returns how many rows were written."""
    count = 0

    def lines() -> Iterator[str]:
        nonlocal count
        for row in rows:
            count += 1
            yield json_line(row)

    write_text_atomic(path, lines())
    return count


def jsonl_rows(path: Path, problems: list[str]) -> Iterator[tuple[int, Any]]:
    """The decoded rows of a JSONL file with their line numbers; blank lines are skipped."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{number}: not valid JSON ({exc.msg} at column "
                                f"{exc.colno})")


def parse_rows(path: Path, rows: RowReader,
               parse: Callable[[Any, int], T]) -> tuple[list[T], list[str]]:
    """Every row `rows` reads from `path`, through `parse(row, line number)`.

    Returns what parsed and the problems, in line order, each "path:line: why" (the
    ValueError of `parse`, or what `rows` could not decode); a file that is not UTF-8
    is one problem.
    """
    parsed: list[T] = []
    problems: list[str] = []
    try:
        for number, row in rows(path, problems):
            try:
                parsed.append(parse(row, number))
            except ValueError as exc:
                problems.append(f"{path}:{number}: {exc}")
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        f"save it as UTF-8")
    return parsed, problems


def problem_listing(header: str, problems: list[str]) -> str:
    """`header:` and the problems, one an indented line, the first MAX_PROBLEMS_SHOWN."""
    shown = problems[:MAX_PROBLEMS_SHOWN]
    if len(problems) > MAX_PROBLEMS_SHOWN:
        shown.append(f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    return f"{header}:\n  " + "\n  ".join(shown)

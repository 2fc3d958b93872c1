"""The house rules a newcomer relies on, checked on the code itself: who may import what,
and how big a module or a function may grow (docs/architecture.md explains both)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "trainer", "storage", "settings")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

MODEL_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")


@dataclass(frozen=True)
class Rule:
    """Modules under `where` must not import anything under one of `forbidden`."""

    where: str  # a folder relative to the repository root
    forbidden: tuple[str, ...]
    why: str


RULES = [
    Rule("storage", ("bot", "trainer", "settings", "discord", *MODEL_LIBRARIES),
         "storage knows SQL only"),
    Rule("settings", ("bot", "trainer", "storage", "discord", *MODEL_LIBRARIES),
         "settings sit below both processes"),
    Rule("trainer", ("bot", "discord"), "the trainer never imports the bot"),
    Rule("bot/cogs", MODEL_LIBRARIES, "cogs never touch the model; the engine does"),
    Rule("bot/web", MODEL_LIBRARIES, "web handlers never touch the model; the engine does"),
    Rule("bot/commands", MODEL_LIBRARIES, "the command core never touches the model"),
]


def imported_names(tree: ast.AST, module: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in `tree`, in functions too;
    `module` is the dotted name of the file, to resolve relative imports."""
    package = module.rsplit(".", 1)[0] if "." in module else ""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                name = ".".join(filter(None, (base, node.module)))
            else:
                name = node.module or ""
            yield node.lineno, name


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] + ["__init__"]  # relative imports resolve against the package
    return ".".join(parts)


def broken_rules(root: Path, rules: list[Rule]) -> list[str]:
    problems = []
    for rule in rules:
        for path in sorted((root / rule.where).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for line, name in imported_names(tree, module_name(path, root)):
                top = name.split(".")
                for forbidden in rule.forbidden:
                    if top[:forbidden.count(".") + 1] == forbidden.split("."):
                        problems.append(f"{path.relative_to(root)}:{line}: imports {name} "
                                        f"({rule.why})")
    return problems


def test_import_rules_hold():
    assert broken_rules(ROOT, RULES) == []


def test_a_wrong_import_is_caught(tmp_path):
    """The checker itself: a storage module importing torch (in a function, as a lazy
    import would), a trainer module importing the bot, and a cog reaching the model through
    a relative import of a sibling that is fine (only the direct import counts)."""
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "__init__.py").write_text("")
    (tmp_path / "storage" / "fast.py").write_text(
        "import sqlite3\n\n\ndef speed_up():\n    import torch.nn\n    return torch.nn\n")
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / "trainer" / "steal.py").write_text("from bot.engine import Engine\n")
    (tmp_path / "bot" / "cogs").mkdir(parents=True)
    (tmp_path / "bot" / "cogs" / "quick.py").write_text(
        "from ..engine import Engine\nfrom peft import PeftModel\n")
    assert broken_rules(tmp_path, RULES) == [
        "storage/fast.py:5: imports torch.nn (storage knows SQL only)",
        "trainer/steal.py:1: imports bot.engine (the trainer never imports the bot)",
        "bot/cogs/quick.py:2: imports peft (cogs never touch the model; the engine does)",
    ]


def _python_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def long_functions(path: Path, limit: int, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {node.name} is "
                             f"{length} lines")
    return found


def test_no_module_is_over_the_limit():
    too_long = [f"{p.relative_to(ROOT)}: {n} lines" for p in _python_files()
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert too_long == [], f"split by responsibility (at most {MAX_MODULE_LINES} lines)"


def test_no_function_is_over_the_limit():
    too_long = [f for p in _python_files() for f in long_functions(p, MAX_FUNCTION_LINES)]
    assert too_long == [], f"split into steps (at most {MAX_FUNCTION_LINES} lines)"


@pytest.mark.parametrize("source, expected", [
    ("def f():\n" + "    x = 1\n" * 80, ["t.py:1: f is 81 lines"]),
    ("def f():\n" + "    x = 1\n" * 79, []),
])
def test_the_function_length_check_counts_lines(tmp_path, source, expected):
    (tmp_path / "t.py").write_text(source)
    assert long_functions(tmp_path / "t.py", MAX_FUNCTION_LINES, root=tmp_path) == expected

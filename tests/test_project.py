"""The project's own promises: CI runs `make test`, the Dockerfile lints, docs are in place."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_ci_runs_exactly_make_test():
    script = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in script.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == "exec make test"
    assert "set -euo pipefail" in commands


def test_ci_fails_when_a_test_fails(tmp_path):
    """`make test` propagates pytest's failure exit status (so CI turns red)."""
    failing = tmp_path / "test_fails.py"
    failing.write_text("def test_fails():\n    assert 1 == 2\n")
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "-o", "lint", "-o", "model", "test",
         f"PYTEST_ARGS={failing} -p no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "1 failed" in result.stdout


def test_dockerfile_lints_clean():
    beside_python = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed: pip install -e '.[dev]' (make test does)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_has_what_production_needs():
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert base.startswith("nvidia/cuda:") and "latest" not in base and ":" in base
    assert re.search(r"^USER (?!root|0\b)", text, re.M)
    assert 'VOLUME ["/data"]' in text
    assert re.search(r"^HEALTHCHECK .*", text, re.M)
    assert '".[gpu]"' in text
    assert 'ENTRYPOINT ["python", "-m", "bot"]' in text
    assert "DISCORD_TOKEN=" not in text.replace("-e DISCORD_TOKEN", "")


def test_pyproject_declares_entry_points_and_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {"dev", "gpu"} <= set(project["optional-dependencies"])
    assert set(project["scripts"].values()) == {"bot.__main__:main", "trainer.__main__:main"}


def test_readme_puts_the_two_commands_first():
    readme = (ROOT / "README.md").read_text()
    first_code = re.search(r"```(?:sh|bash|console)?\n(.*?)```", readme, re.S).group(1)
    assert "make run" in first_code and "make test" in first_code
    headings = [h.lower() for h in re.findall(r"^## (.+)$", readme, re.M)]
    order = [next(i for i, h in enumerate(headings) if word in h)
             for word in ("quick start", "configuration", "discord")]
    assert order == sorted(order), headings


def test_no_machine_paths_in_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0 or not tracked.stdout.strip():
        pytest.skip("not a git checkout")
    pattern = re.compile(r"/(?:work|root|home/\w+)/")
    offenders = []
    for name in tracked.stdout.split():
        path = ROOT / name
        if path.suffix in {".png", ".jpg"} or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="ignore").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{name}:{number}")
    assert not offenders, offenders

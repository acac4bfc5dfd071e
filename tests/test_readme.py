"""README stays true: its Python examples run, and .ci/run runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

pytestmark = pytest.mark.skipif(not README.exists(), reason="runs from a source checkout only")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples() -> None:
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(python_blocks()) if README.exists() else 0))
def test_readme_python_example_runs(index: int, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples may write files
    exec(compile(python_blocks()[index], f"README.md[python #{index}]", "exec"), {})


def test_ci_runs_the_readme_test_command() -> None:
    text = README.read_text()
    command = re.search(r"^(python -m pip install '\.\[test\]' && python -m pytest)$", text, re.M)
    assert command, "README quick start lost its test command"
    ci = (ROOT / ".ci" / "run").read_text()
    assert command.group(1) in ci.splitlines()

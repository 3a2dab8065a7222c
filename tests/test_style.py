"""The code's shape, enforced where CI runs it (the README's test command): ruff with the
project's rules (complexity at most 15 per function, C901; a docstring on every public class,
method and function of transfer/ and backbones/, D101-D103), and no long module without the
reason it is one file written at its top."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LONG = 450  # lines: "about 400", with room for a docstring's growth


def test_the_lint_rules_include_complexity_and_docstrings():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert {"C901", "D101", "D102", "D103"} <= set(lint["select"])
    assert lint["mccabe"]["max-complexity"] <= 15


def test_ruff_passes():
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def long_modules_without_reason(root: Path) -> list[str]:
    """Modules of transfer/ and backbones/ above :data:`LONG` lines whose docstring does not
    say why they are one file."""
    bad = []
    for path in sorted([*(root / "transfer").rglob("*.py"), *(root / "backbones").rglob("*.py")]):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > LONG and "Why one file" not in (ast.get_docstring(ast.parse(text))
                                                               or ""):
            bad.append(f"{path.relative_to(root)} ({text.count(chr(10))} lines)")
    return bad


def test_long_modules_say_why_they_are_one_file(tmp_path):
    assert long_modules_without_reason(ROOT) == []
    (tmp_path / "transfer").mkdir()  # the check itself finds a long module without a reason
    (tmp_path / "transfer" / "big.py").write_text('"""A module."""\n' + "x = 1\n" * (LONG + 1))
    assert long_modules_without_reason(tmp_path) == [f"transfer/big.py ({LONG + 2} lines)"]

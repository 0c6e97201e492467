"""The test deadline of tests/conftest.py: CI's slow tier skips what it could not start in time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DEADLINE_VAR

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _run_tiny_suite(tmp_path: Path, deadline: float | None) -> str:
    """Run a two-test file with tests/conftest.py loaded as a plugin (it is outside the tree); its output."""
    test_file = tmp_path / "test_tiny.py"
    test_file.write_text("def test_one():\n    assert True\n\ndef test_two():\n    assert True\n")
    env = {k: v for k, v in os.environ.items() if k != DEADLINE_VAR}
    if deadline is not None:
        env[DEADLINE_VAR] = str(deadline)
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
    command += ["-p", "tests.conftest", "-o", "addopts=", str(test_file)]
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    return out.stdout


def test_tests_after_the_deadline_are_skipped_with_the_reason(tmp_path: Path) -> None:
    out = _run_tiny_suite(tmp_path, deadline=time.time() - 1)
    assert "2 skipped" in out and DEADLINE_VAR in out, out


def test_before_the_deadline_or_without_one_tests_run(tmp_path: Path) -> None:
    assert "2 passed" in _run_tiny_suite(tmp_path, deadline=time.time() + 3600)
    assert "2 passed" in _run_tiny_suite(tmp_path, deadline=None)

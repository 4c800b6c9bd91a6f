"""The whole tree is formatted and linted by one configuration (pyproject.toml's [tool.ruff]): `ruff format` leaves
every file as it is and `ruff check` finds nothing. Fix with `ruff format . && ruff check --fix .`."""

import subprocess
import sys

import pytest

from helpers import REPO_ROOT

RUFF = [sys.executable, "-m", "ruff"]


@pytest.mark.parametrize(
    "command", [["format", "--check", "--diff"], ["check", "--no-fix", "--output-format", "concise"]]
)
def test_ruff_finds_nothing(command):
    result = subprocess.run([*RUFF, *command, "."], cwd=REPO_ROOT, capture_output=True, text=True)
    # "No module named ruff": it is in the dev extra, `pip install -e '.[dev]'`
    assert result.returncode == 0, f"ruff {' '.join(command)}:\n{result.stdout[-6000:]}{result.stderr[-2000:]}"

"""Shell completion through click (README "Shell completion"): the installed console script prints
a completion script for bash, zsh and fish and completes commands and options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = Path(sys.executable).parent / "dnntool"

pytestmark = pytest.mark.skipif(not EXE.exists(), reason="the dnntool console script is not installed here")


def complete(**env: str) -> str:
    res = subprocess.run([str(EXE)], env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize(("shell", "start"), [
    ("bash", "_dnntool_completion() {"), ("zsh", "#compdef dnntool"), ("fish", "function _dnntool_completion")])
def test_completion_script(shell, start):
    script = complete(_DNNTOOL_COMPLETE=f"{shell}_source")
    assert script.lstrip().startswith(start) and f"_DNNTOOL_COMPLETE={shell}_complete" in script


def test_completes_commands_and_options():
    assert complete(_DNNTOOL_COMPLETE="bash_complete", COMP_WORDS="dnntool plo", COMP_CWORD="1") == "plain,plot-log\n"
    options = complete(_DNNTOOL_COMPLETE="bash_complete", COMP_WORDS="dnntool param-count --ma", COMP_CWORD="2")
    assert options == "plain,--max\n"

"""The command group: help, version, lazy imports, the error boundary."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from dnntool import __version__
from dnntool.cli import COMMANDS, cli


def test_version():
    res = CliRunner().invoke(cli, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_help_lists_every_command():
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0
    for name in COMMANDS:
        assert name in res.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_summary_and_example(name):
    res = CliRunner().invoke(cli, [name, "--help"])
    assert res.exit_code == 0, res.output
    assert "Example" in res.output
    cmd = cli.get_command(None, name)
    assert cmd.get_short_help_str(limit=200).strip(), f"{name} has no one-line summary"


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from dnntool.cli import cli, COMMANDS\n"
        "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0\n"
        "for n in COMMANDS:\n"
        "    r = CliRunner().invoke(cli, [n, '--help']); assert r.exit_code == 0, n\n"
        "print(sorted(m for m in ('onnxruntime', 'cv2', 'onnx', 'lmdb', 'rich') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "dnntool", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_unknown_command_is_usage_error():
    res = CliRunner().invoke(cli, ["no-such-command"])
    assert res.exit_code == 2


def test_debug_shows_traceback(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: 'x' type: 'NoSuchType' top: 'x' }\n")
    res = CliRunner().invoke(cli, ["param-count", str(bad)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["--debug", "param-count", str(bad)])
    assert res.exception is not None and type(res.exception).__name__ == "NetError"

"""Every command keeps the exit-status contract: 0 success, 1 failure (here: a missing input file,
said in one line without a traceback), 2 usage error (here: an unknown option), 130 interrupted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dnntool.cli import COMMANDS, cli

# a command line per command whose (first) input file does not exist
MISSING = {
    "compare": ["missing.prototxt", "missing.caffemodel", "b.prototxt", "b.caffemodel"],
    "compute-image-mean": ["missing_lmdb", "mean.binaryproto"],
    "convert-images": ["missing/", "missing.txt", "out_lmdb"],
    "decompose": ["missing.prototxt", "missing.caffemodel", "--layers", "ip1", "--rank", "2", "-o", "out"],
    "demo": None,  # reads no file
    "export-onnx": ["missing.prototxt", "--weights", "missing.caffemodel", "-o", "out.onnx"],
    "featuremap-dump": ["--model", "missing.prototxt", "--weights", "missing.caffemodel", "--image", "missing.png",
                        "--out", "maps"],
    "flops": ["missing.prototxt"],
    "fold-bn": ["missing.prototxt", "missing.caffemodel", "-o", "out"],
    "init-weights": ["missing.prototxt", "-o", "out.caffemodel"],
    "netscope": ["missing.prototxt"],
    "param-count": ["missing.prototxt"],
    "plot-log": ["missing.log"],
    "prune": ["missing.prototxt", "missing.caffemodel", "--sparsity", "0.5", "-o", "out"],
    "quantize": ["missing.prototxt", "missing.caffemodel", "--dtype", "fp16", "-o", "out.onnx"],
    "test": ["--model", "missing.prototxt", "--weights", "missing.caffemodel"],
    "time": ["--model", "missing.prototxt"],
    "train": ["--solver", "missing.prototxt"],
    "upgrade-net": ["missing.prototxt", "-o", "out.prototxt"],
}


def test_every_command_is_listed_here():
    assert sorted(MISSING) == sorted(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_unknown_option_is_a_usage_error(name):
    res = CliRunner().invoke(cli, [name, "--no-such-option"])
    assert res.exit_code == 2, res.output
    assert "Error: No such option '--no-such-option'" in res.output


@pytest.mark.parametrize("name", sorted(n for n, args in MISSING.items() if args))
def test_a_missing_input_file_is_one_line_and_status_1(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, [name, *MISSING[name]])
    assert res.exit_code == 1, (res.exit_code, res.output)
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit))
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "missing" in lines[0], res.stderr


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    from dnntool.samples import sample

    d = tmp_path_factory.mktemp("exit")
    assert CliRunner().invoke(cli, ["init-weights", str(sample("lenet_deploy.prototxt")), "-o",
                                    str(d / "w.caffemodel")]).exit_code == 0
    return [str(sample("lenet_deploy.prototxt")), str(d / "w.caffemodel")]


@pytest.mark.parametrize("args", [
    ["compare", "{net}", "{w}", "{net}", "{w}", "--image", "missing.png"],
    ["compare", "{net}", "{w}", "{net}", "{w}", "--db", "missing_lmdb"],
    ["fold-bn", "{net}", "{w}", "-o", "out", "--db", "missing_lmdb"],
    ["decompose", "{net}", "{w}", "--layers", "ip1", "--rank", "2", "-o", "out", "--db", "missing_lmdb"],
    ["quantize", "{net}", "{w}", "--dtype", "int8", "--calib-db", "missing_lmdb", "-o", "out.onnx"],
], ids=lambda a: f"{a[0]} {a[-2] if a[-2] != '-o' else a[-4]}")
def test_a_missing_file_named_by_an_option_is_status_1(args, lenet, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(net=lenet[0], w=lenet[1]) for a in args]
    res = CliRunner().invoke(cli, argv)
    assert res.exit_code == 1, res.output
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("Error: missing"), res.stderr


def test_one_line_from_the_installed_command(tmp_path, lenet):
    """The console script itself: no OpenCV warning before our error, no traceback."""
    exe = Path(sys.executable).parent / "dnntool"
    res = subprocess.run([str(exe), "featuremap-dump", "--model", lenet[0], "--weights", lenet[1], "--image",
                          str(tmp_path / "missing.png"), "--out", str(tmp_path / "maps")], capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr == f"Error: {tmp_path / 'missing.png'}: image cannot be read (missing or not an image)\n"


def test_an_interrupt_is_status_130(tmp_path, monkeypatch):
    from dnntool.tools import plotlog

    def interrupted(paths):
        raise KeyboardInterrupt

    monkeypatch.setattr(plotlog, "parse_logs", interrupted)
    res = CliRunner().invoke(cli, ["plot-log", str(tmp_path / "a.log")])
    assert res.exit_code == 130 and res.stderr == "Interrupted.\n"

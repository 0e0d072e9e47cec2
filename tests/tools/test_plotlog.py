"""``dnntool plot-log``: Caffe's log formats (as parse_log.py/extract_seconds.py read them), our own
train logs and --log-json files, overlays, midnight and new year, HTML/SVG/PNG and CSV/JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.errors import FormatError, UsageError
from dnntool.tools.plotlog import parse_log, series, table, to_csv

# BVLC Caffe since 2017: the display line with iter/s (solver.cpp:218), lr from sgd_solver.cpp:106
MODERN = """\
Log file created at: 2017/02/10 13:39:20
Running on machine: gpu1
Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg
I0210 13:39:20.114211 25210 caffe.cpp:218] Using GPUs 0
I0210 13:39:22.380000 25210 solver.cpp:289] Solving LeNet
I0210 13:39:22.380017 25210 solver.cpp:290] Learning Rate Policy: inv
I0210 13:39:22.381027 25210 solver.cpp:347] Iteration 0, Testing net (#0)
I0210 13:39:23.381027 25210 solver.cpp:414]     Test net output #0: accuracy = 0.0877
I0210 13:39:23.381040 25210 solver.cpp:414]     Test net output #1: loss = 2.37956 (* 1 = 2.37956 loss)
I0210 13:39:23.400000 25210 solver.cpp:239] Iteration 0 (-1.4013e-45 iter/s, 1.02s/100 iters), loss = 2.39424
I0210 13:39:23.400010 25210 solver.cpp:258]     Train net output #0: loss = 2.39424 (* 1 = 2.39424 loss)
I0210 13:39:23.400020 25210 sgd_solver.cpp:112] Iteration 0, lr = 0.01
I0210 13:39:24.900000 25210 solver.cpp:239] Iteration 100 (66.6667 iter/s, 1.5s/100 iters), loss = 0.25
I0210 13:39:24.900010 25210 solver.cpp:258]     Train net output #0: loss = 0.204 (* 1 = 0.204 loss)
I0210 13:39:24.900020 25210 sgd_solver.cpp:112] Iteration 100, lr = 0.00992565
I0210 13:39:26.400000 25210 solver.cpp:464] Snapshotting to binary proto file lenet_iter_200.caffemodel
I0210 13:39:26.410000 25210 solver.cpp:347] Iteration 200, Testing net (#0)
I0210 13:39:27.410000 25210 solver.cpp:414]     Test net output #0: accuracy = 0.9708
I0210 13:39:27.410010 25210 solver.cpp:414]     Test net output #1: loss = 0.0912 (* 1 = 0.0912 loss)
I0210 13:39:27.410020 25210 solver.cpp:332] Optimization Done.
"""

# Caffe 2015-2016: no iter/s; two test nets
OLDER = """\
I1231 23:59:50.000000  4242 solver.cpp:266] Solving CaffeNet
I1231 23:59:50.500000  4242 solver.cpp:340] Iteration 0, Testing net (#0)
I1231 23:59:51.000000  4242 solver.cpp:408]     Test net output #0: accuracy = 0.001
I1231 23:59:51.100000  4242 solver.cpp:340] Iteration 0, Testing net (#1)
I1231 23:59:51.600000  4242 solver.cpp:408]     Test net output #0: accuracy = 0.002
I1231 23:59:58.000000  4242 solver.cpp:228] Iteration 0, loss = 6.9
I1231 23:59:58.000100  4242 solver.cpp:244]     Train net output #0: loss = 6.9 (* 1 = 6.9 loss)
I1231 23:59:58.000200  4242 sgd_solver.cpp:106] Iteration 0, lr = 0.01
I0101 00:00:08.000000  4242 solver.cpp:228] Iteration 20, loss = nan
I0101 00:00:08.000100  4242 solver.cpp:244]     Train net output #0: loss = nan (* 1 = nan loss)
I0101 00:00:08.000200  4242 sgd_solver.cpp:106] Iteration 20, lr = 0.01
"""

# Caffe 2014: Test score lines, display loss only
OLDEST = """\
I0601 10:00:00.000000  1111 solver.cpp:73] Solving LeNet
I0601 10:00:00.100000  1111 solver.cpp:142] Iteration 0, Testing net (#0)
I0601 10:00:01.100000  1111 solver.cpp:181] Test score #0: 0.1
I0601 10:00:01.100100  1111 solver.cpp:181] Test score #1: 2.3
I0601 10:00:02.000000  1111 solver.cpp:237] Iteration 100, lr = 0.01
I0601 10:00:02.000100  1111 solver.cpp:87] Iteration 100, loss = 0.3
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_modern_caffe_log(tmp_path):
    run = parse_log(write(tmp_path, "caffe.INFO", MODERN))
    assert run.name == "caffe.INFO" and run.format == "caffe"
    got = [(r.phase, r.iteration, r.seconds, r.lr, r.values) for r in run.records]
    assert got == [
        ("test", 0, pytest.approx(0.001027), None, {"accuracy": 0.0877, "loss": 2.37956}),
        ("train", 0, pytest.approx(1.02), 0.01, {"loss": 2.39424, "smoothed_loss": 2.39424}),
        ("train", 100, pytest.approx(2.52), 0.00992565, {"loss": 0.204, "smoothed_loss": 0.25}),
        ("test", 200, pytest.approx(4.03), 0.00992565, {"accuracy": 0.9708, "loss": 0.0912}),
    ]
    cols, rows = table([run])
    assert cols == ["run", "phase", "NumIters", "Seconds", "LearningRate", "loss", "smoothed_loss", "accuracy"]
    assert rows[2] == ["caffe.INFO", "train", 100, pytest.approx(2.52), 0.00992565, 0.204, 0.25, None]
    csv = to_csv([run]).splitlines()
    assert csv[0] == "run,phase,NumIters,Seconds,LearningRate,loss,smoothed_loss,accuracy"
    assert csv[4] == "caffe.INFO,test,200,4.03,0.00992565,0.0912,,0.9708"


def test_older_formats_new_year_and_two_test_nets(tmp_path):
    run = parse_log(write(tmp_path, "old.log", OLDER))
    assert [(r.phase, r.net, r.iteration) for r in run.records] == [
        ("test", 0, 0), ("test", 1, 0), ("train", 0, 0), ("train", 0, 20)]
    assert run.records[1].values == {"accuracy": 0.002}
    assert run.records[3].seconds == pytest.approx(18.0)  # 23:59:50 on Dec 31 -> 00:00:08 on Jan 1
    assert math.isnan(run.records[3].values["loss"])
    cols, _ = table([run])
    assert "accuracy#1" in cols
    loss = next(s for s in series([run], "seconds") if s.name == "loss")
    assert loss.points[0] == (8.0, 6.9) and loss.points[1][0] == 18.0

    oldest = parse_log(write(tmp_path, "oldest.log", OLDEST))
    assert [(r.phase, r.iteration, r.values) for r in oldest.records] == [
        ("test", 0, {"score0": 0.1, "score1": 2.3}), ("train", 100, {"loss": 0.3, "smoothed_loss": 0.3})]
    assert oldest.records[1].lr == 0.01


def test_midnight_and_leap_day(tmp_path):
    text = ("I0228 23:59:59.000000 1 x.cpp:1] Solving N\n"
            "I0228 23:59:59.500000 1 x.cpp:1] Iteration 0, loss = 1\n"
            "I0229 00:00:01.500000 1 x.cpp:1] Iteration 10, loss = 0.5\n"
            "I0301 00:00:02.500000 1 x.cpp:1] Iteration 20, loss = 0.25\n")
    run = parse_log(write(tmp_path, "leap.log", text))
    assert [r.seconds for r in run.records] == [0.5, 2.5, 86403.5]
    text = text.replace("I0229 00:00:01.500000 1 x.cpp:1] Iteration 10, loss = 0.5\n", "")
    run = parse_log(write(tmp_path, "plain.log", text))  # no Feb 29: Feb 28 -> Mar 1 is one day
    assert [r.seconds for r in run.records] == [0.5, 3.5]


def test_plain_lines_without_glog_prefix(tmp_path):
    run = parse_log(write(tmp_path, "plain.log", "Iteration 0, loss = 2\nIteration 0, lr = 0.1\n"
                                                 "Iteration 10, Testing net (#0)\n    Test net output #0: acc = 0.5\n"))
    assert [(r.phase, r.iteration, r.seconds) for r in run.records] == [("train", 0, None), ("test", 10, None)]
    with pytest.raises(UsageError, match=r"plain.log: no timestamps"):
        series([run], "seconds")


def test_our_train_log_and_json_overlaid(tmp_path, monkeypatch):
    from tests.cli.test_train import make

    solver = make(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = invoke("train", "--solver", solver, "--device", "cpu", "--log-json", "events.jsonl")
    assert res.exit_code == 0, res.output
    (tmp_path / "train.log").write_text(res.stdout)
    text, js = parse_log(tmp_path / "train.log"), parse_log(tmp_path / "events.jsonl")
    assert js.format == "json" and text.format == "caffe"
    key = [(r.phase, r.iteration) for r in text.records]
    assert key == [(r.phase, r.iteration) for r in js.records] == [
        ("test", 0), ("train", 0), ("train", 5), ("test", 10), ("train", 10), ("train", 15), ("test", 20)]
    for a, b in zip(text.records, js.records, strict=True):
        assert a.values.keys() == b.values.keys()
        for k in a.values:
            assert a.values[k] == pytest.approx(b.values[k], rel=1e-5)  # the log prints 6 digits
        assert (a.lr is None) == (b.lr is None) and (a.lr is None or a.lr == pytest.approx(b.lr, rel=1e-5))

    res = invoke("plot-log", "train.log", "events.jsonl", "-o", "both.html", "--x", "seconds")
    assert res.exit_code == 0, res.output
    assert res.stderr == ("wrote both.html: 2 run(s), 4 series (train:lr, train:loss, test:acc, test:loss)\n")
    page = Page.read(tmp_path / "both.html")
    assert page.series == ["train:lr", "train:loss", "test:acc", "test:loss"]
    assert page.runs == ["train.log", "events.jsonl"] * 4  # every panel overlays both runs
    assert "http" not in (tmp_path / "both.html").read_text().replace("http://www.w3.org/2000/svg", "")


class Page(HTMLParser):
    """The panels and curves of a plot-log page, checking that every tag closes."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.series: list[str] = []
        self.runs: list[str] = []

    @classmethod
    def read(cls, path: Path) -> Page:
        page = cls()
        page.feed(path.read_text())
        page.close()
        assert page.stack == [], page.stack
        return page

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in ("meta", "rect", "line", "polyline", "circle", "br"):
            self.stack.append(tag)
        if tag == "g" and "data-series" in a:
            self.series.append(a["data-series"])
        if tag == "g" and "data-run" in a:
            self.runs.append(a["data-run"])

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in ("rect", "line", "polyline", "circle"):
            return
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
        self.stack.pop()


def test_cli_options_series_smooth_csv_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "a.log", MODERN)
    write(tmp_path, "b.log", MODERN.replace("loss = 0.204", "loss = 0.5"))
    res = invoke("plot-log", "a.log", "b.log", "--series", "test:loss,accuracy", "--smooth", 2, "-o", "c.svg")
    assert res.exit_code == 0, res.output
    assert "2 series (test:loss, test:accuracy)" in res.stderr
    svg = (tmp_path / "c.svg").read_text()
    assert svg.startswith("<svg ") and svg.count('class="curve"') == 4
    assert "b.log: 200, accuracy = 0.52925" in svg  # (0.0877 + 0.9708) / 2: the moving average

    res = invoke("plot-log", "a.log")  # default: <log stem>.html
    assert res.exit_code == 0 and (tmp_path / "a.html").exists()
    assert Page.read(tmp_path / "a.html").series == ["train:lr", "train:loss", "train:smoothed_loss",
                                                      "test:accuracy", "test:loss"]
    before = (tmp_path / "a.html").read_bytes()
    assert invoke("plot-log", "a.log").exit_code == 0 and (tmp_path / "a.html").read_bytes() == before

    res = invoke("plot-log", "a.log", "b.log", "--csv")
    assert res.exit_code == 0 and res.stdout.splitlines()[0].startswith("run,phase,NumIters,Seconds,LearningRate")
    assert len(res.stdout.splitlines()) == 9 and not (tmp_path / "b.html").exists()
    res = invoke("plot-log", "a.log", "--json")
    runs = json.loads(res.stdout)["runs"]
    assert runs[0]["records"][2]["values"] == {"loss": 0.204, "smoothed_loss": 0.25}


def test_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "notes.txt", "nothing to see\n")
    res = invoke("plot-log", "notes.txt")
    assert res.exit_code == 1
    assert res.output.startswith("Error: notes.txt: no training log lines found") and res.output.count("\n") == 1
    res = invoke("plot-log", "missing.log")
    assert res.exit_code == 1 and res.output.startswith("Error: missing.log: cannot read the log")
    write(tmp_path, "a.log", MODERN)
    assert invoke("plot-log", "a.log", "-o", "c.pdf").exit_code == 2
    res = invoke("plot-log", "a.log", "--series", "top5")
    assert res.exit_code == 2 and "no series 'top5' in the logs (known: train:lr, train:loss" in res.output
    with pytest.raises(FormatError):
        parse_log(write(tmp_path, "bad.jsonl", '{"event": "train"\n'))


def test_png_without_matplotlib_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "a.log", MODERN)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    res = invoke("plot-log", "a.log", "-o", "c.png")
    assert res.exit_code == 1 and res.output == (
        "Error: PNG output needs matplotlib: pip install 'dnntool[plot]' (or write .html or .svg, which need"
        " nothing)\n")
    assert not (tmp_path / "c.png").exists()


def test_png(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "a.log", MODERN)
    write(tmp_path, "b.log", OLDER)
    res = invoke("plot-log", "a.log", "b.log", "-o", "c.png")
    assert res.exit_code == 0, res.output
    import cv2

    img = cv2.imread(str(tmp_path / "c.png"))
    assert img is not None and img.shape[1] == 2 * 440 and img.shape[0] >= 3 * 260


def test_plot_log_help_imports_nothing_heavy():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom dnntool.cli import cli\n"
            "assert CliRunner().invoke(cli, ['plot-log', '--help']).exit_code == 0\n"
            "print(sorted(m for m in ('numpy', 'onnx', 'onnxruntime', 'cv2', 'lmdb', 'matplotlib') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

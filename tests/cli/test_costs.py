"""param-count and flops through the CLI: formats, --max, --weights, --input-shape, bad input."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.io.caffemodel import save_caffemodel
from dnntool.io.prototxt import read_net
from dnntool.samples import sample

LENET = str(sample("lenet_deploy.prototxt"))
LENET_PARAMS = 20 * 25 + 20 + 50 * 20 * 25 + 50 + 500 * 800 + 500 + 10 * 500 + 10  # 431,080


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_param_count_table():
    res = run("param-count", LENET)
    assert res.exit_code == 0, res.output
    assert "total learnable params: 431,080" in res.output
    assert "conv2" in res.output and "1x50x8x8" in res.output


def test_param_count_json_csv_markdown():
    data = json.loads(run("param-count", LENET, "--format", "json").output)
    assert data["totals"]["params"] == LENET_PARAMS
    by_name = {r["name"]: r for r in data["layers"]}
    assert by_name["ip1"]["params"] == 500 * 800 + 500 and by_name["ip1"]["blobs"] == [[500, 800], [500]]
    assert json.loads(run("param-count", LENET, "--json").output) == data
    rows = list(csv.DictReader(io.StringIO(run("param-count", LENET, "--format", "csv").output)))
    assert sum(int(r["params"]) for r in rows) == LENET_PARAMS
    md = run("param-count", LENET, "--format", "markdown").output
    assert "| conv1 | Convolution | 1x20x24x24 | 520 |" in md


def test_flops_per_layer():
    data = json.loads(run("flops", LENET, "--json").output)
    by_name = {r["name"]: r for r in data["layers"]}
    assert by_name["conv1"]["macs"] == 20 * 24 * 24 * 25  # outputs x C_in/group x k x k
    assert by_name["conv2"]["macs"] == 50 * 8 * 8 * 20 * 25
    assert by_name["ip1"]["macs"] == 800 * 500
    assert by_name["conv1"]["flops"] == 2 * 20 * 24 * 24 * 25 + 20 * 24 * 24  # + bias adds
    assert by_name["relu1"]["activations"] == 0  # in place
    assert data["totals"]["macs"] == sum(r["macs"] for r in data["layers"])


def test_max_passes_and_fails():
    assert run("param-count", LENET, "--max", "500K", "--quiet").exit_code == 0
    res = CliRunner().invoke(cli, ["param-count", LENET, "--max", "400K", "--quiet"])
    assert res.exit_code == 1
    assert res.output == (
        f"Error: {LENET}: total learnable params 431,080 (431.08K) exceed the limit 400,000 (--max 400K)\n"
    )
    res = run("flops", LENET, "--max", "1M", "--quiet")
    assert res.exit_code == 1 and "total MACs 2,293,000 (2.29M) exceed the limit 1,000,000" in res.output
    assert run("flops", LENET, "--unit", "flops", "--max", "4.7M", "-q").exit_code == 0
    assert run("flops", LENET, "--unit", "flops", "--max", "4.6M", "-q").exit_code == 1


def test_max_report_still_printed_and_json_records_limit():
    res = run("param-count", LENET, "--max", "1K", "--json")
    assert res.exit_code == 1
    data = json.loads(res.output[: res.output.rindex("}") + 1])
    assert data["limit"] == {"what": "learnable params", "max": 1000, "value": LENET_PARAMS, "exceeded": True}


def test_bad_max_is_usage_error():
    res = run("param-count", LENET, "--max", "lots")
    assert res.exit_code == 2 and "invalid count 'lots'" in res.output


def test_input_shape_override_and_errors():
    data = json.loads(run("flops", LENET, "--input-shape", "data=4,1,28,28", "--json").output)
    assert data["batch"] == 4 and data["totals"]["macs_per_image"] == 2_293_000
    data = json.loads(run("flops", LENET, "--input-shape", "2,1,28,28", "--json").output)
    assert data["batch"] == 2
    res = run("flops", LENET, "--input-shape", "data=1,a,28")
    assert res.exit_code == 2
    res = run("flops", LENET, "--input-shape", "image=1,1,28,28")
    assert res.exit_code == 1 and "--input-shape names image" in res.output


def _weights(tmp_path, mutate=None):
    src = read_net(LENET)
    shapes = {"conv1": [(20, 1, 5, 5), (20,)], "conv2": [(50, 20, 5, 5), (50,)],
              "ip1": [(500, 800), (500,)], "ip2": [(10, 500), (10,)]}
    if mutate:
        mutate(shapes)
    rng = np.random.default_rng(0)
    blobs = {k: [rng.standard_normal(s).astype(np.float32) for s in v] for k, v in shapes.items()}
    path = tmp_path / "lenet.caffemodel"
    save_caffemodel(path, src.param.layer, blobs, name="LeNet")
    return str(path)


def test_weights_agree(tmp_path):
    data = json.loads(run("param-count", LENET, "--weights", _weights(tmp_path), "--json").output)
    assert data["totals"]["params"] == LENET_PARAMS and data["weights"].endswith("lenet.caffemodel")


@pytest.mark.parametrize("mutate,message", [
    (lambda s: s.__setitem__("ip1", [(500, 801), (500,)]),
     "layer 'ip1' (InnerProduct) weights: the caffemodel has shape 500x801, the prototxt gives 500x800"),
    (lambda s: s.__setitem__("conv2", [(50, 20, 5, 5)]),
     "layer 'conv2' (Convolution): the caffemodel has 1 blob(s), the prototxt expects 2 (weights, bias)"),
    (lambda s: s.pop("ip2"),
     "layer 'ip2' (InnerProduct) has 2 parameter blob(s) in the prototxt but none in the caffemodel"),
])
def test_weights_disagree(tmp_path, mutate, message):
    res = run("param-count", LENET, "--weights", _weights(tmp_path, mutate))
    assert res.exit_code == 1
    assert res.output == f"Error: {message}\n"


@pytest.mark.parametrize("content,expect", [
    (None, "no such file (expected a net prototxt)"),
    (b"", "empty file (expected a net prototxt)"),
    (b"\x08\x01\x12\x00garbage\x00\xff", "binary data at byte"),
    (b"layer {\n  name: 'a'\n  type: 'Input'\n  top: 'a'\n  input_param { shape { dim: 1 } }\n}\nlayer {\n"
     b"  name: 'b'\n  type: 'Sigmoidd'\n  bottom: 'a'\n  top: 'b'\n}\n",
     "net.prototxt:7:1: layer 'b': unknown layer type 'Sigmoidd'; closest known types: Sigmoid"),
    (b"layer { name: 'a' type: 'ReLU' bottom: 'b' top: 'a' }\nlayer { name: 'b' type: 'ReLU' bottom: 'a' top: 'b' }\n",
     "net.prototxt:1:1: layer 'a' (ReLU): unknown bottom blob 'b' (bottom index 0); it is produced later by layer 'b'"),
    (b"layer {\n  name: 'a'\n  type: 'Input'\n  top: 'a'\n  input_param { shape { dim: 1 dim: 3 } }\n  kernal_size: 3\n}\n",
     "net.prototxt:6:3:"),
    (b"layer { name: 'a' type: 'Input' top: 'a' input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n"
     b"layer { name: 'c' type: 'Convolution' bottom: 'a' top: 'c' convolution_param { num_output: 4 kernel_size: 9 } }\n",
     "net.prototxt:2:1: layer 'c' (Convolution): kernel 9x9"),
])
def test_bad_input_one_line(tmp_path, content, expect):
    path = tmp_path / "net.prototxt"
    if content is not None:
        path.write_bytes(content)
    for command in ("param-count", "flops"):
        res = run(command, str(path))
        assert res.exit_code == 1, res.output
        assert res.output.count("\n") == 1 and res.output.startswith("Error: "), res.output
        assert expect in res.output, res.output
        assert "Traceback" not in res.output

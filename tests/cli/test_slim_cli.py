"""fold-bn, prune, quantize, decompose and compare through the CLI: output, files, --json, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from tests.slim import nets


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def resnet(tmp_path) -> tuple[Path, Path]:
    proto, model, *_ = nets.write(tmp_path, "r", nets.resnet_block(), factor=2.0)
    return proto, model


def test_fold_bn_table_and_files(tmp_path, resnet):
    res = run("fold-bn", *resnet, "-o", tmp_path / "out" / "r_folded")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == f"fold-bn: resnet_block -> {tmp_path}/out/r_folded.prototxt, {tmp_path}/out/r_folded.caffemodel"
    assert lines[1].split() == ["before", "after", "change"]
    assert lines[3].split() == ["stored", "(BatchNorm)", "84", "0", "-100.0%"]
    assert "conv1           Convolution              bn_conv1 + scale_conv1           conv1  bias added" in lines
    assert lines[-1].startswith("timed on 3 random batch(es) of 2 with ")
    assert (tmp_path / "out" / "r_folded.caffemodel").exists()


def test_fold_bn_json(tmp_path, resnet):
    res = run("fold-bn", *resnet, "-o", tmp_path / "f", "--json", "--batches", "1", "--repeat", "1")
    data = json.loads(res.output)
    assert data["command"] == "fold-bn" and data["folded"] == 4 and data["kept"] == []
    assert data["after"]["stored"] == 0 and data["timed_batches"] == 1
    assert data["output_diff"]["prob"]["max_rel"] < 1e-4
    assert data["layers"][0] == {"layer": "conv1", "type": "Convolution", "absorbed": "bn_conv1 + scale_conv1",
                                 "new top": "conv1", "note": "bias added"}


def test_fold_bn_errors(tmp_path, resnet):
    res = run("fold-bn", resnet[0], tmp_path / "missing.caffemodel", "-o", tmp_path / "f")
    assert res.exit_code == 1
    assert res.output == f"Error: {tmp_path}/missing.caffemodel: no such file (expected a .caffemodel)\n"
    res = run("fold-bn", *resnet, "-o", resnet[0])
    assert res.exit_code == 2 and res.output == f"Error: -o '{resnet[0]}' would overwrite the input '{resnet[0]}'\n"


def test_prune_magnitude_and_structured(tmp_path, resnet):
    res = run("prune", *resnet, "--sparsity", "0.5", "--layers", "conv1,fc", "-o", tmp_path / "s", "--json",
              "--batches", "0")
    data = json.loads(res.output)
    assert [r["sparsity"] for r in data["layers"]] == ["50.0%", "50.0%"]
    assert data["after"]["nonzero"] == data["before"]["nonzero"] - 108 - 60
    res = run("prune", *resnet, "--structured", "--ratio", "0.5", "--layers", "res2a_branch1,res2a_branch2b",
              "-o", tmp_path / "p", "--batches", "0")
    assert res.exit_code == 0, res.output
    assert "note: layers cut alike (they meet at an Eltwise): res2a_branch1, res2a_branch2b" in res.output
    assert "res2a_branch1       Convolution  12 -> 6" in res.output


def test_prune_errors(tmp_path, resnet):
    res = run("prune", *resnet, "--structured", "--ratio", "0.5", "--layers", "res2a_branch2b", "-o", tmp_path / "p")
    assert res.exit_code == 1 and res.output.startswith("Error: cannot cut 'res2a_branch2b': Eltwise 'res2a' pairs")
    res = run("prune", *resnet, "-o", tmp_path / "p")
    assert res.exit_code == 2
    assert res.output == "Error: give --sparsity S (magnitude pruning) or --structured --ratio R --layers L,...\n"
    res = run("prune", *resnet, "--sparsity", "0.5")
    assert res.exit_code == 2 and "-o PREFIX is needed" in res.output


def test_prune_sensitivity(tmp_path):
    from dnntool.io.caffemodel import save_caffemodel
    from dnntool.net import Net
    from dnntool.net.weights import init_weights
    from tests.data.digits import digits_lmdb, lenet_like

    digits_lmdb(tmp_path / "db", 40)
    proto = tmp_path / "lenet.prototxt"
    proto.write_text(lenet_like("not_here", batch=20))  # --test-db replaces a source absent here
    net = Net.from_prototxt(proto, input_shapes={"data": (20, 1, 8, 8)})
    save_caffemodel(tmp_path / "w.caffemodel", [layer.param for layer in net.layers], init_weights(net).blobs)
    res = run("prune", proto, tmp_path / "w.caffemodel", "--sensitivity", "--test-db", tmp_path / "db",
              "--ratios", "0.5", "--layers", "conv1")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "sensitivity of accuracy to cutting each layer alone (40 test images)"
    assert lines[3].split()[:5] == ["conv1", "0.5", "8", "->", "4"]


def test_quantize_fp16_and_errors(tmp_path, resnet):
    res = run("quantize", *resnet, "--dtype", "fp16", "-o", tmp_path / "h.onnx", "--batches", "1")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == f"quantize: resnet_block -> {tmp_path}/h.onnx" and (tmp_path / "h.onnx").exists()
    res = run("quantize", *resnet, "--dtype", "int8", "-o", tmp_path / "q.onnx")
    assert res.exit_code == 2
    assert res.output == ("Error: int8 needs calibration data: net 'resnet_block' reads its input from a Input layer:"
                          " give a database (LMDB) to take batches from (--calib-db DB)\n")
    res = run("quantize", *resnet, "--dtype", "int4", "-o", tmp_path / "q.onnx")
    assert res.exit_code == 2 and "Invalid value for '--dtype'" in res.output


def test_decompose(tmp_path, resnet):
    res = run("decompose", *resnet, "--layers", "fc", "--rank", "2", "-o", tmp_path / "d", "--json")
    data = json.loads(res.output)
    assert data["layers"][0]["rank"] == 2 and data["after"]["params"] == data["before"]["params"] - 130 + 54
    res = run("decompose", *resnet, "--layers", "fc", "--rank", "2", "--energy", "0.5", "-o", tmp_path / "d")
    assert res.exit_code == 2 and res.output == "Error: give --rank R or --energy E (one of them)\n"


def test_compare(tmp_path, resnet):
    run("fold-bn", *resnet, "-o", tmp_path / "f", "--batches", "0")
    res = run("compare", *resnet, tmp_path / "f.prototxt", tmp_path / "f.caffemodel", "--blobs", "fc,prob")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("f.prototxt vs r.prototxt: 2 blobs in both, 1 random batch(es) of 2 on ")
    assert lines[1].split() == ["blob", "shape", "max", "abs", "mean", "abs", "max", "rel", "mean", "rel"]
    assert [x.split()[0] for x in lines[2:4]] == ["fc", "prob"]
    data = json.loads(run("compare", *resnet, *resnet, "--json").output)
    assert all(b["max_abs"] == 0 for b in data["blobs"])
    res = run("compare", *resnet, tmp_path / "f.prototxt")
    assert res.exit_code == 2 and res.output == f"Error: '{tmp_path}/f.prototxt' needs its .caffemodel after it\n"


def test_db_stands_in_for_an_absent_data_source(tmp_path):
    """A train_val net whose LMDB lives on another machine: --db gives the records (and the shape)."""
    from dnntool.io.caffemodel import save_caffemodel
    from dnntool.net import Net
    from dnntool.net.weights import init_weights
    from tests.data.digits import digits_lmdb, lenet_like

    digits_lmdb(tmp_path / "db", 40)
    proto = tmp_path / "lenet.prototxt"
    proto.write_text(lenet_like("/elsewhere/digits_lmdb", batch=20))
    net = Net.from_prototxt(proto, input_shapes={"data": (20, 1, 8, 8)})
    save_caffemodel(tmp_path / "w.caffemodel", [layer.param for layer in net.layers], init_weights(net).blobs)
    res = run("fold-bn", proto, tmp_path / "w.caffemodel", "-o", tmp_path / "f", "--db", tmp_path / "db")
    assert res.exit_code == 0, res.output
    assert "timed on 3 db batch(es) of 20 with " in res.output
    assert "note: nothing to fold: the net has no BatchNorm after a Convolution" in res.output
    res = run("fold-bn", proto, tmp_path / "w.caffemodel", "-o", tmp_path / "f")
    assert res.exit_code == 1 and "give it with --input-shape data=N,C,H,W" in res.output

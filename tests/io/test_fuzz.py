"""Fuzzing the readers: whatever the bytes, they fail only with a one-line DnnToolError.

Inputs: random bytes, truncations of real files (lengths 0, 1, half, len-1) and random mutations of
real files (byte-level for every kind, token-level for prototxts). Every input goes to every reader.
Bounded and derandomized so CI runs are repeatable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnntool.errors import DnnToolError, NetError
from dnntool.io.blob import read_binaryproto, write_binaryproto
from dnntool.io.caffemodel import (
    history_arrays,
    load_weights,
    read_caffemodel,
    read_solverstate,
    save_caffemodel,
    write_solverstate,
)
from dnntool.io.prototxt import parse_net_text, read_net, read_solver
from dnntool.net import Net
from tests.zoo import zoo_dir

ZOO = zoo_dir()
SAMPLES = Path(__file__).resolve().parents[2] / "dnntool" / "samples"

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# -- seeds: real files from the zoo, or generated ones without it -----------------------------------

ZOO_SEEDS = {
    "prototxt": [
        "legacy_v1_2014_everpeace/examples/mnist/lenet.prototxt",
        "legacy_v1_2014_everpeace/examples/cifar10/cifar10_quick_train_test.prototxt",
        "mtcnn/MTCNNv2/model/det1.prototxt",
        "opencv_extra/testdata/dnn/layers/layer_convolution.prototxt",
        "squeezenet/SqueezeNet_v1.1/deploy.prototxt",
        "netscope/dgschwend/presets/vgg-16.prototxt",
        "bvlc/examples/mnist/lenet_consolidated_solver.prototxt",
        "bvlc/examples/mnist/lenet_solver_adam.prototxt",
        "legacy_v1_2014_everpeace/examples/mnist/mnist_autoencoder_solver_nesterov.prototxt",
    ],
    "caffemodel": [
        "mtcnn/MTCNNv2/model/det1.caffemodel",
        "opencv_extra/testdata/dnn/layers/layer_convolution.caffemodel",
        "legacy_v1_2014_everpeace/examples/cifar10/cifar10_full_iter_70000.caffemodel",
    ],
    "binaryproto": [
        "opencv_contrib/modules/dnns_easily_fooled/model/lenet/mnist_mean.binaryproto",
        "opencv_contrib/modules/cnn_3dobj/samples/data/images_mean/triplet_mean.binaryproto",
    ],
    "solverstate": ["legacy_v1_2014_everpeace/examples/cifar10/cifar10_full_iter_70000.solverstate"],
}


def _generated_seeds(tmp: Path) -> dict[str, list[Path]]:
    rng = np.random.default_rng(0)
    src = parse_net_text((SAMPLES / "lenet_deploy.prototxt").read_text())
    net = Net.from_param(src.param)
    blobs = {layer.name: [rng.standard_normal(p.shape).astype(np.float32) for p in layer.params]
             for layer in net.layers if layer.params}
    save_caffemodel(tmp / "lenet.caffemodel", src.param.layer, blobs)
    write_binaryproto(tmp / "mean.binaryproto", rng.random((3, 8, 8)).astype(np.float32))
    write_solverstate(tmp / "s.solverstate", 10, "x.caffemodel", [a for v in blobs.values() for a in v][:2])
    solver = tmp / "solver.prototxt"
    solver.write_text('net: "x.prototxt"\nbase_lr: 0.01\nsolver_type: NESTEROV\nlr_policy: "step"\n')
    return {
        "prototxt": [*sorted(SAMPLES.glob("*.prototxt")), solver],
        "caffemodel": [tmp / "lenet.caffemodel"],
        "binaryproto": [tmp / "mean.binaryproto"],
        "solverstate": [tmp / "s.solverstate"],
    }


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, list[Path]]:
    if ZOO is not None:
        out = {k: [ZOO / r for r in v if (ZOO / r).exists()] for k, v in ZOO_SEEDS.items()}
        if all(out.values()):
            return out
    return _generated_seeds(tmp_path_factory.mktemp("seeds"))


@pytest.fixture(scope="module")
def seed_bytes(seeds) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for paths in seeds.values() for p in paths]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# -- readers ---------------------------------------------------------------------------------------

def _solverstate(path):
    state = read_solverstate(path)
    return history_arrays(state, str(path))


def _net(path):
    return Net.from_prototxt(path)


READERS: dict[str, tuple[Callable, str]] = {
    "read_net": (read_net, "net.prototxt"),
    "read_solver": (read_solver, "solver.prototxt"),
    "read_caffemodel": (read_caffemodel, "w.caffemodel"),
    "load_weights": (load_weights, "w.caffemodel"),
    "read_binaryproto": (read_binaryproto, "mean.binaryproto"),
    "read_solverstate": (_solverstate, "s.solverstate"),
    "Net.from_prototxt": (_net, "net.prototxt"),
}


def check_reader(reader: Callable, path: Path) -> None:
    """The reader succeeds or raises a DnnToolError with a non-empty one-line message."""
    try:
        reader(path)
    except DnnToolError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "\r" not in msg, f"{type(e).__name__} message is not one line: {msg!r}"
    # anything else propagates and fails the test with its traceback


def _feed(work: Path, reader_name: str, data: bytes) -> None:
    reader, fname = READERS[reader_name]
    path = work / fname
    path.write_bytes(data)
    check_reader(reader, path)


# -- truncations -------------------------------------------------------------------------------

def _prefix_lengths(n: int) -> list[int]:
    return sorted({0, min(1, n), n // 2, max(n - 1, 0)})


@pytest.mark.parametrize("reader_name", list(READERS))
def test_truncations(seeds, work, reader_name):
    for paths in seeds.values():
        for p in paths:
            data = p.read_bytes()
            for n in _prefix_lengths(len(data)):
                _feed(work, reader_name, data[:n])


def test_truncations_are_errors_for_binary_files(seeds, work):
    """A prefix of a binary file (shorter than the whole) is reported, not silently accepted."""
    for kind, reader_name in (("caffemodel", "load_weights"), ("solverstate", "read_solverstate"),
                              ("binaryproto", "read_binaryproto")):
        reader, fname = READERS[reader_name]
        for p in seeds[kind]:
            data = p.read_bytes()
            for n in (0, len(data) // 2, len(data) - 1):
                path = work / fname
                path.write_bytes(data[:n])
                with pytest.raises(DnnToolError):
                    reader(path)


# -- random bytes ------------------------------------------------------------------------------

@pytest.mark.parametrize("reader_name", list(READERS))
@FUZZ
@given(data=st.one_of(
    st.binary(max_size=512),
    st.binary(min_size=1, max_size=64).map(lambda b: b * 8),
    st.text(max_size=300).map(lambda t: t.encode("utf-8")),
))
def test_random_bytes(work, reader_name, data):
    _feed(work, reader_name, data)


# -- byte-level mutations of real files ----------------------------------------------------------

_INTERESTING = [0x00, 0x01, 0x08, 0x0A, 0x12, 0x22, 0x2A, 0x3A, 0x7F, 0x80, 0xFF, ord("{"), ord("}"), ord(":")]


@st.composite
def byte_mutation(draw, n_seeds: int):
    index = draw(st.integers(0, n_seeds - 1))
    ops = draw(st.lists(
        st.tuples(
            st.sampled_from(["flip", "set", "delete", "insert", "dup", "cut"]),
            st.floats(0, 1, allow_nan=False),
            st.integers(0, 255),
            st.integers(1, 64),
        ),
        min_size=1, max_size=6,
    ))
    return index, ops


def apply_byte_mutation(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op, where, value, length in ops:
        if not buf:
            buf.extend(bytes([value]))
            continue
        pos = min(int(where * len(buf)), len(buf) - 1)
        if op == "flip":
            buf[pos] ^= 1 << (value % 8)
        elif op == "set":
            buf[pos] = _INTERESTING[value % len(_INTERESTING)] if value % 2 else value
        elif op == "delete":
            del buf[pos:pos + length]
        elif op == "insert":
            buf[pos:pos] = bytes([value]) * length
        elif op == "dup":
            buf[pos:pos] = buf[pos:pos + length]
        elif op == "cut":
            del buf[pos:]
    return bytes(buf)


@pytest.mark.parametrize("reader_name", list(READERS))
@FUZZ
@given(mutation=byte_mutation(64))
def test_byte_mutations(seed_bytes, work, reader_name, mutation):
    index, ops = mutation
    _name, data = seed_bytes[index % len(seed_bytes)]
    _feed(work, reader_name, apply_byte_mutation(data, ops))


# -- token-level mutations of prototxts (these mostly parse, so they reach the Net builder) ---------

_NUMBERS = ["0", "-1", "1", "2", "3", "7", "-7", "1000000", "2147483648", "9223372036854775808",
            "1e30", "-0.5", "0.5", "nan", "inf", "99999999999999999999"]
_WORDS = ["layer", "layers", "top", "bottom", "name", "type", "num_output", "kernel_size", "stride", "pad",
          "group", "axis", "dim", "input", "input_dim", "param", "lr_mult", "MAX", "AVE", "TRAIN", "TEST",
          '"Convolution"', '"Pooling"', '"InnerProduct"', '"Concat"', '"Eltwise"', '"Reshape"', '"Slice"',
          '"Input"', '"Flatten"', '"Softmax"', '"data"', "CONVOLUTION", "POOLING", "CONCAT", "SPLIT", "{", "}",
          ":", '"', "#", "include", "exclude", "phase", "bias_term", "false", "global_pooling", "true"]
_TOKEN = re.compile(r"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|[A-Za-z_][A-Za-z0-9_]*|\"[^\"\n]*\"|'[^'\n]*'")


@st.composite
def text_mutation(draw):
    return draw(st.integers(0, 1000)), draw(st.lists(
        st.tuples(
            st.sampled_from(["number", "word", "line_delete", "line_dup", "line_swap"]),
            st.floats(0, 1, allow_nan=False),
            st.floats(0, 1, allow_nan=False),
            st.integers(0, 1000),
        ),
        min_size=1, max_size=5,
    ))


def apply_text_mutation(text: str, ops) -> str:
    for op, a, b, k in ops:
        if op in ("number", "word"):
            tokens = [m for m in _TOKEN.finditer(text)
                      if (op == "number") == bool(re.fullmatch(r"-?\d.*", m.group()))]
            if not tokens:
                continue
            m = tokens[min(int(a * len(tokens)), len(tokens) - 1)]
            new = _NUMBERS[k % len(_NUMBERS)] if op == "number" else _WORDS[k % len(_WORDS)]
            text = text[: m.start()] + new + text[m.end():]
            continue
        lines = text.split("\n")
        i = min(int(a * len(lines)), len(lines) - 1)
        j = min(int(b * len(lines)), len(lines) - 1)
        if op == "line_delete":
            del lines[i]
        elif op == "line_dup":
            lines.insert(j, lines[i])
        else:
            lines[i], lines[j] = lines[j], lines[i]
        text = "\n".join(lines)
    return text


@pytest.mark.parametrize("reader_name", ["read_net", "Net.from_prototxt", "read_solver"])
@FUZZ
@given(mutation=text_mutation())
def test_prototxt_token_mutations(seeds, work, reader_name, mutation):
    index, ops = mutation
    paths = seeds["prototxt"]
    text = paths[index % len(paths)].read_text(errors="replace")
    _feed(work, reader_name, apply_text_mutation(text, ops).encode("utf-8"))


def test_token_mutations_reach_the_net_builder(seeds, work):
    """Sanity check of the mutator: a number change keeps the file parseable."""
    text = next(p for p in seeds["prototxt"] if "solver" not in p.name).read_text()
    mutated = apply_text_mutation(text, [("number", 0.5, 0.0, 0)])
    assert mutated != text
    path = work / "sanity.prototxt"
    path.write_text(mutated)
    read_net(path)  # still parses
    check_reader(_net, path)


# -- regressions found by longer fuzzing runs ------------------------------------------------------

@pytest.mark.parametrize("source", ["", "."])
def test_regression_hdf5_source_is_a_directory(work, source):
    """HDF5Data whose source names a directory: was IsADirectoryError from pathlib, now a NetError."""
    p = work / "h5.prototxt"
    p.write_text(
        'layer { name: "data" type: "HDF5Data" top: "data" top: "label"\n'
        f'  hdf5_data_param {{ source: "{source}" batch_size: 2 }} }}\n'
    )
    with pytest.raises(NetError) as ei:
        Net.from_prototxt(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}:1:1: layer 'data' (HDF5Data): ") and "\n" not in msg

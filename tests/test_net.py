"""Net wiring as Caffe's ``Net::Init`` does it: state filtering, blob wiring, in-place SSA ids, sharing.

Error texts follow net.cpp ("Unknown bottom blob 'x' (layer 'y', bottom index i)", "Top blob 'x'
produced by multiple sources.") and must be one line starting with ``file:line:`` of the layer.
"""

from __future__ import annotations

import pytest

from dnntool.errors import NetError, ShapeError
from dnntool.io.prototxt import parse_net_text
from dnntool.net import Net


def net_of(text: str, phase: str = "test", **kw) -> Net:
    src = parse_net_text(text, "case.prototxt")
    return Net.from_param(src.param, phase, layer_locs=src.layer_locs, path="case.prototxt", **kw)


def names(net: Net) -> list[str]:
    return [layer.name for layer in net.layers]


def error_of(text: str, cls: type[Exception] = NetError, **kw) -> str:
    with pytest.raises(cls) as e:
        net_of(text, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'


def relu(name: str, rule: str = "", bottom: str = "data") -> str:
    return f'layer {{ name: "{name}" type: "ReLU" bottom: "{bottom}" top: "{name}" {rule} }}\n'


# --- NetState rules (Caffe's StateMeetsRule / FilterNet) ------------------------------------------
FILTER = INPUT + "".join([
    relu("train_only", "include { phase: TRAIN }"),
    relu("test_only", "include { phase: TEST }"),
    relu("not_test", "exclude { phase: TEST }"),
    relu("deploy_stage", 'include { stage: "deploy" }'),
    relu("not_deploy", 'include { not_stage: "deploy" }'),
    relu("both_stages", 'include { stage: "a" stage: "b" }'),  # every listed stage required
    relu("either_rule", 'include { stage: "a" } include { stage: "b" }'),  # any rule suffices
    relu("exclude_a", 'exclude { stage: "a" }'),
    relu("level1", "include { min_level: 1 }"),
    relu("level_le0", "include { max_level: 0 }"),
    relu("train_deploy", 'include { phase: TRAIN stage: "deploy" }'),
])


@pytest.mark.parametrize("phase,stages,level,expected", [
    ("test", (), 0, ["data", "test_only", "not_deploy", "exclude_a", "level_le0"]),
    ("train", (), 0, ["data", "train_only", "not_test", "not_deploy", "exclude_a", "level_le0"]),
    ("test", ("deploy",), 0, ["data", "test_only", "deploy_stage", "exclude_a", "level_le0"]),
    ("train", ("deploy",), 0,
     ["data", "train_only", "not_test", "deploy_stage", "exclude_a", "level_le0", "train_deploy"]),
    ("test", ("a",), 0, ["data", "test_only", "not_deploy", "either_rule", "level_le0"]),
    ("test", ("a", "b"), 0, ["data", "test_only", "not_deploy", "both_stages", "either_rule", "level_le0"]),
    ("test", (), 1, ["data", "test_only", "not_deploy", "exclude_a", "level1"]),
    ("test", (), 2, ["data", "test_only", "not_deploy", "exclude_a", "level1"]),
])
def test_state_rules(phase, stages, level, expected):
    assert names(net_of(FILTER, phase, stages=stages, level=level)) == expected


def test_state_from_net_param():
    # NetParameter.state gives the default stage and level; the phase is the one asked for
    text = 'state { stage: "deploy" level: 1 }\n' + FILTER
    assert names(net_of(text, "test")) == ["data", "test_only", "deploy_stage", "exclude_a", "level1"]


def test_include_and_exclude_together_is_an_error():
    text = INPUT + '\nlayer {\n  name: "r" type: "ReLU" bottom: "data" top: "r"\n' \
                   '  include { phase: TRAIN }\n  exclude { phase: TEST }\n}\n'
    msg = error_of(text)
    assert msg.startswith("case.prototxt:3:") and "include and exclude" in msg


# --- wiring ---------------------------------------------------------------------------------------
CHAIN = INPUT + """layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 }
}
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip_a" type: "InnerProduct" bottom: "pool1" top: "ip_a" inner_product_param { num_output: 2 } }
layer { name: "ip_b" type: "InnerProduct" bottom: "pool1" top: "ip_b" inner_product_param { num_output: 3 } }
"""


def test_in_place_layers_get_ssa_ids():
    net = net_of(CHAIN)
    chain = [(lay.name, lay.bottoms, lay.tops) for lay in net.layers[1:5]]
    assert chain == [
        ("conv1", ["data"], ["conv1"]),
        ("bn1", ["conv1"], ["conv1@bn1"]),
        ("scale1", ["conv1@bn1"], ["conv1@scale1"]),
        ("relu1", ["conv1@scale1"], ["conv1@relu1"]),
    ]
    assert net.layer("relu1").in_place and not net.layer("conv1").in_place
    assert net.layer("relu1").bottom_names == ["conv1"] == net.layer("relu1").top_names
    assert net.blob("conv1").id == "conv1@relu1"  # the last version
    assert net.blob("conv1").shape == (1, 4, 6, 6)
    assert net.layer("pool1").bottoms == ["conv1@relu1"]
    assert net.blobs["conv1"].consumers == ["bn1"]


def test_blob_read_by_several_layers():
    net = net_of(CHAIN)
    assert net.blob("pool1").consumers == ["ip_a", "ip_b"]
    assert net.blob("pool1").producer == "pool1"
    assert net.output_ids() == ["ip_a", "ip_b"]
    assert net.input_names() == ["data"]


def test_output_ids_with_in_place_last():
    net = net_of(INPUT + relu("r") + 'layer { name: "s" type: "Sigmoid" bottom: "r" top: "r" }\n')
    assert net.output_ids() == ["r@s"]


def test_unknown_bottom():
    text = INPUT + '\nlayer { name: "cat" type: "Concat" bottom: "data" bottom: "nope" top: "cat" }\n'
    msg = error_of(text)
    assert msg.startswith("case.prototxt:3:")
    assert "'cat'" in msg and "unknown bottom blob 'nope'" in msg and "bottom index 1" in msg


def test_out_of_order_is_a_cycle():
    text = INPUT + relu("a", bottom="b") + relu("b", bottom="data")
    msg = error_of(text)
    assert msg.startswith("case.prototxt:2:")
    assert "'b'" in msg and "later" in msg and "cycle" in msg


def test_duplicate_top():
    text = INPUT + relu("a") + '\n\nlayer { name: "b" type: "Sigmoid" bottom: "data" top: "a" }\n'
    msg = error_of(text)
    assert msg.startswith("case.prototxt:5:")
    assert "'a'" in msg and "produced by multiple sources" in msg


def test_top_matching_another_bottom_index_is_not_in_place():
    # in-place means top j == bottom j; a top repeating bottom 0 at index 1 is a duplicate
    text = INPUT + 'layer { name: "s" type: "Slice" bottom: "data" top: "x" top: "data" slice_param { axis: 2 } }\n'
    assert "multiple sources" in error_of(text)


@pytest.mark.parametrize("typo,suggested", [("Convolutoin", "Convolution"), ("relu", "ReLU"),
                                            ("Poolling", "Pooling"), ("batchnorm", "BatchNorm")])
def test_unknown_type_suggests(typo, suggested):
    text = INPUT + f'layer {{\n  name: "x"\n  type: "{typo}"\n  bottom: "data"\n  top: "x"\n}}\n'
    msg = error_of(text)
    assert msg.startswith("case.prototxt:2:")
    assert f"unknown layer type '{typo}'" in msg and suggested in msg.split("closest known types:")[1]


def test_error_points_at_layer_line():
    text = INPUT + "\n\n# a comment with layer { in it\n" + \
        'layer {\n  name: "c"\n  type: "Convolution"\n  bottom: "data"\n  top: "c"\n  convolution_param { kernel_size: 3 }\n}\n'
    msg = error_of(text)
    assert msg.startswith("case.prototxt:5:") and "num_output" in msg


def test_shape_error_is_one_line_with_location():
    text = INPUT + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c"\n' \
                   '  convolution_param { num_output: 2 kernel_size: 9 } }\n'
    msg = error_of(text, ShapeError)
    assert msg.startswith("case.prototxt:2:")


# --- shared parameters (Caffe's AppendParam) ------------------------------------------------------
def ip(name: str, n: int, bottom: str = "data", share: str = "", mode: str = "") -> str:
    spec = f'param {{ name: "{share}w" {mode} }} param {{ name: "{share}b" }}' if share else ""
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" {spec} '
            f'inner_product_param {{ num_output: {n} }} }}\n')


def test_shared_params_counted_once():
    # siamese: both branches use weights (10, 192) and bias (10,)
    net = net_of(INPUT + ip("a", 10, share="s") + ip("b", 10, share="s"))
    a, b = net.layer("a"), net.layer("b")
    assert [p.shared_from for p in a.params] == [None, None]
    assert [p.shared_from for p in b.params] == ["a", "a"]
    assert a.learnable_count == 192 * 10 + 10 and b.learnable_count == 0
    assert net.learnable_count == 1930
    unshared = net_of(INPUT + ip("a", 10) + ip("b", 10))
    assert unshared.learnable_count == 2 * 1930


def test_shared_param_shape_mismatch():
    text = INPUT + ip("a", 10, share="s") + "\n" + ip("b", 12, share="s")
    msg = error_of(text, ShapeError)
    assert msg.startswith("case.prototxt:4:")  # b's line: after a blank line
    assert "'b'" in msg and "'sw'" in msg and "'a'" in msg


def test_shared_param_permissive_needs_equal_count_only():
    # a: weights (6, 192); b with transpose: weights (192, 6): same count, other shape.
    # Caffe: STRICT (the default) checks shapes, PERMISSIVE only counts.
    def b(mode: str) -> str:
        return (f'layer {{ name: "b" type: "InnerProduct" bottom: "data" top: "b" param {{ name: "sw" {mode} }} '
                'inner_product_param { num_output: 6 transpose: true bias_term: false } }\n')
    a = ip("a", 6, share="s")
    net = net_of(INPUT + a + b("share_mode: PERMISSIVE"))
    assert net.layer("b").params[0].shared_from == "a"
    assert net.learnable_count == 6 * 192 + 6
    with pytest.raises(ShapeError, match="6x192"):
        net_of(INPUT + a + b(""))
    with pytest.raises(ShapeError, match="6x192"):
        net_of(INPUT + a + b("share_mode: STRICT"))

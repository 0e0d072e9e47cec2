"""Small nets for the slimming tests: ResNet- and MobileNet-style blocks, with random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dnntool.io.caffemodel import Weights, save_caffemodel
from dnntool.io.prototxt import parse_net_text
from dnntool.net import Net
from tests.engine.oracle import random_weights


def conv(name, bottom, n, k=3, pad=1, stride=1, group=1, bias=False, top=None, type="Convolution"):
    g = f" group: {group}" if group > 1 else ""
    return (f'layer {{ name: "{name}" type: "{type}" bottom: "{bottom}" top: "{top or name}"'
            f" convolution_param {{ num_output: {n} kernel_size: {k} pad: {pad} stride: {stride}{g}"
            f" bias_term: {'true' if bias else 'false'} }} }}\n")


def bn(name, bottom, top=None, eps=None, scale=True, scale_top=None, scale_bias=True):
    e = f" batch_norm_param {{ eps: {eps} }}" if eps is not None else ""
    s = f'layer {{ name: "bn_{name}" type: "BatchNorm" bottom: "{bottom}" top: "{top or bottom}"{e} }}\n'
    if scale:
        t = top or bottom
        s += (f'layer {{ name: "scale_{name}" type: "Scale" bottom: "{t}" top: "{scale_top or t}"'
              f" scale_param {{ bias_term: {'true' if scale_bias else 'false'} }} }}\n")
    return s


def relu(name, blob):
    return f'layer {{ name: "{name}" type: "ReLU" bottom: "{blob}" top: "{blob}" }}\n'


def input_layer(shape=(2, 3, 16, 16)):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'


def resnet_block() -> str:
    """conv-BN-Scale-ReLU stem, a bottleneck-free residual block with a projection shortcut (BN not
    in place, Scale in place), global pooling, InnerProduct and Softmax."""
    return ('name: "resnet_block"\n' + input_layer()
            + conv("conv1", "data", 8) + bn("conv1", "conv1", eps=1e-3) + relu("conv1_relu", "conv1")
            + conv("res2a_branch1", "conv1", 12, k=1, pad=0)
            + bn("2a_branch1", "res2a_branch1", top="bn2a_branch1")
            + conv("res2a_branch2a", "conv1", 8) + bn("2a_branch2a", "res2a_branch2a")
            + relu("res2a_branch2a_relu", "res2a_branch2a")
            + conv("res2a_branch2b", "res2a_branch2a", 12)
            + bn("2a_branch2b", "res2a_branch2b", top="bn2a_branch2b", scale_top="sc2a_branch2b")
            + 'layer { name: "res2a" type: "Eltwise" bottom: "bn2a_branch1" bottom: "sc2a_branch2b" top: "res2a" }\n'
            + relu("res2a_relu", "res2a")
            + 'layer { name: "pool" type: "Pooling" bottom: "res2a" top: "pool" pooling_param { pool: AVE global_pooling: true } }\n'
            + 'layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 10 } }\n'
            + 'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n')


def mobilenet_block(depthwise_type: bool = False, deconv: bool = True) -> str:
    """conv/dw/pw blocks (the dw as a grouped Convolution, or DepthwiseConvolution), a BN without
    Scale, a Scale without bias, a grouped Deconvolution and an InnerProduct + BN."""
    dw_type = "DepthwiseConvolution" if depthwise_type else "Convolution"
    s = ('name: "mobilenet_block"\n' + input_layer()
         + conv("conv1", "data", 8, stride=2) + bn("conv1", "conv1") + relu("relu1", "conv1")
         + conv("conv2_dw", "conv1", 8, group=8, type=dw_type) + bn("conv2_dw", "conv2_dw", scale=False)
         + relu("relu2_dw", "conv2_dw")
         + conv("conv2_pw", "conv2_dw", 16, k=1, pad=0, bias=True) + bn("conv2_pw", "conv2_pw", scale_bias=False)
         + relu("relu2_pw", "conv2_pw"))
    last = "conv2_pw"
    if deconv:
        s += (conv("up", "conv2_pw", 8, k=2, pad=0, stride=2, group=2, type="Deconvolution")
              + bn("up", "up") + relu("relu_up", "up"))
        last = "up"
    s += (f'layer {{ name: "fc1" type: "InnerProduct" bottom: "{last}" top: "fc1" inner_product_param {{ num_output: 16 bias_term: false }} }}\n'
          + bn("fc1", "fc1", top="fc1_bn", scale_top="fc1_sc") + relu("relu_fc1", "fc1_sc")
          + 'layer { name: "fc2" type: "InnerProduct" bottom: "fc1_sc" top: "fc2" inner_product_param { num_output: 5 } }\n')
    return s


def build(text: str, **kw) -> Net:
    return Net.from_param(parse_net_text(text).param, "test", **kw)


def write(tmp: Path, stem: str, text: str, seed: int = 0, factor: float = 1.0):
    """Write NET and random weights (BatchNorm scale factors set to ``factor``); returns the paths."""
    proto = tmp / f"{stem}.prototxt"
    proto.write_text(text)
    net = Net.from_prototxt(proto, "test")
    arrays = random_weights(net, seed)
    for layer in net.layers:
        if layer.type == "BatchNorm":
            mean, var, _ = arrays[layer.name]
            arrays[layer.name] = [mean * factor, var * factor, np.full((1,), factor, np.float32)]
    model = tmp / f"{stem}.caffemodel"
    save_caffemodel(model, [layer.param for layer in net.layers], arrays, name=net.name)
    return proto, model, net, Weights(blobs=arrays)

"""A LeNet-style net with BatchNorm trained by the training engine on scikit-learn's digits (28x28).

``train(tmp)`` writes train/test LMDBs, the train_val prototxt (Data layers with transform_param,
BatchNorm + Scale after each convolution and the first InnerProduct, Accuracy and SoftmaxWithLoss)
and the trained caffemodel; a few hundred SGD steps of ``dnntool.train.step.Trainer`` reach ~97%.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnntool.io.caffemodel import save_caffemodel
from dnntool.net import Net
from dnntool.net.weights import init_weights, layer_arrays
from dnntool.proto import caffe_pb2
from dnntool.train.step import Trainer
from dnntool.translate.forward import param_name
from tests.data.digits import digits, write_lmdb

N_TRAIN = 1397  # the rest (400 images) is the test set

NET = """name: "digits_bn"
layer {{ name: "digits" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ scale: 0.00390625 }} data_param {{ source: "{train}" batch_size: 32 backend: LMDB }} }}
layer {{ name: "digits" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ scale: 0.00390625 }} data_param {{ source: "{test}" batch_size: 100 backend: LMDB }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 16 kernel_size: 5 bias_term: false weight_filler {{ type: "msra" }} }} }}
layer {{ name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }}
layer {{ name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param {{ bias_term: true }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param {{ num_output: 32 kernel_size: 5 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "bn2" type: "BatchNorm" bottom: "conv2" top: "bn2" batch_norm_param {{ eps: 0.001 }} }}
layer {{ name: "scale2" type: "Scale" bottom: "bn2" top: "scale2" scale_param {{ bias_term: true }} }}
layer {{ name: "relu2" type: "ReLU" bottom: "scale2" top: "scale2" }}
layer {{ name: "pool2" type: "Pooling" bottom: "scale2" top: "pool2" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  inner_product_param {{ num_output: 64 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "bn3" type: "BatchNorm" bottom: "ip1" top: "ip1" }}
layer {{ name: "relu3" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param {{ num_output: 10 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include {{ phase: TEST }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""


@dataclass
class Trained:
    """The files of a trained digits net."""

    net: Path  # train_val prototxt
    weights: Path
    train_db: Path
    test_db: Path


def train(tmp: Path, iterations: int = 200, seed: int = 0) -> Trained:
    """Write the LMDBs and prototxt, train with SGD (momentum 0.9), save the caffemodel."""
    x, y = digits(size=28)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    train_db, test_db = tmp / "digits_train_lmdb", tmp / "digits_test_lmdb"
    write_lmdb(train_db, x[:N_TRAIN], y[:N_TRAIN])
    write_lmdb(test_db, x[N_TRAIN:], y[N_TRAIN:])
    proto = tmp / "digits_bn_train_val.prototxt"
    proto.write_text(NET.format(train=train_db, test=test_db))
    net = Net.from_prototxt(proto, "train")
    arrays = layer_arrays(net, init_weights(net, seed))
    values = {param_name(layer.name, p.share_name or p.blob.role): arrays[layer.name][k]
              for layer in net.layers for k, p in enumerate(layer.params)}
    sp = caffe_pb2.SolverParameter(base_lr=0.05, momentum=0.9, weight_decay=5e-4, lr_policy="inv",
                                   gamma=1e-3, power=0.75)
    trainer = Trainer(net, sp, values, device="cpu")
    rng = np.random.default_rng(seed)
    xs, ys = x[:N_TRAIN].astype(np.float32) * np.float32(0.00390625), y[:N_TRAIN].astype(np.float32)
    for _ in range(iterations):
        idx = rng.integers(0, N_TRAIN, 32)
        trainer.step([{"data": xs[idx], "label": ys[idx]}])
    learned = trainer.weights()
    blobs = {layer.name: [learned[param_name(layer.name, p.share_name or p.blob.role)] for p in layer.params]
             for layer in net.layers if layer.params}
    model = tmp / "digits_bn.caffemodel"
    save_caffemodel(model, [layer.param for layer in net.layers], blobs, name=net.name)
    return Trained(proto, model, train_db, test_db)

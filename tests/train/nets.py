"""Small nets and data for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from google.protobuf import text_format

from dnntool.proto import caffe_pb2


def write_lmdb(path: Path, n: int = 24, shape=(1, 8, 8), classes: int = 3, seed: int = 0) -> Path:
    """``n`` raw uint8 Datums, label = brightest third of the image (learnable), keys %08d."""
    import lmdb

    rng = np.random.default_rng(seed)
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(n):
            label = i % classes
            img = rng.integers(0, 80, shape, dtype=np.uint8)
            band = shape[1] // classes
            img[:, label * band:(label + 1) * band, :] += 150
            d = caffe_pb2.Datum(channels=shape[0], height=shape[1], width=shape[2], data=img.tobytes(),
                                label=label)
            txn.put(f"{i:08d}_img{i}".encode(), d.SerializeToString())
    env.close()
    return path


CONV_NET = """
name: "small"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 crop_size: 6 mirror: true }
  data_param { source: "%(train)s" batch_size: 4 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 crop_size: 6 }
  data_param { source: "%(test)s" batch_size: 6 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" dropout_param { dropout_ratio: 0.3 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def conv_solver(tmp: Path, prefix: str = "snap/small", **fields) -> caffe_pb2.SolverParameter:
    """A solver over CONV_NET with LMDBs in ``tmp`` (made once)."""
    train_db, test_db = tmp / "train_lmdb", tmp / "test_lmdb"
    if not train_db.exists():
        write_lmdb(train_db, 24, seed=1)
        write_lmdb(test_db, 12, seed=2)
    sp = caffe_pb2.SolverParameter(
        base_lr=0.05, momentum=0.9, weight_decay=0.0005, lr_policy="step", gamma=0.5, stepsize=30,
        max_iter=20, display=5, test_iter=[2], test_interval=10, snapshot=10,
        snapshot_prefix=str(tmp / prefix), random_seed=3)
    text_format.Parse(CONV_NET % {"train": train_db, "test": test_db}, sp.net_param)
    for k, v in fields.items():
        if isinstance(v, list):
            getattr(sp, k)[:] = v
        else:
            setattr(sp, k, v)
    return sp


TINY_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "x" top: "t"
  input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" loss_weight: 2 }
layer { name: "xmean" type: "Reduction" bottom: "x" top: "xmean" include { phase: TEST }
  reduction_param { operation: MEAN } }
"""


def tiny_solver(**fields) -> caffe_pb2.SolverParameter:
    sp = caffe_pb2.SolverParameter(base_lr=0.1, momentum=0.9, max_iter=6, display=1,
                                   snapshot_after_train=False, random_seed=0)
    text_format.Parse(TINY_NET, sp.net_param)
    for k, v in fields.items():
        if isinstance(v, list):
            getattr(sp, k)[:] = v
        else:
            setattr(sp, k, v)
    return sp


def tiny_data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(16, 3)).astype(np.float32), "t": rng.normal(size=(16, 2)).astype(np.float32)}

"""Small datasets and nets for data/engine tests: scikit-learn's 8x8 digits as a Caffe LMDB."""

from __future__ import annotations

from pathlib import Path

import lmdb
import numpy as np

from dnntool.proto import caffe_pb2


def digits(n: int | None = None, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 1 x size x size uint8, labels N) from sklearn's digits (0..16 scaled to 0..255)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(d.images * 16, 0, 255).astype(np.uint8)
    if size != 8:
        import cv2

        x = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_NEAREST) for im in x])
    x, y = x[:, None], d.target.astype(np.int64)
    return (x[:n], y[:n]) if n is not None else (x, y)


def key(i: int) -> str:
    """convert_imageset's key for the i-th list entry."""
    return f"{i:08d}_digit_{i}.png"


def write_lmdb(path: str | Path, images: np.ndarray, labels, encoded: bool = False,
               floats: bool = False) -> list[str]:
    """Write N x C x H x W images as Datums (raw uint8, PNG-encoded or float_data); returns the keys."""
    import cv2

    env = lmdb.open(str(path), map_size=1 << 28)
    keys = []
    with env.begin(write=True) as txn:
        for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
            c, h, w = img.shape
            d = caffe_pb2.Datum(channels=c, height=h, width=w, label=int(lab))
            if encoded:
                ok, buf = cv2.imencode(".png", img.transpose(1, 2, 0) if c > 1 else img[0])
                assert ok
                d.data = buf.tobytes()
                d.encoded = True
            elif floats:
                d.float_data.extend(img.astype(np.float32).reshape(-1).tolist())
            else:
                d.data = np.ascontiguousarray(img, np.uint8).tobytes()
            keys.append(key(i))
            txn.put(keys[-1].encode(), d.SerializeToString())
    env.close()
    return keys


def write_shards(base: Path, x: np.ndarray, y: np.ndarray, k: int) -> list[str]:
    """Record i (key i, as convert-images numbers it) to shard i % k; returns the shard paths."""
    from dnntool.io.shards import shard_name

    paths = [shard_name(base, i, k) for i in range(k)]
    envs = [lmdb.open(p, map_size=1 << 24) for p in paths]
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        d = caffe_pb2.Datum(channels=img.shape[0], height=img.shape[1], width=img.shape[2],
                            data=img.tobytes(), label=int(label))
        with envs[i % k].begin(write=True) as txn:
            txn.put(key(i).encode(), d.SerializeToString())
    for env in envs:
        env.close()
    return paths


def digits_lmdb(path: str | Path, n: int | None = None, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """An LMDB of the first ``n`` digits; returns (images, labels)."""
    x, y = digits(n, size)
    write_lmdb(path, x, y)
    return x, y


DATA_LAYER = """
layer {{ name: "digits" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ {transform} }}
  data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}
"""


def classifier_net(source: str, batch: int = 50, transform: str = "scale: 0.0625", size: int = 8) -> str:
    """A data layer, one InnerProduct with 10 outputs, Accuracy and SoftmaxWithLoss (TEST phase)."""
    return 'name: "digits_ip"\n' + DATA_LAYER.format(source=source, batch=batch, transform=transform) + """
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def lenet_like(source: str, batch: int = 50, transform: str = "scale: 0.0625") -> str:
    """A small LeNet: conv 3x3 (8) + ReLU + max pool + InnerProduct 10 + Accuracy + loss."""
    return 'name: "tiny_lenet"\n' + DATA_LAYER.format(source=source, batch=batch, transform=transform) + """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 weight_filler { type: "msra" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def centroid_weights(images: np.ndarray, labels: np.ndarray, scale: float = 0.0625,
                     soft: float = 0.02) -> list[np.ndarray]:
    """A nearest-centroid classifier as InnerProduct blobs: W[c] = k mu_c, b[c] = -k |mu_c|^2 / 2.

    ``soft`` (k) keeps the logits' spread to a few units so the softmax loss stays well inside
    float32 (no FLT_MIN clamping); the argmax, hence the accuracy, does not depend on it.
    """
    x = images.reshape(len(images), -1).astype(np.float64) * scale
    mu = np.stack([x[labels == c].mean(axis=0) for c in range(10)])
    return [(soft * mu).astype(np.float32), (-0.5 * soft * (mu**2).sum(axis=1)).astype(np.float32)]

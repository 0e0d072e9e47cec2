"""Run a net two ways: our ONNX translation in ONNX Runtime, and OpenCV's Caffe importer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dnntool.io.caffemodel import save_caffemodel
from dnntool.io.prototxt import write_prototxt
from dnntool.net import Net
from dnntool.net.weights import layer_arrays
from dnntool.translate.forward import to_onnx


def has_opencv_caffe() -> bool:
    try:
        import cv2
    except ImportError:
        return False
    return hasattr(cv2, "dnn") and hasattr(cv2.dnn, "readNetFromCaffe")


def random_weights(net: Net, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Random parameters with sane scales (BatchNorm statistics consistent, Scale near 1)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {}
    for layer in net.layers:
        owned = [p for p in layer.params if p.shared_from is None]
        if not owned:
            continue
        arrays = []
        for p in layer.params:
            shape = p.shape
            role = p.blob.role
            if role == "mean":
                a = rng.normal(0, 0.1, shape)
            elif role == "variance":
                a = rng.uniform(0.5, 1.5, shape)
            elif role == "scale_factor":
                a = np.ones(shape)
            elif role in ("scale", "slope"):
                a = rng.uniform(0.5, 1.5, shape) if role == "scale" else rng.uniform(0.05, 0.3, shape)
            elif role == "bias":
                a = rng.normal(0, 0.1, shape)
            else:
                fan_in = max(1, int(np.prod(shape[1:]))) if len(shape) > 1 else 1
                a = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
            arrays.append(a.astype(np.float32))
        out[layer.name] = arrays
    return out


def run_ours(net: Net, arrays, inputs: dict[str, np.ndarray], outputs=None) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    from dnntool.io.caffemodel import Weights

    w = Weights(blobs={k: list(v) for k, v in arrays.items()})
    tr = to_onnx(net, layer_arrays(net, w), outputs=outputs)
    sess = ort.InferenceSession(tr.model.SerializeToString(), providers=["CPUExecutionProvider"])
    res = sess.run(None, {k: inputs[k] for k in tr.inputs})
    return {tr.output_blobs[o]: r for o, r in zip(tr.outputs, res, strict=True)}


def run_opencv(net: Net, arrays, inputs: dict[str, np.ndarray], blobs: list[str], tmp: Path):
    """Write NET (as built: upgraded, phase-filtered) and the weights, load them in OpenCV, forward."""
    import cv2

    proto = tmp / "net.prototxt"
    model = tmp / "net.caffemodel"
    param = type(net.param_proto)()
    param.CopyFrom(net.param_proto)
    kept = {layer.name for layer in net.layers}
    layers = [lp for lp in param.layer if lp.name in kept]
    del param.layer[:]
    param.layer.extend(layers)
    write_prototxt(param, proto)
    save_caffemodel(model, layers, arrays, name=net.name)
    cvnet = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    for name, x in inputs.items():
        cvnet.setInput(x, name)
    outs = cvnet.forward(blobs)
    return dict(zip(blobs, outs, strict=True))


def assert_close(ours: np.ndarray, ref: np.ndarray, rtol: float = 1e-4, what: str = ""):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64).reshape(np.shape(ours))
    scale = max(1e-6, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max()) / scale
    assert err <= rtol, f"{what}: max relative error {err:.3g} > {rtol}"

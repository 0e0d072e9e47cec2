"""A Caffe-style gradient checker for the ONNX backward (Caffe's GradientChecker, test_gradient_check_util.hpp).

The objective is L = sum_j <top_j, R_j> with fixed random R_j, so dL/dtop_j = R_j seeds the
backward. For every bottom and parameter blob, sampled elements are perturbed by +-step and the
central difference of L is compared with the analytic gradient:
|analytic - numeric| <= threshold * max(|analytic|, |numeric|, 1).
"""

from __future__ import annotations

import numpy as np

from dnntool.net import Net
from dnntool.onnxgraph.builder import GraphBuilder
from dnntool.translate.backward import emit_backward
from dnntool.translate.forward import emit_layers


def distinct_values(shape, rng, spacing=0.05):
    """Values spaced apart and away from 0 (no ReLU/max/abs kinks within one step)."""
    n = int(np.prod(shape))
    vals = spacing * (np.arange(n) + 1) * (-1.0) ** np.arange(n)  # distinct magnitudes, both signs
    return (rng.permutation(vals) / max(1.0, n * spacing / 4)).reshape(shape).astype(np.float32)


def build_check_model(net: Net, wrt_inputs: bool = True, seed: int = 0):
    """(model, feeds, wrt names, grad output names) for L = sum <top, R> over the last layer's tops."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder("gradcheck")
    g.reserve(net.blobs)
    layers = list(net.layers)
    last = layers[-1]
    em = emit_layers(g, net, layers, None, list(last.tops), params_as_inputs=True, train=True)
    seeds, terms = {}, []
    for t, shape in zip(last.tops, last.top_shapes, strict=True):
        r = g.const(rng.uniform(-1, 1, shape).astype(np.float32), name=f"R::{t}")
        seeds[t] = r
        terms.append(g.op1("ReduceSum", [g.op1("Mul", [t, r])], keepdims=0))
    loss = g.op1("Sum", terms, "L") if len(terms) > 1 else g.op1("Identity", terms, "L")
    learnable = {f"{p.shared_from or layer.name}::{p.share_name or p.blob.role}"
                 for layer in layers for p in layer.params if p.blob.learnable}
    wrt = [b for b in em.inputs if wrt_inputs] + [p for ps in em.params.values() for p in ps if p in learnable]
    wrt = list(dict.fromkeys(wrt))
    grads = emit_backward(g, layers, em, seeds, wrt)
    g.output(loss, [])
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.inputs}
    for w in wrt:
        if grads[w] is not None:
            g.output(g.op1("Identity", [grads[w]], f"grad::{w}"), shapes[w])
    return g.model(), em, wrt, grads


def check_layer_gradient(net: Net, feeds: dict[str, np.ndarray], step: float = 1e-2, threshold: float = 1e-3,
                         max_elems: int = 24, seed: int = 1701, wrt_inputs: bool = True, skip=()):
    """Run the check; raise AssertionError naming the blob and element that fails. The session is
    the one training gets (convolutions whose channels fit onnxruntime's NCHWc block run blocked)."""
    from dnntool.onnxgraph.runtime import make_session

    model, _, wrt, _ = build_check_model(net, wrt_inputs)
    sess = make_session(model, "cpu")[0]
    names = [o.name for o in sess.get_outputs()]
    feeds = {k: np.asarray(v, np.float32) for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
    res = dict(zip(names, sess.run(None, feeds), strict=True))
    rng = np.random.default_rng(seed)
    checked = 0
    for w in wrt:
        if w in skip:
            continue
        analytic = res.get(f"grad::{w}")
        x = feeds[w]
        if analytic is None:
            analytic = np.zeros_like(x)
        idx = rng.choice(x.size, size=min(max_elems, x.size), replace=False)
        for i in idx:
            orig = x.flat[i]
            x.flat[i] = orig + step
            lp = sess.run(["L"], feeds)[0]
            x.flat[i] = orig - step
            lm = sess.run(["L"], feeds)[0]
            x.flat[i] = orig
            numeric = float(lp - lm) / (2 * step)
            a = float(analytic.reshape(-1)[i])
            scale = max(abs(a), abs(numeric), 1.0)
            assert abs(a - numeric) <= threshold * scale, (
                f"gradient of '{w}' element {i}: analytic {a:.6g} vs numeric {numeric:.6g}"
            )
            checked += 1
    assert checked > 0, "nothing was checked"
    return checked

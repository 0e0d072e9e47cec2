"""Every solver type and lr policy through ``train`` on InnerProduct + EuclideanLoss, against the
numpy reference in refs.py over several iterations: weights, lr and the solverstate history."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from dnntool.io.caffemodel import Weights, history_arrays, read_solverstate
from dnntool.proto import caffe_pb2
from dnntool.train.loop import train
from tests.train.refs import RefSolver, ip_euclidean_grads

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "x" top: "t"
  input_param { shape { dim: %(b)d dim: 3 } shape { dim: %(b)d dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 2 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""
ITERS = 6
RNG = np.random.default_rng(7)
X = RNG.normal(size=(16, 3))
T = RNG.normal(size=(16, 2))
W0 = RNG.normal(scale=0.5, size=(2, 3))
B0 = RNG.normal(scale=0.5, size=(2,))


def solver(text: str, batch: int = 4, prefix: str = "") -> caffe_pb2.SolverParameter:
    sp = text_format.Parse(text, caffe_pb2.SolverParameter())
    text_format.Parse(NET % {"b": batch}, sp.net_param)
    sp.max_iter = sp.max_iter or ITERS
    sp.display = 1
    sp.snapshot_after_train = bool(prefix)
    sp.snapshot_prefix = prefix
    return sp


def run(sp, batch: int = 4):
    w = Weights(blobs={"ip": [W0.astype(np.float32), B0.astype(np.float32)]})
    return train(sp, weights=w, device="cpu", data={"x": X.astype(np.float32), "t": T.astype(np.float32)},
                 handle_signals=False)


def reference(sp, batch: int = 4):
    ref = RefSolver(sp, [W0.shape, B0.shape], [1, 2], [1, 0])
    w, b, k = W0.copy(), B0.copy(), 0
    lrs = []
    for _ in range(sp.max_iter):
        gw, gb = np.zeros_like(w), np.zeros_like(b)
        for _ in range(max(1, sp.iter_size)):
            idx = (np.arange(batch) + k * batch) % len(X)
            _, dw, db = ip_euclidean_grads(w, b, X[idx], T[idx])
            gw, gb, k = gw + dw, gb + db, k + 1
        (w, b), lr = ref.update([w, b], [gw, gb])
        lrs.append(lr)
    return w, b, lrs, ref


SOLVERS = {
    "SGD": 'type: "SGD" base_lr: 0.1 momentum: 0.9 weight_decay: 0.01',
    "Nesterov": 'type: "Nesterov" base_lr: 0.1 momentum: 0.9 weight_decay: 0.01',
    "AdaGrad": 'type: "AdaGrad" base_lr: 0.1 weight_decay: 0.01 delta: 1e-6',
    "RMSProp": 'type: "RMSProp" base_lr: 0.01 rms_decay: 0.9 weight_decay: 0.01 delta: 1e-6',
    "AdaDelta": 'type: "AdaDelta" base_lr: 1.0 momentum: 0.9 delta: 1e-6 weight_decay: 0.01',
    "Adam": 'type: "Adam" base_lr: 0.05 momentum: 0.9 momentum2: 0.999 delta: 1e-8 weight_decay: 0.01',
    "SGD-L1": 'type: "SGD" base_lr: 0.1 momentum: 0.5 weight_decay: 0.05 regularization_type: "L1"',
    "SGD-clipped": 'type: "SGD" base_lr: 0.1 momentum: 0.9 clip_gradients: 0.05',
    "SGD-clip-unused": 'type: "SGD" base_lr: 0.1 momentum: 0.9 clip_gradients: 100',
    # Caffe clips the accumulated iter_size sum before dividing by iter_size
    "SGD-clipped-iter2": 'type: "SGD" base_lr: 0.1 momentum: 0.9 clip_gradients: 0.05 iter_size: 2',
}
POLICIES = {
    "fixed": 'lr_policy: "fixed"',
    "step": 'lr_policy: "step" gamma: 0.5 stepsize: 2',
    "exp": 'lr_policy: "exp" gamma: 0.8',
    "inv": 'lr_policy: "inv" gamma: 0.5 power: 0.75',
    "multistep": 'lr_policy: "multistep" gamma: 0.3 stepvalue: 1 stepvalue: 4',
    "poly": 'lr_policy: "poly" power: 2 max_iter: 8',
    "sigmoid": 'lr_policy: "sigmoid" gamma: -0.7 stepsize: 3',
}


def check(sp, res, batch: int = 4):
    w, b, lrs, ref = reference(sp, batch)
    got_w, got_b = res.weights["ip"]
    np.testing.assert_allclose(got_w, w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got_b, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([d.lr for d in res.displays], lrs, rtol=1e-6)
    return ref


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solver_matches_reference(name, tmp_path):
    sp = solver(SOLVERS[name] + ' lr_policy: "inv" gamma: 0.1 power: 0.75', prefix=str(tmp_path / "s"))
    res = run(sp)
    assert res.iteration == ITERS and res.solver == sp.type
    ref = check(sp, res)
    state = read_solverstate(res.snapshots[-1][1])
    hist = history_arrays(state)
    assert state.iter == ITERS and len(hist) == len(ref.history())
    for got, want in zip(hist, ref.history(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_lr_policy_matches_reference(policy):
    sp = solver('type: "SGD" base_lr: 0.2 momentum: 0.9 weight_decay: 0.001 ' + POLICIES[policy])
    check(sp, run(sp))


def test_old_solver_type_enum_is_upgraded():
    from dnntool.io.upgrade import upgrade_solver

    sp = upgrade_solver(solver("solver_type: NESTEROV base_lr: 0.1 momentum: 0.9"))
    assert sp.type == "Nesterov"
    check(sp, run(sp))


def test_iter_size_two_equals_one_double_batch():
    # EuclideanLoss divides by the batch: two halves averaged = the whole
    doubled = solver('type: "SGD" base_lr: 0.1 momentum: 0.9 weight_decay: 0.01 iter_size: 2')
    whole = solver('type: "SGD" base_lr: 0.1 momentum: 0.9 weight_decay: 0.01', batch=8)
    a, b = run(doubled), run(whole, batch=8)
    for x, y in zip(a.weights["ip"], b.weights["ip"], strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    check(doubled, a)
    assert [d.loss for d in a.displays] == pytest.approx([d.loss for d in b.displays], rel=1e-5)


def test_lr_mult_zero_freezes_a_blob():
    sp = solver('type: "SGD" base_lr: 0.1 momentum: 0.9 weight_decay: 0.01')
    sp.net_param.layer[1].param[1].lr_mult = 0
    res = run(sp)
    np.testing.assert_array_equal(res.weights["ip"][1], B0.astype(np.float32))
    assert not np.allclose(res.weights["ip"][0], W0)

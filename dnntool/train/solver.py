"""Caffe's solvers: learning-rate policies (computed in Python each iteration) and the update rules,
emitted as ONNX nodes (sgd_solver.cpp, nesterov/adagrad/rmsprop/adadelta/adam_solver.cpp).

Per learnable blob, with local_rate = lr * lr_mult and local_decay = weight_decay * decay_mult:
clip the accumulated diffs by their global L2 norm; diff /= iter_size; diff += local_decay * w (L2) or * sign(w) (L1); then
the solver's rule computes the update and w -= update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dnntool.errors import NetError
from dnntool.proto import caffe_pb2

SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
#: history blobs per learnable blob (Caffe appends the second set after the first for all blobs)
HISTORY_SETS = {"SGD": 1, "Nesterov": 1, "AdaGrad": 1, "RMSProp": 1, "AdaDelta": 2, "Adam": 2}


def solver_type(sp: caffe_pb2.SolverParameter) -> str:
    t = sp.type or "SGD"
    if t not in SOLVER_TYPES:
        raise NetError(f"unknown solver type '{t}' (known: {', '.join(SOLVER_TYPES)})")
    return t


def learning_rate(sp: caffe_pb2.SolverParameter, it: int) -> float:
    """Caffe's SGDSolver::GetLearningRate for iteration ``it``."""
    policy = sp.lr_policy or "fixed"
    base = sp.base_lr
    if policy == "fixed":
        return base
    if policy == "step":
        if sp.stepsize <= 0:
            raise NetError("lr_policy 'step' needs stepsize > 0")
        return base * sp.gamma ** (it // sp.stepsize)
    if policy == "exp":
        return base * sp.gamma ** it
    if policy == "inv":
        return base * (1 + sp.gamma * it) ** (-sp.power)
    if policy == "multistep":
        step = sum(1 for v in sp.stepvalue if it >= v)
        return base * sp.gamma ** step
    if policy == "poly":
        if sp.max_iter <= 0:
            raise NetError("lr_policy 'poly' needs max_iter > 0")
        return base * (1 - it / sp.max_iter) ** sp.power
    if policy == "sigmoid":
        return base * (1 / (1 + math.exp(-sp.gamma * (it - sp.stepsize))))
    raise NetError(f"unknown lr_policy '{policy}' (known: fixed, step, exp, inv, multistep, poly, sigmoid)")


@dataclass
class ParamUpdate:
    """One learnable blob's update: tensor names in the update graph and its multipliers."""

    name: str
    shape: tuple[int, ...]
    lr_mult: float
    decay_mult: float


def emit_update(g, sp: caffe_pb2.SolverParameter, params: list[ParamUpdate], grads: dict[str, str],
                lr: str, correction: str | None) -> dict[str, str]:
    """Emit the solver update for ``params``: reads ``<name>`` (weights), ``grads[name]`` and history
    inputs ``hist0::<name>`` (and ``hist1::<name>``); returns output names (``new::<name>``,
    ``new_hist0::<name>``...). ``lr`` is the scalar base-policy rate; Adam's bias correction
    sqrt(1 - b2^t) / (1 - b1^t) comes in as ``correction``."""
    kind = solver_type(sp)
    diffs = dict(grads)
    if sp.clip_gradients >= 0:  # Caffe clips the accumulated diffs first, then divides by iter_size
        sq = [g.op1("ReduceSumSquare", [diffs[p.name]], keepdims=0) for p in params]
        norm = g.op1("Sqrt", [g.op1("Sum", sq) if len(sq) > 1 else sq[0]])
        factor = g.op1("Where", [g.op1("Greater", [norm, g.scalar(sp.clip_gradients)]),
                                 g.op1("Div", [g.scalar(sp.clip_gradients), norm]), g.scalar(1.0)])
        diffs = {k: g.op1("Mul", [v, factor]) for k, v in diffs.items()}
    if sp.iter_size > 1:
        for p in params:
            diffs[p.name] = g.op1("Mul", [diffs[p.name], g.scalar(1.0 / sp.iter_size)])
    reg = sp.regularization_type or "L2"
    if reg not in ("L1", "L2"):
        raise NetError(f"unknown regularization_type '{reg}' (L1 or L2)")
    out: dict[str, str] = {}
    for p in params:
        w, d = p.name, diffs[p.name]
        decay = sp.weight_decay * p.decay_mult
        if decay:
            term = w if reg == "L2" else g.op1("Sign", [w])
            d = g.op1("Add", [d, g.op1("Mul", [term, g.scalar(decay)])])
        rate = g.op1("Mul", [lr, g.scalar(p.lr_mult)])
        h = f"hist0::{w}"
        if kind == "SGD":
            h_new = g.op1("Add", [g.op1("Mul", [h, g.scalar(sp.momentum)]), g.op1("Mul", [d, rate])])
            update = h_new
        elif kind == "Nesterov":
            h_new = g.op1("Add", [g.op1("Mul", [h, g.scalar(sp.momentum)]), g.op1("Mul", [d, rate])])
            update = g.op1("Sub", [g.op1("Mul", [h_new, g.scalar(1 + sp.momentum)]),
                                   g.op1("Mul", [h, g.scalar(sp.momentum)])])
        elif kind in ("AdaGrad", "RMSProp"):
            d2 = g.op1("Mul", [d, d])
            if kind == "AdaGrad":
                h_new = g.op1("Add", [h, d2])
            else:
                h_new = g.op1("Add", [g.op1("Mul", [h, g.scalar(sp.rms_decay)]),
                                      g.op1("Mul", [d2, g.scalar(1 - sp.rms_decay)])])
            den = g.op1("Add", [g.op1("Sqrt", [h_new]), g.scalar(sp.delta)])
            update = g.op1("Mul", [g.op1("Div", [d, den]), rate])
        elif kind == "AdaDelta":
            m = sp.momentum
            h2 = f"hist1::{w}"
            h_new = g.op1("Add", [g.op1("Mul", [h, g.scalar(m)]), g.op1("Mul", [g.op1("Mul", [d, d]), g.scalar(1 - m)])])
            ratio = g.op1("Div", [g.op1("Add", [h2, g.scalar(sp.delta)]), g.op1("Add", [h_new, g.scalar(sp.delta)])])
            u = g.op1("Mul", [d, g.op1("Sqrt", [ratio])])
            h2_new = g.op1("Add", [g.op1("Mul", [h2, g.scalar(m)]), g.op1("Mul", [g.op1("Mul", [u, u]), g.scalar(1 - m)])])
            out[f"new_hist1::{w}"] = g.op1("Identity", [h2_new], f"new_hist1::{w}")
            update = g.op1("Mul", [u, rate])
        else:  # Adam
            b1, b2 = sp.momentum, sp.momentum2
            v = f"hist1::{w}"
            h_new = g.op1("Add", [g.op1("Mul", [h, g.scalar(b1)]), g.op1("Mul", [d, g.scalar(1 - b1)])])
            v_new = g.op1("Add", [g.op1("Mul", [v, g.scalar(b2)]), g.op1("Mul", [g.op1("Mul", [d, d]), g.scalar(1 - b2)])])
            out[f"new_hist1::{w}"] = g.op1("Identity", [v_new], f"new_hist1::{w}")
            den = g.op1("Add", [g.op1("Sqrt", [v_new]), g.scalar(sp.delta)])
            step = g.op1("Mul", [rate, correction])
            update = g.op1("Mul", [g.op1("Div", [h_new, den]), step])
        out[f"new_hist0::{w}"] = g.op1("Identity", [h_new], f"new_hist0::{w}")
        out[f"new::{w}"] = g.op1("Sub", [w, update], f"new::{w}")
    return out


def adam_correction(sp: caffe_pb2.SolverParameter, it: int) -> float:
    """sqrt(1 - b2^t) / (1 - b1^t) with t = it + 1 (Caffe's AdamSolver)."""
    t = it + 1
    return math.sqrt(1 - sp.momentum2 ** t) / (1 - sp.momentum ** t)

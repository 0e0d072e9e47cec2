"""Independent numpy references for the solver tests: InnerProduct + EuclideanLoss forward and
backward, the lr policies and the six update rules, written from ../shared/DESIGN.md (float64)."""

from __future__ import annotations

import math

import numpy as np


def ip_euclidean_grads(w, b, x, t):
    """loss = sum((x W^T + b - t)^2) / (2N); returns (loss, dW, db)."""
    n = x.shape[0]
    d = x @ w.T + b - t
    dy = d / n
    return float((d ** 2).sum() / (2 * n)), dy.T @ x, dy.sum(0)


def lr_at(sp, it: int) -> float:
    base, p = sp.base_lr, sp.lr_policy or "fixed"
    if p == "fixed":
        return base
    if p == "step":
        return base * sp.gamma ** math.floor(it / sp.stepsize)
    if p == "exp":
        return base * sp.gamma ** it
    if p == "inv":
        return base * (1 + sp.gamma * it) ** -sp.power
    if p == "multistep":
        return base * sp.gamma ** sum(1 for v in sp.stepvalue if it >= v)
    if p == "poly":
        return base * (1 - it / sp.max_iter) ** sp.power
    if p == "sigmoid":
        return base / (1 + math.exp(-sp.gamma * (it - sp.stepsize)))
    raise ValueError(p)


class RefSolver:
    """Caffe's update for a list of blobs, with per-blob lr_mult/decay_mult."""

    def __init__(self, sp, shapes, lr_mults, decay_mults):
        self.sp, self.lr_mults, self.decay_mults = sp, lr_mults, decay_mults
        self.h = [np.zeros(s) for s in shapes]
        self.h2 = [np.zeros(s) for s in shapes]
        self.it = 0

    def update(self, params, grads):
        sp, kind = self.sp, self.sp.type or "SGD"
        lr = lr_at(sp, self.it)
        diffs = list(grads)
        if sp.clip_gradients >= 0:  # Caffe's ApplyUpdate: ClipGradients, then Normalize (iter_size)
            norm = math.sqrt(sum(float((d ** 2).sum()) for d in diffs))
            if norm > sp.clip_gradients:
                diffs = [d * (sp.clip_gradients / norm) for d in diffs]
        diffs = [d / max(1, sp.iter_size) for d in diffs]
        out = []
        for i, (w, d) in enumerate(zip(params, diffs, strict=True)):
            decay = sp.weight_decay * self.decay_mults[i]
            d = d + decay * (np.sign(w) if sp.regularization_type == "L1" else w)
            rate = lr * self.lr_mults[i]
            out.append(w - self._step(kind, i, d, rate))
        self.it += 1
        return out, lr

    def _step(self, kind, i, d, rate):
        sp, h = self.sp, self.h
        if kind in ("SGD", "Nesterov"):
            old = h[i]
            h[i] = sp.momentum * old + rate * d
            return h[i] if kind == "SGD" else (1 + sp.momentum) * h[i] - sp.momentum * old
        if kind in ("AdaGrad", "RMSProp"):
            h[i] = h[i] + d * d if kind == "AdaGrad" else sp.rms_decay * h[i] + (1 - sp.rms_decay) * d * d
            return rate * d / (np.sqrt(h[i]) + sp.delta)
        if kind == "AdaDelta":
            m = sp.momentum
            h[i] = m * h[i] + (1 - m) * d * d
            u = d * np.sqrt(self.h2[i] + sp.delta) / np.sqrt(h[i] + sp.delta)
            self.h2[i] = m * self.h2[i] + (1 - m) * u * u
            return rate * u
        if kind == "Adam":
            t = self.it + 1
            h[i] = sp.momentum * h[i] + (1 - sp.momentum) * d
            self.h2[i] = sp.momentum2 * self.h2[i] + (1 - sp.momentum2) * d * d
            corr = math.sqrt(1 - sp.momentum2 ** t) / (1 - sp.momentum ** t)
            return rate * corr * h[i] / (np.sqrt(self.h2[i]) + sp.delta)
        raise ValueError(kind)

    def history(self):
        """Caffe's solverstate order: the first set over all blobs, then the second."""
        two = (self.sp.type or "SGD") in ("AdaDelta", "Adam")
        return self.h + (self.h2 if two else [])

"""Optional oracle: LeNet trained 20 iterations by ``train`` matches a PyTorch replica (Caffe's SGD
written out by hand) step by step within 1e-4. Skipped when torch is not installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from dnntool.io.caffemodel import load_weights
from dnntool.net import Net
from dnntool.net.weights import init_weights
from dnntool.proto import caffe_pb2
from dnntool.train.loop import train

torch = pytest.importorskip("torch")
F = torch.nn.functional

LENET = (Path(__file__).resolve().parents[2] / "samples" / "lenet_train_input.prototxt").read_text()
ITERS, BATCH = 20, 64
ORDER = ["conv1", "conv2", "ip1", "ip2"]


def lenet(p, x, label):
    (w1, b1), (w2, b2), (w3, b3), (w4, b4) = (p[k] for k in ORDER)
    h = F.max_pool2d(F.conv2d(x, w1, b1), 2, 2, ceil_mode=True)
    h = F.max_pool2d(F.conv2d(h, w2, b2), 2, 2, ceil_mode=True)
    h = F.relu(F.linear(h.flatten(1), w3, b3))
    return F.cross_entropy(F.linear(h, w4, b4), label)


def test_lenet_matches_pytorch_step_by_step(tmp_path):
    torch.set_num_threads(2)
    sp = text_format.Parse('base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001'
                           f' power: 0.75 max_iter: {ITERS} display: 1 snapshot: 1 random_seed: 5'
                           f' snapshot_prefix: "{tmp_path}/lenet"', caffe_pb2.SolverParameter())
    text_format.Parse(LENET, sp.net_param)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ITERS * BATCH, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, ITERS * BATCH).astype(np.float32)
    res = train(sp, device="cpu", data={"data": x, "label": y}, handle_signals=False)

    init = init_weights(Net.from_param(sp.net_param, "train"), 5)  # what train drew from the fillers
    p = {k: [torch.tensor(a, requires_grad=True) for a in init[k]] for k in ORDER}
    hist = {k: [torch.zeros_like(t) for t in p[k]] for k in ORDER}
    for it in range(ITERS):
        xb, yb = torch.tensor(x[it * BATCH:(it + 1) * BATCH]), torch.tensor(y[it * BATCH:(it + 1) * BATCH]).long()
        loss = lenet(p, xb, yb)
        loss.backward()
        assert res.displays[it].outputs[0].value == pytest.approx(loss.item(), abs=1e-4)
        lr = 0.01 * (1 + 0.0001 * it) ** -0.75
        with torch.no_grad():
            for k in ORDER:
                for j, (t, mult) in enumerate(zip(p[k], (1, 2), strict=True)):
                    hist[k][j] = 0.9 * hist[k][j] + lr * mult * (t.grad + 0.0005 * t)
                    t -= hist[k][j]
                    t.grad = None
        ours = load_weights(tmp_path / f"lenet_iter_{it + 1}.caffemodel")
        for k in ORDER:
            for a, t in zip(ours[k], p[k], strict=True):
                np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-4, atol=1e-4,
                                           err_msg=f"{k} after iteration {it + 1}")

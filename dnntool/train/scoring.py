"""A solver's test net: the TEST-phase net on ONNX Runtime, sharing the trained weights by layer
name (Caffe's ``ShareTrainedLayersWith``), fed by its own data layer, outputs averaged over
``test_iter`` batches as ``Solver::Test`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from dnntool.errors import NetError
from dnntool.net import Net
from dnntool.net.net import format_shape
from dnntool.train.snapshot import tensor_of, tensors_from


@dataclass
class Output:
    """One element of a net output: its Caffe blob name, value and loss weight."""

    name: str
    value: float
    loss_weight: float = 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "loss_weight": self.loss_weight}


def sorted_outputs(net: Net) -> list[str]:
    """The net's output blob ids in Caffe's order: by blob name (Caffe collects them in a std::set).
    Data-layer tops nobody reads are left out."""
    ids = [i for i in net.output_ids() if net.blobs[i].producer is not None
           and not net.layer(net.blobs[i].producer).impl.is_data]
    return sorted(ids, key=lambda i: net.blobs[i].name)


class TestNet:
    """One test net: a session over the TEST-phase net with parameters as inputs, its data, and
    the map from its parameters to the trained tensors."""

    def __init__(self, net: Net, train_net: Net, device: str, threads: int | None, seed: int,
                 data=None, prefetch: int = 4):
        from dnntool.net.weights import init_weights
        from dnntool.onnxgraph.runtime import make_session
        from dnntool.train.data import net_data
        from dnntool.translate.forward import to_onnx

        self.net = net
        self.outputs = sorted_outputs(net)
        weighted = {t: w for layer in net.layers for t, w in zip(layer.tops, layer.loss_weights, strict=False) if w}
        self.loss_weights = weighted
        wanted = self.outputs + [t for t in weighted if t not in self.outputs]
        if not wanted:
            raise NetError(f"test net '{net.name}' has no outputs to average")
        tr = to_onnx(net, None, outputs=wanted, params_as_inputs=True, name=f"{net.name or 'net'}_test")
        self.session, self.provider = make_session(tr.model, device, threads, spinning=False)
        self.wanted = list(tr.outputs)
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.shared, self.own = self._share(train_net, init_weights(net, seed))
        self.data = net_data(net, "test", seed, data, 0, prefetch)

    def _share(self, train_net: Net, own) -> tuple[dict[str, str], dict[str, np.ndarray]]:
        """test tensor -> trained tensor for layers of the same name; the others' own values."""
        train_tensors = tensor_of(train_net)
        train_layers = {layer.name: layer for layer in train_net.layers}
        shared, own_values = {}, tensors_from(self.net, own)
        for (name, k), tensor in tensor_of(self.net).items():
            src = train_layers.get(name)
            if src is None or tensor not in self.inputs:
                continue
            p = self.net.layer(name).params[k]
            if k >= len(src.params) or src.params[k].shape != p.shape:
                theirs = format_shape(src.params[k].shape) if k < len(src.params) else "absent"
                raise NetError(f"test net layer '{name}' cannot share param {k} with the train net: shape"
                               f" {format_shape(p.shape)} vs {theirs}", layer=name)
            shared[tensor] = train_tensors[(name, k)]
        return shared, own_values

    def run(self, values: Mapping[str, np.ndarray], iterations: int,
            poll: Callable[[], bool] | None = None) -> tuple[list[Output], float, bool]:
        """(mean outputs, mean loss, interrupted) over ``iterations`` batches with the trained
        ``values``; ``poll`` is asked before each batch whether to stop."""
        params = {t: values[src] for t, src in self.shared.items()}
        params.update({t: v for t, v in self.own.items() if t in self.inputs and t not in params})
        sums: list[np.ndarray] = []
        loss = 0.0
        for i in range(iterations):
            if poll is not None and poll():
                return [], 0.0, True
            feeds = dict(params)
            feeds.update({k: v for k, v in self.data.next().items() if k in self.inputs})
            outs = [np.asarray(o, np.float64).reshape(-1) for o in self.session.run(self.wanted, feeds)]
            loss += sum(self.loss_weights.get(t, 0.0) * float(o.sum()) for t, o in zip(self.wanted, outs, strict=True))
            sums = outs if i == 0 else [s + o for s, o in zip(sums, outs, strict=True)]
        n = max(iterations, 1)
        scores = []
        for tid, s in zip(self.wanted, sums, strict=False):
            if tid in self.outputs:
                w = self.loss_weights.get(tid, 0.0)
                scores += [Output(self.net.blobs[tid].name, float(v) / n, w) for v in s]
        return scores, loss / n, False

    def close(self) -> None:
        self.data.close()

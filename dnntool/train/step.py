"""One training iteration as ONNX Runtime work: a gradient model (forward, loss, backward, BatchNorm
moving averages) and an update model (the solver), run as one fused session or, when gradients
are summed (iter_size) or averaged (MPI) in between, as two; weights and solver history are kept
as OrtValues between steps (IO binding) so a step moves only the batch in and the losses out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from dnntool.errors import NetError
from dnntool.net import Net
from dnntool.onnxgraph.builder import GraphBuilder
from dnntool.proto import caffe_pb2
from dnntool.train.solver import (
    HISTORY_SETS,
    ParamUpdate,
    adam_correction,
    emit_update,
    learning_rate,
    solver_type,
)
from dnntool.translate.backward import emit_backward
from dnntool.translate.forward import emit_layers, param_name


@dataclass
class Blob:
    """An owned parameter blob of the net in Caffe's learnable_params order."""

    name: str  # tensor name (``layer::role``)
    layer: str
    index: int
    shape: tuple[int, ...]
    learnable: bool
    lr_mult: float
    decay_mult: float


@dataclass
class TrainGraphs:
    grad_model: object
    update_model: object
    blobs: list[Blob]
    data_inputs: list[str]
    outputs: list[tuple[str, str, float]]  # (tensor, Caffe blob name, loss weight) logged each step
    bn_updates: dict[str, str] = field(default_factory=dict)  # blob tensor -> new value output


def owned_blobs(net: Net) -> list[Blob]:
    """Every parameter blob the net owns (shared ones once), in net order, as Caffe's solver sees them."""
    out, seen = [], set()
    for layer in net.layers:
        for k, p in enumerate(layer.params):
            if p.shared_from is not None:
                continue
            name = param_name(layer.name, p.share_name or p.blob.role)
            if name in seen:
                continue
            seen.add(name)
            out.append(Blob(name, layer.name, k, tuple(p.shape), p.blob.learnable, p.lr_mult, p.decay_mult))
    return out


def build_train_graphs(net: Net, sp: caffe_pb2.SolverParameter) -> TrainGraphs:
    """The two ONNX models of a training step for a TRAIN-phase net."""
    blobs = owned_blobs(net)
    g = GraphBuilder(f"{net.name or 'net'}_train")
    g.reserve(net.blobs)
    layers = [layer for layer in net.layers]
    loss_tops = [(t, w) for layer in layers for t, w in zip(layer.tops, layer.loss_weights, strict=True) if w]
    if not loss_tops:
        raise NetError(f"net '{net.name}' has no loss (no top with a loss_weight) to train")
    out_ids = net.output_ids()
    em = emit_layers(g, net, layers, None, out_ids, params_as_inputs=True, train=True)
    seeds = {t: g.const(np.asarray(w, np.float32) * np.ones(net.blobs[t].shape, np.float32), name=f"seed::{t}")
             for t, w in loss_tops}
    wrt = [b.name for b in blobs if b.learnable and b.lr_mult != 0]
    grads = emit_backward(g, layers, em, seeds, wrt)
    outputs = []
    for tid in out_ids:
        w = dict(loss_tops).get(tid, 0.0)
        outputs.append((g.op1("Identity", [tid], f"out::{tid}"), net.blobs[tid].name, w))
        g.output(outputs[-1][0], list(net.blobs[tid].shape))
    for b in blobs:
        if b.name in grads:
            gr = grads[b.name] if grads[b.name] is not None else g.const(np.zeros(b.shape, np.float32))
            g.output(g.op1("Identity", [gr], f"grad::{b.name}"), list(b.shape))
    bn_updates = _emit_bn_updates(g, net, em)
    grad_model = g.model()

    u = GraphBuilder(f"{net.name or 'net'}_update")
    lr = u.input("lr", [])
    correction = u.input("correction", []) if solver_type(sp) == "Adam" else None
    updates = [ParamUpdate(b.name, b.shape, b.lr_mult, b.decay_mult) for b in blobs if b.name in wrt]
    sets = HISTORY_SETS[solver_type(sp)]
    ugrads = {}
    for p in updates:
        u.input(p.name, list(p.shape))
        ugrads[p.name] = u.input(f"grad::{p.name}", list(p.shape))
        for s in range(sets):
            u.input(f"hist{s}::{p.name}", list(p.shape))
    outs = emit_update(u, sp, updates, ugrads, lr, correction)
    for p in updates:
        for key in [f"new::{p.name}", *[f"new_hist{s}::{p.name}" for s in range(sets)]]:
            u.output(outs[key], list(p.shape))
    return TrainGraphs(grad_model, u.model(), blobs, list(em.inputs), outputs, bn_updates)


def fused_step_model(graphs: TrainGraphs):
    """The gradient and update models as one: the update reads the gradients where they are made
    (its own tensor names put under ``update/``). Outputs: the logged tops, the BatchNorm
    statistics, the new weights and history."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(graphs.grad_model)
    upd = graphs.update_model.graph
    shared = {i.name for i in upd.input}

    def rename(name: str) -> str:
        return name if not name or name in shared or name.startswith("new") else f"update/{name}"

    for init in upd.initializer:
        m.graph.initializer.add().CopyFrom(init)
        m.graph.initializer[-1].name = rename(init.name)
    for node in upd.node:
        copy = m.graph.node.add()
        copy.CopyFrom(node)
        copy.name = f"update/{node.name}"
        copy.input[:] = [rename(i) for i in node.input]
        copy.output[:] = [rename(o) for o in node.output]
    have = {i.name for i in m.graph.input}
    m.graph.input.extend(i for i in upd.input if i.name not in have and not i.name.startswith("grad::"))
    outs = [o for o in m.graph.output if not o.name.startswith("grad::")] + list(upd.output)
    del m.graph.output[:]
    m.graph.output.extend(outs)
    onnx.checker.check_model(m)
    return m


def _emit_bn_updates(g: GraphBuilder, net: Net, em) -> dict[str, str]:
    """Caffe's BatchNorm moving averages: f = f*maf + 1; mean = mean*maf + m; var = var*maf + m/(m-1) v."""
    updates = {}
    for layer in net.layers:
        x = em.extra.get(layer.name, {})
        if "batch_mean" not in x:
            continue
        maf = layer.param.batch_norm_param.moving_average_fraction
        mean_b, var_b, f_b = em.params[layer.name]
        shape = layer.bottom_shapes[0]
        m = int(np.prod(shape)) // (shape[1] if len(shape) > 1 else 1)
        corr = m / (m - 1) if m > 1 else 1.0
        c = shape[1] if len(shape) > 1 else 1
        bm = g.reshape(x["batch_mean"], [c])
        bv = g.reshape(x["batch_var"], [c])
        for blob, new in ((mean_b, g.op1("Add", [g.op1("Mul", [mean_b, g.scalar(maf)]), bm])),
                          (var_b, g.op1("Add", [g.op1("Mul", [var_b, g.scalar(maf)]), g.op1("Mul", [bv, g.scalar(corr)])])),
                          (f_b, g.op1("Add", [g.op1("Mul", [f_b, g.scalar(maf)]), g.scalar(1.0)]))):
            out = g.op1("Identity", [new], f"bn::{blob}")
            g.output(out, [c] if blob != f_b else [1])
            updates[blob] = out
    return updates


#: control flags every data-parallel step carries: (stop requested, snapshot requested)
CONTROL = 2


class Trainer:
    """Holds the session(s), the weights and the solver history; ``step`` runs one iteration.

    Weights, BatchNorm statistics and solver history live as OrtValues on the session's device
    between steps; each step binds them (IO binding) with the batch, and the outputs of one run
    become the inputs of the next, so only the batch goes in and the logged scalars come out.
    """

    def __init__(self, net: Net, sp: caffe_pb2.SolverParameter, weights: dict[str, np.ndarray],
                 device: str = "auto", threads: int | None = None, comm=None):
        from dnntool.onnxgraph.runtime import make_session

        self.net, self.sp, self.comm = net, sp, comm
        self.graphs = build_train_graphs(net, sp)
        self.trained = [b.name for b in self.graphs.blobs if f"grad::{b.name}" in
                        {o.name for o in self.graphs.grad_model.graph.output}]
        # The usual step (one sub-batch, one process) is one session: gradient and update in one
        # run, its worker pool spinning between steps (LeNet 15% faster). iter_size > 1 sums
        # sub-batch gradients and MPI averages them between the two models: two sessions.
        self.step_sess = self.grad_sess = self.update_sess = None
        if comm is None and max(1, sp.iter_size) == 1:
            self.step_sess, self.provider = make_session(fused_step_model(self.graphs), device, threads)
        else:
            self.grad_sess, self.provider = make_session(self.graphs.grad_model, device, threads,
                                                         spinning=False)
            self.update_sess, _ = make_session(self.graphs.update_model, device, threads, spinning=False)
        self._dev = ("cuda", _device_index(device)) if self.provider == "CUDAExecutionProvider" else ("cpu", 0)
        self.kind = solver_type(sp)
        self.sets = HISTORY_SETS[self.kind]
        self._ov: dict[str, object] = {}  # name -> OrtValue on the device
        for b in self.graphs.blobs:
            self._put(b.name, np.ascontiguousarray(weights[b.name], np.float32).reshape(b.shape))
            for k in range(self.sets):
                self._put(f"hist{k}::{b.name}", np.zeros(b.shape, np.float32))
        first = self.step_sess or self.grad_sess
        self._grad_inputs = [i.name for i in first.get_inputs()]
        self._grad_outputs = [o.name for o in first.get_outputs()]
        if self.update_sess is not None:
            self._update_inputs = [i.name for i in self.update_sess.get_inputs()]
            self._update_outputs = [o.name for o in self.update_sess.get_outputs()]
        self._fused = self._fused_buffer() if comm is not None else None
        self.allreduce_seconds = 0.0  # in the Allreduce, waiting for the slowest rank included
        self.iter = 0

    def _fused_buffer(self):
        """The Allreduce buffer of a data-parallel run: gradients, BatchNorm statistics, logged
        outputs, then CONTROL flags."""
        from dnntool.train.dist import FusedBuffer

        shapes = {f"grad::{b.name}": b.shape for b in self.graphs.blobs if b.name in self.trained}
        shapes.update({f"bn::{k}": tuple(self._ov[k].shape()) for k in self.graphs.bn_updates})
        shapes.update({n: () for n in self._grad_outputs if n.startswith("out::")})
        return FusedBuffer(shapes, CONTROL)

    def _allreduce(self, grads: dict, sums: dict[str, float], control) -> tuple[dict, dict, np.ndarray]:
        """Average gradients, BatchNorm statistics and logged outputs over the ranks (one fused
        Allreduce); control flags come back summed over the ranks."""
        from dnntool.onnxgraph.runtime import to_device

        fb, world = self._fused, self.comm.size
        for name in fb.slices:
            kind, key = name.split("::", 1)
            src = grads[key] if kind == "grad" else self._ov[key] if kind == "bn" else None
            fb.view(name)[...] = src.numpy() if src is not None else sums.get(key, 0.0)
        fb.extra[:] = control
        t0 = time.perf_counter()
        self.comm.allreduce(fb.data)
        self.allreduce_seconds += time.perf_counter() - t0
        fb.data[:fb.extra_at] *= np.float32(1.0 / world)
        for name in fb.slices:
            kind, key = name.split("::", 1)
            if kind == "grad":  # on the CPU the OrtValue shares the buffer until the update reads it
                grads[key] = to_device(fb.view(name), self._dev)
            elif kind == "bn":
                self._put(key, fb.view(name).copy())
            else:
                sums[key] = float(fb.view(name))
        return grads, sums, np.rint(fb.extra).astype(np.int64)

    def _run(self, sess, inputs: list[str], outputs: list[str], host: dict, held: dict) -> list:
        """One IO-bound run: inputs named in ``host`` (the batch, scalars) go in from numpy, the
        rest are OrtValues from ``held`` (a name missing there: ``self._ov``); outputs stay on the
        device and come back in ``outputs`` order."""
        io = sess.io_binding()
        for name in inputs:
            if name in host:
                io.bind_cpu_input(name, np.require(host[name], np.float32, "C"))  # scalars stay 0-d
            else:
                io.bind_ortvalue_input(name, held[name] if name in held else self._ov[name])
        for name in outputs:
            io.bind_output(name, *self._dev)
        sess.run_with_iobinding(io)
        return io.get_outputs()

    def _put(self, name: str, arr: np.ndarray) -> None:
        from dnntool.onnxgraph.runtime import to_device

        self._ov[name] = to_device(arr, self._dev)

    @property
    def values(self) -> dict[str, np.ndarray]:
        """Every held tensor as numpy (a copy on a GPU; for inspection and tests)."""
        return {k: v.numpy() for k, v in self._ov.items()}

    def step(self, feeds_per_subbatch: list[dict[str, np.ndarray]], control: tuple[float, ...] = ()) -> dict:
        """One iteration over ``iter_size`` sub-batches: gradients summed, one update. Returns the
        mean of each logged output over the sub-batches (and, in a data-parallel run, over the
        ranks, with ``control``: the CONTROL flags summed over the ranks)."""
        from dnntool.onnxgraph.runtime import to_device

        if self.step_sess is not None:
            (feeds,) = feeds_per_subbatch
            return self._fused_step(feeds)
        grads: dict[str, object] = {}
        sums: dict[str, float] = {}
        for feeds in feeds_per_subbatch:
            vals = self._run(self.grad_sess, self._grad_inputs, self._grad_outputs, feeds, {})
            for name, val in zip(self._grad_outputs, vals, strict=True):
                if name.startswith("grad::"):
                    key = name[len("grad::"):]
                    if key in grads:  # iter_size > 1: sum the sub-batch gradients (on the host)
                        grads[key] = to_device(grads[key].numpy() + val.numpy(), self._dev)
                    else:
                        grads[key] = val
                elif name.startswith("bn::"):
                    self._ov[name[len("bn::"):]] = val
                elif name.startswith("out::"):
                    key = name[len("out::"):]
                    sums[key] = sums.get(key, 0.0) + float(np.mean(val.numpy()))
        n = max(1, len(feeds_per_subbatch))
        reduced = None
        if self._fused is not None:
            flags = np.zeros(CONTROL, np.float32)
            flags[:len(control)] = control
            grads, sums, reduced = self._allreduce(grads, {k: v / n for k, v in sums.items()}, flags)
            n = 1
        scalars = self._scalars()
        lr = scalars["lr"]
        vals = self._run(self.update_sess, self._update_inputs, self._update_outputs, scalars,
                         {f"grad::{k}": v for k, v in grads.items()})
        for name, val in zip(self._update_outputs, vals, strict=True):
            key = name[len("new::"):] if name.startswith("new::") else name[len("new_"):]
            self._ov[key] = val
        self.iter += 1
        out: dict = {k: v / n for k, v in sums.items()}
        out["lr"] = lr
        if reduced is not None:
            out["control"] = reduced
        return out

    def _scalars(self) -> dict[str, float]:
        """The update's scalar inputs this iteration: the policy's lr (and Adam's correction)."""
        scalars = {"lr": learning_rate(self.sp, self.iter)}
        if self.kind == "Adam":
            scalars["correction"] = adam_correction(self.sp, self.iter)
        return scalars

    def _fused_step(self, feeds: dict[str, np.ndarray]) -> dict:
        """One sub-batch: gradient and update in one run of ``step_sess``."""
        scalars = self._scalars()
        vals = self._run(self.step_sess, self._grad_inputs, self._grad_outputs, {**feeds, **scalars}, {})
        out: dict = {}
        for name, val in zip(self._grad_outputs, vals, strict=True):
            if name.startswith("out::"):
                out[name[len("out::"):]] = float(np.mean(val.numpy()))
            else:  # bn::blob, new::w, new_histK::w
                kind, key = name.split("::", 1)
                self._ov[key if kind in ("bn", "new") else f"{kind[len('new_'):]}::{key}"] = val
        self.iter += 1
        out["lr"] = scalars["lr"]
        return out

    def weights(self) -> dict[str, np.ndarray]:
        return {b.name: self._ov[b.name].numpy() for b in self.graphs.blobs}

    def history(self) -> list[np.ndarray]:
        """Solver history in Caffe's solverstate order: each set over all owned blobs."""
        return [self._ov[f"hist{k}::{b.name}"].numpy() for k in range(self.sets) for b in self.graphs.blobs]

    def set_history(self, arrays: list[np.ndarray]) -> None:
        blobs = self.graphs.blobs
        if len(arrays) != self.sets * len(blobs):
            raise NetError(f"the solverstate has {len(arrays)} history blobs; this net and solver need"
                           f" {self.sets * len(blobs)}")
        for k, arr in enumerate(arrays):
            b = blobs[k % len(blobs)]
            self._put(f"hist{k // len(blobs)}::{b.name}", np.asarray(arr, np.float32).reshape(b.shape))


def _device_index(device: str) -> int:
    from dnntool.onnxgraph.runtime import Device

    return Device.parse(device).index

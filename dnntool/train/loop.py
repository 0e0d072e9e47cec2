"""The run loop of ``caffe train`` (solver.cpp ``Solve``/``Step``/``Test``/``Snapshot``) around
a Trainer: test nets every ``test_interval``, smoothed loss and Caffe's log lines on display
iterations, snapshots every ``snapshot`` iterations and at the end, resume from a solverstate,
fine-tuning from caffemodels, SIGINT (snapshot and stop) and SIGHUP (snapshot and go on), and a
stop with a message when the loss is no longer finite.

Each iteration runs as Caffe's: test if due; ``iter_size`` forward/backward passes and the update
(one ``Trainer.step``); display; ``iter += 1``; snapshot if due or asked for; stop if asked.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dnntool.errors import DnnToolError, NetError, UsageError
from dnntool.proto import caffe_pb2
from dnntool.train.scoring import Output, TestNet
from dnntool.train.snapshot import (
    copy_layers,
    layer_blobs,
    read_snapshot,
    resolve_prefix,
    sweep_unfinished,
    tensors_from,
    write_snapshot,
)
from dnntool.train.solver import solver_type
from dnntool.train.solver_file import SolverNets, build_net, load_solver


class Diverged(DnnToolError):
    """The loss became NaN or infinite; the run stopped without snapshotting the bad weights."""


def fmt(x: float) -> str:
    """A number as Caffe's log prints a float (C++ stream default: 6 significant digits)."""
    return f"{float(np.float32(x)):.6g}"


@dataclass
class DisplayEvent:
    """A display iteration: smoothed loss, lr, solver type and the train net's outputs."""

    iteration: int
    loss: float
    lr: float
    solver: str
    outputs: list[Output]
    iters_per_s: float
    seconds: float  # since the run started

    def to_dict(self) -> dict:
        return {"event": "train", "iteration": self.iteration, "loss": self.loss, "lr": self.lr,
                "solver": self.solver, "outputs": [o.to_dict() for o in self.outputs],
                "iters_per_s": self.iters_per_s, "seconds": self.seconds}


@dataclass
class TestEvent:
    """One test net's averaged outputs at an iteration (``loss`` with test_compute_loss)."""

    iteration: int
    net: int
    outputs: list[Output]
    loss: float | None
    seconds: float

    def to_dict(self) -> dict:
        return {"event": "test", "iteration": self.iteration, "net": self.net, "loss": self.loss,
                "outputs": [o.to_dict() for o in self.outputs], "seconds": self.seconds}


@dataclass
class TrainResult:
    """What ``train`` did: final iteration, snapshots, every display and test event, weights."""

    iteration: int
    start_iteration: int
    provider: str
    solver: str
    stopped: bool = False  # a SIGINT (or stop request) ended the run early
    snapshots: list[tuple[str, str]] = field(default_factory=list)
    displays: list[DisplayEvent] = field(default_factory=list)
    tests: list[TestEvent] = field(default_factory=list)
    seconds: float = 0.0
    weights: dict[str, list[np.ndarray]] = field(default_factory=dict)  # layer -> blobs, Caffe order
    ranks: int = 1  # MPI ranks of a data-parallel run
    allreduce_seconds: float = 0.0  # this rank's time in the gradient Allreduce (waits included)


# -- signals ---------------------------------------------------------------------------------------
class _Signals:
    """SIGINT: snapshot and stop (a second one interrupts at once); SIGHUP: snapshot and go on.
    Handlers are installed only from the main thread, and restored afterwards."""

    def __init__(self, enabled: bool):
        self.pending: list[str] = []
        self._old: dict[int, object] = {}
        if not enabled or threading.current_thread() is not threading.main_thread():
            return
        for name in ("SIGINT", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is not None:
                self._old[sig] = signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        if signum == signal.SIGINT and "stop" in self.pending:
            raise KeyboardInterrupt
        self.pending.append("stop" if signum == signal.SIGINT else "snapshot")

    def poll(self) -> str | None:
        """``stop``, ``snapshot`` or None (a stop outranks a snapshot; both are consumed)."""
        if not self.pending:
            return None
        req = "stop" if "stop" in self.pending else "snapshot"
        self.pending.clear()
        return req

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()


def _seed_runtime(seed: int, iteration: int, rank: int = 0) -> None:
    """Seed ONNX Runtime's default generator (training Dropout draws from it) from (seed,
    iteration), so an iteration's masks are the same in a straight run and a resumed one; the
    ranks of a data-parallel run draw different masks."""
    from dnntool.onnxgraph.runtime import set_seed

    entropy = [seed, iteration] + ([rank] if rank else [])
    set_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))


def _as_list(weights) -> list:
    if weights is None:
        return []
    if isinstance(weights, (str, os.PathLike)):
        return [w for w in str(weights).split(",") if w]
    if isinstance(weights, Sequence):
        return list(weights)
    return [weights]


# -- the run ---------------------------------------------------------------------------------------
class _Run:
    """State of one training run (what Caffe's Solver holds)."""

    def __init__(self, nets: SolverNets, weights, snapshot, device: str, threads: int | None,
                 data, test_data, prefetch: int, log, on_event, progress, comm=None):
        from dnntool.train.data import net_data
        from dnntool.train.step import Trainer

        sp = self.sp = nets.sp
        self.kind = solver_type(sp)
        if sp.HasField("snapshot_format") and sp.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            raise NetError("snapshot_format HDF5 is not supported; use BINARYPROTO (the default)")
        self.comm = comm
        self.rank, self.world = (comm.rank, comm.size) if comm is not None else (0, 1)
        root = self.rank == 0  # rank 0 logs, tests and snapshots
        self.log = (log if root else None) or (lambda line: None)
        self.on_event, self.progress = (on_event, progress) if root else (None, None)
        self.seed = int(sp.random_seed) if sp.random_seed >= 0 else int(np.random.SeedSequence().entropy % 2**31)
        if comm is not None:
            self.seed = comm.bcast(self.seed)  # the same initial weights on every rank
            device = comm.device(device)
            if threads is None:  # the ranks of one machine share its cores
                threads = max(1, (os.cpu_count() or 1) // comm.local_size)
        self.net = build_net(nets.train[0], "train", sp.train_state, nets.train[1])
        self.prefix = resolve_prefix(sp.snapshot_prefix, nets.path)
        self.started = time.time()  # temporary snapshot files older than this are leftovers
        values, start, history = self._initial_values(weights, snapshot)
        self.trainer = Trainer(self.net, sp, values, device, threads, comm)
        if history is not None:
            self.trainer.set_history(history)
        self.trainer.iter = start
        self.outputs = sorted(self.trainer.graphs.outputs, key=lambda o: o[1])
        self.tests: list[TestNet] = []
        self.train_data = None
        self.signals = _Signals(False)
        self.result = TrainResult(start, start, self.trainer.provider, self.kind)
        self.stopped = False
        self.losses: list[float] = []
        self.smoothed = 0.0
        try:
            for i, (param, src) in enumerate(nets.tests if root else []):
                state = sp.test_state[i] if sp.test_state else caffe_pb2.NetState()
                feeds = test_data[i] if isinstance(test_data, Sequence) else test_data
                self.tests.append(TestNet(build_net(param, "test", state, src), self.net, device, threads,
                                          self.seed, feeds, prefetch))
            shard = {"rank": self.rank, "world": self.world} if comm is not None else {}
            self.train_data = net_data(self.net, "train", self.seed, data, start * max(1, sp.iter_size),
                                       prefetch, nets.train[1], **shard)
        except BaseException:
            self.close()
            raise

    def _initial_values(self, weights, snapshot):
        """Tensor values from the fillers, then a solverstate's caffemodel or --weights."""
        from dnntool.io.caffemodel import load_weights
        from dnntool.net.weights import init_weights

        values = tensors_from(self.net, init_weights(self.net, self.seed))
        if snapshot:
            it, learned, history, _ = read_snapshot(snapshot)
            self.log(f"Restoring previous solver status from {snapshot}")
            copy_layers(self.net, values, learned, f"{learned.path}")
            return values, it, history
        sources = _as_list(weights) or [w for item in self.sp.weights for w in item.split(",") if w]
        for w in sources:
            src = load_weights(w) if isinstance(w, (str, os.PathLike)) else w
            what = src.path or "the given weights"
            self.log(f"Finetuning from {what}")
            copy_layers(self.net, values, src, what)
        return values, 0, None

    # -- the loop ----------------------------------------------------------------------------
    def run(self, handle_signals: bool) -> TrainResult:
        sp = self.sp
        self.signals = _Signals(handle_signals)
        self.t0 = self.t_last = time.perf_counter()
        self.start = self.it_last = self.trainer.iter
        self.log(f"Solving {self.net.name} on {self.trainer.provider}")
        if self.comm is not None:
            batch = ", ".join(f"{self.world} x {d.top_shapes[0][0]}" for d in self.net.layers
                              if d.impl.is_data and d.top_shapes)
            self.log(f"Data-parallel over {self.world} MPI ranks (global batch {batch or '?'});"
                     " gradients averaged with one fused Allreduce")
        self.log(f"Learning Rate Policy: {sp.lr_policy or 'fixed'}")
        if self.progress is not None:
            self.progress(self.start, sp.max_iter)
        while self.trainer.iter < sp.max_iter and not self.stopped:
            it = self.trainer.iter
            if sp.test_interval and it % sp.test_interval == 0 and (it > 0 or sp.test_initialization):
                self._test_all()
                if self.stopped:
                    break
            self._iteration()
        self._finish()
        self.result.iteration = self.trainer.iter
        self.result.stopped = self.stopped
        self.result.seconds = time.perf_counter() - self.t0
        self.result.ranks, self.result.allreduce_seconds = self.world, self.trainer.allreduce_seconds
        self.result.weights = layer_blobs(self.net, self.trainer.weights())
        return self.result

    def _iteration(self) -> None:
        sp, it = self.sp, self.trainer.iter
        feeds = [self.train_data.next() for _ in range(max(1, sp.iter_size))]
        if sp.random_seed >= 0:
            _seed_runtime(sp.random_seed, it, self.rank)
        if self.comm is None:
            out = self.trainer.step(feeds)
        else:  # requests any rank saw travel with the gradients: every rank acts at this iteration
            local = self.signals.poll()
            out = self.trainer.step(feeds, (local == "stop", local == "snapshot"))
            stop, snap = out["control"][:2]
            agreed = "stop" if stop else "snapshot" if snap else None
        outputs = [Output(name, float(out[tensor[len("out::"):]]), w) for tensor, name, w in self.outputs]
        loss = sum(o.loss_weight * o.value for o in outputs)
        if not math.isfinite(loss):
            last = self.result.snapshots[-1][0] if self.result.snapshots else None
            keep = f"the last good snapshot is {last}" if last else "no snapshot was written"
            raise Diverged(f"iteration {it}: the loss is {fmt(loss)}; training stopped and {keep}"
                           " (lower base_lr or check the data)")
        self._smooth(loss, it)
        if sp.display and it % sp.display == 0:
            self._display(it, outputs, out["lr"])
        if self.progress is not None:
            self.progress(self.trainer.iter, sp.max_iter)
        req = self.signals.poll() if self.comm is None else agreed
        if (sp.snapshot and self.trainer.iter % sp.snapshot == 0) or req is not None:
            self._snapshot()
        self.stopped = req == "stop"

    def _smooth(self, loss: float, it: int) -> None:
        """Caffe's UpdateSmoothedLoss: the mean of the last ``average_loss`` iteration losses."""
        n = self.sp.average_loss
        if len(self.losses) < n:
            self.losses.append(loss)
            self.smoothed = (self.smoothed * (len(self.losses) - 1) + loss) / len(self.losses)
        else:
            k = (it - self.start) % n
            self.smoothed += (loss - self.losses[k]) / n
            self.losses[k] = loss

    def _display(self, it: int, outputs: list[Output], lr: float) -> None:
        now = time.perf_counter()
        lapse = now - self.t_last
        per_s = (it - self.it_last) / (lapse or 1.0)
        self.log(f"Iteration {it} ({fmt(per_s)} iter/s, {fmt(lapse)}s/{self.sp.display} iters),"
                 f" loss = {fmt(self.smoothed)}")
        for k, o in enumerate(outputs):
            self.log(f"    Train net output #{k}: {o.name} = {fmt(o.value)}{_loss_tail(o)}")
        self.log(f"Iteration {it}, lr = {fmt(lr)}, solver = {self.kind}")
        self.t_last, self.it_last = now, it
        ev = DisplayEvent(it, self.smoothed, float(lr), self.kind, outputs, per_s, now - self.t0)
        self.result.displays.append(ev)
        if self.on_event is not None:
            self.on_event(ev)

    def _poll_in_test(self) -> bool:
        """Caffe polls signals before each test batch: a snapshot now, or abort the test. In a
        data-parallel run the request waits for the next step, where all ranks see it."""
        if self.comm is not None:
            return False
        req = self.signals.poll()
        if req is not None:
            self._snapshot()
        self.stopped = self.stopped or req == "stop"
        return self.stopped

    def _test_all(self) -> None:
        it, values = self.trainer.iter, self.trainer.weights()
        for i, tn in enumerate(self.tests):
            self.log(f"Iteration {it}, Testing net (#{i})")
            outputs, loss, interrupted = tn.run(values, self.sp.test_iter[i], self._poll_in_test)
            if interrupted:
                self.log("Test interrupted.")
                return
            if self.sp.test_compute_loss:
                self.log(f"Test loss: {fmt(loss)}")
            for k, o in enumerate(outputs):
                self.log(f"    Test net output #{k}: {o.name} = {fmt(o.value)}{_loss_tail(o)}")
            ev = TestEvent(it, i, outputs, loss if self.sp.test_compute_loss else None,
                           time.perf_counter() - self.t0)
            self.result.tests.append(ev)
            if self.on_event is not None:
                self.on_event(ev)

    def _snapshot(self) -> None:
        it = self.trainer.iter
        if self.result.snapshots and self.result.snapshots[-1][0].endswith(f"_iter_{it}.caffemodel"):
            return  # already taken at this iteration
        steps = sum(1 for v in self.sp.stepvalue if it - 1 >= v) if self.sp.lr_policy == "multistep" else 0
        if self.rank != 0:
            return
        if not self.result.snapshots:  # the first of this run: a killed run's leftovers go
            for path in sweep_unfinished(self.prefix, self.started):
                self.log(f"Removed {path}, an unfinished snapshot of an earlier run")
        try:
            model, state = write_snapshot(self.prefix, it, self.net, self.trainer.weights(),
                                          self.trainer.history(), steps)
        except OSError as e:
            raise DnnToolError(f"cannot write the snapshot {self.prefix}_iter_{it}: {e.strerror or e}") from None
        self.log(f"Snapshotting to binary proto file {model}")
        self.log(f"Snapshotting solver state to binary proto file {state}")
        self.result.snapshots.append((model, state))

    def _finish(self) -> None:
        sp, it = self.sp, self.trainer.iter
        if self.stopped or (sp.snapshot_after_train and (not sp.snapshot or it % sp.snapshot != 0)):
            self._snapshot()
        if self.stopped:
            self.log("Optimization stopped early.")
            return
        if sp.test_interval and it % sp.test_interval == 0 and self.tests:
            self._test_all()
        self.log("Optimization Done.")

    def close(self) -> None:
        self.signals.restore()
        if self.train_data is not None:
            self.train_data.close()
        for tn in self.tests:
            tn.close()


def _loss_tail(o: Output) -> str:
    return f" (* {fmt(o.loss_weight)} = {fmt(o.loss_weight * o.value)} loss)" if o.loss_weight else ""


def train(
    solver: str | os.PathLike[str] | caffe_pb2.SolverParameter,
    weights=None,
    snapshot: str | os.PathLike[str] | None = None,
    device: str = "auto",
    *,
    log: Callable[[str], None] | None = None,
    on_event: Callable[[DisplayEvent | TestEvent], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    data: Mapping | None = None,
    test_data: Mapping | Sequence[Mapping] | None = None,
    threads: int | None = None,
    prefetch: int = 4,
    handle_signals: bool = True,
    comm="auto",
) -> TrainResult:
    """Train as ``caffe train --solver S [--weights W | --snapshot S]``.

    Args:
        solver: a solver prototxt (its nets resolved relative to the cwd, else to its folder) or
            a SolverParameter (with net_param/train_net_param, or paths relative to the cwd).
        weights: caffemodel path(s) (a list or a comma-separated string) or Weights to fine-tune
            from: blobs copied by layer name, later files overriding earlier ones.
        snapshot: a ``.solverstate`` to resume from (iteration, history, weights, data position).
        log: receives Caffe's log lines (no glog prefix).
        on_event: receives a DisplayEvent per display iteration and a TestEvent per test.
        progress: called with (iteration, max_iter) after each iteration.
        data: arrays (N x ...) or callables (batch number -> batch) by top name for the train
            net's MemoryData/Input/DummyData layers; ``test_data`` the same for the test nets
            (one mapping for all, or one per test net).
        handle_signals: catch SIGINT (snapshot and stop) and SIGHUP (snapshot) in the main thread.
        comm: a ``dist.Comm`` for data-parallel training; ``"auto"`` (the default) joins the MPI
            job this process was launched in (``mpirun -np N``), None trains alone.

    Raises:
        Diverged: the loss became NaN or infinite (the message names the iteration).
        DnnToolError: a bad solver, net, data source or caffemodel (one line naming it).
    """
    if snapshot and weights:
        raise UsageError("give a snapshot to resume training or weights to fine-tune, not both")
    nets = load_solver(solver)
    if comm == "auto":
        from dnntool.train.dist import Comm

        comm = Comm.detect()
    try:
        run = _Run(nets, weights, snapshot, device, threads, data, test_data, prefetch, log, on_event,
                   progress, comm)
        try:
            return run.run(handle_signals)
        finally:
            run.close()
    except Diverged:
        raise  # every rank saw the same averaged loss and stops at the same iteration
    except BaseException as e:
        if comm is not None:
            comm.fail(e)
        raise

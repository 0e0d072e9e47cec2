"""A solver prototxt and its nets, resolved as Caffe's ``Solver::InitTrainNet``/``InitTestNets``:
exactly one train net (net, net_param, train_net, train_net_param), test nets from test_net_param,
test_net, then the generic net once per remaining ``test_iter``; file paths relative to the
current directory, else to the solver's folder; train_state/test_state merged over each net's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dnntool.errors import NetError
from dnntool.net import Net
from dnntool.proto import caffe_pb2


@dataclass
class SolverNets:
    """A solver with its nets: the train net and one NetParameter per test net instance."""

    sp: caffe_pb2.SolverParameter
    path: str | None
    train: tuple[caffe_pb2.NetParameter, str | None]
    tests: list[tuple[caffe_pb2.NetParameter, str | None]]


def resolve_path(path: str, base: str | None) -> str:
    """As Caffe opens it (relative to the cwd), else relative to ``base``'s folder."""
    p = Path(path)
    if p.exists() or p.is_absolute() or not base:
        return str(p)
    q = Path(base).resolve().parent / path
    return str(q) if q.exists() else str(p)


def _read_net(path: str, solver_path: str | None) -> tuple[caffe_pb2.NetParameter, str]:
    from dnntool.io.prototxt import read_net

    resolved = resolve_path(path, solver_path)
    return read_net(resolved).param, resolved


def load_solver(solver: str | os.PathLike[str] | caffe_pb2.SolverParameter) -> SolverNets:
    """Read a solver and its nets (Caffe's InitTrainNet/InitTestNets): exactly one of net,
    net_param, train_net, train_net_param; test nets from test_net_param, test_net, then the
    generic net for the remaining test_iter entries."""
    from dnntool.io.prototxt import read_solver

    path = None
    if isinstance(solver, caffe_pb2.SolverParameter):
        sp = solver
    else:
        path = str(solver)
        sp = read_solver(path)
    where = f"{path}: " if path else "solver: "
    given = [f for f in ("net", "net_param", "train_net", "train_net_param") if sp.HasField(f)]
    if len(given) != 1:
        raise NetError(f"{where}give exactly one train net with net, net_param, train_net or"
                       f" train_net_param (found {', '.join(given) or 'none'})")
    f = given[0]
    train = (getattr(sp, f), path) if f.endswith("_param") else _read_net(getattr(sp, f), path)
    tests = [(p, path) for p in sp.test_net_param] + [_read_net(t, path) for t in sp.test_net]
    generic = sp.HasField("net") or sp.HasField("net_param")
    if (len(sp.test_iter) < len(tests)) or (not generic and len(sp.test_iter) != len(tests)):
        raise NetError(f"{where}test_iter must be given once per test net ({len(tests)} test net(s),"
                       f" {len(sp.test_iter)} test_iter)")
    if generic:
        tests += [train if f == "net" else (sp.net_param, path)] * (len(sp.test_iter) - len(tests))
    if sp.test_state and len(sp.test_state) != len(tests):
        raise NetError(f"{where}test_state must be unspecified or given once per test net ({len(tests)})")
    if tests and sp.test_interval <= 0:
        raise NetError(f"{where}test_interval must be positive when there are test nets")
    if sp.average_loss < 1:
        raise NetError(f"{where}average_loss must be >= 1")
    return SolverNets(sp, path, train, tests)


def build_net(param: caffe_pb2.NetParameter, phase: str, state: caffe_pb2.NetState, source: str | None) -> Net:
    """A Net for ``phase`` with the solver's train_state/test_state merged over the net's own."""
    p = caffe_pb2.NetParameter()
    p.CopyFrom(param)
    p.state.MergeFrom(state)
    return Net.from_param(p, phase, (), p.state.level, path=source)

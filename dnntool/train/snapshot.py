"""Weights between a Net's layers and a Trainer's tensors; snapshots and fine-tuning (Caffe's
``Solver::Snapshot``/``Restore`` and ``Net::CopyTrainedLayersFrom``).

A Trainer holds each owned blob under a tensor name ``owner::role``; a caffemodel stores, per layer,
the list of its blobs (shared blobs under every layer that uses them, as Caffe's ``Net::ToProto``).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dnntool.errors import FormatError, WeightsError
from dnntool.net import Net
from dnntool.net.net import format_shape
from dnntool.translate.forward import param_name

if TYPE_CHECKING:
    from dnntool.io.caffemodel import Weights


def tensor_of(net: Net) -> dict[tuple[str, int], str]:
    """(layer, blob index) -> the tensor holding it (the owner's, for a shared blob)."""
    out = {}
    for layer in net.layers:
        for k, p in enumerate(layer.params):
            out[(layer.name, k)] = param_name(p.shared_from or layer.name, p.share_name or p.blob.role)
    return out


def layer_blobs(net: Net, values: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Each layer's blob list (Caffe order and shapes) from tensor values."""
    out: dict[str, list[np.ndarray]] = {}
    layers = {layer.name: layer for layer in net.layers}
    for (layer, k), tensor in tensor_of(net).items():
        shape = layers[layer].params[k].shape
        out.setdefault(layer, []).append(np.asarray(values[tensor], np.float32).reshape(shape))
    return out


def tensors_from(net: Net, blobs: Weights) -> dict[str, np.ndarray]:
    """Tensor values from layer blob lists (each owned blob from its owner layer)."""
    out = {}
    for (layer, k), tensor in tensor_of(net).items():
        if tensor not in out and layer in blobs and k < len(blobs[layer]):
            out[tensor] = np.asarray(blobs[layer][k], np.float32).reshape(net.layer(layer).params[k].shape)
    return out


def _fits(ours: tuple[int, ...], theirs: tuple[int, ...]) -> bool:
    """Caffe's shape check, lenient to legacy 4-D (num, channels, height, width) blobs."""
    ours, theirs = tuple(ours), tuple(theirs)
    return ours == theirs or (len(theirs) == 4 and len(ours) <= 4 and (1,) * (4 - len(ours)) + ours == theirs)


def copy_layers(net: Net, values: dict[str, np.ndarray], source: Weights, what: str) -> list[str]:
    """Copy the blobs of every layer of ``source`` whose name is a layer of ``net`` into ``values``.

    Layers of the net absent from ``source`` keep their values (their fillers' draw); layers of
    ``source`` absent from the net are ignored. Returns the layers copied.

    Raises:
        WeightsError: a blob count or shape differs (naming the layer, both shapes and the fix).
    """
    tensors = tensor_of(net)
    copied = []
    for layer in net.layers:
        if layer.name not in source or not layer.params:
            continue
        arrays = source[layer.name]
        if len(arrays) != len(layer.params):
            raise WeightsError(
                f"{what}: layer '{layer.name}' ({layer.type}) has {len(arrays)} blob(s), the net expects"
                f" {len(layer.params)}; rename the layer to learn it from scratch", layer=layer.name)
        for k, (p, a) in enumerate(zip(layer.params, arrays, strict=True)):
            if not _fits(p.shape, a.shape):
                raise WeightsError(
                    f"{what}: layer '{layer.name}' ({layer.type}) {p.blob.role} has shape"
                    f" {format_shape(a.shape)} in the caffemodel but {format_shape(p.shape)} in the net;"
                    f" rename the layer to learn it from scratch", layer=layer.name)
            values[tensors[(layer.name, k)]] = np.asarray(a, np.float32).reshape(p.shape)
        copied.append(layer.name)
    return copied


def snapshot_paths(prefix: str, iteration: int) -> tuple[str, str]:
    """``<prefix>_iter_<N>.caffemodel`` and ``.solverstate``."""
    stem = f"{prefix}_iter_{iteration}"
    return f"{stem}.caffemodel", f"{stem}.solverstate"


def resolve_prefix(prefix: str, solver_path: str | None) -> str:
    """Caffe's snapshot_prefix: unset -> the solver path without extension; a directory ->
    ``<dir>/<solver stem>``; relative to the cwd, else to the solver's folder when only that
    folder holds the prefix's directory."""
    stem = Path(solver_path).stem if solver_path else "solver"
    if not prefix:
        return str(Path(solver_path).with_suffix("")) if solver_path else stem
    p = Path(prefix)
    if not p.is_absolute() and solver_path:
        here = p if prefix.endswith(("/", os.sep)) else p.parent
        alt = Path(solver_path).parent / prefix
        alt_dir = alt if prefix.endswith(("/", os.sep)) else alt.parent
        if not (Path.cwd() / here).is_dir() and alt_dir.is_dir():
            p = alt
    if p.is_dir() or prefix.endswith(("/", os.sep)):
        return str(p / stem)
    return str(p)


def sweep_unfinished(prefix: str, before: float) -> list[str]:
    """Remove the hidden temporary files of snapshots of ``prefix`` that a killed run left
    (``.<name>_iter_N.caffemodel.XXXX.tmp``: SIGKILL lands between write and rename), when last
    written before ``before`` (this run's start: another run's snapshot in flight is newer).
    Returns the paths removed."""
    folder, name = os.path.split(prefix)
    removed = []
    for ext in ("caffemodel", "solverstate"):
        for tmp in Path(folder or ".").glob(f".{glob.escape(name)}_iter_*.{ext}.*.tmp"):
            try:
                if tmp.stat().st_mtime < before:
                    tmp.unlink()
                    removed.append(str(tmp))
            except FileNotFoundError:
                pass
    return removed


def write_snapshot(prefix: str, iteration: int, net: Net, values: dict[str, np.ndarray],
                   history: list[np.ndarray], current_step: int = 0) -> tuple[str, str]:
    """Write the caffemodel (layers of the built TRAIN net with their blobs), then the solverstate
    naming it; each atomically, so an interrupted snapshot leaves the previous ones intact."""
    from dnntool.io.caffemodel import save_caffemodel, write_solverstate

    model, state = snapshot_paths(prefix, iteration)
    save_caffemodel(model, [layer.param for layer in net.layers], layer_blobs(net, values), name=net.name)
    write_solverstate(state, iteration, model, history, current_step)
    return model, state


def read_snapshot(path: str | os.PathLike[str]):
    """(iteration, learned_net Weights, history arrays, current_step) of a ``.solverstate``.

    ``learned_net`` is opened as written (relative to the cwd, as Caffe), else beside the state.
    """
    from dnntool.io.caffemodel import history_arrays, load_weights, read_solverstate

    path = str(path)
    if path.endswith(".h5"):
        raise FormatError("HDF5 solverstates are not supported (snapshot_format: BINARYPROTO)", None)
    state = read_solverstate(path)
    if not state.learned_net:
        raise FormatError(f"{path}: the solverstate names no learned_net caffemodel")
    model = Path(state.learned_net)
    if not model.exists():
        beside = Path(path).parent / model.name
        if not beside.exists():
            raise FormatError(f"{path}: its caffemodel '{state.learned_net}' does not exist (looked in the"
                              f" current directory and beside the solverstate)")
        model = beside
    return int(state.iter), load_weights(model), history_arrays(state, path), int(state.current_step)

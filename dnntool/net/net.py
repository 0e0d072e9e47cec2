"""The Net model: phase-filtered layers wired by blob, with every blob's shape and each layer's blobs.

Wiring follows Caffe's ``Net::Init``: layers are taken in file order, a bottom must name a blob an
earlier layer produced, a top that repeats the bottom at the same index is in-place, and any other
repeated top is an error. In-place writes get new SSA ids (``conv1@relu1``) so every value has one
producer; ``Layer.bottom_names``/``top_names`` keep Caffe's names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dnntool.errors import NetError, ShapeError, SourceLoc
from dnntool.layers.base import BuildContext, Cost, LayerDef, ParamBlob, Shape, format_shape
from dnntool.layers.registry import get_layer_class
from dnntool.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def parse_phase(phase: int | str) -> int:
    """``"train"``/``"test"`` (any case) or the enum value."""
    if isinstance(phase, str):
        try:
            return {"train": TRAIN, "test": TEST}[phase.lower()]
        except KeyError:
            raise NetError(f"unknown phase '{phase}' (expected train or test)") from None
    return int(phase)


@dataclass
class Param:
    """A parameter blob of a layer with its solver settings (from the layer's ``param {}``)."""

    blob: ParamBlob
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    share_name: str = ""  # ParamSpec.name: layers with the same name share the blob
    shared_from: str | None = None  # the layer owning the blob when shared

    @property
    def shape(self) -> Shape:
        return self.blob.shape

    @property
    def count(self) -> int:
        return self.blob.count


@dataclass
class Blob:
    """One value of the net (SSA): its Caffe name, shape, producer and consumers."""

    id: str
    name: str
    shape: Shape
    producer: str | None
    consumers: list[str] = field(default_factory=list)


@dataclass
class Layer:
    """A layer of a built net."""

    name: str
    type: str
    param: caffe_pb2.LayerParameter
    impl: LayerDef
    loc: SourceLoc | None
    bottoms: list[str]  # SSA blob ids
    tops: list[str]
    bottom_names: list[str]
    top_names: list[str]
    bottom_shapes: list[Shape]
    top_shapes: list[Shape]
    params: list[Param]
    loss_weights: list[float]
    cost: Cost

    @property
    def in_place(self) -> bool:
        return any(t in self.bottom_names for t in self.top_names)

    @property
    def learnable_count(self) -> int:
        """Learnable values owned by this layer (shared blobs count at their owner only)."""
        return sum(p.count for p in self.params if p.blob.learnable and p.shared_from is None)

    @property
    def stored_count(self) -> int:
        """Non-learnable stored values (BatchNorm statistics) owned by this layer."""
        return sum(p.count for p in self.params if not p.blob.learnable and p.shared_from is None)


def state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    """Caffe's ``Net::StateMeetsRule``."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def layer_included(lp: caffe_pb2.LayerParameter, state: caffe_pb2.NetState, loc: SourceLoc | None = None) -> bool:
    """Caffe's ``FilterNet`` for one layer: any include rule met, or no exclude rule met."""
    if lp.include and lp.exclude:
        raise NetError(f"layer '{lp.name}' specifies both include and exclude rules", loc, layer=lp.name)
    if lp.include:
        return any(state_meets_rule(state, r) for r in lp.include)
    return not any(state_meets_rule(state, r) for r in lp.exclude)


class Net:
    """A net built from a NetParameter for one phase/stage/level, with shapes inferred."""

    def __init__(self, name: str, phase: int, source: str | None = None):
        self.name = name
        self.phase = phase
        self.source = source
        self.layers: list[Layer] = []
        self.blobs: dict[str, Blob] = {}
        self.latest: dict[str, str] = {}  # Caffe blob name -> its current SSA id
        self.notes: list[str] = []
        self.param_proto: caffe_pb2.NetParameter | None = None
        self._excluded: dict[str, caffe_pb2.LayerParameter] = {}

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_prototxt(
        cls,
        path: str | os.PathLike[str],
        phase: int | str = TEST,
        stages: Iterable[str] = (),
        level: int = 0,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> Net:
        """Read a net prototxt (any Caffe era) and build it for the given state."""
        from dnntool.io.prototxt import read_net

        src = read_net(path)
        net = cls.from_param(src.param, phase, stages, level, input_shapes, src.layer_locs, str(path))
        net.notes = src.notes + net.notes
        return net

    @classmethod
    def from_param(
        cls,
        param: caffe_pb2.NetParameter,
        phase: int | str = TEST,
        stages: Iterable[str] = (),
        level: int = 0,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        layer_locs: Sequence[SourceLoc] | None = None,
        path: str | None = None,
    ) -> Net:
        """Build from an (upgraded) NetParameter."""
        if param.layers:
            from dnntool.io.upgrade import upgrade_net

            param = caffe_pb2.NetParameter.FromString(param.SerializeToString())
            upgrade_net(param)
        phase = parse_phase(phase)
        state = caffe_pb2.NetState()
        state.CopyFrom(param.state)
        state.phase = phase
        state.level = level if level else state.level
        state.stage.extend(s for s in stages if s not in state.stage)
        ctx = BuildContext(
            phase=phase,
            input_shapes={k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()},
            net_path=path,
        )
        net = cls(param.name, phase, path)
        net.param_proto = param
        locs = list(layer_locs or [])
        producers_later: dict[str, str] = {}  # blob -> first layer producing it (to explain cycles)
        for i, lp in enumerate(param.layer):
            if layer_included(lp, state, locs[i] if i < len(locs) else SourceLoc(path)):
                for t in lp.top:
                    producers_later.setdefault(t, lp.name)

        for i, lp in enumerate(param.layer):
            loc = locs[i] if i < len(locs) else SourceLoc(path)
            if not layer_included(lp, state, loc):
                for t in lp.top:
                    net._excluded.setdefault(t, lp)
                continue
            net._add_layer(lp, ctx, loc, producers_later)
        unused = set(ctx.input_shapes) - ctx.used_input_shapes - set(net.blobs)
        if unused:
            raise NetError(
                f"--input-shape names {', '.join(sorted(unused))}, which no data layer of the net"
                f" produces (inputs: {', '.join(net.input_names()) or 'none'})",
                SourceLoc(path),
            )
        net._share_params()
        return net

    def _add_layer(
        self, lp: caffe_pb2.LayerParameter, ctx: BuildContext, loc: SourceLoc,
        producers: dict[str, str],
    ) -> None:
        impl_cls = get_layer_class(lp.type, lp.name, loc)
        impl = impl_cls(lp, ctx, loc)
        nb, nt = len(lp.bottom), len(lp.top)
        top_names = list(lp.top)
        if impl.is_loss and nt < impl.tops[0]:  # Caffe's AutoTopBlobs: loss layers get anonymous tops
            top_names += ["(automatic)"] * (impl.tops[0] - nt)
            nt = len(top_names)
        for what, n, (lo, hi) in (("bottom", nb, impl.bottoms), ("top", nt, impl.tops)):
            if n < lo or (hi is not None and n > hi):
                want = str(lo) if lo == hi else f"{lo}..{hi if hi is not None else 'any'}"
                raise impl.error(f"takes {want} {what} blob(s), got {n}")
        bottoms, bshapes = [], []
        for i, b in enumerate(lp.bottom):
            bid = self.latest.get(b)
            if bid is None:
                later = producers.get(b)
                if later is not None and later != lp.name:
                    why = f"it is produced later by layer '{later}': the net has a cycle or is out of order"
                elif later == lp.name:
                    why = "the layer reads its own output: a cycle"
                elif b in self._excluded:
                    why = _excluded_hint(self._excluded[b], ctx.phase)
                else:
                    why = "no earlier layer produces it"
                raise NetError(
                    f"layer '{lp.name}' ({lp.type}): unknown bottom blob '{b}' (bottom index {i}); {why}",
                    loc, layer=lp.name,
                )
            bottoms.append(bid)
            bshapes.append(self.blobs[bid].shape)
        try:
            tshapes = [tuple(int(d) for d in s) for s in impl.infer_shapes(bshapes)]
        except (ValueError, ZeroDivisionError, IndexError) as e:
            raise impl.shape_error(f"cannot infer shapes from bottoms {_fmt_shapes(bshapes)}: {e}") from None
        except OSError as e:  # a data layer reading its source (a directory, unreadable, ...)
            what = f"'{e.filename}'" if e.filename is not None else "its source"
            raise impl.error(f"cannot read {what}: {e.strerror or e}") from None
        if len(tshapes) < nt:
            raise impl.error(f"produces {len(tshapes)} top(s) but {nt} are named")
        tshapes = tshapes[:nt]
        for s in tshapes:
            if any(d < 0 for d in s) or (s and any(d == 0 for d in s) and not impl.is_data):
                raise impl.shape_error(
                    f"output shape {format_shape(s)} is empty or negative (bottoms {_fmt_shapes(bshapes)})"
                )
        tops = []
        for j, t in enumerate(top_names):
            in_place = j < nb and lp.bottom[j] == t
            if t == "(automatic)":
                tid = f"(automatic)@{lp.name}#{j}"
                self.blobs[tid] = Blob(tid, t, tshapes[j], lp.name)
                tops.append(tid)
                continue
            if t in self.latest and not in_place:
                raise NetError(
                    f"layer '{lp.name}' ({lp.type}): top blob '{t}' is produced by multiple sources"
                    f" (already produced by layer '{self.blobs[self.latest[t]].producer}')",
                    loc, layer=lp.name,
                )
            tid = f"{t}@{lp.name}" if in_place or t in self.blobs else t
            while tid in self.blobs:
                tid += "'"
            self.blobs[tid] = Blob(tid, t, tshapes[j], lp.name)
            self.latest[t] = tid
            tops.append(tid)
        for bid in bottoms:
            self.blobs[bid].consumers.append(lp.name)
        pblobs = impl.param_shapes(bshapes)
        params = []
        for k, pb in enumerate(pblobs):
            spec = lp.param[k] if k < len(lp.param) else None
            lr = spec.lr_mult if spec is not None and spec.HasField("lr_mult") else (1.0 if pb.learnable else 0.0)
            dm = spec.decay_mult if spec is not None and spec.HasField("decay_mult") else (1.0 if pb.learnable else 0.0)
            params.append(Param(pb, lr, dm, spec.name if spec is not None else ""))
        loss_weights = list(lp.loss_weight)
        if not loss_weights:
            loss_weights = [1.0 if (impl.is_loss and j == 0) else 0.0 for j in range(nt)]
        elif len(loss_weights) != nt:
            raise impl.error(f"{len(loss_weights)} loss_weight values for {nt} tops")
        self.layers.append(Layer(
            name=lp.name, type=lp.type, param=lp, impl=impl, loc=loc,
            bottoms=bottoms, tops=tops, bottom_names=list(lp.bottom), top_names=top_names,
            bottom_shapes=bshapes, top_shapes=tshapes, params=params, loss_weights=loss_weights,
            cost=impl.cost(bshapes, tshapes),
        ))

    def _share_params(self) -> None:
        """Resolve ``param { name: ... }`` sharing (Caffe's AppendParam): first owner keeps the blob."""
        owners: dict[str, tuple[str, Param]] = {}
        for layer in self.layers:
            for k, p in enumerate(layer.params):
                if not p.share_name:
                    continue
                if p.share_name not in owners:
                    owners[p.share_name] = (layer.name, p)
                    continue
                owner_name, owner = owners[p.share_name]
                if owner.count != p.count or (
                    owner.shape != p.shape and _share_mode(layer.param, k) == caffe_pb2.ParamSpec.STRICT
                ):
                    raise ShapeError(
                        f"layer '{layer.name}' shares param '{p.share_name}' with layer '{owner_name}' but"
                        f" their shapes differ: {format_shape(p.shape)} vs {format_shape(owner.shape)}",
                        layer.loc, layer=layer.name,
                    )
                p.shared_from = owner_name

    # -- queries ---------------------------------------------------------------------------
    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise NetError(f"no layer named '{name}' in net '{self.name}'")

    def blob(self, name: str) -> Blob:
        """The current value of a Caffe blob name (after any in-place layers), or an SSA id."""
        bid = self.latest.get(name, name)
        if bid not in self.blobs:
            raise NetError(f"no blob named '{name}' in net '{self.name}'")
        return self.blobs[bid]

    def input_names(self) -> list[str]:
        """Caffe names of the tops of data layers, in order."""
        return [t for layer in self.layers if layer.impl.is_data for t in layer.top_names]

    def output_ids(self) -> list[str]:
        """SSA ids that no layer consumes (Caffe's net outputs)."""
        return [b.id for b in self.blobs.values() if not b.consumers and b.id == self.latest.get(b.name)]

    @property
    def learnable_count(self) -> int:
        return sum(layer.learnable_count for layer in self.layers)

    @property
    def stored_count(self) -> int:
        return sum(layer.stored_count for layer in self.layers)

    @property
    def cost(self) -> Cost:
        total = Cost()
        for layer in self.layers:
            total = total + layer.cost
        return total

    def __repr__(self) -> str:
        return f"<Net '{self.name}' {len(self.layers)} layers, {self.learnable_count} params>"


def _excluded_hint(producer: caffe_pb2.LayerParameter, phase: int) -> str:
    """Why a blob is missing when its producer was filtered out by include/exclude rules."""
    rules = list(producer.include) or list(producer.exclude)
    phases = {caffe_pb2.Phase.Name(r.phase).lower() for r in rules if r.HasField("phase")}
    stages = sorted({s for r in rules for s in r.stage})
    hint = f"it is produced by layer '{producer.name}', which the {caffe_pb2.Phase.Name(phase).lower()} phase excludes"
    other = sorted({"train", "test"} - {caffe_pb2.Phase.Name(phase).lower()})
    if producer.include and phases and caffe_pb2.Phase.Name(phase).lower() not in phases:
        hint += f" (try --phase {other[0]})"
    elif stages:
        hint += f" (try --stage {stages[0]})"
    return hint


def _share_mode(lp: caffe_pb2.LayerParameter, k: int) -> int:
    return lp.param[k].share_mode if k < len(lp.param) else caffe_pb2.ParamSpec.STRICT




def _fmt_shapes(shapes: Sequence[Sequence[int]]) -> str:
    return "[" + ", ".join(format_shape(s) for s in shapes) + "]"



"""Shape and wiring layers: Concat, Slice, Split, Flatten, Reshape, Crop, Permute, Tile, Eltwise,
Reduction, ArgMax, Silence, Parameter. They move data; only Eltwise, Reduction and ArgMax compute."""

from __future__ import annotations

import math

from dnntool.layers.base import Cost, Emit, LayerDef, ParamBlob, Shape, count
from dnntool.layers.registry import register_layer
from dnntool.proto import caffe_pb2


def _legacy_axis(layer: LayerDef, param, legacy_field: str) -> int:
    """``axis``, or the pre-2015 ``concat_dim``/``slice_dim`` when that is what the file sets.

    Caffe (concat_layer.cpp, slice_layer.cpp): "Either axis or concat_dim should be specified; not both."
    """
    if param.HasField(legacy_field):
        if param.HasField("axis"):
            raise layer.error(f"give either axis or {legacy_field}, not both")
        return getattr(param, legacy_field)
    return param.axis


@register_layer("Concat")
class Concat(LayerDef):
    """Joins bottoms along ``axis`` (1); every other axis must agree."""

    family = "merge"
    bottoms = (1, None)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        b0 = bottoms[0]
        ax = self.canonical_axis(_legacy_axis(self, self.lp.concat_param, "concat_dim"), len(b0))
        total = 0
        for i, b in enumerate(bottoms):
            if len(b) != len(b0) or any(b[j] != b0[j] for j in range(len(b0)) if j != ax):
                raise self.shape_error(
                    f"bottom {i} {list(b)} does not match bottom 0 {list(b0)} outside axis {ax}"
                )
            total += b[ax]
        return [(*b0[:ax], total, *b0[ax + 1:])]

    def forward(self, e: Emit) -> None:
        ax = self.canonical_axis(_legacy_axis(self, self.lp.concat_param, "concat_dim"), len(e.bottom_shapes[0]))
        e.g.op("Concat", e.bottoms, e.tops, axis=ax)


@register_layer("Slice")
class Slice(LayerDef):
    """Splits the bottom along ``axis`` at ``slice_point``s (half-open ranges), or into equal parts."""

    family = "merge"
    tops = (1, None)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        b = bottoms[0]
        p = self.lp.slice_param
        ax = self.canonical_axis(_legacy_axis(self, p, "slice_dim"), len(b))
        n = len(self.lp.top)
        points = list(p.slice_point)
        if points:
            if len(points) != n - 1:
                raise self.error(f"{len(points)} slice_point(s) need {len(points) + 1} tops, got {n}")
            edges = [0, *points, b[ax]]
            if any(edges[i] >= edges[i + 1] for i in range(len(edges) - 1)):
                raise self.shape_error(f"slice points {points} must increase strictly within axis size {b[ax]}")
            sizes = [edges[i + 1] - edges[i] for i in range(n)]
        else:
            if b[ax] % n:
                raise self.shape_error(f"axis {ax} of size {b[ax]} cannot be split into {n} equal tops")
            sizes = [b[ax] // n] * n
        return [(*b[:ax], s, *b[ax + 1:]) for s in sizes]

    def forward(self, e: Emit) -> None:
        b = e.bottom_shapes[0]
        ax = self.canonical_axis(_legacy_axis(self, self.lp.slice_param, "slice_dim"), len(b))
        sizes = [t[ax] for t in e.top_shapes]
        e.g.op("Split", [e.bottoms[0], e.g.const(sizes)], e.tops, axis=ax)


@register_layer("Split")
class Split(LayerDef):
    """Copies the bottom to every top (Caffe inserts these where a blob feeds several layers)."""

    family = "merge"
    tops = (1, None)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        return [bottoms[0]] * len(self.lp.top)

    def forward(self, e: Emit) -> None:
        for t in e.tops:
            e.g.op("Identity", e.bottoms, [t])


@register_layer("Flatten")
class Flatten(LayerDef):
    """Merges axes ``axis``..``end_axis`` (1..-1) into one."""

    family = "reshape"

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        b = bottoms[0]
        p = self.lp.flatten_param
        a = self.canonical_axis(p.axis, len(b))
        e = self.canonical_axis(p.end_axis, len(b), "end_axis")
        if e < a:
            raise self.error(f"end_axis {p.end_axis} comes before axis {p.axis}")
        return [(*b[:a], math.prod(b[a:e + 1]), *b[e + 1:])]

    def forward(self, e: Emit) -> None:
        if e.batch is not None and self.canonical_axis(self.lp.flatten_param.axis, len(e.bottom_shapes[0])) == 0:
            raise self.error("flattens the batch axis, so the model cannot keep a dynamic batch")
        e.g.reshape(e.bottoms[0], e.static_shape(e.top_shapes[0]), e.tops[0])


@register_layer("Reshape")
class Reshape(LayerDef):
    """Replaces axes [axis, axis+num_axes) by ``shape``: 0 copies the bottom's dim, -1 is inferred."""

    family = "reshape"

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        b = bottoms[0]
        p = self.lp.reshape_param
        dims = list(p.shape.dim)
        nd = len(b)
        start = p.axis if p.axis >= 0 else nd + p.axis + 1
        if not 0 <= start <= nd:
            raise self.shape_error(f"axis {p.axis} is out of range for a {nd}-D bottom")
        if p.num_axes < -1:
            raise self.error(f"num_axes must be >= -1, got {p.num_axes}")
        end = nd if p.num_axes == -1 else start + p.num_axes
        if end > nd:
            raise self.shape_error(f"axis {p.axis} + num_axes {p.num_axes} exceeds the bottom's {nd} axes")
        if sum(d == -1 for d in dims) > 1:
            raise self.error("at most one dimension can be -1 (inferred)")
        new = []
        for i, d in enumerate(dims):
            if d == 0:  # Caffe copies bottom axis start+i, which may lie past the replaced span
                if start + i >= nd:
                    raise self.shape_error(f"dim {i} is 0 (copy) but the bottom has no axis {start + i} to copy")
                new.append(b[start + i])
            elif d < -1:
                raise self.error(f"invalid dimension {d}")
            else:
                new.append(d)
        top = [*b[:start], *new, *b[end:]]
        if -1 in top:
            known = math.prod(d for d in top if d != -1)
            if known == 0 or count(b) % known:
                raise self.shape_error(f"cannot infer the -1 dimension: {count(b)} values into {dims}")
            top[top.index(-1)] = count(b) // known
        if count(top) != count(b):
            raise self.shape_error(f"shape {top} holds {count(top)} values but the bottom {list(b)} has {count(b)}")
        return [tuple(top)]

    def summary(self) -> str:
        return "x".join(str(d) for d in self.lp.reshape_param.shape.dim)

    def forward(self, e: Emit) -> None:
        b, top = e.bottom_shapes[0], e.top_shapes[0]
        if e.batch is not None and (not top or top[0] != b[0]):
            raise self.error("changes the batch axis, so the model cannot keep a dynamic batch")
        e.g.reshape(e.bottoms[0], e.static_shape(top), e.tops[0])


@register_layer("Crop")
class Crop(LayerDef):
    """Crops bottom 0 to bottom 1's size from ``axis`` (2) on, at ``offset``s (one, or one per axis)."""

    family = "reshape"
    bottoms = (2, 2)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        a, ref = bottoms
        if len(a) != len(ref):
            raise self.shape_error(f"bottoms {list(a)} and {list(ref)} must have the same number of axes")
        p = self.lp.crop_param
        ax = self.canonical_axis(p.axis, len(a))
        n = len(a) - ax
        offs = list(p.offset)
        if len(offs) not in (0, 1, n):
            raise self.error(f"give 0, 1 or {n} offsets, got {len(offs)}")
        offs = [0] * n if not offs else (offs * n if len(offs) == 1 else offs)
        top = list(a[:ax])
        for i in range(n):
            if a[ax + i] < ref[ax + i] + offs[i]:
                raise self.shape_error(
                    f"crop of size {ref[ax + i]} at offset {offs[i]} exceeds axis {ax + i} of size {a[ax + i]}"
                )
            top.append(ref[ax + i])
        return [tuple(top)]

    def forward(self, e: Emit) -> None:
        a, ref = e.bottom_shapes
        ax = self.canonical_axis(self.lp.crop_param.axis, len(a))
        n = len(a) - ax
        offs = list(self.lp.crop_param.offset) or [0]
        offs = offs * n if len(offs) == 1 else offs
        starts = offs
        ends = [o + ref[ax + i] for i, o in enumerate(offs)]
        e.g.op("Slice", [e.bottoms[0], e.g.const(starts), e.g.const(ends), e.g.const(list(range(ax, len(a))))],
               e.tops)


@register_layer("Permute")
class Permute(LayerDef):
    """SSD's transpose: top axis i is bottom axis order[i]; unlisted axes follow in their order."""

    family = "reshape"

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        b = bottoms[0]
        order = list(self.lp.permute_param.order)
        if any(not 0 <= o < len(b) for o in order) or len(set(order)) != len(order):
            raise self.shape_error(f"order {order} is not a permutation of the {len(b)} axes of {list(b)}")
        order += [i for i in range(len(b)) if i not in order]
        return [tuple(b[o] for o in order)]

    def summary(self) -> str:
        return ",".join(map(str, self.lp.permute_param.order))

    def forward(self, e: Emit) -> None:
        nd = len(e.bottom_shapes[0])
        order = list(self.lp.permute_param.order)
        order += [i for i in range(nd) if i not in order]
        e.g.op("Transpose", e.bottoms, e.tops, perm=order)


@register_layer("Tile")
class Tile(LayerDef):
    """Repeats the bottom ``tiles`` times along ``axis``."""

    family = "reshape"

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        b = bottoms[0]
        p = self.lp.tile_param
        if p.tiles < 1:
            raise self.error("tile_param.tiles must be >= 1")
        ax = self.canonical_axis(p.axis, len(b))
        return [(*b[:ax], b[ax] * p.tiles, *b[ax + 1:])]

    def forward(self, e: Emit) -> None:
        b = e.bottom_shapes[0]
        ax = self.canonical_axis(self.lp.tile_param.axis, len(b))
        reps = [1] * len(b)
        reps[ax] = self.lp.tile_param.tiles
        e.g.op("Tile", [e.bottoms[0], e.g.const(reps)], e.tops)


@register_layer("Eltwise")
class Eltwise(LayerDef):
    """Element-wise SUM (with optional coefficients), PROD or MAX of bottoms of one shape."""

    family = "merge"
    bottoms = (2, None)

    def setup(self) -> None:
        p = self.lp.eltwise_param
        n = len(self.lp.bottom)
        if p.coeff and (p.operation != caffe_pb2.EltwiseParameter.SUM):
            raise self.error("coefficients are supported only for the SUM operation")
        if p.coeff and len(p.coeff) != n:
            raise self.error(f"{len(p.coeff)} coefficients for {n} bottoms")

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        for i, b in enumerate(bottoms[1:], 1):
            if b != bottoms[0]:
                raise self.shape_error(f"bottom {i} {list(b)} differs from bottom 0 {list(bottoms[0])}")
        return [bottoms[0]]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        p = self.lp.eltwise_param
        n, k = count(tops[0]), len(bottoms)
        if p.operation == caffe_pb2.EltwiseParameter.PROD:
            return Cost(n * (k - 1), n * (k - 1))
        coeff = n * k if p.coeff and any(c != 1 for c in p.coeff) else 0
        return Cost(0, n * (k - 1) + coeff)

    def summary(self) -> str:
        p = self.lp.eltwise_param
        op = caffe_pb2.EltwiseParameter.EltwiseOp.Name(p.operation)
        return op + (" " + ",".join(f"{c:g}" for c in p.coeff) if p.coeff else "")

    def forward(self, e: Emit) -> None:
        p = self.lp.eltwise_param
        g = e.g
        if p.operation == caffe_pb2.EltwiseParameter.PROD:
            y = e.bottoms[0]
            for i, b in enumerate(e.bottoms[1:], 1):
                y = g.op1("Mul", [y, b], e.tops[0] if i == len(e.bottoms) - 1 else None)
        elif p.operation == caffe_pb2.EltwiseParameter.MAX:
            g.op("Max", e.bottoms, e.tops)
        else:
            terms = [b if not p.coeff or p.coeff[i] == 1 else g.op1("Mul", [b, g.scalar(p.coeff[i])])
                     for i, b in enumerate(e.bottoms)]
            g.op("Sum", terms, e.tops)


@register_layer("Reduction")
class Reduction(LayerDef):
    """SUM, ASUM, SUMSQ or MEAN over all axes from ``axis`` (0), times ``coeff``."""

    family = "reshape"

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        b = bottoms[0]
        ax = self.canonical_axis(self.lp.reduction_param.axis, len(b))
        return [tuple(b[:ax])]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        sq = self.lp.reduction_param.operation == caffe_pb2.ReductionParameter.SUMSQ
        return Cost(count(bottoms[0]) if sq else 0, count(bottoms[0]) * (2 if sq else 1))

    def forward(self, e: Emit) -> None:
        p = self.lp.reduction_param
        g = e.g
        b = e.bottom_shapes[0]
        axes = list(range(self.canonical_axis(p.axis, len(b)), len(b)))
        RP = caffe_pb2.ReductionParameter
        if p.operation == RP.SUM:
            y = g.op1("ReduceSum", [e.bottoms[0], g.const(axes)], keepdims=0)
        else:
            op = {RP.ASUM: "ReduceL1", RP.SUMSQ: "ReduceSumSquare", RP.MEAN: "ReduceMean"}[p.operation]
            y = g.op1(op, [e.bottoms[0]], axes=axes, keepdims=0)
        if p.coeff != 1:
            g.op("Mul", [y, g.scalar(p.coeff)], e.tops)
        else:
            g.op("Identity", [y], e.tops)


@register_layer("ArgMax")
class ArgMax(LayerDef):
    """Indices (and with out_max_val, values) of the top_k maxima per sample, or along ``axis``."""

    family = "reshape"

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        b = bottoms[0]
        p = self.lp.argmax_param
        if p.top_k < 1:
            raise self.error("top_k must be >= 1")
        if p.HasField("axis"):
            ax = self.canonical_axis(p.axis, len(b))
            if p.top_k > b[ax]:
                raise self.shape_error(f"top_k {p.top_k} exceeds axis {ax} of size {b[ax]}")
            shape = list(b)
            shape[ax] = p.top_k
            return [tuple(shape)]
        if p.top_k > count(b) // b[0]:
            raise self.shape_error(f"top_k {p.top_k} exceeds the {count(b) // b[0]} values per sample")
        shape = [1] * max(3, len(b))
        shape[0], shape[2] = b[0], p.top_k
        if p.out_max_val:
            shape[1] = 2
        return [tuple(shape)]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, count(bottoms[0]) * self.lp.argmax_param.top_k)

    def forward(self, e: Emit) -> None:
        p = self.lp.argmax_param
        g = e.g
        b, top = e.bottom_shapes[0], e.top_shapes[0]
        k = g.const([int(p.top_k)])
        if p.HasField("axis"):
            ax = self.canonical_axis(p.axis, len(b))
            vals, idx = g.op("TopK", [e.bottoms[0], k], 2, axis=ax)
            if p.out_max_val:
                g.op("Identity", [vals], e.tops)
            else:
                g.op("Cast", [idx], e.tops, to=1)
            return
        flat = g.op1("Flatten", [e.bottoms[0]], axis=1)
        vals, idx = g.op("TopK", [flat, k], 2, axis=1)
        fidx = g.op1("Cast", [idx], to=1)
        y = g.op1("Concat", [g.op1("Unsqueeze", [fidx, g.const([1])]),
                             g.op1("Unsqueeze", [vals, g.const([1])])], axis=1) if p.out_max_val else fidx
        g.reshape(y, e.static_shape(top), e.tops[0])


@register_layer("Silence")
class Silence(LayerDef):
    """Consumes bottoms and produces nothing (keeps unused blobs from being net outputs)."""

    bottoms = (1, None)
    tops = (0, 0)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        return []

    def forward(self, e: Emit) -> None:
        """Produces nothing."""


@register_layer("Parameter")
class Parameter(LayerDef):
    """Exposes a learnable blob of ``parameter_param.shape`` as its top."""

    bottoms = (0, 0)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        return [tuple(self.lp.parameter_param.shape.dim)]

    def param_shapes(self, bottoms: list[Shape]) -> list[ParamBlob]:
        return [ParamBlob(tuple(self.lp.parameter_param.shape.dim), "weights")]

    def forward(self, e: Emit) -> None:
        e.g.op("Identity", e.params, e.tops)

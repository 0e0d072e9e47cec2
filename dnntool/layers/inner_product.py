"""InnerProduct (fully connected, with ``axis`` and ``transpose``) and Embed."""

from __future__ import annotations

from dnntool.layers.base import Cost, Emit, LayerDef, ParamBlob, Shape, count, count_range
from dnntool.layers.registry import register_layer


@register_layer("InnerProduct")
class InnerProduct(LayerDef):
    """y = x W^T + b with x flattened from ``axis``: (M, K) x (K, N); weights (N, K), or (K, N) if transpose."""

    family = "ip"

    def setup(self) -> None:
        p = self.lp.inner_product_param
        if not p.HasField("num_output") or p.num_output == 0:
            raise self.error("inner_product_param.num_output must be set and > 0")
        self.num_output = p.num_output

    def split(self, b: Shape) -> tuple[int, int]:
        """(M, K): outer count before ``axis`` and inner count from it."""
        ax = self.canonical_axis(self.lp.inner_product_param.axis, len(b))
        return count_range(b, 0, ax), count_range(b, ax)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        b = bottoms[0]
        ax = self.canonical_axis(self.lp.inner_product_param.axis, len(b))
        return [(*b[:ax], self.num_output)]

    def param_shapes(self, bottoms: list[Shape]) -> list[ParamBlob]:
        _, k = self.split(bottoms[0])
        p = self.lp.inner_product_param
        w = (k, self.num_output) if p.transpose else (self.num_output, k)
        blobs = [ParamBlob(w, "weights", filler=p.weight_filler)]
        if p.bias_term:
            blobs.append(ParamBlob((self.num_output,), "bias", filler=p.bias_filler))
        return blobs

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        m, k = self.split(bottoms[0])
        macs = m * k * self.num_output
        bias = m * self.num_output if self.lp.inner_product_param.bias_term else 0
        return Cost(macs, 2 * macs + bias)

    def summary(self) -> str:
        return str(self.num_output)

    def forward(self, e: Emit) -> None:
        b, top = e.bottom_shapes[0], e.top_shapes[0]
        ax = self.canonical_axis(self.lp.inner_product_param.axis, len(b))
        k = self.split(b)[1]
        if ax == 0 and e.batch is not None:
            raise self.error("axis 0 takes the batch into the product, so the model cannot keep a dynamic batch")
        g = e.g
        x = g.op1("Flatten", [e.bottoms[0]], axis=ax) if ax >= 1 else g.reshape(e.bottoms[0], [1, k])
        trans_b = 0 if self.lp.inner_product_param.transpose else 1
        last = len(top) == 2 and ax == 1
        g.op("Gemm", [x, *e.params], [e.tops[0]] if last else 1, transB=trans_b)
        if not last:
            y = g.nodes[-1].output[0]
            # -1, not Reshape's 0 (copy): y's dim 0 is M = N*..., not the batch
            g.reshape(y, [-1, *top[1:]] if e.batch is not None and ax >= 1 else list(top), e.tops[0])


@register_layer("Embed")
class Embed(LayerDef):
    """Looks up rows of a (input_dim, num_output) table by integer index; top = bottom shape + (num_output,)."""

    family = "ip"

    def setup(self) -> None:
        p = self.lp.embed_param
        if not p.num_output or not p.input_dim:
            raise self.error("embed_param.num_output and input_dim must be set and > 0")

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        return [(*bottoms[0], self.lp.embed_param.num_output)]

    def param_shapes(self, bottoms: list[Shape]) -> list[ParamBlob]:
        p = self.lp.embed_param
        blobs = [ParamBlob((p.input_dim, p.num_output), "weights", filler=p.weight_filler)]
        if p.bias_term:
            blobs.append(ParamBlob((p.num_output,), "bias", filler=p.bias_filler))
        return blobs

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, count(tops[0]) if self.lp.embed_param.bias_term else 0)

    def summary(self) -> str:
        p = self.lp.embed_param
        return f"{p.input_dim} -> {p.num_output}"

    def forward(self, e: Emit) -> None:
        idx = e.g.op1("Cast", [e.bottoms[0]], to=7)  # INT64: Caffe feeds indices as floats
        if self.lp.embed_param.bias_term:
            y = e.g.op1("Gather", [e.params[0], idx])
            e.g.op("Add", [y, e.params[1]], e.tops)
        else:
            e.g.op("Gather", [e.params[0], idx], e.tops)

"""The backward pass, derived from the emitted forward graph.

Layers are walked in reverse. A layer with its own ``backward`` (a fused, exact override such as
SoftmaxWithLoss's p - onehot) emits its gradients directly; any other layer's nodes are walked in
reverse with one rule per ONNX op (``onnxgraph/grad_rules.py``), so forward and backward cannot
drift. Gradients of a tensor read several times are summed; ``propagate_down: false`` stops a
bottom's gradient; nothing is emitted where no requested tensor depends on the work (Caffe's
``layer_need_backward``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import helper

from dnntool.errors import NetError
from dnntool.layers.base import BackEmit
from dnntool.net.net import Layer
from dnntool.onnxgraph.builder import GraphBuilder
from dnntool.onnxgraph.grad_rules import NOT_DIFFERENTIABLE, RULES, GradCtx
from dnntool.translate.forward import Emitted


def static_shapes(g: GraphBuilder) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor of the graph so far (ONNX shape inference over static inputs)."""
    outs = [helper.make_tensor_value_info(o, 0, None) for n in g.nodes for o in n.output if o]
    graph = helper.make_graph(g.nodes, "shapes", g.inputs, outs, list(g.initializers.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    for name, init in g.initializers.items():
        shapes[name] = tuple(init.dims)
    return shapes


class _Grads:
    """Pending gradient contributions per tensor, summed when first read."""

    def __init__(self, g: GraphBuilder):
        self.g = g
        self.pending: dict[str, list[str]] = {}
        self.done: dict[str, str | None] = {}

    def add(self, tensor: str, grad: str | None) -> None:
        if grad is None:
            return
        if tensor in self.done:
            raise NetError(f"internal: gradient of '{tensor}' arrived after it was used")
        self.pending.setdefault(tensor, []).append(grad)

    def get(self, tensor: str) -> str | None:
        if tensor not in self.done:
            parts = self.pending.pop(tensor, [])
            self.done[tensor] = None if not parts else (parts[0] if len(parts) == 1 else self.g.op1("Sum", parts))
        return self.done[tensor]


def _depends(g: GraphBuilder, sources: Iterable[str]) -> set[str]:
    """Tensors that depend (differentiably) on any of ``sources``."""
    need = set(sources)
    for node in g.nodes:
        if node.op_type in NOT_DIFFERENTIABLE:
            continue
        if any(i in need for i in node.input):
            need.update(o for o in node.output if o)
    return need


def emit_backward(
    g: GraphBuilder,
    layers: list[Layer],
    em: Emitted,
    seeds: Mapping[str, str],
    wrt: Iterable[str],
) -> dict[str, str | None]:
    """Emit the gradients of the seeded objective with respect to ``wrt`` (params or inputs).

    ``seeds`` maps a forward tensor (a loss top) to the name of its incoming gradient.
    Returns ``{name: grad tensor or None}`` for every name in ``wrt``.
    """
    wrt = list(wrt)
    shapes = static_shapes(g)
    need = _depends(g, wrt)
    grads = _Grads(g)
    for t, s in seeds.items():
        grads.add(t, s)
    fwd_nodes = list(g.nodes)
    for layer in reversed(layers):
        if layer.name not in em.node_ranges:
            continue
        start, end = em.node_ranges[layer.name]
        if not any(t in grads.pending for t in layer.tops):
            continue
        inputs = list(layer.bottoms) + em.params.get(layer.name, [])
        if not any(i in need for i in inputs):
            continue  # nothing below needs a gradient from this layer
        scope = g.scope
        g.scope = f"{layer.name}/grad"
        top_grads = [grads.get(t) for t in layer.tops]
        before = {t: len(grads.pending.get(t, [])) for t in layer.bottoms}
        override = layer.impl.backward(BackEmit(
            g=g, bottoms=list(layer.bottoms), tops=list(layer.tops), params=em.params.get(layer.name, []),
            bottom_shapes=list(layer.bottom_shapes), top_shapes=list(layer.top_shapes), top_grads=top_grads,
            need=[i in need for i in inputs], extra=em.extra.get(layer.name, {}),
        ))
        if override is not None:
            for name, gr in zip(inputs, override, strict=True):
                if name in need:
                    grads.add(name, gr)
        else:
            for node in reversed(fwd_nodes[start:end]):
                outs = [grads.get(o) if o else None for o in node.output]
                if all(o is None for o in outs) or not any(i in need for i in node.input):
                    continue
                if node.op_type in NOT_DIFFERENTIABLE:
                    continue
                rule = RULES.get(node.op_type)
                if rule is None:
                    raise NetError(f"layer '{layer.name}' ({layer.type}): no gradient rule for ONNX op"
                                   f" {node.op_type}", layer.loc, layer=layer.name)
                try:
                    in_grads = rule(GradCtx(node=node, g=g, shapes=shapes, out_grads=outs,
                                            need=[i in need for i in node.input]))
                except NotImplementedError as e:
                    raise NetError(f"layer '{layer.name}' ({layer.type}): {e}", layer.loc, layer=layer.name) from None
                for name, gr in zip(node.input, in_grads, strict=False):
                    if name and name in need:
                        grads.add(name, gr)
        for k, b in enumerate(layer.bottoms):  # Caffe's propagate_down: false stops this bottom
            if k < len(layer.param.propagate_down) and not layer.param.propagate_down[k]:
                grads.pending[b] = grads.pending.get(b, [])[: before.get(b, 0)]
        g.scope = scope
    return {w: grads.get(w) for w in wrt}


def zeros_for(g: GraphBuilder, shape: tuple[int, ...]) -> str:
    return g.const(np.zeros(shape, g.dtype))

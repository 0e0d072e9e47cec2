"""GraphBuilder: the one place that calls onnx.helper. Knows nothing about Caffe.

Nodes get deterministic names (``<scope>/<op>`` with a counter), attributes are sorted by
onnx.helper, initializers keep insertion order, so the same net gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: The project's one opset; IR version 8 is the oldest that carries it, read by every ORT we support.
OPSET = 17
IR_VERSION = 8

_NP_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float64): TensorProto.DOUBLE,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.bool_): TensorProto.BOOL,
}


def onnx_dtype(dtype) -> int:
    """The TensorProto element type of a numpy dtype."""
    return _NP_TO_ONNX[np.dtype(dtype)]


class GraphBuilder:
    """Accumulates nodes, initializers, inputs and outputs of one ONNX graph."""

    def __init__(self, name: str = "graph", dtype=np.float32):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.scope = ""
        self._counter: dict[str, int] = {}
        self._consts: dict[tuple, str] = {}
        self._reserved: set[str] = set()

    def reserve(self, names) -> None:
        """Names that :meth:`fresh` must never return (e.g. every blob of the net)."""
        self._reserved.update(names)

    # -- naming ------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A new unique tensor/node name under the current scope."""
        base = f"{self.scope}/{hint}" if self.scope else hint
        while True:
            n = self._counter.get(base, 0)
            self._counter[base] = n + 1
            name = base if n == 0 else f"{base}_{n}"
            if name not in self._reserved:
                return name

    # -- graph parts -------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str] | int | None = None,
           **attrs) -> list[str]:
        """Add a node; ``outputs`` are names, or a count of fresh names (default 1). Returns them."""
        if outputs is None or isinstance(outputs, int):
            outputs = [self.fresh(f"{op_type.lower()}_out") for _ in range(outputs or 1)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=self.fresh(op_type), **attrs))
        return list(outputs)

    def op1(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attrs) -> str:
        """:meth:`op` with a single output, returned as a string."""
        return self.op(op_type, inputs, [output] if output else 1, **attrs)[0]

    def const(self, value, dtype=None, name: str | None = None) -> str:
        """A constant initializer (deduplicated by value for small ones)."""
        arr = np.asarray(value, dtype=dtype if dtype is not None else (
            np.int64 if np.asarray(value).dtype.kind in "iu" else self.dtype))
        key = (arr.dtype.str, arr.shape, arr.tobytes()) if arr.size <= 64 and name is None else None
        if key is not None and key in self._consts:
            return self._consts[key]
        cname = name or self.fresh("const")
        self.initializers[cname] = numpy_helper.from_array(arr, cname)
        if key is not None:
            self._consts[key] = cname
        return cname

    def initializer(self, name: str, value: np.ndarray) -> str:
        """A named initializer (a weight)."""
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
        return name

    def input(self, name: str, shape: Sequence[int | str | None], dtype=None) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, onnx_dtype(dtype or self.dtype), list(shape)))
        return name

    def output(self, name: str, shape: Sequence[int | str | None] | None = None, dtype=None) -> str:
        self.outputs.append(helper.make_tensor_value_info(
            name, onnx_dtype(dtype or self.dtype), list(shape) if shape is not None else None))
        return name

    # -- small helpers used by many layers ----------------------------------------------------
    def reshape(self, x: str, shape: Sequence[int], output: str | None = None) -> str:
        return self.op1("Reshape", [x, self.const(np.asarray(shape, np.int64))], output)

    def scalar(self, v: float) -> str:
        return self.const(np.asarray(v, self.dtype))

    def model(self, producer: str = "dnntool", doc: str = "") -> onnx.ModelProto:
        """The finished ModelProto (checked with onnx.checker)."""
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                  list(self.initializers.values()))
        from dnntool import __version__

        m = helper.make_model(graph, producer_name=producer, producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)], doc_string=doc)
        m.ir_version = IR_VERSION
        onnx.checker.check_model(m, full_check=False)
        return m

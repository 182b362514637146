"""Constant folding for the ONNX front end.

A node whose inputs are all known constants is evaluated at import time, so shape arithmetic
(Shape -> Gather -> Unsqueeze -> Concat -> Reshape), weight preprocessing (ConstantOfShape,
Cast, DequantizeLinear of an initializer, ...) and constant arithmetic never reach the ``nn`` IR.
Common nodes have direct NumPy paths (the light models hold hundreds of ConstantOfShape nodes);
anything else in the default domain goes through ``onnx.reference.ReferenceEvaluator`` built for
the model's own opset, so the result follows the ONNX semantics of that version.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: ONNX ops that are never folded even with constant inputs (they have no meaning as constants or
#: are handled by the importer itself).
NEVER_FOLD = frozenset({"Dropout", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"})


class FoldError(Exception):
    """A constant node could not be evaluated (the message says why)."""


def attrs_of(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _tensor_attr(value) -> np.ndarray:
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


def constant_node_value(node: onnx.NodeProto) -> np.ndarray:
    """The value of a ``Constant`` node (any of its value attributes)."""
    a = attrs_of(node)
    if "value" in a:
        return _tensor_attr(a["value"])
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in a:
            return np.array(a[key], dtype=dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in a:
            return np.array(a[key], dtype=dtype)
    raise FoldError("Constant node without a supported value attribute (value, value_float(s), value_int(s))")


def _fast(node: onnx.NodeProto, args: list[np.ndarray | None], opset: int) -> list[np.ndarray] | None:
    """NumPy evaluation of the most frequent constant nodes; None when not covered here."""
    op = node.op_type
    a = attrs_of(node)
    if op == "Constant":
        return [constant_node_value(node)]
    if op == "ConstantOfShape":
        value = _tensor_attr(a["value"]) if "value" in a else np.zeros(1, np.float32)
        return [np.full(tuple(int(d) for d in args[0]), value.reshape(-1)[0], dtype=value.dtype)]
    if op == "Identity":
        return [args[0]]
    if op == "Unsqueeze":
        axes = a["axes"] if opset < 13 else args[1]
        out_rank = args[0].ndim + len(axes)
        axes = sorted(int(x) % out_rank for x in axes)
        out = args[0]
        for ax in axes:
            out = np.expand_dims(out, ax)
        return [out]
    if op == "Squeeze":
        axes = a.get("axes") if opset < 13 else (args[1] if len(args) > 1 else None)
        if axes is None:
            return [np.squeeze(args[0])]
        return [np.squeeze(args[0], axis=tuple(int(x) % args[0].ndim for x in axes))]
    if op == "Shape" and len(a) == 0:
        return [np.array(args[0].shape, dtype=np.int64)]
    if op == "DequantizeLinear" and not a.get("block_size", 0):
        x = args[0]
        axis = int(a.get("axis", 1)) % max(x.ndim, 1)

        def along_axis(v) -> np.ndarray:
            v = np.asarray(v, dtype=np.float32)
            if v.size <= 1:
                return v.reshape(())
            shape = [1] * x.ndim
            shape[axis] = v.size
            return v.reshape(shape)

        zp = args[2] if len(args) > 2 and args[2] is not None else np.zeros(1)
        return [((x.astype(np.float32) - along_axis(zp)) * along_axis(args[1])).astype(np.float32)]
    if op == "Reshape" and opset >= 5 and not a.get("allowzero", 0):
        shape = [int(d) for d in args[1]]
        shape = [args[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return [args[0].reshape(shape)]
    return None


class ConstantEvaluator:
    """Evaluates single ONNX nodes on constant inputs for one model's opsets."""

    def __init__(self, model: onnx.ModelProto):
        self.opsets = {o.domain or "": o.version for o in model.opset_import}
        self.opset = self.opsets.get("", self.opsets.get("ai.onnx", 1))

    def evaluate(self, node: onnx.NodeProto, args: list[np.ndarray | None]) -> list[np.ndarray]:
        if node.op_type in NEVER_FOLD:
            raise FoldError(f"{node.op_type} is not folded")
        if node.domain not in ("", "ai.onnx"):
            raise FoldError(f"no constant evaluation for domain {node.domain!r}")
        fast = _fast(node, args, self.opset)
        if fast is not None:
            return fast
        return self._reference(node, args)

    def _reference(self, node: onnx.NodeProto, args: list[np.ndarray | None]) -> list[np.ndarray]:
        from onnx.reference import ReferenceEvaluator

        names = [f"in{i}" if n else "" for i, n in enumerate(node.input)]
        feeds = {name: arg for name, arg in zip(names, args) if name}
        outs = [f"out{i}" if n else "" for i, n in enumerate(node.output)]
        clone = helper.make_node(node.op_type, names, outs, domain=node.domain)
        clone.attribute.extend(node.attribute)
        graph = helper.make_graph(
            [clone],
            "fold",
            [helper.make_value_info(n, onnx.TypeProto()) for n in feeds],
            [helper.make_value_info(n, onnx.TypeProto()) for n in outs if n],
        )
        errors = []
        # the model's own opset first; the reference evaluator lacks some old versions of ops
        # whose semantics did not change (e.g. DequantizeLinear-13), so retry with the newest
        for opset in (self.opset, onnx.defs.onnx_opset_version()):
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
            try:
                results = ReferenceEvaluator(model).run(None, feeds)
                return [np.asarray(r) for r in results]
            except Exception as err:  # the reference evaluator raises many kinds
                errors.append(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        raise FoldError(f"constant evaluation failed: {errors[0]}")

"""From an imported QDQ model to an all-float network that remembers its quantization.

``import_onnx`` keeps every activation quantization point of a QDQ/QOperator model as an
``nn.quantize`` -> ``nn.dequantize`` pair, so the float reference reproduces onnxruntime and
``nn-quantize`` adopts the pairs' parameters. Code that wants an all-float network instead uses
``strip_qdq``: it replaces each pair by an ``nn.clip`` to the range the quantized type covers
and records the pair's parameters on it as ``pimc.qtype = !nn.q<...>``.

The clip is not optional: quantizers fuse a ReLU into the following QuantizeLinear (zero point 0
saturates negatives), so dropping the pair would silently drop the ReLU. ``qtype_range`` gives
the real interval a type covers, for code that works with ``pimc.range``.
"""

from __future__ import annotations

from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, FloatAttr, ModuleOp, f64
from xdsl.ir import BlockArgument

from pimc.dialects import nn
from pimc.dialects.nn import QuantType

QTYPE_ATTR = "pimc.qtype"


def qtype_range(qt: QuantType) -> tuple[float, float]:
    """The real interval [scale (qmin - zp), scale (qmax - zp)] representable by ``qt``."""
    s, z = qt.scale.data, qt.zero_point.data
    return s * (qt.qmin - z), s * (qt.qmax - z)


def strip_qdq(module: ModuleOp) -> int:
    """Replace every ``nn.quantize`` -> ``nn.dequantize`` pair by an ``nn.clip`` carrying
    ``pimc.qtype``; returns the number of pairs replaced. Quantize ops whose codes are used
    otherwise (an integer model output) stay."""
    from pimc.reference.float_ref import main_func

    fn = main_func(module)
    removed = 0
    arg_q: dict[int, QuantType] = {}
    for q in list(fn.body.walk()):
        if not isinstance(q, nn.QuantizeOp):
            continue
        uses = [u.operation for u in q.results[0].uses]
        if not uses or not all(isinstance(u, nn.DequantizeOp) for u in uses):
            continue
        qt = q.results[0].type.element_type
        src = q.operands[0]
        if isinstance(src, BlockArgument):
            arg_q[src.index] = qt
        lo, hi = qtype_range(qt)
        clip = nn.ClipOp(src, src.type, {"min": FloatAttr(lo, f64), "max": FloatAttr(hi, f64)})
        clip.attributes[QTYPE_ATTR] = qt
        if "pimc.name" in q.attributes:
            clip.attributes["pimc.name"] = q.attributes["pimc.name"]
        q.parent.insert_op_before(clip, q)
        for dq in uses:
            dq.results[0].replace_all_uses_with(clip.results[0])
            dq.detach()
            dq.erase()
        q.detach()
        q.erase()
        removed += 1
    if arg_q:
        attrs = []
        n = len(fn.body.blocks[0].args)
        for i in range(n):
            old = dict(fn.arg_attrs.data[i].data) if fn.arg_attrs is not None else {}
            if i in arg_q:
                old[QTYPE_ATTR] = arg_q[i]
            attrs.append(DictionaryAttr(old))
        fn.arg_attrs = ArrayAttr(attrs)
    return removed

"""Random small CNNs as ONNX models (hypothesis strategy) and the integer-reference vs QDQ check.

Shared by tests/test_qdq.py and tests/test_int_reference.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import helper, numpy_helper



class _Net:
    def __init__(self, rng: np.random.Generator, channels: int, h: int, w: int):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.n = 0
        self.shape = [channels, h, w]

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.inits[name] = np.asarray(array)
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(self, x: str, shape: list[int], cout: int, k: int, stride: int, pad: int, dil: int, group: int, bias: bool):
        c, h, w = shape
        eff = dil * (k - 1) + 1
        if h + 2 * pad < eff or w + 2 * pad < eff:
            k, dil = 1, 1
            eff = 1
        fan_in = (c // group) * k * k
        wt = (self.rng.standard_normal((cout, c // group, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        inputs = [x, self.const("w", wt)]
        if bias:
            inputs.append(self.const("b", (self.rng.standard_normal(cout) * 0.1).astype(np.float32)))
        y = self.node("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, dilations=[dil, dil], group=group)
        ho = (h + 2 * pad - eff) // stride + 1
        wo = (w + 2 * pad - eff) // stride + 1
        return y, [cout, ho, wo]


@st.composite
def networks(draw, max_blocks: int = 3):
    """(onnx model, input shape without batch): conv/gemm/pool/add/concat/activation networks."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    c0 = draw(st.integers(1, 4))
    h0 = draw(st.integers(5, 10))
    w0 = draw(st.integers(5, 10))
    net = _Net(rng, c0, h0, w0)
    x, shape = "x", [c0, h0, w0]
    kinds = st.sampled_from(["conv", "conv_relu", "conv_clip", "maxpool", "avgpool", "residual", "concat", "act", "mul_const", "sub"])
    for _ in range(draw(st.integers(1, max_blocks))):
        kind = draw(kinds)
        c, h, w = shape
        if kind.startswith("conv"):
            cout = draw(st.integers(1, 8))
            groups = [g for g in range(1, c + 1) if c % g == 0 and cout % g == 0]
            group = draw(st.sampled_from(groups))
            k = draw(st.integers(1, 3))
            stride = draw(st.integers(1, 2))
            pad = draw(st.integers(0, 1))
            dil = draw(st.integers(1, 2))
            x, shape = net.conv(x, shape, cout, k, stride, pad, dil, group, draw(st.booleans()))
            if kind == "conv_relu":
                x = net.node("Relu", [x])
            elif kind == "conv_clip":
                x = net.node("Clip", [x, net.const("lo", np.float32(0.0)), net.const("hi", np.float32(draw(st.sampled_from([0.5, 1.0, 6.0]))))])
        elif kind in ("maxpool", "avgpool") and h >= 2 and w >= 2:
            k = draw(st.integers(2, min(3, h, w)))
            stride = draw(st.integers(1, 2))
            pad = draw(st.integers(0, k // 2))
            if kind == "maxpool":
                x = net.node("MaxPool", [x], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
            else:
                x = net.node("AveragePool", [x], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, count_include_pad=draw(st.integers(0, 1)))
            shape = [c, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1]
        elif kind == "residual":
            y, _ = net.conv(x, shape, c, 3, 1, 1, 1, 1, True)
            y = net.node("Relu", [y])
            x = net.node("Add", [x, y])
        elif kind == "concat":
            a, sa = net.conv(x, shape, draw(st.integers(1, 4)), 1, 1, 0, 1, 1, True)
            b, sb = net.conv(x, shape, draw(st.integers(1, 4)), 3, 1, 1, 1, 1, True)
            b = net.node("Relu", [b])
            x = net.node("Concat", [a, b], axis=1)
            shape = [sa[0] + sb[0], h, w]
        elif kind == "act":
            op = draw(st.sampled_from(["Sigmoid", "LeakyRelu", "HardSwish", "HardSigmoid", "Relu", "PRelu"]))
            if op == "PRelu":
                slope = (rng.standard_normal((c, 1, 1)) * 0.3).astype(np.float32)
                x = net.node("PRelu", [x, net.const("slope", slope)])
            elif op == "LeakyRelu":
                x = net.node(op, [x], alpha=0.1)
            else:
                x = net.node(op, [x])
        elif kind == "mul_const":
            factor = (rng.uniform(0.5, 2.0, (c, 1, 1))).astype(np.float32)
            x = net.node("Mul", [x, net.const("f", factor)])
        elif kind == "sub":
            y, _ = net.conv(x, shape, c, 1, 1, 0, 1, 1, True)
            x = net.node("Sub", [x, y])
    feat = net.node("Identity", [x])
    gap = net.node("GlobalAveragePool", [x])
    flat = net.node("Flatten", [gap], axis=1)
    n_out = draw(st.integers(1, 10))
    wt = (rng.standard_normal((shape[0], n_out)) / np.sqrt(shape[0])).astype(np.float32)
    logits = net.node("Gemm", [flat, net.const("fc", wt), net.const("fcb", (rng.standard_normal(n_out) * 0.1).astype(np.float32))])
    graph = helper.make_graph(
        net.nodes,
        "net",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", c0, h0, w0])],
        [
            helper.make_tensor_value_info(feat, onnx.TensorProto.FLOAT, ["N"] + shape),
            helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, ["N", n_out]),
        ],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in net.inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model, (c0, h0, w0)


def ort_session(model: onnx.ModelProto, optimize: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def compare_int_vs_qdq(module_q, inputs: dict[str, np.ndarray], optimize: bool = True) -> tuple[int, int, int]:
    """(elements equal, elements, max |difference| in LSB) of the integer reference's output codes
    against onnxruntime running ``export_qdq(module_q)`` (its float outputs re-quantized with the
    output's scale and zero point, which is exact)."""
    from pimc.dialects import nn
    from pimc.quant.calibrate import main_func, result_names
    from pimc.quant.qdq_export import export_qdq
    from pimc.reference.int_ref import run_int_codes

    codes = run_int_codes(module_q, inputs)
    sess = ort_session(export_qdq(module_q), optimize)
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))
    fn = main_func(module_q)
    ret = fn.body.block.last_op
    equal = total = worst = 0
    for name, v in zip(result_names(fn), ret.operands):
        qt = nn.element_of(v.owner.input)
        theirs = np.clip(np.rint(outs[name].astype(np.float64) / qt.scale.data) + qt.zero_point.data, qt.qmin, qt.qmax)
        ours = codes[name]
        assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
        d = np.abs(ours - theirs.astype(np.int64))
        equal += int((d == 0).sum())
        total += d.size
        worst = max(worst, int(d.max(initial=0)))
    return equal, total, worst


def quantize_onnx(model: onnx.ModelProto, calib: dict[str, np.ndarray], **kw):
    """Import an in-memory ONNX model with pimc's front end and quantize it."""
    from pimc.frontend.onnx_import import import_onnx
    from pimc.quant import quantize_module

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        onnx.save(model, path)
        module = import_onnx(path)
    return quantize_module(module, calib, **kw)


def compare_per_op(module_q, inputs: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Every op checked on its own against onnxruntime (graph optimizations off), fed with the
    integer reference's input codes: {op name: [equal, total, worst LSB]} summed over ops."""
    from pimc.quant.calibrate import main_func
    from pimc.quant.qdq_export import export_qdq_isolated
    from pimc.reference.int_ref import run_int_codes

    codes = run_int_codes(module_q, inputs)
    model, exposed, fed = export_qdq_isolated(module_q)
    sess = ort_session(model, optimize=False)
    feeds = dict(inputs)
    for value, name in fed.items():
        feeds[name] = codes[value].astype(sess_dtype(sess, name))
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    stats: dict[str, list[int]] = {}
    for op in main_func(module_q).body.block.ops:
        if op.results and op.results[0] in exposed:
            d = np.abs(codes[op.results[0]] - outs[exposed[op.results[0]]].astype(np.int64))
            s = stats.setdefault(op.name, [0, 0, 0])
            s[0] += int((d == 0).sum())
            s[1] += d.size
            s[2] = max(s[2], int(d.max(initial=0)))
    return stats


def sess_dtype(sess, name: str):
    kind = next(i.type for i in sess.get_inputs() if i.name == name)
    return {"tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(int8)": np.int8, "tensor(int16)": np.int16}[kind]

"""The integer reference against onnxruntime running pimc's QDQ export (DESIGN.md §6 rung 2).

Agreement is measured on output *codes*: onnxruntime's float outputs are re-quantized with the
output's scale and zero point (exact, since they are DequantizeLinear results).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.qdq_nets import compare_int_vs_qdq, compare_per_op, networks, ort_session, quantize_onnx

SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])


def _run_networks(max_examples: int, bits: int, optimize: bool, derandomize: bool = False, per_op: bool = False):
    """Int-vs-QDQ on generated networks: end-to-end output codes [equal, total, worst] and, with
    ``per_op``, every op checked on its own (fed with the reference's input codes)."""
    stats = [0, 0, 0]
    ops = [0, 0, 0]

    @settings(max_examples=max_examples, derandomize=derandomize, database=None, **SETTINGS)
    @given(networks(), st.integers(0, 2**16))
    def one(net, seed):
        model, shape = net
        rng = np.random.default_rng(seed)
        calib = {"x": rng.standard_normal((8,) + shape).astype(np.float32)}
        module = quantize_onnx(model, calib, weight_bits=bits, act_bits=bits)
        x = {"x": rng.standard_normal((5,) + shape).astype(np.float32)}
        equal, total, worst = compare_int_vs_qdq(module, x, optimize)
        stats[0] += equal
        stats[1] += total
        stats[2] = max(stats[2], worst)
        if per_op:
            for name, (e, n, w) in compare_per_op(module, x).items():
                assert w <= 1, f"{name}: {w} LSB apart on identical inputs"
                ops[0] += e
                ops[1] += n
                ops[2] = max(ops[2], w)

    one()
    return stats, ops


def test_int_reference_matches_onnxruntime_qdq_8bit():
    """The issue's criterion on 60 fixed random networks: >= 99.9 % of output elements equal, and
    every operator, given the same input codes, never more than 1 LSB from onnxruntime.

    onnxruntime runs each node as written (graph optimizations off): binary32 arithmetic between
    DequantizeLinear and QuantizeLinear, whose exact-arithmetic meaning pimc's integer formulas
    implement. They differ where binary32 rounding lands on the other side of an exact rounding
    tie (common in average pooling when input and output scales are equal); downstream layers
    with gain > 1 can amplify such a 1-LSB difference, which is why the 1-LSB bound is checked per
    operator and the end-to-end figure is a fraction.
    """
    (equal, total, worst), (op_equal, op_total, op_worst) = _run_networks(60, 8, False, derandomize=True, per_op=True)
    assert equal / total >= 0.999, f"only {equal}/{total} output codes equal"
    assert op_worst <= 1 and op_equal / op_total >= 0.999, f"per op: {op_equal}/{op_total}, worst {op_worst}"


@settings(max_examples=25, **SETTINGS)
@given(networks(), st.integers(0, 2**16), st.sampled_from([4, 8, 16]))
def test_every_op_within_one_lsb_of_onnxruntime(net, seed, bits):
    """Random networks and widths (4 and 16 bits use uint8/uint16 storage, with a Clip to the code
    range at 4 bits): each operator, fed with the integer reference's input codes, is at most
    1 LSB from onnxruntime on every element."""
    model, shape = net
    rng = np.random.default_rng(seed)
    module = quantize_onnx(model, {"x": rng.standard_normal((8,) + shape).astype(np.float32)}, weight_bits=bits, act_bits=bits)
    x = {"x": rng.standard_normal((3,) + shape).astype(np.float32)}
    stats = compare_per_op(module, x)
    assert {"nn.quantize", "nn.gemm"} <= set(stats)
    for name, (e, n, w) in stats.items():
        assert w <= 1, f"{name}: {w} LSB apart"
    e = sum(v[0] for v in stats.values())
    n = sum(v[1] for v in stats.values())
    assert e / n >= 0.95, f"only {e}/{n} codes equal"


def test_int_reference_vs_onnxruntime_fused_kernels_8bit():
    """With all of onnxruntime's optimizations (QDQ groups fused into QLinearConv, QLinearAdd,
    QLinearAveragePool..., which requantize with their own binary32/fixed-point approximations):
    a measurement of onnxruntime's kernels as much as of pimc, on a fixed set of networks."""
    (equal, total, worst), _ = _run_networks(40, 8, True, derandomize=True)
    assert worst <= 2 and equal / total >= 0.99, f"{equal}/{total} output codes equal, worst {worst} LSB"


@settings(max_examples=12, **SETTINGS)
@given(networks(), st.integers(0, 2**16), st.sampled_from([8, 16]))
def test_first_differing_value_is_one_lsb(net, seed, bits):
    """Every value's codes exported as outputs: where pimc and onnxruntime first disagree (in
    program order), they are at most 1 LSB apart, so any larger output difference is propagation."""
    from pimc.quant.qdq_export import export_qdq
    from pimc.quant.calibrate import main_func
    from pimc.reference.int_ref import run_int_codes

    model, shape = net
    rng = np.random.default_rng(seed)
    module = quantize_onnx(model, {"x": rng.standard_normal((8,) + shape).astype(np.float32)}, weight_bits=bits, act_bits=bits)
    x = {"x": rng.standard_normal((3,) + shape).astype(np.float32)}
    codes = run_int_codes(module, x)
    qdq, exposed = export_qdq(module, expose_codes=True)
    sess = ort_session(qdq, optimize=False)
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, x)))
    for op in main_func(module).body.block.ops:
        if op.results and op.results[0] in exposed:
            d = np.abs(codes[op.results[0]] - outs[exposed[op.results[0]]].astype(np.int64))
            if d.max() > 0:
                assert d.max() <= 1, f"{op.name}: {d.max()} LSB apart"
                break


def test_qdq_model_structure_and_dynamic_batch():
    """Per-axis int8 weight DQ, int32 bias DQ, fused Relu before the output Q; any batch runs."""
    from onnx import helper, numpy_helper

    from pimc.quant.qdq_export import export_qdq

    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 6, 6])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    module = quantize_onnx(model, {"x": rng.standard_normal((4, 3, 6, 6)).astype(np.float32)})
    qdq = export_qdq(module)
    ops = [n.op_type for n in qdq.graph.node]
    assert ops.count("Conv") == 1 and ops.count("Relu") == 1
    assert ops.index("Relu") < max(i for i, o in enumerate(ops) if o == "QuantizeLinear")
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    dq_nodes = [n for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    dtypes = sorted(str(inits[n.input[0]].dtype) for n in dq_nodes)
    assert dtypes == ["int32", "int8"]
    for n in dq_nodes:
        assert inits[n.input[1]].shape == (4,)  # per output channel
        assert [a.i for a in n.attribute if a.name == "axis"] == [0]
    assert qdq.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    sess = ort_session(qdq)
    for batch in (1, 3):
        (y,) = sess.run(None, {"x": rng.standard_normal((batch, 3, 6, 6)).astype(np.float32)})
        assert y.shape == (batch, 4, 6, 6) and y.min() >= 0


def test_pimc_quantize_command_writes_runnable_qdq(tmp_path):
    """`pimc quantize MODEL --calibration CAL.npy -o MODEL.qdq.onnx`, then onnxruntime runs it."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["g"]), helper.make_node("Sigmoid", ["g"], ["y"])],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    cal = tmp_path / "cal.npy"
    calib = rng.standard_normal((16, 3)).astype(np.float32)
    np.save(cal, calib)
    out = tmp_path / "m.qdq.onnx"
    res = subprocess.run(
        [sys.executable, "-m", "pimc.cli", "quantize", str(path), "--calibration", str(cal), "-o", str(out)],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    x = calib[:7]  # inside the calibrated range (outside it, values saturate)
    (y,) = ort_session(onnx.load(out)).run(None, {"x": x})
    want = 1 / (1 + np.exp(-(x @ w)))
    assert y.shape == (7, 5) and np.abs(y - want).max() < 0.02

    # without calibration data: exit status 2 and a message that says how to give it
    res = subprocess.run([sys.executable, "-m", "pimc.cli", "quantize", str(path), "-o", str(out)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "--calibration" in res.stderr and "float model" in res.stderr

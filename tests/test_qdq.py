"""The integer reference against onnxruntime running pimc's QDQ export (DESIGN.md §6 rung 2).

Agreement is measured on output *codes*: onnxruntime's float outputs are re-quantized with the
output's scale and zero point (exact, since they are DequantizeLinear results).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.qdq_nets import compare_int_vs_qdq, networks, ort_session, quantize_onnx

SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])


def _run_networks(max_examples: int, bits: int, optimize: bool, check_each, derandomize: bool = False) -> list[int]:
    """Run the int-vs-QDQ comparison on generated networks; returns [equal, total, worst]."""
    stats = [0, 0, 0]

    @settings(max_examples=max_examples, derandomize=derandomize, database=None, **SETTINGS)
    @given(networks(), st.integers(0, 2**16))
    def one(net, seed):
        model, shape = net
        rng = np.random.default_rng(seed)
        calib = {"x": rng.standard_normal((8,) + shape).astype(np.float32)}
        module = quantize_onnx(model, calib, weight_bits=bits, act_bits=bits)
        x = {"x": rng.standard_normal((5,) + shape).astype(np.float32)}
        equal, total, worst = compare_int_vs_qdq(module, x, optimize)
        check_each(equal, total, worst)
        stats[0] += equal
        stats[1] += total
        stats[2] = max(stats[2], worst)

    one()
    return stats


def test_int_reference_matches_onnxruntime_qdq_8bit():
    """The issue's criterion: >= 99.9 % of output elements equal, never more than 1 LSB apart.

    onnxruntime runs each node as written (graph optimizations off): float32 arithmetic between
    DequantizeLinear and QuantizeLinear, the QDQ semantics pimc's integer formulas implement exactly.
    """

    def each(equal, total, worst):
        assert worst <= 1, f"{worst} LSB apart"

    equal, total, worst = _run_networks(40, 8, False, each)
    assert worst <= 1
    assert equal / total >= 0.999, f"only {equal}/{total} output codes equal"


def test_int_reference_vs_onnxruntime_fused_kernels_8bit():
    """With all of onnxruntime's optimizations (QDQ pairs fused into QLinearConv, QLinearAdd,
    QLinearAveragePool..., which requantize with their own float32/fixed-point approximations) the
    agreement is lower and a 1-LSB difference can grow to 2 through a later layer. This measures
    onnxruntime's kernels as much as pimc, so it runs on a fixed (derandomized) set of networks."""

    def each(equal, total, worst):
        assert worst <= 2, f"{worst} LSB apart"

    equal, total, worst = _run_networks(40, 8, True, each, derandomize=True)
    assert equal / total >= 0.99, f"only {equal}/{total} output codes equal"


@pytest.mark.parametrize("bits", [4, 16])
def test_int_reference_vs_qdq_other_widths(bits):
    """4 and 16 bits (uint8/uint16 storage with a Clip to the code range at 4 bits).

    At 16 bits onnxruntime's float32 arithmetic is no longer exact at the LSB, and a 1-LSB difference
    in an early value is amplified by later layers with gain > 1: the end-to-end bound is a few LSB
    on rare elements (the first differing value is 1 LSB apart, see test below)."""

    def each(equal, total, worst):
        assert worst <= (1 if bits == 4 else 8), f"{worst} LSB apart"

    equal, total, worst = _run_networks(12, bits, False, each)
    assert equal / total >= 0.99, f"only {equal}/{total} output codes equal"


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

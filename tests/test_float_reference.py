"""Float reference vs onnxruntime: every supported operator and hypothesis-generated graphs.

Each case builds a small real ONNX graph, runs onnxruntime on it and pimc's import + float
reference, and requires max |error| <= 1e-4 x max |output|. Batches of 2 (and 3 in the generated
graphs) exercise the dynamic batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from onnx_builders import float_vs_ort, graph_model, ort_run, rel_err, save

TOL = 1e-4
RNG = np.random.default_rng(1234)


def _r(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _check(tmp_path, nodes, inputs, inits=None, opset=17, out="y", batch=2, input_shapes=None, out_shape=None):
    model = graph_model(nodes, inputs, {out: out_shape}, inits, opset=opset)
    path = save(model, tmp_path)
    feeds = {n: _r(batch, *s[1:]) for n, s in inputs.items()}
    err, ours, theirs = float_vs_ort(path, feeds, input_shapes)
    assert list(ours.values())[0].shape == theirs[0].shape
    assert err <= TOL, f"relative error {err}"
    return ours, theirs


N = helper.make_node
X4 = {"x": (1, 4, 9, 11)}

CASES = {
    "conv_basic": ([N("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], X4, {"w": _r(6, 4, 3, 3), "b": _r(6)}, 17),
    "conv_stride_asym_pad_dilation": (
        [N("Conv", ["x", "w"], ["y"], strides=[2, 3], pads=[0, 1, 2, 1], dilations=[2, 1])], X4, {"w": _r(5, 4, 3, 2)}, 11),
    "conv_group2": ([N("Conv", ["x", "w", "b"], ["y"], group=2, pads=[1, 0, 1, 0])], X4, {"w": _r(6, 2, 3, 1), "b": _r(6)}, 9),
    "conv_depthwise": ([N("Conv", ["x", "w"], ["y"], group=4, pads=[1, 1, 1, 1], strides=[2, 2])], X4, {"w": _r(8, 1, 3, 3)}, 13),
    "conv_same_upper": ([N("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])], {"x": (1, 4, 8, 10)}, {"w": _r(3, 4, 4, 3)}, 17),
    "conv_same_lower": ([N("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER", strides=[2, 1])], {"x": (1, 4, 8, 10)}, {"w": _r(3, 4, 4, 2)}, 17),
    "conv_valid": ([N("Conv", ["x", "w"], ["y"], auto_pad="VALID", kernel_shape=[3, 3])], X4, {"w": _r(3, 4, 3, 3)}, 9),
    "conv1d": ([N("Conv", ["x", "w", "b"], ["y"], pads=[2, 1], strides=[2], dilations=[2], group=2)], {"x": (1, 4, 17)},
               {"w": _r(6, 2, 3), "b": _r(6)}, 13),  # fmt: skip
    "conv1d_same_group": ([N("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", group=4)], {"x": (1, 4, 9)}, {"w": _r(8, 1, 4)}, 13),
    "maxpool1d_ceil": ([N("MaxPool", ["x"], ["y"], kernel_shape=[3], strides=[2], pads=[1, 0], ceil_mode=1)], {"x": (1, 3, 10)}, None, 13),
    "avgpool1d": ([N("AveragePool", ["x"], ["y"], kernel_shape=[3], pads=[1, 1], count_include_pad=1)], {"x": (1, 3, 10)}, None, 13),
    "global_avgpool1d": ([N("GlobalAveragePool", ["x"], ["y"])], {"x": (1, 3, 10)}, None, 13),
    "gemm_transb_alpha_beta": (
        [N("Gemm", ["x", "w", "c"], ["y"], transB=1, alpha=0.5, beta=2.0)], {"x": (1, 12)}, {"w": _r(7, 12), "c": _r(7)}, 11),
    "gemm_scalar_c": ([N("Gemm", ["x", "w", "c"], ["y"])], {"x": (1, 12)}, {"w": _r(12, 5), "c": np.array(0.3, np.float32)}, 13),
    "gemm_row_c_opset9": ([N("Gemm", ["x", "w", "c"], ["y"], transB=1)], {"x": (1, 6)}, {"w": _r(4, 6), "c": _r(1, 4)}, 9),
    "matmul_2d": ([N("MatMul", ["x", "w"], ["y"])], {"x": (1, 10)}, {"w": _r(10, 3)}, 13),
    "matmul_3d": ([N("MatMul", ["x", "w"], ["y"])], {"x": (1, 5, 10)}, {"w": _r(10, 3)}, 17),
    "relu": ([N("Relu", ["x"], ["y"])], X4, None, 9),
    "leaky_relu": ([N("LeakyRelu", ["x"], ["y"], alpha=0.2)], X4, None, 16),
    "prelu_channel": ([N("PRelu", ["x", "s"], ["y"])], X4, {"s": _r(4, 1, 1)}, 9),
    "prelu_scalar": ([N("PRelu", ["x", "s"], ["y"])], X4, {"s": np.array([0.25], np.float32)}, 16),
    "prelu_2d": ([N("PRelu", ["x", "s"], ["y"])], {"x": (1, 6)}, {"s": _r(6)}, 16),
    "clip_attrs_opset9": ([N("Clip", ["x"], ["y"], min=-0.5, max=0.7)], X4, None, 9),
    "clip_inputs_min_only": ([N("Clip", ["x", "lo"], ["y"])], X4, {"lo": np.array(-0.3, np.float32)}, 13),
    "clip_inputs_max_only": ([N("Clip", ["x", "", "hi"], ["y"])], X4, {"hi": np.array(0.3, np.float32)}, 13),
    "sigmoid": ([N("Sigmoid", ["x"], ["y"])], X4, None, 13),
    "hard_sigmoid": ([N("HardSigmoid", ["x"], ["y"], alpha=0.3, beta=0.4)], X4, None, 9),
    "hard_swish": ([N("HardSwish", ["x"], ["y"])], X4, None, 14),
    "add_runtime_broadcast": (
        [N("Conv", ["x", "w1"], ["m"]), N("Add", ["m", "x"], ["a"]), N("GlobalAveragePool", ["x"], ["g"]),
         N("Mul", ["a", "g"], ["y"])],
        X4, {"w1": _r(1, 4, 1, 1)}, 13),
    "add_const_channel": ([N("Add", ["x", "c"], ["y"])], X4, {"c": _r(4, 1, 1)}, 9),
    "sub_const_lhs": ([N("Sub", ["c", "x"], ["y"])], X4, {"c": _r(1, 4, 1, 11)}, 13),
    "mul_const_row": ([N("Mul", ["x", "c"], ["y"])], X4, {"c": _r(11)}, 13),
    "div_const_scalar": ([N("Div", ["x", "c"], ["y"])], X4, {"c": np.array(3.0, np.float32)}, 13),
    "sum3": ([N("Relu", ["x"], ["a"]), N("Sigmoid", ["x"], ["b"]), N("Sum", ["x", "a", "b"], ["y"])], X4, None, 9),
    "maxpool_basic_opset9": ([N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], X4, None, 9),
    "maxpool_ceil_pads_dil": (
        [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1], dilations=[1, 2], ceil_mode=1)],
        X4, None, 12),
    "maxpool_same_upper": ([N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")], X4, None, 11),
    "avgpool_exclude_pad": (
        [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])], X4, None, 11),
    "avgpool_include_pad": (
        [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)],
        X4, None, 11),
    "avgpool_ceil_include_pad": (
        [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 0], count_include_pad=1, ceil_mode=1)],
        X4, None, 19),
    "avgpool_ceil_exclude_pad": (
        [N("AveragePool", ["x"], ["y"], kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1)], X4, None, 10),
    "avgpool_ceil_include_nopad": (
        [N("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, count_include_pad=1)], X4, None, 10),
    "global_avgpool": ([N("GlobalAveragePool", ["x"], ["y"])], X4, None, 9),
    "global_maxpool": ([N("GlobalMaxPool", ["x"], ["y"])], X4, None, 9),
    "lrn": ([N("LRN", ["x"], ["y"], size=3, alpha=0.01, beta=0.6, bias=1.5)], {"x": (1, 7, 5, 5)}, None, 13),
    "concat_axis1": ([N("Relu", ["x"], ["a"]), N("Concat", ["x", "a", "x"], ["y"], axis=1)], X4, None, 9),
    "concat_axis_neg": ([N("Relu", ["x"], ["a"]), N("Concat", ["x", "a"], ["y"], axis=-1)], X4, None, 13),
    "flatten": ([N("Flatten", ["x"], ["y"])], X4, None, 9),
    "reshape_zero_minus1": ([N("Reshape", ["x", "s"], ["y"])], X4, {"s": np.array([0, 2, -1], np.int64)}, 13),
    "reshape_shape_chain": (
        [N("Shape", ["x"], ["sh"]), N("Gather", ["sh", "i0"], ["n"], axis=0), N("Unsqueeze", ["n", "ax"], ["n1"]),
         N("Concat", ["n1", "m1"], ["s"], axis=0), N("Reshape", ["x", "s"], ["y"])],
        X4, {"i0": np.array(0, np.int64), "ax": np.array([0], np.int64), "m1": np.array([-1], np.int64)}, 13, ("N", 396)),
    "transpose": ([N("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])], X4, None, 13),
    "squeeze_unsqueeze": (
        [N("Unsqueeze", ["x", "a"], ["u"]), N("Squeeze", ["u", "a"], ["y"])], X4, {"a": np.array([2], np.int64)}, 13),
    "unsqueeze_opset9": ([N("Unsqueeze", ["x"], ["y"], axes=[4])], X4, None, 9),
    "pad_attr_opset9": ([N("Pad", ["x"], ["y"], pads=[0, 1, 2, 0, 0, 0, 1, 3], value=0.5)], X4, None, 9),
    "pad_inputs": (
        [N("Pad", ["x", "p", "v"], ["y"])], X4, {"p": np.array([0, 0, 1, 2, 0, 1, 0, 2], np.int64), "v": np.array(-1.0, np.float32)}, 13),
    "pad_axes_opset18": (
        [N("Pad", ["x", "p", "", "ax"], ["y"])], X4, {"p": np.array([1, 2, 3, 0], np.int64), "ax": np.array([2, 3], np.int64)}, 18),
    "softmax_opset11_coerced": ([N("Softmax", ["x"], ["y"], axis=1)], X4, None, 11),
    "softmax_opset11_default": ([N("Softmax", ["x"], ["y"])], {"x": (1, 3, 5)}, None, 9),
    "softmax_opset13_axis1": ([N("Softmax", ["x"], ["y"], axis=1)], X4, None, 13),
    "softmax_opset13_default": ([N("Softmax", ["x"], ["y"])], X4, None, 13),
    "bn_after_conv_folded": (
        [N("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), N("BatchNormalization", ["c", "s", "bb", "m", "v"], ["y"], epsilon=1e-3)],
        X4, {"w": _r(6, 4, 3, 3), "b": _r(6), "s": _r(6), "bb": _r(6), "m": _r(6), "v": np.abs(_r(6)) + 0.5}, 9),
    "bn_standalone": (
        [N("BatchNormalization", ["x", "s", "bb", "m", "v"], ["y"])],
        X4, {"s": _r(4), "bb": _r(4), "m": _r(4), "v": np.abs(_r(4)) + 0.5}, 15),
    "bn_conv_two_consumers": (
        [N("Conv", ["x", "w"], ["c"]), N("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"]), N("Add", ["c", "n"], ["y"])],
        X4, {"w": _r(3, 4, 1, 1), "s": _r(3), "bb": _r(3), "m": _r(3), "v": np.abs(_r(3)) + 0.5}, 13),
    "bn_after_gemm": (
        [N("Gemm", ["x", "w"], ["g"]), N("BatchNormalization", ["g", "s", "bb", "m", "v"], ["y"])],
        {"x": (1, 8)}, {"w": _r(8, 5), "s": _r(5), "bb": _r(5), "m": _r(5), "v": np.abs(_r(5)) + 0.5}, 13),
    "bn_after_3d_matmul_not_folded": (
        [N("MatMul", ["x", "w"], ["g"]), N("BatchNormalization", ["g", "s", "bb", "m", "v"], ["y"])],
        {"x": (1, 4, 6)}, {"w": _r(6, 5), "s": _r(4), "bb": _r(4), "m": _r(4), "v": np.abs(_r(4)) + 0.5}, 13),
    "bn_2d_standalone": (
        [N("BatchNormalization", ["x", "s", "bb", "m", "v"], ["y"])],
        {"x": (1, 5)}, {"s": _r(5), "bb": _r(5), "m": _r(5), "v": np.abs(_r(5)) + 0.5}, 13),
    "conv_mul_add_sub_div_folded": (
        [N("Conv", ["x", "w", "b"], ["c"]), N("Mul", ["c", "k1"], ["m"]), N("Add", ["k2", "m"], ["a"]),
         N("Sub", ["k3", "a"], ["s"]), N("Div", ["s", "k4"], ["y"])],
        X4, {"w": _r(5, 4, 3, 3), "b": _r(5), "k1": _r(5, 1, 1), "k2": _r(1, 5, 1, 1), "k3": np.array(0.7, np.float32),
             "k4": np.abs(_r(5, 1, 1)) + 0.5}, 13),  # fmt: skip
    "conv_mul_spatial_not_folded": ([N("Conv", ["x", "w"], ["c"]), N("Mul", ["c", "k"], ["y"])], X4,
                                    {"w": _r(5, 4, 1, 1), "k": _r(1, 11)}, 13),  # fmt: skip
    "gemm_mul_add_folded": (
        [N("Gemm", ["x", "w"], ["g"]), N("Mul", ["g", "k1"], ["m"]), N("Add", ["m", "k2"], ["y"])],
        {"x": (1, 8)}, {"w": _r(8, 5), "k1": _r(5), "k2": _r(1, 5)}, 13),
    "dropout_identity": ([N("Dropout", ["x"], ["d"]), N("Identity", ["d"], ["i"]), N("Relu", ["i"], ["y"])], X4, None, 13),
    "dropout_opset9_mask_unused": ([N("Dropout", ["x"], ["d", "mask"]), N("Relu", ["d"], ["y"])], X4, None, 9),
    "const_arith_folded": (
        [N("Mul", ["a", "b"], ["ab"]), N("Cast", ["ab"], ["abf"], to=TensorProto.FLOAT), N("Add", ["x", "abf"], ["y"])],
        X4, {"a": _r(4, 1, 1), "b": _r(1, 1, 11)}, 13),
    "constant_node_operand": (
        [N("Constant", [], ["k"], value=helper.make_tensor("k", TensorProto.FLOAT, [1], [1.5])), N("Mul", ["x", "k"], ["y"])],
        X4, None, 13),
    "constant_of_shape_weight": (
        [N("ConstantOfShape", ["ws"], ["w"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.1])),
         N("Conv", ["x", "w"], ["y"])],
        X4, {"ws": np.array([2, 4, 1, 1], np.int64)}, 13),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_operator_matches_onnxruntime(tmp_path, case):
    nodes, inputs, inits, opset, *out_shape = CASES[case]
    _check(tmp_path, nodes, inputs, inits, opset, out_shape=out_shape[0] if out_shape else None)


def test_batch_sizes_do_not_matter(tmp_path):
    """One imported module runs any batch size (the IR's batch is ``?``)."""
    from pimc.frontend.onnx_import import import_onnx
    from pimc.reference.float_ref import run_float

    nodes, inputs, inits, opset = CASES["conv_basic"]
    path = save(graph_model(nodes, inputs, ["y"], inits, opset=opset, dynamic_batch=False), tmp_path)
    module = import_onnx(path)
    for batch in (1, 3, 5):
        x = _r(batch, 4, 9, 11)
        got = run_float(module, {"x": x})["y"]
        ref = np.concatenate([ort_run(path, {"x": x[i : i + 1]})[0] for i in range(batch)])
        assert rel_err(got, ref) <= TOL


def test_observe_sees_every_op(tmp_path):
    from pimc.frontend.onnx_import import import_onnx
    from pimc.reference.float_ref import main_func, run_float

    nodes, inputs, inits, opset = CASES["sum3"]
    module = import_onnx(save(graph_model(nodes, inputs, ["y"], inits, opset=opset), tmp_path))
    seen = []
    run_float(module, {"x": _r(2, 4, 9, 11)}, observe=lambda op, a: seen.append((op.name, a.shape)))
    ops = [op for op in main_func(module).body.blocks[0].ops if op.name.startswith("nn.")]
    assert [s[0] for s in seen] == [op.name for op in ops]
    assert all(shape[0] == 2 for _, shape in seen)


# ------------------------------------------------------------------------ quantized models


def _qdq_conv_model(opset=13):
    w = RNG.integers(-100, 100, (6, 4, 3, 3)).astype(np.int8)
    inits = {
        "xs": np.array(0.02, np.float32), "xz": np.array(128, np.uint8),
        "ws": (RNG.uniform(0.001, 0.01, 6)).astype(np.float32), "wz": np.zeros(6, np.int8), "wq": w,
        "b": _r(6), "ys": np.array(0.05, np.float32), "yz": np.array(120, np.uint8),
    }  # fmt: skip
    nodes = [
        N("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        N("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        N("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        N("Conv", ["xd", "wd", "b"], ["c"], pads=[1, 1, 1, 1]),
        N("Relu", ["c"], ["r"]),
        N("QuantizeLinear", ["r", "ys", "yz"], ["rq"]),
        N("DequantizeLinear", ["rq", "ys", "yz"], ["y"]),
    ]
    return nodes, X4, inits, opset


def test_qdq_model_matches_onnxruntime_within_one_lsb(tmp_path):
    nodes, inputs, inits, opset = _qdq_conv_model()
    path = save(graph_model(nodes, inputs, ["y"], inits, opset=opset), tmp_path)
    x = _r(2, 4, 9, 11)
    _, ours, theirs = float_vs_ort(path, {"x": x})
    diff = np.abs(ours["y"] - theirs[0]) / 0.05
    assert diff.max() <= 1.0 + 1e-4 and np.mean(diff > 1e-3) < 0.01


def _qlinear_models():
    xs, xz = np.array(0.03, np.float32), np.array(100, np.uint8)
    ys, yz = np.array(0.08, np.float32), np.array(90, np.uint8)
    w4 = RNG.integers(0, 255, (5, 4, 3, 3)).astype(np.uint8)
    w2 = RNG.integers(-120, 120, (12, 7)).astype(np.int8)
    common = {"xs": xs, "xz": xz, "ys": ys, "yz": yz}
    conv = (
        [N("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
         N("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["yq"], pads=[1, 1, 1, 1], strides=[2, 1]),
         N("MaxPool", ["yq"], ["pq"], kernel_shape=[2, 2]),
         N("DequantizeLinear", ["pq", "ys", "yz"], ["y"])],
        X4, {**common, "w": w4, "ws": RNG.uniform(0.001, 0.004, 5).astype(np.float32), "wz": np.array(128, np.uint8),
             "b": RNG.integers(-500, 500, 5).astype(np.int32)}, 13, 0.08)  # fmt: skip
    matmul = (
        [N("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
         N("QLinearMatMul", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"]),
         N("DequantizeLinear", ["yq", "ys", "yz"], ["y"])],
        {"x": (1, 12)}, {**common, "w": w2, "ws": np.array(0.01, np.float32), "wz": np.array(3, np.int8)}, 13, 0.08)
    convint = (
        [N("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
         N("ConvInteger", ["xq", "w", "xz", "wz"], ["acc"], pads=[0, 1, 0, 1]),
         N("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
         N("Mul", ["accf", "m"], ["y"])],
        X4, {"xs": xs, "xz": xz, "w": w4, "wz": np.array(120, np.uint8), "m": np.array(0.03 * 0.002, np.float32)}, 13, None)
    matmulint = (
        [N("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
         N("MatMulInteger", ["xq", "w", "xz", "wz"], ["acc"]),
         N("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
         N("Mul", ["accf", "m"], ["y"])],
        {"x": (1, 12)}, {"xs": xs, "xz": xz, "w": w2, "wz": np.array(-2, np.int8), "m": np.array(0.03 * 0.01, np.float32)}, 13, None)
    return {"qlinearconv": conv, "qlinearmatmul": matmul, "convinteger": convint, "matmulinteger": matmulint}


@pytest.mark.parametrize("case", ["qlinearconv", "qlinearmatmul", "convinteger", "matmulinteger"])
def test_quantized_operator_models(tmp_path, case):
    nodes, inputs, inits, opset, out_scale = _qlinear_models()[case]
    path = save(graph_model(nodes, inputs, ["y"], inits, opset=opset), tmp_path)
    x = _r(2, *inputs["x"][1:])
    _, ours, theirs = float_vs_ort(path, {"x": x})
    if out_scale is None:  # exact integer accumulators times a scale: float rounding only
        assert rel_err(ours["y"], theirs[0]) <= TOL
    else:
        diff = np.abs(ours["y"] - theirs[0]) / out_scale
        assert diff.max() <= 1.0 + 1e-4 and np.mean(diff > 1e-3) < 0.01


# ------------------------------------------------------------------------ generated graphs


@st.composite
def conv_graphs(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    depthwise = draw(st.booleans()) and groups == 1
    if depthwise:
        groups = cin
        cout = cin * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h = draw(st.integers(dh * (kh - 1) + 1, 12))
    w = draw(st.integers(dw * (kw - 1) + 1, 12))
    auto = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    attrs = {"strides": [sh, sw], "group": groups}
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        dh = dw = 1  # onnxruntime rejects SAME with dilation
    attrs["dilations"] = [dh, dw]
    if auto == "NOTSET":
        attrs["pads"] = [draw(st.integers(0, k - 1)) for k in (kh, kw, kh, kw)]
    else:
        attrs["auto_pad"] = auto
    bias = draw(st.booleans())
    act = draw(st.sampled_from(["", "Relu", "Sigmoid", "HardSwish"]))
    return cin, cout, groups, (kh, kw), h, w, attrs, bias, act


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv_graphs(), st.integers(1, 3))
def test_generated_convolutions(tmp_path, g, batch):
    cin, cout, groups, (kh, kw), h, w, attrs, bias, act = g
    inits = {"w": _r(cout, cin // groups, kh, kw)}
    ins = ["x", "w"]
    if bias:
        inits["b"] = _r(cout)
        ins.append("b")
    nodes = [N("Conv", ins, ["c" if act else "y"], **attrs)]
    if act:
        nodes.append(N(act, ["c"], ["y"]))
    _check(tmp_path, nodes, {"x": (1, cin, h, w)}, inits, opset=17, batch=batch)


@st.composite
def pool_graphs(draw):
    kind = draw(st.sampled_from(["MaxPool", "AveragePool"]))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if kind == "MaxPool" else (1, 1)
    h = draw(st.integers(dh * (kh - 1) + 1, 11))
    w = draw(st.integers(dw * (kw - 1) + 1, 11))
    attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw]}
    auto = draw(st.sampled_from(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto == "NOTSET":
        attrs["pads"] = [draw(st.integers(0, k - 1)) for k in (kh, kw, kh, kw)]
        attrs["ceil_mode"] = int(draw(st.booleans()))
    else:
        attrs["auto_pad"] = auto
        dh = dw = 1
        # onnxruntime computes a negative SAME padding (and fails) when the kernel is smaller than
        # the stride; pimc clamps it at 0, but there would be nothing to compare against
        if auto != "VALID":
            sh, sw = min(sh, kh), min(sw, kw)
            attrs["strides"] = [sh, sw]
    if kind == "MaxPool":
        attrs["dilations"] = [dh, dw]
    else:
        attrs["count_include_pad"] = int(draw(st.booleans()))
    return kind, attrs, h, w


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pool_graphs())
def test_generated_pooling(tmp_path, g):
    kind, attrs, h, w = g
    _check(tmp_path, [N(kind, ["x"], ["y"], **attrs)], {"x": (1, 3, h, w)}, opset=19, batch=2)


@st.composite
def elementwise_graphs(draw):
    shape = [draw(st.integers(1, 4)) for _ in range(draw(st.integers(1, 3)))]
    ops = draw(st.lists(st.sampled_from(["Add", "Sub", "Mul", "Div"]), min_size=1, max_size=4))
    steps = []
    for op in ops:
        kind = draw(st.sampled_from(["const", "runtime"]))
        # a broadcastable operand: drop leading axes and set some to 1
        k = draw(st.integers(0, len(shape)))
        cshape = [d if draw(st.booleans()) else 1 for d in shape[k:]]
        steps.append((op, kind, cshape, draw(st.booleans())))
    return shape, steps


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(elementwise_graphs())
def test_generated_elementwise_broadcasting(tmp_path, g):
    shape, steps = g
    nodes, inits, cur = [], {}, "x"
    for k, (op, kind, cshape, swap) in enumerate(steps):
        if kind == "const":
            c = _r(*cshape) if cshape else np.array(RNG.standard_normal(), np.float32)
            if op == "Div":
                c = np.sign(c) * (np.abs(c) + 0.5)
            inits[f"c{k}"] = c.astype(np.float32)
            other = f"c{k}"
        else:
            other = f"s{k}"
            nodes.append(N("Sigmoid" if op == "Div" else "Relu", ["x"], [other]))
        a, b = (other, cur) if swap and op != "Div" else (cur, other)
        if op == "Div" and kind == "runtime":
            nodes.append(N("Add", [other, "one"], [f"o{k}"]))
            inits["one"] = np.array(0.5, np.float32)
            b = f"o{k}"
            a = cur
        out = "y" if k == len(steps) - 1 else f"t{k}"
        nodes.append(N(op, [a, b], [out]))
        cur = out
    _check(tmp_path, nodes, {"x": (1, *shape)}, inits, opset=13, batch=2)


@st.composite
def movement_graphs(draw):
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    steps = draw(st.lists(st.sampled_from(["transpose", "reshape", "concat", "flatten", "pad", "softmax"]), min_size=1, max_size=4))
    perms = draw(st.lists(st.permutations([1, 2, 3]), min_size=len(steps), max_size=len(steps)))
    return (c, h, w), steps, perms


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(movement_graphs(), st.sampled_from([11, 13]))
def test_generated_data_movement_chains(tmp_path, g, opset):
    (c, h, w), steps, perms = g
    nodes, inits, cur, shape = [], {}, "x", [c, h, w]
    for k, (step, perm) in enumerate(zip(steps, perms)):
        out = f"t{k}"
        rank = len(shape) + 1
        if step == "transpose" and rank == 4:
            nodes.append(N("Transpose", [cur], [out], perm=[0, *perm]))
            shape = [shape[p - 1] for p in perm]
        elif step == "reshape" and rank == 4:
            inits[f"s{k}"] = np.array([0, shape[0] * shape[1], -1, 1], np.int64)
            nodes.append(N("Reshape", [cur, f"s{k}"], [out]))
            shape = [shape[0] * shape[1], shape[2], 1]
        elif step == "concat":
            nodes.append(N("Relu", [cur], [f"r{k}"]))
            axis = 1 + (k % len(shape))
            nodes.append(N("Concat", [cur, f"r{k}"], [out], axis=axis))
            shape[axis - 1] *= 2
        elif step == "pad" and rank == 4:
            inits[f"p{k}"] = np.array([0, 0, 1, 0, 0, 1, 0, 2], np.int64)
            nodes.append(N("Pad", [cur, f"p{k}"], [out]))
            shape = [shape[0] + 1, shape[1] + 1, shape[2] + 2]
        elif step == "softmax":
            nodes.append(N("Softmax", [cur], [out], axis=1))
        else:
            nodes.append(N("Flatten", [cur], [out]))
            shape = [int(np.prod(shape))]
        cur = out
    nodes.append(N("Identity", [cur], ["y"]))
    _check(tmp_path, nodes, {"x": (1, c, h, w)}, inits, opset=opset, batch=2)


def test_contrib_qoperator_ops(tmp_path):
    """onnxruntime's com.microsoft QLinear ops (what its QOperator quantizer writes)."""
    ms = "com.microsoft"
    rng = np.random.default_rng(99)
    s1, z1 = np.array(0.04, np.float32), np.array(110, np.uint8)
    # scales whose ratios are not simple fractions: QLinearAdd rounds (a*sa + b*sb)/sc in its own
    # float order, so exact .5 ties (e.g. sb/sc = 0.5) would be broken differently
    s2, z2 = np.array(0.031, np.float32), np.array(120, np.uint8)
    so, zo = np.array(0.057, np.float32), np.array(100, np.uint8)
    inits = {"s1": s1, "z1": z1, "s2": s2, "z2": z2, "so": so, "zo": zo,
             "cq": rng.integers(0, 255, (4, 1, 1)).astype(np.uint8), "w": rng.integers(-100, 100, (5, 8)).astype(np.int8),
             "ws": np.array(0.01, np.float32), "wz": np.array(0, np.int8), "gb": rng.integers(-300, 300, 5).astype(np.int32)}  # fmt: skip
    nodes = [
        N("QuantizeLinear", ["x", "s1", "z1"], ["a"]),
        N("QLinearSigmoid", ["a", "s1", "z1", "s2", "z2"], ["b"], domain=ms),
        N("QLinearAdd", ["a", "s1", "z1", "b", "s2", "z2", "so", "zo"], ["c"], domain=ms),
        N("QLinearMul", ["c", "so", "zo", "cq", "s2", "z2", "s1", "z1"], ["d"], domain=ms),
        N("QLinearLeakyRelu", ["d", "s1", "z1", "s2", "z2"], ["e"], domain=ms, alpha=0.1),
        N("QLinearConcat", ["so", "zo", "e", "s2", "z2", "a", "s1", "z1"], ["f"], domain=ms, axis=1),
        N("QLinearGlobalAveragePool", ["f", "so", "zo", "s1", "z1"], ["g"], domain=ms),
        N("DequantizeLinear", ["g", "s1", "z1"], ["gf"]),
        N("Flatten", ["gf"], ["h"]),
        N("QuantizeLinear", ["h", "s1", "z1"], ["hq"]),
        N("QGemm", ["hq", "s1", "z1", "w", "ws", "wz", "gb", "so", "zo"], ["iq"], domain=ms, transB=1),
        N("DequantizeLinear", ["iq", "so", "zo"], ["y"]),
    ]
    model = graph_model(nodes, {"x": (1, 4, 5, 5)}, {"y": ("N", 5)}, inits, opset=13, extra_opsets={ms: 1})
    path = save(model, tmp_path)
    _, ours, theirs = float_vs_ort(path, {"x": rng.standard_normal((16, 4, 5, 5)).astype(np.float32)})
    diff = np.abs(ours["y"] - theirs[0]) / 0.057
    assert diff.max() <= 1.0 + 1e-4 and np.mean(diff > 1e-3) < 0.05


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_onnxruntime_static_quantizer_output(tmp_path, fmt):
    """The MNIST example quantized by onnxruntime's own static quantizer imports and runs."""
    from onnx_builders import EXAMPLE_DIR as root
    from onnx_builders import quantize_example_with_onnxruntime

    out = quantize_example_with_onnxruntime(tmp_path, fmt)
    x = np.load(root / "samples.npy")[:32].astype(np.float32)
    _, ours, theirs = float_vs_ort(out, {"input": x})
    got, want = list(ours.values())[0], theirs[0]
    step = np.min(np.abs(np.diff(np.unique(want)))) if np.unique(want).size > 1 else 1.0  # the output LSB
    assert np.abs(got - want).max() <= step * 1.0001
    assert np.mean(np.argmax(got, 1) == np.argmax(want, 1)) >= 0.99
    if fmt == "QDQ":  # strip_qdq: all-float for nn-quantize, fake quantization -> clips
        from pimc.frontend.onnx_import import import_onnx
        from pimc.frontend.qdq import strip_qdq
        from pimc.reference.float_ref import run_float

        module = import_onnx(out)
        assert strip_qdq(module) >= 8
        stripped = list(run_float(module, {"input": x}).values())[0]
        assert rel_err(stripped, want) <= 0.05
        assert np.mean(np.argmax(stripped, 1) == np.argmax(want, 1)) >= 0.95


def test_uint8_model_input_dequantized(tmp_path):
    """A model that takes raw uint8 pixels and dequantizes them itself."""
    nodes = [N("DequantizeLinear", ["x", "s", "z"], ["xf"]), N("Conv", ["xf", "w"], ["y"])]
    inits = {"s": np.array(1 / 255, np.float32), "z": np.array(16, np.uint8), "w": _r(2, 3, 3, 3)}
    model = graph_model(nodes, {"x": (1, 3, 6, 6)}, ["y"], inits, opset=13, input_types={"x": TensorProto.UINT8})
    path = save(model, tmp_path)
    x = np.random.default_rng(3).integers(0, 256, (2, 3, 6, 6)).astype(np.uint8)
    from pimc.frontend.onnx_import import import_onnx
    from pimc.reference.float_ref import run_float

    got = run_float(import_onnx(path), {"x": x})["y"]
    assert rel_err(got, ort_run(path, {"x": x})[0]) <= TOL


TORCH_MODELS = sorted((Path(__file__).parent / "data").glob("torch_*.onnx"))


@pytest.mark.parametrize("path", TORCH_MODELS, ids=[p.stem for p in TORCH_MODELS])
def test_pytorch_exports(path):
    """PyTorch exporter output (tests/data/make_torch_models.py): shape arithmetic on a dynamic
    batch, BN folding, SE blocks, channel shuffle, ceil-mode pools, several opsets."""
    import onnx

    from pimc.frontend.onnx_import import import_onnx
    from pimc.reference.float_ref import main_func

    model = onnx.load(path)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == 0  # the file's batch is symbolic
    x = np.random.default_rng(len(path.stem)).standard_normal((3, *dims[1:])).astype(np.float32)
    err, ours, theirs = float_vs_ort(path, {"x": x})
    assert err <= TOL
    ops = [op.name for op in main_func(import_onnx(path)).body.blocks[0].ops]
    n_conv = sum(n.op_type == "Conv" for n in model.graph.node)
    assert ops.count("nn.conv2d") == n_conv  # every BatchNormalization folded into its conv


def test_pytorch_exports_are_present():
    """An empty parametrization would silently test nothing."""
    assert len(TORCH_MODELS) == 7

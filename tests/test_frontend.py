"""The ONNX front end's IR: signature and names, dynamic batch, folding, lowering choices."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from xdsl.dialects.builtin import StringAttr

from onnx_builders import graph_model, light_path, save
from pimc.dialects import nn
from pimc.dialects.nn import QuantType, ints, numpy_from_dense, shape_of
from pimc.errors import InputError, ModelError
from pimc.frontend.onnx_import import import_onnx, parse_input_shapes
from pimc.reference.float_ref import io_names, main_func

N = helper.make_node
R = np.random.default_rng(5)


def _ops(module):
    return [op for op in main_func(module).body.blocks[0].ops if op.name.startswith("nn.")]


def _names(module):
    return [op.name for op in _ops(module)]


def _import(tmp_path, nodes, inputs, outputs, inits=None, opset=13, **kw):
    return import_onnx(save(graph_model(nodes, inputs, outputs, inits, opset=opset, **kw), tmp_path))


def test_signature_names_and_dynamic_batch(tmp_path):
    nodes = [N("Relu", ["img"], ["r"], name="act1"), N("Sigmoid", ["img"], ["s"], name="gate")]
    m = _import(tmp_path, nodes, {"img": (1, 3, 4, 4)}, ["r", "s"], dynamic_batch=False)
    fn = main_func(m)
    assert io_names(fn) == (["img"], ["r", "s"])
    assert str(fn.body.blocks[0].args[0].type) == "tensor<?x3x4x4xf32>"
    assert [op.attributes["pimc.name"] for op in _ops(m)] == [StringAttr("act1"), StringAttr("gate")]
    assert all(shape_of(op.results[0])[0] == -1 for op in _ops(m))


def test_printed_ir_parses_back(tmp_path):
    from xdsl.parser import Parser
    from xdsl.printer import Printer
    import io

    from pimc.pipeline import make_context

    nodes = [N("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), N("Relu", ["c"], ["r"]),
             N("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]), N("Flatten", ["p"], ["f"]),
             N("Gemm", ["f", "g"], ["y"], transB=1)]  # fmt: skip
    m = _import(tmp_path, nodes, {"x": (1, 2, 6, 6)}, ["y"], {"w": R.standard_normal((4, 2, 3, 3)).astype(np.float32),
                "b": np.ones(4, np.float32), "g": np.ones((5, 36), np.float32)})  # fmt: skip
    text = io.StringIO()
    Printer(stream=text).print_op(m)
    again = Parser(make_context(), text.getvalue()).parse_module()
    again.verify()
    assert _names(again) == _names(m) == ["nn.conv2d", "nn.relu", "nn.maxpool", "nn.reshape", "nn.gemm"]


def test_batchnorm_folds_into_conv(tmp_path):
    w = R.standard_normal((3, 2, 1, 1)).astype(np.float32)
    s, b, mu, var = (R.uniform(0.5, 1.5, 3).astype(np.float32) for _ in range(4))
    nodes = [N("Conv", ["x", "w"], ["c"], name="conv"), N("BatchNormalization", ["c", "s", "b", "mu", "var"], ["y"], name="bn")]
    m = _import(tmp_path, nodes, {"x": (1, 2, 3, 3)}, ["y"], {"w": w, "s": s, "b": b, "mu": mu, "var": var})
    (conv,) = _ops(m)
    assert conv.name == "nn.conv2d" and conv.attributes["pimc.folded"] == StringAttr("bn")
    k = s / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(numpy_from_dense(conv.weight), w * k[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(numpy_from_dense(conv.bias), b - mu * k, rtol=1e-5, atol=1e-6)


def test_batchnorm_with_shared_input_becomes_depthwise_conv(tmp_path):
    inits = {"w": np.ones((3, 2, 1, 1), np.float32), **{k: np.ones(3, np.float32) for k in ("s", "b", "mu", "var")}}
    nodes = [N("Conv", ["x", "w"], ["c"]), N("BatchNormalization", ["c", "s", "b", "mu", "var"], ["n"]), N("Add", ["c", "n"], ["y"])]
    m = _import(tmp_path, nodes, {"x": (1, 2, 3, 3)}, ["y"], inits)
    ops = _ops(m)
    assert _names(m) == ["nn.conv2d", "nn.conv2d", "nn.add"]
    assert ops[1].group.value.data == 3 and ops[1].weight.get_shape() == (3, 1, 1, 1)


def test_dropout_identity_removed_and_shape_chain_folded(tmp_path):
    nodes = [
        N("Dropout", ["x"], ["d"]), N("Identity", ["d"], ["i"]),
        N("Shape", ["i"], ["sh"]), N("Gather", ["sh", "zero"], ["n"], axis=0), N("Unsqueeze", ["n", "ax"], ["n1"]),
        N("Cast", ["n1"], ["n2"], to=onnx.TensorProto.INT64), N("Concat", ["n2", "m1"], ["shape"], axis=0),
        N("Reshape", ["i", "shape"], ["y"]),
    ]  # fmt: skip
    inits = {"zero": np.array(0, np.int64), "ax": np.array([0], np.int64), "m1": np.array([-1], np.int64)}
    model = graph_model(nodes, {"x": (1, 2, 3, 4)}, {"y": ("N", 24)}, inits, opset=13)
    m = import_onnx(save(model, tmp_path))
    assert _names(m) == ["nn.reshape"]
    assert str(_ops(m)[0].results[0].type) == "tensor<?x24xf32>"


def test_static_batch_reshape_keeps_batch(tmp_path):
    """Files that declare batch 1 and reshape to [1, K] (as the Caffe2-exported light models do)."""
    nodes = [N("Reshape", ["x", "s"], ["y"])]
    m = _import(tmp_path, nodes, {"x": (1, 2, 3, 4)}, ["y"], {"s": np.array([1, 24], np.int64)}, dynamic_batch=False)
    assert str(_ops(m)[0].results[0].type) == "tensor<?x24xf32>"


def test_softmax_axis_semantics_by_opset(tmp_path):
    nodes = [N("Softmax", ["x"], ["y"], axis=1)]
    old = _import(tmp_path, nodes, {"x": (1, 2, 3, 4)}, ["y"], opset=11)
    assert _names(old) == ["nn.reshape", "nn.softmax", "nn.reshape"]
    assert str(_ops(old)[0].results[0].type) == "tensor<?x24xf32>"
    new = _import(tmp_path, nodes, {"x": (1, 2, 3, 4)}, ["y"], opset=13)
    assert _names(new) == ["nn.softmax"] and _ops(new)[0].axis.value.data == 1


def test_pool_ceil_mode_and_count_include_pad_lowering(tmp_path):
    mp = _import(tmp_path, [N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)], {"x": (1, 1, 5, 5)}, ["y"])
    (op,) = _ops(mp)
    assert ints(op.pads) == (0, 0, 1, 1) and shape_of(op.results[0]) == (-1, 1, 3, 3)
    ap = _import(tmp_path, [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)],
                 {"x": (1, 1, 5, 5)}, ["y"])  # fmt: skip
    assert _names(ap) == ["nn.pad", "nn.avgpool"]
    assert _ops(ap)[1].count_include_pad.value.data == 0


def test_constants_drop_the_batch_axis(tmp_path):
    m = _import(tmp_path, [N("Mul", ["x", "c"], ["y"])], {"x": (1, 3, 2, 2)}, ["y"], {"c": np.ones((1, 3, 1, 1), np.float32)})
    const, mul = _ops(m)
    assert const.name == "nn.constant" and const.value.get_shape() == (3, 1, 1)


def test_prelu_slope_is_normalized_per_channel(tmp_path):
    m = _import(tmp_path, [N("PRelu", ["x", "s"], ["y"])], {"x": (1, 3, 2, 2)}, ["y"], {"s": np.ones((1, 3, 1, 1), np.float32)})
    assert _ops(m)[0].slope.get_shape() == (3, 1, 1)


def test_qdq_activations_become_quantize_dequantize(tmp_path):
    inits = {"s": np.array(0.1, np.float32), "z": np.array(3, np.uint8), "wq": np.full((2, 2, 1, 1), 5, np.int8),
             "ws": np.array([0.5, 0.25], np.float32)}  # fmt: skip
    nodes = [N("QuantizeLinear", ["x", "s", "z"], ["q"]), N("DequantizeLinear", ["q", "s", "z"], ["d"]),
             N("DequantizeLinear", ["wq", "ws"], ["w"], axis=0), N("Conv", ["d", "w"], ["y"])]  # fmt: skip
    m = _import(tmp_path, nodes, {"x": (1, 2, 2, 2)}, ["y"], inits)
    q, dq, conv = _ops(m)
    assert (q.name, dq.name, conv.name) == ("nn.quantize", "nn.dequantize", "nn.conv2d")
    qt = q.results[0].type.element_type
    assert isinstance(qt, QuantType) and (qt.bits.data, qt.signed.data, qt.zero_point.data) == (8, 0, 3)
    assert qt.scale.data == pytest.approx(0.1)
    np.testing.assert_allclose(numpy_from_dense(conv.weight)[:, 0, 0, 0], [2.5, 1.25])


def test_input_shapes_fill_dynamic_dims(tmp_path):
    model = graph_model([N("Relu", ["x"], ["y"])], {"x": ("N", 3, "H", "W")}, {"y": ("N", 3, "H", "W")})
    path = save(model, tmp_path)
    m = import_onnx(path, {"x": [1, 3, 7, 9]})
    assert str(main_func(m).body.blocks[0].args[0].type) == "tensor<?x3x7x9xf32>"
    with pytest.raises(InputError, match="dynamic dimension 2 \\('H'\\)"):
        import_onnx(path)


def test_parse_input_shapes():
    assert parse_input_shapes(["x=1x3x32x100", "a/b:0=2x5"]) == {"x": [1, 3, 32, 100], "a/b:0": [2, 5]}
    for bad in ("x", "x=", "x=1xax3", "=1x2", "x=0x3"):
        with pytest.raises(InputError, match="--input-shape"):
            parse_input_shapes([bad])


def test_light_resnet50_structure():
    m = import_onnx(light_path("light_resnet50"))
    names = _names(m)
    assert names.count("nn.conv2d") == 53  # every BatchNormalization folded away
    assert names.count("nn.add") == 16 and names.count("nn.gemm") == 1
    assert all(not isinstance(op, nn.ConstantOp) for op in _ops(m))


def test_model_error_names_file_and_node(tmp_path):
    nodes = [N("Relu", ["x"], ["r"]), N("Conv", ["x", "r"], ["y"], name="weights_at_run_time")]
    path = save(graph_model(nodes, {"x": (1, 2, 4, 4)}, ["y"]), tmp_path)
    with pytest.raises(ModelError) as info:
        import_onnx(path)
    msg = str(info.value)
    assert str(path) in msg and "node 'weights_at_run_time' (Conv)" in msg and "weight" in msg


def test_strip_qdq_records_qtypes(tmp_path):
    """strip_qdq: all-float network for nn-quantize, each pair's parameters kept as pimc.qtype."""
    from pimc.frontend.qdq import QTYPE_ATTR, qtype_range, strip_qdq
    from pimc.reference.float_ref import run_float

    inits = {"s": np.array(0.1, np.float32), "z": np.array(3, np.uint8), "s2": np.array(0.05, np.float32),
             "z2": np.array(0, np.uint8), "w": R.standard_normal((2, 2, 1, 1)).astype(np.float32)}  # fmt: skip
    nodes = [N("QuantizeLinear", ["x", "s", "z"], ["q"]), N("DequantizeLinear", ["q", "s", "z"], ["d"]),
             N("Conv", ["d", "w"], ["c"], name="conv"), N("Relu", ["c"], ["r"], name="relu"),
             N("QuantizeLinear", ["r", "s2", "z2"], ["rq"]), N("DequantizeLinear", ["rq", "s2", "z2"], ["y"])]  # fmt: skip
    m = _import(tmp_path, nodes, {"x": (1, 2, 2, 2)}, ["y"], inits)
    assert strip_qdq(m) == 2
    m.verify()
    assert _names(m) == ["nn.clip", "nn.conv2d", "nn.relu", "nn.clip"]
    relu_q = _ops(m)[3].attributes[QTYPE_ATTR]
    assert isinstance(relu_q, QuantType) and relu_q.scale.data == pytest.approx(0.05)
    assert qtype_range(relu_q) == pytest.approx((0.0, 0.05 * 255))
    arg_q = main_func(m).arg_attrs.data[0].data[QTYPE_ATTR]
    assert arg_q.zero_point.data == 3 and main_func(m).arg_attrs.data[0].data["pimc.name"] == StringAttr("x")
    x = R.standard_normal((2, 2, 2, 2)).astype(np.float32)
    w = inits["w"][:, :, 0, 0]
    xc = np.clip(x, -0.3, 25.2)
    want = np.clip(np.einsum("oc,nchw->nohw", w, xc), 0, 0.05 * 255)
    np.testing.assert_allclose(run_float(m, {"x": x})["y"], want, rtol=1e-5, atol=1e-6)


def test_per_channel_affine_folds_into_conv(tmp_path):
    """Conv -> Mul/Add by per-channel constants (DenseNet's scale/shift after BN) is one layer."""
    inits = {"w": np.ones((3, 2, 1, 1), np.float32), "k": np.array([1.0, 2.0, 3.0], np.float32).reshape(3, 1, 1),
             "t": np.full((1, 3, 1, 1), 0.5, np.float32), "s": np.ones((1, 1, 4), np.float32)}  # fmt: skip
    nodes = [N("Conv", ["x", "w"], ["c"], name="conv"), N("Mul", ["c", "k"], ["m"], name="scale"),
             N("Add", ["m", "t"], ["a"], name="shift"), N("Mul", ["a", "s"], ["y"], name="spatial")]  # fmt: skip
    m = _import(tmp_path, nodes, {"x": (1, 2, 4, 4)}, ["y"], inits)
    assert _names(m) == ["nn.conv2d", "nn.constant", "nn.mul"]  # the spatial factor is not per channel
    conv = _ops(m)[0]
    assert conv.attributes["pimc.folded"] == StringAttr("scale,shift")
    np.testing.assert_allclose(numpy_from_dense(conv.weight)[:, 0, 0, 0], [1, 2, 3])
    np.testing.assert_allclose(numpy_from_dense(conv.bias), [0.5, 0.5, 0.5])

"""nn-quantize and calibration: the integer IR carries spec/quantization.md's constants, the pass is
a pure IR -> IR pass (works on textual IR), and user mistakes are clear errors."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest
from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, ModuleOp, StringAttr
from xdsl.printer import Printer

from pimc.dialects import nn
from pimc.dialects.nn import QuantType, numpy_from_dense, tensor_type
from pimc.errors import InputError, ModelError
from pimc.quant import quantize_module
from pimc.quant.calibrate import annotate_ranges, get_range, main_func
from pimc.reference.int_ref import run_int, run_int_codes
from pimc.transforms.nn_quantize import NnQuantizePass, quantize_ir


def _module(build) -> ModuleOp:
    """func @main(%x) built by ``build(x) -> result values``; input named 'x'."""
    arg_type = tensor_type([-1, 3, 8, 8])
    fn = func.FuncOp("main", ([arg_type], []))
    block = fn.body.block
    outs = build(block.args[0], block)
    block.add_op(func.ReturnOp(*outs))
    fn.function_type = func.FunctionType.from_lists([arg_type], [o.type for o in outs])
    fn.arg_attrs = ArrayAttr([DictionaryAttr({"pimc.name": StringAttr("x")})])
    fn.res_attrs = ArrayAttr([DictionaryAttr({"pimc.name": StringAttr(f"y{i}")}) for i in range(len(outs))])
    module = ModuleOp([fn])
    module.verify()
    return module


def _conv(x, block, cout=4, relu=True, bias_value=None, seed=0, name="conv1"):
    rng = np.random.default_rng(seed)
    cin = nn.shape_of(x)[1]
    w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.3
    b = (rng.standard_normal(cout) * 0.1 if bias_value is None else np.full(cout, bias_value)).astype(np.float32)
    conv = nn.Conv2dOp(x, tensor_type([-1, cout, 8, 8]), w, b, pads=(1, 1, 1, 1))
    conv.attributes["pimc.name"] = StringAttr(name)
    block.add_op(conv)
    if not relu:
        return conv.output
    r = nn.ReluOp(conv.output, tensor_type([-1, cout, 8, 8]))
    block.add_op(r)
    return r.output


def _calib(n=8, seed=1):
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)}


def test_conv_relu_fused_with_isa_constants():
    module = _module(lambda x, b: [_conv(x, b)])
    quantize_module(module, _calib())
    ops = list(main_func(module).body.block.ops)
    assert [o.name for o in ops] == ["nn.quantize", "nn.conv2d", "nn.dequantize", "func.return"]
    conv = ops[1]
    assert conv.activation.data == "relu"
    w = numpy_from_dense(conv.weight)
    assert w.dtype == np.int8 and np.abs(w).max() <= 127
    bias = numpy_from_dense(conv.bias)
    assert bias.dtype == np.int64
    xt, yt = nn.element_of(conv.input), nn.element_of(conv.output)
    assert isinstance(xt, QuantType) and isinstance(yt, QuantType) and not xt.signed.data
    lo, hi = nn.ints(conv.clamp)
    assert (lo, hi) == (yt.zero_point.data, 255) and yt.zero_point.data == 0  # relu: range starts at 0
    mult = numpy_from_dense(conv.requant_multiplier)
    shift = numpy_from_dense(conv.requant_shift)
    sw = numpy_from_dense(conv.weight_scale)
    assert sw.dtype == np.float32
    for n in range(4):
        assert 2**30 <= mult[n] < 2**31
        real = Fraction(xt.scale.data) * Fraction(float(sw[n])) / Fraction(yt.scale.data)
        assert abs(Fraction(int(mult[n]), 2 ** int(shift[n])) - real) <= real / 2**31
    # the stored bias is the effective bias: bias_q - zp_x * sum(w)
    bias_q = bias + xt.zero_point.data * w.astype(np.int64).sum(axis=(1, 2, 3))
    assert np.abs(bias_q).max() < 2**31


def test_integer_reference_close_to_float():
    from pimc.reference.float_ref import run_float

    module = _module(lambda x, b: [_conv(x, b)])
    data = _calib(4, seed=5)
    want = run_float(module, data)["y0"]
    quantize_module(module, _calib(32))
    got = run_int(module, data)["y0"]
    yt = nn.element_of(main_func(module).body.block.last_op.operands[0].owner.input)
    # 8-bit weights and activations: within a few output steps of the float result
    assert np.abs(got - want).max() <= 4 * yt.scale.data


def test_concat_producers_take_concat_params_and_requantize_otherwise():
    def build(x, block):
        a = _conv(x, block, 2, relu=False, seed=1, name="a")
        c = _conv(x, block, 3, relu=True, seed=2, name="c")
        cat = nn.ConcatOp([a, c], tensor_type([-1, 5, 8, 8]), 1)
        block.add_op(cat)
        return [cat.output, a]  # `a` has two uses: it keeps its own parameters

    module = _module(build)
    quantize_module(module, _calib())
    ops = list(main_func(module).body.block.ops)
    cat = next(o for o in ops if isinstance(o, nn.ConcatOp))
    qt = nn.element_of(cat.output)
    kinds = [v.owner.name for v in cat.inputs]
    assert kinds == ["nn.requantize", "nn.conv2d"]
    assert all(nn.element_of(v) == qt for v in cat.inputs)
    codes = run_int_codes(module, _calib(2, seed=9))
    assert codes["y0"].shape == (2, 5, 8, 8)


def test_luts_and_elementwise():
    def build(x, block):
        t = tensor_type([-1, 3, 8, 8])
        s = nn.SigmoidOp(x, t)
        k = nn.ConstantOp(np.full((3, 1, 1), 0.5, dtype=np.float32))
        m = nn.MulOp(s.output, k.output, t)
        d = nn.DivOp(m.output, k.output, t)
        a = nn.SubOp(d.output, x, t)
        block.add_ops([s, k, m, d, a])
        return [a.output]

    module = _module(build)
    data = _calib(16)
    quantize_module(module, data)
    names = [o.name for o in main_func(module).body.block.ops]
    assert "nn.lut" in names and "nn.div" not in names  # division by a constant became a mul
    assert names.count("nn.mul") == 2 and "nn.sub" in names
    lut = next(o for o in main_func(module).body.block.ops if isinstance(o, nn.LutOp))
    table = numpy_from_dense(lut.table)
    assert table.shape == (1, 256) and np.all(np.diff(table[0]) >= 0)  # sigmoid is monotone
    x = data["x"][:2]
    want = (1 / (1 + np.exp(-x)) * 0.5) / 0.5 - x
    got = run_int(module, {"x": x})["y0"]
    assert np.abs(got - want).max() < 0.1


def test_pass_runs_on_textual_ir_with_options():
    """Calibrated IR printed as text, parsed back and quantized by the registered pass with
    options gives the same integer network as quantizing the module directly."""
    from pimc.pipeline import make_context, run_pipeline
    from xdsl.parser import Parser

    module = _module(lambda x, b: [_conv(x, b)])
    annotate_ranges(module, [_calib()])
    text = io.StringIO()
    Printer(stream=text).print_op(module)
    assert "pimc.range" in text.getvalue()
    parsed = Parser(make_context(), text.getvalue()).parse_module()
    run_pipeline(parsed, "nn-quantize{weight-bits=6 act-bits=7}", None)
    quantize_ir(module, 6, 7)
    conv_p = next(o for o in main_func(parsed).body.block.ops if isinstance(o, nn.Conv2dOp))
    assert nn.element_of(conv_p.output).bits.data == 7
    assert np.abs(numpy_from_dense(conv_p.weight)).max() <= 31
    x = _calib(3, seed=4)
    a, b = run_int_codes(parsed, x), run_int_codes(module, x)
    assert np.array_equal(a["y0"], b["y0"])


def test_bits_from_hardware_config():
    from pimc.hw import attach_config, load_config

    module = _module(lambda x, b: [_conv(x, b)])
    attach_config(module, load_config("isaac16"))
    annotate_ranges(module, _calib())
    NnQuantizePass().apply(None, module)
    conv = next(o for o in main_func(module).body.block.ops if isinstance(o, nn.Conv2dOp))
    assert numpy_from_dense(conv.weight).dtype == np.int16
    assert nn.element_of(conv.output).bits.data == 16


def test_percentile_narrower_than_minmax():
    data = _calib(8)
    data["x"][0, 0, 0, 0] = 50.0  # one outlier
    m1 = _module(lambda x, b: [_conv(x, b)])
    m2 = _module(lambda x, b: [_conv(x, b)])
    annotate_ranges(m1, [data], "minmax")
    annotate_ranges(m2, [data], "percentile", 99.9)
    r1 = get_range(main_func(m1).arg_attrs.data[0].data)
    r2 = get_range(main_func(m2).arg_attrs.data[0].data)
    assert r1[1] == 50.0 and r2[1] < 10.0 and r2[0] > r1[0]


# ----------------------------------------------------------------------------------- errors


def test_float_model_without_calibration_is_an_error():
    module = _module(lambda x, b: [_conv(x, b)])
    with pytest.raises(InputError, match=r"--calibration FILE\.npy.*\.npz"):
        quantize_module(module, None)


def test_uncalibrated_ir_says_to_calibrate():
    module = _module(lambda x, b: [_conv(x, b)])
    with pytest.raises(InputError, match=r"no calibrated range.*--calibration"):
        NnQuantizePass(weight_bits=8, act_bits=8).apply(None, module)


def test_calibration_of_the_wrong_shape():
    module = _module(lambda x, b: [_conv(x, b)])
    bad = {"x": np.zeros((4, 3, 9, 8), dtype=np.float32)}
    with pytest.raises(InputError, match=r"calibration data: input 'x' has shape \[4, 3, 9, 8\].*\?x3x8x8"):
        quantize_module(module, bad)
    with pytest.raises(InputError, match=r"lacks|missing input"):
        quantize_module(module, {"image": np.zeros((4, 3, 8, 8), dtype=np.float32)})


def test_bias_overflow_names_the_layer():
    module = _module(lambda x, b: [_conv(x, b, bias_value=1e9, relu=False, name="huge_bias")])
    with pytest.raises(ModelError, match=r"'huge_bias'.*overflows int32"):
        quantize_module(module, _calib())


def test_bad_bit_widths():
    from pimc.errors import ConfigError

    module = _module(lambda x, b: [_conv(x, b)])
    with pytest.raises(ConfigError, match="4..16"):
        quantize_module(module, _calib(), weight_bits=3)


def test_int_reference_rejects_wrong_input_shape():
    module = _module(lambda x, b: [_conv(x, b)])
    quantize_module(module, _calib())
    with pytest.raises(InputError, match=r"input 'x' has shape \[2, 3, 8\]"):
        run_int(module, {"x": np.zeros((2, 3, 8), dtype=np.float32)})


def test_model_quantized_by_onnxruntime_is_honoured_without_calibration(tmp_path):
    """A QDQ model from onnxruntime's static quantizer: its quantize/dequantize pairs fix every
    activation's parameters, so nn-quantize needs no calibration data and the integer reference
    reproduces onnxruntime's run of that model."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from pimc.frontend.onnx_import import import_onnx
    from tests.qdq_nets import ort_session

    rng = np.random.default_rng(0)
    inits = {
        "w1": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
        "b1": (rng.standard_normal(8) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32),
        "fc": (rng.standard_normal((8, 5)) * 0.3).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a"]),
        helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "f.onnx")
    calib = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )
    module = import_onnx(tmp_path / "q.onnx")
    quantize_module(module, None)  # no calibration data needed
    names = {o.name for o in main_func(module).body.block.ops}
    assert "nn.conv2d" in names and "nn.requantize" not in names
    x = calib[:4]
    ours = run_int(module, {"x": x})["y"]
    (theirs,) = ort_session(onnx.load(tmp_path / "q.onnx"), optimize=False).run(None, {"x": x})
    yt_scale = float(np.abs(theirs).max()) / 255
    assert np.abs(ours - theirs).max() <= 1.01 * yt_scale  # at most 1 LSB of the output

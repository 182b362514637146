"""The integer reference: exact integer kernels, and the real architectures of ONNX's backend test
data quantized and run in it (checked per operator against onnxruntime on the QDQ export)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from pimc.quant import intmath
from pimc.reference.int_ref import conv_acc
from tests.onnx_builders import LIGHT_MODELS, light_path, logits_name, randomize_weights, with_outputs
from tests.qdq_nets import compare_int_vs_qdq, compare_per_op


def _naive_conv(x, w, strides, pads, dilations, group, pad_value):
    """Direct definition, one output at a time (test only)."""
    B, C, H, W = x.shape
    cout, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=pad_value)
    Ho = (H + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    Wo = (W + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.zeros((B, cout, Ho, Wo), dtype=object)
    og = cout // group
    for b in range(B):
        for n in range(cout):
            g = n // og
            for i in range(Ho):
                for j in range(Wo):
                    acc = 0
                    for c in range(cg):
                        for u in range(kh):
                            for v in range(kw):
                                acc += int(xp[b, g * cg + c, i * strides[0] + u * dilations[0], j * strides[1] + v * dilations[1]]) * int(w[n, c, u, v])
                    out[b, n, i, j] = acc
    return out


@pytest.mark.parametrize(
    "shape,cout,k,strides,pads,dil,group,bits",
    [
        ((2, 4, 7, 6), 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 8),
        ((1, 4, 9, 9), 4, (3, 2), (2, 1), (0, 1, 2, 0), (2, 1), 4, 8),  # depthwise, asymmetric pads
        ((1, 6, 5, 5), 4, (1, 1), (1, 2), (0, 0, 0, 0), (1, 1), 2, 16),  # int64 path (K·2^16·2^15)
        ((1, 2, 6, 6), 2, (3, 3), (1, 1), (2, 2, 2, 2), (1, 1), 1, 16),
    ],
)
def test_conv_accumulator_is_exact(shape, cout, k, strides, pads, dil, group, bits):
    rng = np.random.default_rng(0)
    qmax = 2**bits - 1
    wmax = 2 ** (bits - 1) - 1
    x = rng.integers(0, qmax + 1, size=shape, dtype=np.int64)
    w = rng.integers(-wmax, wmax + 1, size=(cout, shape[1] // group) + k, dtype=np.int64)
    got = conv_acc(x, w, strides, pads, dil, group, pad_value=qmax // 3, xmax=qmax)
    want = _naive_conv(x, w, strides, pads, dil, group, qmax // 3)
    assert got.shape == want.shape
    assert np.array_equal(got.astype(object), want)


@pytest.mark.parametrize("K,xmax,wmax", [(2000, 255, 127), (700, 255, 127), (300, 65535, 32767), (9, 65535, 32767)])
def test_exact_matmul_paths(K, xmax, wmax):
    """binary32 in K chunks, binary64, or int64: always the exact integer product."""
    from pimc.reference.int_ref import _exact_dtype, _exact_matmul

    rng = np.random.default_rng(K)
    a = rng.integers(0, xmax + 1, size=(2, 33, K), dtype=np.int64)
    a[0, 0] = xmax  # worst case row and column
    b = rng.integers(-wmax, wmax + 1, size=(2, K, 5), dtype=np.int64)
    b[0, :, 0] = wmax
    dtype, kc = _exact_dtype(K, xmax, wmax)
    got = _exact_matmul(a.astype(dtype), b.astype(dtype), kc)
    assert got.dtype == np.int64 and np.array_equal(got, np.matmul(a, b))


def test_avgpool_and_requant_formulas():
    """The integer avgpool of the reference equals quantization.md §5.4 evaluated with fractions."""
    from fractions import Fraction

    from pimc.dialects import nn
    from pimc.dialects.nn import QuantType, i64_array, tensor_type
    from pimc.reference.int_ref import avgpool
    from xdsl.dialects.builtin import IntegerAttr, i64
    from xdsl.ir import Block

    s_in, z_in, s_out, z_out = 0.05, 17, 0.031, 3
    block = Block(arg_types=[tensor_type([-1, 2, 5, 5], QuantType(8, False, s_in, z_in))])
    op = nn.AvgPoolOp(
        block.args[0],
        tensor_type([-1, 2, 3, 3], QuantType(8, False, s_out, z_out)),
        {
            "kernel": i64_array([3, 3]), "strides": i64_array([2, 2]), "pads": i64_array([1, 1,1, 1]),
            "count_include_pad": IntegerAttr(0, i64),
        },
    )
    x = np.random.default_rng(3).integers(0, 256, size=(2, 2, 5, 5), dtype=np.int64)
    got = avgpool(op, x)
    m, shift = intmath.avgpool_params(s_in, s_out, 9, 8)
    xp = np.pad(x - z_in, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ones = np.pad(np.ones((5, 5), dtype=np.int64), 1)
    for b in range(2):
        for c in range(2):
            for i in range(3):
                for j in range(3):
                    S = int(xp[b, c, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].sum())
                    count = int(ones[2 * i : 2 * i + 3, 2 * j : 2 * j + 3].sum())
                    v = round(Fraction(m * S, count * 2**shift)) + z_out
                    assert got[b, c, i, j] == min(max(v, 0), 255)


# ------------------------------------------------------------------------------- light models


def _prepared(name: str):
    """The light model with random weights (its constant fills make every logit equal), the
    logits as an extra output, imported; random calibration data of 4 images; 1 test image."""
    from pimc.frontend.inputs import input_signature
    from pimc.frontend.onnx_import import import_onnx

    model = randomize_weights(onnx.load(light_path(name)))
    logits = logits_name(model)
    if logits:
        model = with_outputs(model, [logits])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        onnx.save(model, path)
        module = import_onnx(path)
    sig = input_signature(module)
    rng = np.random.default_rng(0)
    calib = {k: rng.standard_normal((4,) + v[1:]).astype(np.float32) for k, v in sig.items()}
    x = {k: rng.standard_normal((1,) + v[1:]).astype(np.float32) for k, v in sig.items()}
    return module, calib, x, logits


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_quantizes_and_runs_in_integer_reference(name):
    """Each real architecture quantizes, runs exactly in integers, stays close to the float
    network, and every operator agrees with onnxruntime on the QDQ export given the same inputs
    (>= 99.9 % of codes equal, never more than 1 LSB apart)."""
    from pimc.quant import quantize_module
    from pimc.reference.float_ref import run_float
    from pimc.reference.int_ref import run_int

    module, calib, x, logits = _prepared(name)
    want = run_float(module, x)
    quantize_module(module, calib)
    got = run_int(module, x)
    assert set(got) == set(want)
    for key in got:
        assert got[key].shape == want[key].shape and np.all(np.isfinite(got[key]))
    # random untrained weights make 8-bit quantization noise large (DenseNet-121: max error 37 % of
    # max |logit|, and onnxruntime's run of the QDQ export has the same error), so the float check
    # is a correlation; exactness is checked against onnxruntime below
    key = logits or next(iter(got))
    corr = np.corrcoef(got[key].ravel(), want[key].ravel())[0, 1]
    assert corr > 0.95, f"integer vs float on {key}: correlation {corr:.3f}"

    stats = compare_per_op(module, x)
    equal = sum(v[0] for v in stats.values())
    total = sum(v[1] for v in stats.values())
    worst = max(v[2] for v in stats.values())
    assert worst <= 1 and equal / total >= 0.999, f"per op: {equal}/{total} equal, worst {worst} LSB: {stats}"


@pytest.mark.slow
def test_light_resnet50_end_to_end_against_onnxruntime():
    """End to end (no feeding), 1-LSB differences at ties propagate through 50 layers: the output
    codes stay within a few LSB of onnxruntime's QDQ run."""
    from pimc.quant import quantize_module

    module, calib, x, _ = _prepared("light_resnet50")
    quantize_module(module, calib)
    equal, total, worst = compare_int_vs_qdq(module, x, optimize=False)
    assert worst <= 3 and equal / total >= 0.7, f"{equal}/{total} equal, worst {worst}"


# --------------------------------------------------------------------------------- bad inputs


def test_run_int_needs_a_quantized_module():
    from pimc.dialects import nn
    from pimc.dialects.nn import tensor_type
    from pimc.errors import ModelError
    from pimc.reference.int_ref import run_int
    from tests.test_quantize import _conv, _module

    module = _module(lambda x, b: [_conv(x, b)])
    with pytest.raises(ModelError, match="run nn-quantize first"):
        run_int(module, {"x": np.zeros((1, 3, 8, 8), dtype=np.float32)})
    _ = (nn, tensor_type)


def test_run_int_missing_input_names_the_inputs():
    from pimc.errors import InputError
    from pimc.quant import quantize_module
    from pimc.reference.int_ref import run_int
    from tests.test_quantize import _calib, _conv, _module

    module = _module(lambda x, b: [_conv(x, b)])
    quantize_module(module, _calib())
    with pytest.raises(InputError, match=r"missing input\(s\) x"):
        run_int(module, {"image": np.zeros((1, 3, 8, 8), dtype=np.float32)})

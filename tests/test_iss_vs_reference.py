"""The simulator against the integer reference (DESIGN.md §6, rung 3), through the real compiler.

On the lossless ``ideal8`` machine every compiled program must give exactly the integer
reference's codes (``pimc.reference.int_ref.run_int_codes`` on the same quantized module),
whatever the mapping options; the fast and the bit-level paths must agree on outputs and counters.
End to end, the example's accuracy on ``isaac8`` stays within 0.5 % of the float model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto as T
from onnx import helper as h

from pimc.driver import QuantOptions, compile_model
from pimc.hw import load_config
from pimc.reference.int_ref import run_int_codes
from runtime.executor import run_program

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mnist_cnn"


def iss_codes(program, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Output codes back from the dequantized outputs (exact: |q − zp| < 2^17 in float32)."""
    return {p.name: np.rint(outputs[p.name].astype(np.float64) / p.scale).astype(np.int64) + p.zp for p in program.outputs}


def compile_and_compare(tmp: Path, model: onnx.ModelProto, x: np.ndarray, calib: np.ndarray, cfg: dict, pipeline: str | None):
    """Compile through the real flow, run both mvm paths, check codes against the integer reference."""
    path = tmp / "m.onnx"
    onnx.save(model, path)
    np.save(tmp / "cal.npy", calib)
    c = compile_model(path, cfg, QuantOptions(calibration=str(tmp / "cal.npy")), pipeline)
    program, module_q = c.program, c.quantized
    inits = {t.name for t in model.graph.initializer}
    name = next(i.name for i in model.graph.input if i.name not in inits)
    ref = run_int_codes(module_q, {name: x})
    fast, rf = run_program(program, {name: x})
    slow, rs = run_program(program, {name: x}, fast_path=False)
    got_f, got_s = iss_codes(program, fast), iss_codes(program, slow)
    for p in program.outputs:
        np.testing.assert_array_equal(got_f[p.name], ref[p.name].astype(np.int64), err_msg=f"output {p.name} (fast path)")
        np.testing.assert_array_equal(got_s[p.name], got_f[p.name], err_msg=f"output {p.name} (bit-level path)")
    assert rf["run"]["counters"] == rs["run"]["counters"]
    assert rf["run"]["adc_conversions_by_bits"] == rs["run"]["adc_conversions_by_bits"]
    return program, rf, rs


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    g = h.make_graph(nodes, "t", inputs, outputs, inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 14)])


@st.composite
def conv_case(draw):
    g = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = g > 1 and draw(st.booleans())
    ci = 1 if depthwise else draw(st.integers(1, 3))
    co = 1 if depthwise else draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = [draw(st.integers(0, 2)) for _ in range(4)]  # top, left, bottom, right
    H = draw(st.integers(max(1, dh * (kh - 1) + 1 - pads[0] - pads[2]), 8))
    W = draw(st.integers(max(1, dw * (kw - 1) + 1 - pads[1] - pads[3]), 8))
    relu = draw(st.booleans())
    return dict(cin=g * ci, cout=g * co, groups=g, k=(kh, kw), s=(sh, sw), d=(dh, dw), pads=pads, H=H, W=W, relu=relu)


def conv_model(c, rng) -> onnx.ModelProto:
    w = rng.normal(size=(c["cout"], c["cin"] // c["groups"], *c["k"])).astype(np.float32)
    b = rng.normal(size=c["cout"]).astype(np.float32)
    pt, pl, pb, pr = c["pads"]
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"], group=c["groups"], kernel_shape=list(c["k"]), strides=list(c["s"]),
                         dilations=list(c["d"]), pads=[pt, pl, pb, pr])]
    out = "c"
    if c["relu"]:
        nodes.append(h.make_node("Relu", ["c"], ["r"]))
        out = "r"
    inits = [h.make_tensor("w", T.FLOAT, w.shape, w.ravel()), h.make_tensor("b", T.FLOAT, b.shape, b.ravel())]
    Ho = (c["H"] + pt + pb - c["d"][0] * (c["k"][0] - 1) - 1) // c["s"][0] + 1
    Wo = (c["W"] + pl + pr - c["d"][1] * (c["k"][1] - 1) - 1) // c["s"][1] + 1
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", c["cin"], c["H"], c["W"]])],
                  [h.make_tensor_value_info(out, T.FLOAT, ["N", c["cout"], Ho, Wo])], inits)


def gemm_model(K, N, trans_b, rng) -> onnx.ModelProto:
    w = rng.normal(size=(N, K) if trans_b else (K, N)).astype(np.float32)
    b = rng.normal(size=N).astype(np.float32)
    nodes = [h.make_node("Gemm", ["x", "w", "b"], ["y"], transB=int(trans_b))]
    inits = [h.make_tensor("w", T.FLOAT, w.shape, w.ravel()), h.make_tensor("b", T.FLOAT, b.shape, b.ravel())]
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", K])], [h.make_tensor_value_info("y", T.FLOAT, ["N", N])], inits)


mapping = st.fixed_dictionaries(
    {
        "weight_bits": st.sampled_from([4, 5, 8]),
        "act_bits": st.sampled_from([4, 8, 10]),
        "cell_bits": st.integers(1, 4),
        "dac_bits": st.integers(1, 4),
        "scheme": st.sampled_from(["offset", "differential", "twos"]),
        "order": st.sampled_from(["lsb", "msb"]),
        "rows": st.sampled_from([8, 16, 128]),
        "cols": st.sampled_from([8, 16, 128]),
        "flip": st.booleans(),
    }
)


def machine(m) -> tuple[dict, str]:
    """ideal8 with the drawn precision and cell width (the runtime reads cell_bits from the
    embedded configuration), and a pipeline string carrying the mapping options."""
    cfg = load_config("ideal8")
    cfg["precision"]["weight_bits"] = m["weight_bits"]
    cfg["precision"]["act_bits"] = m["act_bits"]
    cfg["crossbar"]["cell_bits"] = m["cell_bits"]
    flip = "true" if m["flip"] else "false"
    pipeline = (
        "convert-nn-to-xbar,"
        f"xbar-bit-slice{{dac-bits={m['dac_bits']} scheme={m['scheme']} order={m['order']} flip={flip}}},"
        f"xbar-tile{{rows={m['rows']} cols={m['cols']}}},xbar-place,convert-xbar-to-isa"
    )
    return cfg, pipeline


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(c=conv_case(), m=mapping, seed=st.integers(0, 2**31 - 1))
def test_conv_on_ideal8_equals_integer_reference(tmp_path, c, m, seed):
    rng = np.random.default_rng(seed)
    model = conv_model(c, rng)
    calib = rng.normal(size=(8, c["cin"], c["H"], c["W"])).astype(np.float32)
    x = rng.normal(size=(3, c["cin"], c["H"], c["W"])).astype(np.float32) * 1.2  # some inputs beyond the calibrated range
    cfg, pipeline = machine(m)
    compile_and_compare(tmp_path, model, x, calib, cfg, pipeline)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(K=st.integers(1, 300), N=st.integers(1, 20), trans_b=st.booleans(), m=mapping, seed=st.integers(0, 2**31 - 1))
def test_gemm_on_ideal8_equals_integer_reference(tmp_path, K, N, trans_b, m, seed):
    rng = np.random.default_rng(seed)
    cfg, pipeline = machine(m)
    calib = rng.normal(size=(8, K)).astype(np.float32)
    x = rng.normal(size=(4, K)).astype(np.float32)
    program, rep, _ = compile_and_compare(tmp_path, gemm_model(K, N, trans_b, rng), x, calib, cfg, pipeline)
    assert rep["run"]["counters"]["macs"] == 4 * K * N


def test_example_on_ideal8_equals_integer_reference(tmp_path):
    model = onnx.load(EXAMPLE / "model.onnx")
    x = np.load(EXAMPLE / "test_images.npy")[:64]
    program, rep, _ = compile_and_compare(tmp_path, model, x, np.load(EXAMPLE / "calib.npy"), load_config("ideal8"), None)
    assert all(L["path"] in ("fast", "digital") for L in rep["layers"])


def test_example_accuracy_on_isaac8_within_half_a_percent_of_float(tmp_path):
    """End to end on >= 1,000 held-out images (examples/mnist_cnn/test_images.npy)."""
    import onnxruntime as ort

    x = np.load(EXAMPLE / "test_images.npy")
    y = np.load(EXAMPLE / "test_labels.npy")
    assert len(x) >= 1000
    np.save(tmp_path / "cal.npy", np.load(EXAMPLE / "calib.npy"))
    program = compile_model(EXAMPLE / "model.onnx", "isaac8", QuantOptions(calibration=str(tmp_path / "cal.npy"))).program
    out, rep = run_program(program, {"input": x}, batch_size=400)
    sim = out["logits"].argmax(1)
    sess = ort.InferenceSession(str(EXAMPLE / "model.onnx"), providers=["CPUExecutionProvider"])
    flt = sess.run(None, {"input": x})[0].argmax(1)
    acc_sim, acc_flt = float((sim == y).mean()), float((flt == y).mean())
    print(f"\nexample on isaac8: simulator top-1 {acc_sim:.4f}, float {acc_flt:.4f}, agreement {(sim == flt).mean():.4f} on {len(x)} images")
    assert abs(acc_sim - acc_flt) <= 0.005
    assert acc_flt > 0.95  # the float model is a real, trained model


LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["squeezenet", "shufflenet", "inception_v1", "densenet121"])
def test_light_backend_models_on_ideal8_equal_integer_reference(tmp_path, name):
    model = onnx.load(LIGHT / f"light_{name}.onnx")
    inits = {t.name for t in model.graph.initializer}
    data = next(i for i in model.graph.input if i.name not in inits)  # old models list weights as inputs
    shape = [d.dim_value for d in data.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    calib = rng.normal(size=(2, *shape[1:])).astype(np.float32)
    x = rng.normal(size=(1, *shape[1:])).astype(np.float32)
    compile_and_compare(tmp_path, model, x, calib, load_config("ideal8"), None)


@st.composite
def digital_case(draw):
    return dict(
        C=draw(st.integers(1, 4)),
        H=draw(st.integers(4, 9)),
        pool=draw(st.sampled_from(["max", "avg"])),
        k=draw(st.integers(1, 3)),
        s=draw(st.integers(1, 2)),
        p=draw(st.integers(0, 1)),
        ceil=draw(st.booleans()),
        cip=draw(st.booleans()),
        act=draw(st.sampled_from(["Relu", "Sigmoid", "LeakyRelu", "HardSwish", "none"])),
        residual=draw(st.booleans()),
        mul=draw(st.booleans()),
        softmax=draw(st.booleans()),
    )


def digital_model(c, rng) -> tuple[onnx.ModelProto, list[int]]:
    """conv -> activation -> [residual add] [mul] -> pool -> global avgpool -> flatten -> gemm [-> softmax]."""
    C, H = c["C"], c["H"]
    k, s, p = c["k"], c["s"], min(c["p"], c["k"] - 1)
    w = rng.normal(size=(C, C, 3, 3)).astype(np.float32)
    g = rng.normal(size=(C, 5)).astype(np.float32)
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])]
    cur = "c"
    if c["act"] != "none":
        nodes.append(h.make_node(c["act"], [cur], ["a"]))
        cur = "a"
    if c["residual"]:
        nodes.append(h.make_node("Add", [cur, "x"], ["r"]))
        cur = "r"
    if c["mul"]:
        nodes.append(h.make_node("Mul", [cur, "x"], ["m"]))
        cur = "m"
    attrs = dict(kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p], ceil_mode=int(c["ceil"]))
    if c["pool"] == "avg":
        attrs["count_include_pad"] = int(c["cip"])
    nodes.append(h.make_node("MaxPool" if c["pool"] == "max" else "AveragePool", [cur], ["pl"], **attrs))
    nodes += [h.make_node("GlobalAveragePool", ["pl"], ["gp"]), h.make_node("Flatten", ["gp"], ["fl"]),
              h.make_node("Gemm", ["fl", "g"], ["y"])]
    out = "y"
    if c["softmax"]:
        nodes.append(h.make_node("Softmax", ["y"], ["sm"], axis=-1))
        out = "sm"
    inits = [h.make_tensor("w", T.FLOAT, w.shape, w.ravel()), h.make_tensor("g", T.FLOAT, g.shape, g.ravel())]
    model = _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", C, H, H])], [h.make_tensor_value_info(out, T.FLOAT, ["N", 5])], inits)
    return model, [C, H, H]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(c=digital_case(), seed=st.integers(0, 2**31 - 1))
def test_digital_layers_on_ideal8_equal_integer_reference(tmp_path, c, seed):
    rng = np.random.default_rng(seed)
    model, shape = digital_model(c, rng)
    calib = rng.normal(size=(8, *shape)).astype(np.float32)
    x = rng.normal(size=(3, *shape)).astype(np.float32)
    compile_and_compare(tmp_path, model, x, calib, load_config("ideal8"), None)

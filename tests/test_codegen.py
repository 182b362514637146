"""Code generation: the isa dialect, convert-xbar-to-isa, emit_program, and the simulated result
of compiled programs against the integer reference (bit-exact on a lossless machine)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from xdsl.dialects.builtin import Builtin, ModuleOp
from xdsl.parser import Parser
from xdsl.printer import Printer

from pimc import pipeline as pl
from pimc.backend.emit import emit_program
from pimc.dialects import isa
from pimc.errors import ModelError
from pimc.frontend.onnx_import import import_onnx
from pimc.hw import attach_config, load_config
from pimc.quant import intmath
from pimc.quant.calibrate import annotate_ranges
from pimc.reference.int_ref import run_int, run_int_codes
from pimc.transforms.convert_xbar_to_isa import convert_module
from pimc.transforms.nn_quantize import quantize_ir

ROOT = Path(__file__).resolve().parents[1]
FILECHECK_DIR = Path(__file__).parent / "filecheck" / "isa"

# ------------------------------------------------------------------------------ the isa dialect

SAMPLE = {
    "buf": "b.0",
    "const": "k/1",
    "src": "s",
    "bufs": ["a", "b"],
    "int": -7,
    "f64": 0.00392156862745098,
    "ints": [-1, 3, 28],
    "str": None,  # per op: one of its choices
    "dense": np.arange(6, dtype=np.uint8).reshape(2, 3),
}


@pytest.mark.parametrize("cls", [*isa.DIRECTIVES, *isa.INSTRUCTIONS], ids=lambda c: c.name)
def test_every_isa_op_prints_parses_and_keeps_its_fields(cls):
    values = {}
    for f, kind in cls.FIELDS:
        v = SAMPLE[kind]
        if kind == "str":
            v = cls.CHOICES[f][-1] if f in cls.CHOICES else "name.x"
        values[f] = v
    op = cls.build(**values)
    op.verify()
    module = ModuleOp([op])
    text = io.StringIO()
    Printer(stream=text).print_op(module)
    parsed = Parser(pl.make_context(), text.getvalue()).parse_module()
    parsed.verify()
    assert parsed.is_structurally_equivalent(module)
    got = next(iter(parsed.ops)).fields()  # type: ignore[attr-defined]
    for f, v in values.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(got[f], v)
        else:
            assert got[f] == v


def test_isa_op_rejects_a_bad_choice_and_unknown_fields():
    bad = isa.MvmOp.build(xbar=0, src="a", dst="b", col0=0, bits=8, dac_bits=1, order="middle")
    with pytest.raises(Exception, match="order.*allowed: lsb, msb"):
        bad.verify()
    with pytest.raises(TypeError, match="unknown fields"):
        isa.HaltOp.build(x=1)


def test_isa_fields_match_the_runtime_instruction_schema():
    """Every instruction op has exactly the fields of runtime.opcodes, in the same order."""
    from runtime.opcodes import OPCODES

    kind_map = {"xbar": "int", "enum": "str"}
    for cls in isa.INSTRUCTIONS:
        schema = OPCODES[cls.OPCODE]
        assert [f.name for f in schema.fields] == [f for f, _ in cls.FIELDS], cls.OPCODE
        assert [kind_map.get(f.kind, f.kind) for f in schema.fields] == [k for _, k in cls.FIELDS], cls.OPCODE
    implemented = {name for name, op in OPCODES.items() if not op.reserved}
    assert implemented == set(isa.BY_OPCODE)


# ------------------------------------------------------------------------------ digital ops


def _digital_model(path: Path) -> None:
    """Every digital operator the code generator lowers (no crossbar layer)."""
    x = h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 6, 6])
    z = h.make_tensor_value_info("z", T.FLOAT, ["N", 6, 3, 3])
    inits = [
        h.make_tensor("c", T.FLOAT, [1, 3, 1, 1], np.array([0.5, -1.0, 2.0], np.float32)),
        h.make_tensor("pads", T.INT64, [8], np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
        h.make_tensor("shape", T.INT64, [2], np.array([0, -1], np.int64)),
        h.make_tensor("slope", T.FLOAT, [3, 1, 1], np.array([0.1, 0.2, 0.3], np.float32)),
    ]
    nodes = [
        h.make_node("MaxPool", ["x"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        h.make_node("Add", ["mp", "c"], ["ad"], name="add_c"),
        h.make_node("Sub", ["ad", "mp"], ["sb"], name="sub"),
        h.make_node("Sigmoid", ["sb"], ["sg"], name="sig"),
        h.make_node("PRelu", ["sb", "slope"], ["pr"], name="prelu"),
        h.make_node("Mul", ["sg", "pr"], ["ml"], name="mul"),
        h.make_node("Div", ["ml", "sg"], ["dv"], name="div"),
        h.make_node("LRN", ["dv"], ["lr"], size=3, alpha=1e-2, beta=0.75, bias=1.0, name="lrn"),
        h.make_node("Concat", ["lr", "mp"], ["z"], axis=1, name="cat"),
        h.make_node("Pad", ["z", "pads"], ["pd"], mode="constant", name="pad"),
        h.make_node("AveragePool", ["pd"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], name="avg"),
        h.make_node("Transpose", ["ap"], ["tp"], perm=[0, 1, 3, 2], name="tr"),
        h.make_node("GlobalAveragePool", ["tp"], ["gp"], name="gap"),
        h.make_node("Reshape", ["gp", "shape"], ["fl"], name="flat"),
        h.make_node("Softmax", ["fl"], ["sm"], axis=-1, name="sm"),
    ]
    y = h.make_tensor_value_info("sm", T.FLOAT, ["N", 6])
    g = h.make_graph(nodes, "digital", [x], [y, z], inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 13)]), path)


@pytest.fixture(scope="module")
def digital(tmp_path_factory):
    path = tmp_path_factory.mktemp("digital") / "digital.onnx"
    _digital_model(path)
    rng = np.random.default_rng(7)
    calib = rng.normal(size=(16, 3, 6, 6)).astype(np.float32)
    module = import_onnx(path)
    annotate_ranges(module, {"x": calib})
    quantize_ir(module)
    return path, module


def _instrs(module):
    return [op for op in module.ops if isinstance(op, isa.IsaOp) and not op.DIRECTIVE]


def test_digital_ops_lower_one_instruction_each_with_intmath_constants(digital):
    from pimc.dialects import nn

    _, qmod = digital
    ops = {op.attributes["pimc.name"].data: op for op in qmod.walk() if "pimc.name" in op.attributes}
    mod = qmod.clone()
    convert_module(mod)
    mod.verify()
    seq = [op.OPCODE for op in _instrs(mod)]
    assert seq[-1] == "halt"
    assert seq.count("add") == 2  # add and sub
    assert {"maxpool", "lut", "mul", "div", "lrn", "concat", "pad", "avgpool", "transpose", "reshape", "softmax"} <= set(seq)
    layers = [op.field("label") for op in mod.ops if isinstance(op, isa.LayerDirective)]
    assert len(layers) == len(set(layers)) and "add_c" in layers

    by_dst = {op.field("dst"): op for op in _instrs(mod) if "dst" in dict(op.FIELDS)}
    sub = ops["sub"]
    ta, tb, ty = (nn.element_of(v) for v in (sub.lhs, sub.rhs, sub.output))
    ma, mb, shift = intmath.add_params(ta.scale.data, tb.scale.data, ty.scale.data, subtract=True)
    f = by_dst["sub"].fields()
    assert (f["ma"], f["mb"], f["shift"]) == (ma, mb, shift) and mb < 0
    assert (f["za"], f["zb"], f["zp"], f["lo"], f["hi"]) == (
        ta.zero_point.data,
        tb.zero_point.data,
        ty.zero_point.data,
        0,
        255,
    )
    mul = ops["mul"]
    tm = [nn.element_of(v) for v in (mul.lhs, mul.rhs, mul.output)]
    assert (by_dst["mul"].field("m"), by_dst["mul"].field("shift")) == intmath.mul_params(*(t.scale.data for t in tm))
    # the global average pool is one window over the whole (3x3) map
    gap = by_dst["gap"].fields()
    assert gap["kernel"] == [3, 3] and gap["count_include_pad"] == 1 and gap["pad"] == [0, 0, 0, 0]
    gt = [nn.element_of(v) for v in (ops["gap"].input, ops["gap"].output)]
    assert (gap["m"], gap["shift"]) == intmath.avgpool_params(gt[0].scale.data, gt[1].scale.data, 9, 8)
    # softmax axis is normalized to a positive axis
    assert by_dst["sm"].field("axis") == 1


def test_digital_program_simulates_bit_exactly_like_the_integer_reference(digital):
    from runtime.executor import run_program

    _, qmod = digital
    x = np.random.default_rng(3).normal(size=(5, 3, 6, 6)).astype(np.float32)
    want = run_int(qmod, {"x": x})
    mod = qmod.clone()
    convert_module(mod)
    program = emit_program(mod, load_config("ideal8"))
    assert [p.name for p in program.inputs] == ["x"] and [p.name for p in program.outputs] == ["sm", "z"]
    got, _ = run_program(program, {"x": x})
    for name in ("sm", "z"):
        np.testing.assert_array_equal(got[name], want[name])


def test_convert_rejects_float_and_unmapped_layers(tmp_path):
    path = tmp_path / "conv.onnx"
    w = h.make_tensor("w", T.FLOAT, [2, 1, 3, 3], np.ones(18, np.float32))
    g = h.make_graph(
        [h.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, ["N", 1, 5, 5])],
        [h.make_tensor_value_info("y", T.FLOAT, ["N", 2, 3, 3])],
        [w],
    )
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 13)]), path)
    module = import_onnx(path)
    with pytest.raises(ModelError, match="quantize"):
        convert_module(module.clone())
    annotate_ranges(module, {"x": np.random.default_rng(0).random((4, 1, 5, 5), dtype=np.float32)})
    quantize_ir(module)
    with pytest.raises(ModelError, match="convert-nn-to-xbar"):
        convert_module(module)


def test_emit_rejects_a_module_that_is_not_isa(digital):
    _, qmod = digital
    with pytest.raises(ValueError, match="convert-xbar-to-isa"):
        emit_program(qmod.clone(), load_config("isaac8"))


# ----------------------------------------------------------------------- IR tests (filecheck)


def _run_lines(path: Path) -> list[str]:
    return [line.split("RUN:", 1)[1].strip() for line in path.read_text().splitlines() if "RUN:" in line]


@pytest.mark.parametrize("case", sorted(FILECHECK_DIR.glob("*.mlir")), ids=lambda p: p.name)
def test_filecheck(case):
    """Each file's ``// RUN:`` line (``%s`` = the file) runs in a shell; filecheck checks the IR."""
    assert shutil.which("pimc") and shutil.which("filecheck"), "pimc and filecheck must be installed"
    runs = _run_lines(case)
    assert runs, f"{case.name} has no RUN line"
    for run in runs:
        cmd = run.replace("%s", str(case))
        res = subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=ROOT)
        assert res.returncode == 0, f"{cmd}\n{res.stdout}\n{res.stderr}"


_ = (Builtin, attach_config, run_int_codes)


@pytest.mark.parametrize(
    "pipeline",
    [
        None,
        'convert-nn-to-xbar,xbar-bit-slice{cell-bits=1 scheme="twos" order="msb"},xbar-tile{rows=64 cols=32},xbar-place,convert-xbar-to-isa',
        'convert-nn-to-xbar,xbar-bit-slice{cell-bits=3 dac-bits=2 scheme="differential"},xbar-tile{rows=100},xbar-place,convert-xbar-to-isa',
    ],
    ids=["default", "twos-c1-msb-64x32", "diff-c3-v2-100rows"],
)
def test_compiled_example_simulates_bit_exactly_on_ideal8(pipeline):
    """The MNIST example through the whole compiler, run by the simulator on the lossless machine,
    equals the integer reference of the same quantized network, code for code."""
    from pimc.driver import QuantOptions, compile_model
    from runtime.executor import run_program

    quant = QuantOptions(calibration=str(ROOT / "examples" / "mnist_cnn" / "calib.npy"))
    c = compile_model(ROOT / "examples" / "mnist_cnn" / "model.onnx", "ideal8", quant, pipeline)
    program, module_q = c.program, c.quantized
    x = np.load(ROOT / "examples" / "mnist_cnn" / "samples.npy")
    name = program.inputs[0].name
    want = run_int(module_q, {name: x})
    got, _ = run_program(program, {name: x})
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    # the embedded machine is the one the pass options mapped to
    xb = program.config["crossbar"]
    geometry = {"default": (2, 1, 128, 128), "twos-c1-msb-64x32": (1, 1, 64, 32), "diff-c3-v2-100rows": (3, 2, 100, 128)}
    case = "default" if pipeline is None else "twos-c1-msb-64x32" if "twos" in pipeline else "diff-c3-v2-100rows"
    assert (xb["cell_bits"], xb["dac_bits"], xb["rows"], xb["cols"]) == geometry[case]

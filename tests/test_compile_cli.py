"""`pimc compile` and `pimc opt` from the command line: default and custom pipelines, emit levels,
--print-pipeline accepted back by -p, errors, and exact text/binary round trips of real programs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from pimc.cli import main
from runtime.asm import assemble, disassemble
from runtime.container import load_program, program_stats, read_program, write_program

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mnist_cnn"
MODEL, CALIB = EXAMPLE / "model.onnx", EXAMPLE / "calib.npy"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def pimc(*args: str, ok: bool = True):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def compile_example(tmp_path: Path, name: str, *extra: str) -> Path:
    out = tmp_path / f"{name}.pimx"
    pimc("compile", MODEL, "--calibration", CALIB, "-o", out, *extra)
    return out


def assert_round_trips(path: Path) -> None:
    """disasm -> asm gives the identical file bytes; the binary reads back to the same text."""
    data = path.read_bytes()
    program = read_program(data, str(path))
    text = disassemble(program)
    assert write_program(assemble(text, "disasm")) == data
    assert disassemble(read_program(write_program(program), "again")) == text


@pytest.fixture(scope="module")
def default_program(tmp_path_factory) -> Path:
    return compile_example(tmp_path_factory.mktemp("default"), "mnist")


def test_print_pipeline_output_is_accepted_by_p_and_gives_the_same_program(tmp_path, default_program):
    text = pimc("compile", "--print-pipeline").output.strip()
    assert text.endswith("convert-xbar-to-isa") and "\n" not in text
    again = compile_example(tmp_path, "again", "-p", text)
    assert again.read_bytes() == default_program.read_bytes()


def test_default_pipeline_program_round_trips_exactly(default_program):
    program = load_program(default_program)
    assert len(program.xbars) == 24 and program.instrs[-1].opcode == "halt"
    assert_round_trips(default_program)


def test_custom_pipeline_changes_the_mapping_as_its_options_say(tmp_path):
    """1-bit cells: the 784x64 gemm needs ceil(784/128) * ceil((64*8 + 1)/128) = 7*5 crossbars."""
    out = compile_example(
        tmp_path,
        "c1",
        "-p",
        "convert-nn-to-xbar,xbar-bit-slice{cell-bits=1},xbar-tile,xbar-place,convert-xbar-to-isa",
    )
    program = load_program(out)
    fc = [i for i in program.instrs if i.opcode == "mvm" and i.layer == "/9/Gemm"]
    assert len(fc) == 7 * 5
    assert max(int(program.const(x.image).max()) for x in program.xbars) == 1
    assert_round_trips(out)


def test_emit_levels(tmp_path, default_program):
    base = ["compile", MODEL, "--calibration", CALIB]
    assert "nn.conv2d" in pimc(*base, "--emit", "nn").output
    quant = pimc(*base, "--emit", "quant").output
    assert "!nn.q<u8" in quant and "xbar.layer" not in quant
    xbar_ir = pimc(*base, "--emit", "xbar").output
    assert "xbar.crossbar" in xbar_ir and "isa." not in xbar_ir
    isa_ir = pimc(*base, "--emit", "isa").output
    assert isa_ir.count("isa.mvm") == 24 and "isa.halt" in isa_ir
    asm = tmp_path / "mnist.s"
    pimc(*base, "--emit", "asm", "-o", asm)
    assert write_program(assemble(asm.read_text(), str(asm))) == default_program.read_bytes()


def test_stats_table_lists_every_layer_and_the_totals():
    out = pimc("compile", MODEL, "--calibration", CALIB, "--stats", "--emit", "xbar", "-o", "/dev/null").output
    for layer in ("/0/Conv", "/4/Conv", "/9/Gemm", "/11/Gemm", "total"):
        assert layer in out
    assert "utilization" in out and "chips: 1" in out
    row = next(line for line in out.splitlines() if "/9/Gemm" in line)
    assert re.search(r"\b21\b", row)  # 7 row blocks x 3 column blocks (2-bit cells, offset)


def test_float_model_without_calibration_says_how_to_give_it():
    res = pimc("compile", MODEL, ok=False)
    assert res.exit_code == 2 and "--calibration" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    "pipeline, words",
    [
        ("convert-nn-to-xbar,no-such-pass", ["no-such-pass", "available passes", "xbar-tile"]),
        ("xbar-tile{bogus=3}", ["xbar-tile", "bogus", "rows"]),
        ("xbar-tile{", ["bad pass pipeline"]),
    ],
)
def test_bad_pipelines_are_clear_errors(pipeline, words):
    res = pimc("compile", MODEL, "--calibration", CALIB, "-p", pipeline, ok=False)
    assert res.exit_code == 2 and res.output.startswith("error: ")
    for w in words:
        assert w in res.output


def test_emit_program_needs_code_generation_in_the_pipeline():
    res = pimc("compile", MODEL, "--calibration", CALIB, "-p", "convert-nn-to-xbar,xbar-bit-slice", ok=False)
    assert res.exit_code == 2 and "convert-xbar-to-isa" in res.output and "--emit xbar" in res.output


def test_opt_runs_codegen_on_textual_ir_like_compile(tmp_path):
    xbar_ir = tmp_path / "mnist.xbar.mlir"
    pimc("compile", MODEL, "--calibration", CALIB, "--emit", "xbar", "-o", xbar_ir)
    want = pimc("compile", MODEL, "--calibration", CALIB, "--emit", "isa").output
    got = pimc("opt", xbar_ir, "-p", "convert-xbar-to-isa").output
    assert got == want


def test_opt_runs_the_mapping_passes_with_options_and_prints_after_each(tmp_path):
    quant_ir = tmp_path / "mnist.quant.mlir"
    pimc("compile", MODEL, "--calibration", CALIB, "--emit", "quant", "-o", quant_ir)
    res = pimc(
        "opt",
        quant_ir,
        "-c",
        "isaac16",
        "-p",
        "convert-nn-to-xbar,xbar-bit-slice{cell-bits=4},xbar-tile,xbar-place,convert-xbar-to-isa",
        "--print-ir-after-all",
    )
    dumps = re.findall(r"IR Dump After (\S+)", res.output)
    assert dumps == ["convert-nn-to-xbar", "xbar-bit-slice", "xbar-tile", "xbar-place", "convert-xbar-to-isa"]
    assert "cell_bits = 4" in res.output and res.output.rstrip().endswith("}")


def test_opt_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.mlir"
    bad.write_text("builtin.module {\n  isa.mvm {xbar = 0 : i64\n}\n")
    res = pimc("opt", bad, "-p", "convert-xbar-to-isa", ok=False)
    assert res.exit_code == 2 and "bad.mlir" in res.output
    res = pimc("opt", tmp_path / "missing.mlir", "-p", "", ok=False)
    assert res.exit_code == 2 and "does not exist" in res.output


def test_the_installed_command_runs_the_default_pipeline(tmp_path):
    """The console script, in a fresh process, as a user runs it."""
    out = tmp_path / "cli.pimx"
    res = subprocess.run(
        [sys.executable, "-m", "pimc.cli", "compile", str(MODEL), "--calibration", str(CALIB), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert program_stats(load_program(out))["crossbars"] == 24


# ------------------------------------------------------------------- light backend-test models


def _light_calibration(tmp_path: Path, name: str) -> tuple[Path, Path]:
    model = LIGHT / f"light_{name}.onnx"
    proto = onnx.load(str(model))
    init = {i.name for i in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in init)
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    cal = tmp_path / f"{name}.npy"
    np.save(cal, np.random.default_rng(0).normal(size=[2, *shape[1:]]).astype(np.float32))
    return model, cal


@pytest.mark.slow
@pytest.mark.parametrize("name", ["squeezenet", "shufflenet", "bvlc_alexnet", "zfnet512", "inception_v1", "inception_v2", "densenet121"])
def test_light_models_compile_and_round_trip(tmp_path, name):
    model, cal = _light_calibration(tmp_path, name)
    out = tmp_path / f"{name}.pimx"
    pimc("compile", model, "--calibration", cal, "-o", out)
    assert_round_trips(out)


@pytest.mark.slow
@pytest.mark.parametrize("name, config", [("resnet50", "isaac8"), ("resnet50", "isaac16"), ("vgg19", "isaac8")])
def test_light_resnet50_and_vgg19_compile(tmp_path, name, config):
    """Scale: ~7k (ResNet-50) and ~36k (VGG-19) crossbars; the program grows with crossbars, not pixels."""
    model, cal = _light_calibration(tmp_path, name)
    out = tmp_path / f"{name}.pimx"
    res = pimc("compile", model, "-c", config, "--calibration", cal, "-o", out, "--stats")
    program = load_program(out)
    stats = program_stats(program)
    mvms = sum(1 for i in program.instrs if i.opcode == "mvm")
    assert mvms == stats["crossbars"] > 5000
    assert stats["instructions"] - mvms < 10 * 250  # a few instructions per layer besides the mvms
    chips = int(re.search(r"chips: (\d+)", res.output).group(1))
    per_chip = program.config["chip"]["tiles"] * program.config["tile"]["imas"] * program.config["ima"]["crossbars"]
    assert chips >= -(-stats["crossbars"] // per_chip)  # at least as many chips as the crossbars need
    if (name, config) == ("resnet50", "isaac8"):
        assert_round_trips(out)


def test_isa_text_of_a_real_program_parses_back_unchanged(tmp_path):
    isa_ir = tmp_path / "mnist.isa.mlir"
    pimc("compile", MODEL, "--calibration", CALIB, "--emit", "isa", "-o", isa_ir)
    again = pimc("opt", isa_ir, "-p", "").output
    assert again == isa_ir.read_text()

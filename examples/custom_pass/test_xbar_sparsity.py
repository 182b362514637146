"""The example plugin through the real CLI: its numbers match the compiled program's images."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "mnist_cnn"
PLUGIN = HERE / "xbar_sparsity.py"


def _compile(tmp_path: Path, scheme: str, *extra: str) -> subprocess.CompletedProcess:
    pipeline = (
        f'convert-nn-to-xbar,xbar-bit-slice{{scheme="{scheme}"}},xbar-tile,xbar-place,'
        f'xbar-report-sparsity{{output="{tmp_path / (scheme + ".json")}"}},convert-xbar-to-isa'
    )
    cmd = [sys.executable, "-m", "pimc.cli", "compile", str(EXAMPLE / "model.onnx"), "--calibration", str(EXAMPLE / "calib.npy")]
    cmd += ["--plugin", str(PLUGIN), "-p", pipeline, "-o", str(tmp_path / f"{scheme}.pimx"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.parametrize("scheme", ["offset", "differential"])
def test_report_matches_the_program_images(tmp_path, scheme):
    from runtime.container import load_program

    res = _compile(tmp_path, scheme)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / f"{scheme}.json").read_text())
    program = load_program(tmp_path / f"{scheme}.pimx")
    layer_of = {i.fields["xbar"]: i.layer for i in program.instrs if i.opcode == "mvm"}
    for entry in report["layers"]:
        images = [program.const(x.image) for x in program.xbars if layer_of[x.id] == entry["layer"]]
        assert entry["crossbars"] == len(images)
        cells = sum(im.size for im in images)
        zeros = sum(int((im == 0).sum()) for im in images)
        assert entry["cells"] == cells
        assert entry["zero_cells"] == pytest.approx(zeros / cells)
        assert entry["zero_cols"] == sum(int((im == 0).all(axis=0).sum()) for im in images)
        assert entry["zero_rows"] == sum(int((im == 0).all(axis=1).sum()) for im in images)
    assert len(report["layers"]) == 4


def test_differential_weights_store_more_zero_cells_than_offset(tmp_path):
    for scheme in ("offset", "differential"):
        assert _compile(tmp_path, scheme).returncode == 0
    off = json.loads((tmp_path / "offset.json").read_text())["zero_cells"]
    diff = json.loads((tmp_path / "differential.json").read_text())["zero_cells"]
    assert diff > off > 0


def test_annotations_in_the_ir_and_table_on_stderr(tmp_path):
    cmd = [sys.executable, "-m", "pimc.cli", "compile", str(EXAMPLE / "model.onnx"), "--calibration", str(EXAMPLE / "calib.npy")]
    cmd += ["--plugin", str(PLUGIN), "-p", "convert-nn-to-xbar,xbar-bit-slice,xbar-tile,xbar-place,xbar-report-sparsity", "--emit", "xbar"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert len(re.findall(r"sparsity\.zero_cells = [0-9.e+-]+ : f64", res.stdout)) == 24
    assert "crossbar sparsity" in res.stderr and "/9/Gemm" in res.stderr


def test_without_the_plugin_the_pass_is_unknown(tmp_path):
    cmd = [sys.executable, "-m", "pimc.cli", "compile", str(EXAMPLE / "model.onnx"), "--calibration", str(EXAMPLE / "calib.npy")]
    cmd += ["-p", "convert-nn-to-xbar,xbar-bit-slice,xbar-tile,xbar-report-sparsity,convert-xbar-to-isa"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2 and "'xbar-report-sparsity'" in res.stderr and "--plugin" in res.stderr


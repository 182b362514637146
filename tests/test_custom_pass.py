"""The example plugin (examples/custom_pass) as a user would load it: from its file, through
pimc.pipeline and through `pimc opt --plugin` on textual IR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from pimc import pipeline as pl
from pimc.cli import main

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "custom_pass" / "xbar_sparsity.py"
IR = Path(__file__).parent / "filecheck" / "isa" / "conv_gemm.mlir"  # a tiled conv + gemm


def test_plugin_file_defines_the_pass():
    passes = pl.load_plugin(PLUGIN)
    assert list(passes) == ["xbar-report-sparsity"]
    sparsity = __import__(passes["xbar-report-sparsity"].__module__).crossbar_sparsity
    image = np.array([[0, 0, 3], [0, 2, 0]], dtype=np.uint8)
    assert sparsity(image) == {"cells": 6, "zero_cells": 4 / 6, "zero_rows": 0, "zero_cols": 1}


def test_opt_with_plugin_annotates_every_crossbar_of_textual_ir(tmp_path):
    out = tmp_path / "report.json"
    res = CliRunner().invoke(
        main, ["opt", str(IR), "--plugin", str(PLUGIN), "-p", f'xbar-report-sparsity{{output="{out}"}}'], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    assert res.output.count("sparsity.zero_cells") == 6  # 2 conv + 4 gemm crossbars
    # conv crossbar 0 of the IR: 32 cells, 17 of them 0; column 1 all zero
    assert "sparsity.zero_cells = 5.312500e-01 : f64, sparsity.zero_rows = 0 : i64, sparsity.zero_cols = 1 : i64" in res.output
    import json

    report = json.loads(out.read_text())
    assert [e["layer"] for e in report["layers"]] == ["conv", "fc"]
    assert report["layers"][0]["crossbars"] == 2 and report["layers"][0]["cells"] == 32 + 4


def test_plugin_pass_then_codegen_in_one_pipeline():
    res = CliRunner().invoke(
        main, ["opt", str(IR), "--plugin", str(PLUGIN), "-p", "xbar-report-sparsity{quiet=true},convert-xbar-to-isa"], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    assert res.output.count("isa.mvm") == 6 and "xbar." not in res.output

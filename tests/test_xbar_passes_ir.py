"""IR tests of the mapping passes: the filecheck files in tests/filecheck/xbar, run from the command
line (``pimc opt`` piped into ``filecheck``, lit-style ``// RUN:`` lines), plus CLI error cases."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "filecheck" / "xbar"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    local = BIN / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def _run_lines(path: Path) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^// RUN: (.*)$", path.read_text(), re.M)]


CASES = [(p, i, line) for p in sorted(HERE.glob("*.mlir")) for i, line in enumerate(_run_lines(p))]


def test_every_file_has_run_lines():
    assert CASES and all(_run_lines(p) for p in HERE.glob("*.mlir"))


@pytest.mark.parametrize("path, index, line", CASES, ids=[f"{p.stem}-{i}" for p, i, _ in CASES])
def test_filecheck(path: Path, index: int, line: str):
    cmd = line.replace("%s", shlex.quote(str(path))).replace("%S", shlex.quote(str(path.parent)))
    cmd = re.sub(r"(^|\| *)pimc ", lambda m: f"{m.group(1)}{shlex.quote(_tool('pimc'))} ", cmd)
    cmd = re.sub(r"\| *filecheck ", f"| {shlex.quote(_tool('filecheck'))} ", cmd)
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{line}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def _opt(text: str, pipeline: str, tmp_path: Path) -> subprocess.CompletedProcess:
    f = tmp_path / "in.mlir"
    f.write_text(text)
    return subprocess.run(
        [_tool("pimc"), "opt", str(f), "-c", "isaac8", "-p", pipeline], capture_output=True, text=True, timeout=120
    )


def _layer_text() -> str:
    text = (HERE / "tile.mlir").read_text()
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith("//"))


def test_tile_before_bit_slice_is_a_clear_error(tmp_path):
    proc = _opt(_layer_text(), "xbar-tile", tmp_path)
    assert proc.returncode == 2
    assert "error: xbar-tile: layer 'fc0' is not bit-sliced; run xbar-bit-slice before xbar-tile" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_scheme_option_is_a_clear_error(tmp_path):
    proc = _opt(_layer_text(), "xbar-bit-slice{scheme=magnitude}", tmp_path)
    assert proc.returncode == 2
    assert "scheme must be one of offset, differential, twos, got 'magnitude'" in proc.stderr


def test_ill_formed_crossbar_text_does_not_verify(tmp_path):
    good = subprocess.run(
        [_tool("pimc"), "opt", str(HERE / "tile.mlir"), "-c", "isaac8", "-p",
         "xbar-bit-slice{cell-bits=2 scheme=offset flip=false},xbar-tile{rows=2 cols=3}"],
        capture_output=True, text=True, timeout=120,
    )
    assert good.returncode == 0, good.stderr
    # a cell value of 7 does not fit 2-bit cells
    bad = good.stdout.replace("image = dense<[[1, 2, 2], [3, 2, 0]]>", "image = dense<[[1, 2, 2], [3, 2, 7]]>", 1)
    assert bad != good.stdout
    proc = _opt(bad, "xbar-place", tmp_path)
    assert proc.returncode != 0
    assert "a cell value exceeds 2^cell_bits - 1 = 3" in proc.stderr
    # a row table naming an input row outside K = 3
    bad = good.stdout.replace("row_table = dense<2> : tensor<1xi32>", "row_table = dense<5> : tensor<1xi32>", 1)
    proc = _opt(bad, "xbar-place", tmp_path)
    assert proc.returncode != 0 and "row_table entry >= K = 3" in proc.stderr

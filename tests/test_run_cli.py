"""`pimc run` / `simulate` / `eval` from the command line: outputs, report, summary, and user errors
with their exit status (no tracebacks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pimc.cli import main
from runtime.container import save_program, write_program
from test_executor import dense_program

W = np.array([[1, -2], [3, 4], [-5, 6]])


@pytest.fixture()
def prog_file(tmp_path):
    path = tmp_path / "p.pimx"
    save_program(dense_program(W, shift=np.zeros(2)), path)
    return path


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_run_writes_outputs_and_report(tmp_path, prog_file):
    x = np.array([[1, 2, 3], [4, 5, 6], [0, 0, 9]], dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    res = _run("run", prog_file, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--report", tmp_path / "r.json", "--batch-size", 2)
    assert res.exit_code == 0, res.output
    y = np.load(tmp_path / "y.npy")
    want = np.clip(x.astype(np.int64) @ W, 0, 255)
    np.testing.assert_array_equal(y, want.astype(np.float32))
    rep = json.loads((tmp_path / "r.json").read_text())
    for key in ("crossbars", "chips", "cycles", "latency_s", "throughput_inferences_per_s", "energy_j",
                "energy_breakdown_j", "counters", "layers", "simulation_wall_s", "batch"):
        assert key in rep
    assert rep["batch"] == 3 and rep["per"] == "inference"
    assert {"crossbar", "dac", "sample_hold", "adc", "shift_add", "buffer", "interconnect", "digital", "leakage"} <= set(rep["energy_breakdown_j"])
    assert rep["layers"][0]["name"] == "fc" and rep["layers"][0]["path"] == "fast"
    assert "per inference" in res.output and "energy breakdown" in res.output


def test_no_fast_path_gives_the_same_outputs_and_counters(tmp_path, prog_file):
    np.save(tmp_path / "x.npy", np.arange(12, dtype=np.float32).reshape(4, 3) * 7)
    a = _run("run", prog_file, "-i", tmp_path / "x.npy", "-o", tmp_path / "a.npy", "--report", tmp_path / "a.json")
    b = _run("run", prog_file, "-i", tmp_path / "x.npy", "-o", tmp_path / "b.npy", "--report", tmp_path / "b.json", "--no-fast-path")
    assert a.exit_code == b.exit_code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    ra, rb = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b.json").read_text())
    assert ra["run"]["counters"] == rb["run"]["counters"]
    assert rb["layers"][0]["path"] == "bit-level" and rb["fast_path"] is False


def test_wrong_input_shape_exit_status(tmp_path, prog_file):
    np.save(tmp_path / "x.npy", np.zeros((2, 5), np.float32))
    res = _run("run", prog_file, "-i", tmp_path / "x.npy")
    assert res.exit_code == 2
    assert res.output.startswith("error: ") and "x.npy" in res.output and "[N, 3]" in res.output
    assert "Traceback" not in res.output


def test_wrong_input_dtype_exit_status(tmp_path, prog_file):
    np.save(tmp_path / "x.npy", np.array([["a", "b", "c"]]))
    res = _run("run", prog_file, "-i", tmp_path / "x.npy")
    assert res.exit_code == 2 and "dtype" in res.output


def test_corrupt_and_truncated_program_exit_status(tmp_path, prog_file):
    np.save(tmp_path / "x.npy", np.zeros((1, 3), np.float32))
    data = bytearray(prog_file.read_bytes())
    data[len(data) // 2] ^= 0x5A
    (tmp_path / "bad.pimx").write_bytes(bytes(data))
    res = _run("run", tmp_path / "bad.pimx", "-i", tmp_path / "x.npy")
    assert res.exit_code == 3 and res.output.startswith("error: ")
    (tmp_path / "short.pimx").write_bytes(bytes(data[:20]))
    res = _run("run", tmp_path / "short.pimx", "-i", tmp_path / "x.npy")
    assert res.exit_code == 3 and res.output.startswith("error: ")
    res = _run("run", tmp_path / "missing.pimx", "-i", tmp_path / "x.npy")
    assert res.exit_code == 3 and "no such program file" in res.output


def test_other_format_version_exit_status(tmp_path):
    import hashlib
    import struct

    data = bytearray(write_program(dense_program(W)))
    struct.pack_into("<HH", data, 4, 2, 0)  # a well-formed file of format version 2.0
    data[-32:] = hashlib.sha256(bytes(data[:-32])).digest()
    (tmp_path / "v2.pimx").write_bytes(bytes(data))
    np.save(tmp_path / "x.npy", np.zeros((1, 3), np.float32))
    res = _run("run", tmp_path / "v2.pimx", "-i", tmp_path / "x.npy")
    assert res.exit_code == 3 and "version 2.0" in res.output and res.output.startswith("error: ")


def test_missing_input_file_exit_status(tmp_path, prog_file):
    res = _run("run", prog_file, "-i", tmp_path / "nothing.npy")
    assert res.exit_code == 2 and "no such input file" in res.output


# ------------------------------------------------------------------ simulate and eval (real model)

EXAMPLE = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "mnist_cnn"


def test_simulate_compiles_and_runs_the_example(tmp_path):
    res = _run("simulate", EXAMPLE / "model.onnx", "-i", EXAMPLE / "samples.npy", "-c", "isaac8",
               "--calibration", EXAMPLE / "calib.npy", "-o", tmp_path / "y.npy", "--report", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (8, 10) and y.dtype == np.float32
    labels = np.load(EXAMPLE / "sample_labels.npy")
    assert (y.argmax(1) == labels).mean() >= 0.75
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["crossbars"] > 0 and rep["energy_j"] > 0 and rep["batch"] == 8
    assert [L["name"] for L in rep["layers"] if L["crossbars"]]  # conv/gemm layers used crossbars


def test_simulate_without_calibration_is_a_clear_error():
    res = _run("simulate", EXAMPLE / "model.onnx", "-i", EXAMPLE / "samples.npy")
    assert res.exit_code == 2 and "calibration" in res.output


def test_eval_reports_both_accuracies(tmp_path):
    import shutil

    shutil.copy(EXAMPLE / "model.onnx", tmp_path / "model.onnx")
    res = _run("compile", tmp_path / "model.onnx", "-c", "isaac8", "--calibration", EXAMPLE / "calib.npy", "-o", tmp_path / "model.pimx")
    assert res.exit_code == 0, res.output
    np.save(tmp_path / "x.npy", np.load(EXAMPLE / "test_images.npy")[:300])
    np.save(tmp_path / "y.npy", np.load(EXAMPLE / "test_labels.npy")[:300])
    # the float model defaults to the .onnx beside the program
    res = _run("eval", tmp_path / "model.pimx", "--data", tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "--report", tmp_path / "e.json")
    assert res.exit_code == 0, res.output
    acc = json.loads((tmp_path / "e.json").read_text())["accuracy"]
    assert acc["images"] == 300 and acc["float_engine"] == "onnxruntime"
    assert acc["simulator_top1"] > 0.9 and acc["float_top1"] > 0.9 and acc["agreement"] > 0.95
    assert "simulator" in res.output and "agreement" in res.output
    # labels of the wrong length, and no float model to compare with
    np.save(tmp_path / "bad.npy", np.zeros(5, np.int64))
    res = _run("eval", tmp_path / "model.pimx", "--data", tmp_path / "x.npy", "--labels", tmp_path / "bad.npy")
    assert res.exit_code == 2 and "5 labels for 300 images" in res.output
    (tmp_path / "model.onnx").unlink()
    res = _run("eval", tmp_path / "model.pimx", "--data", tmp_path / "x.npy", "--labels", tmp_path / "y.npy")
    assert res.exit_code == 2 and "--model" in res.output

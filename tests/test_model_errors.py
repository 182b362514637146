"""User mistakes with models and inputs: one clear ``error:`` line naming the culprit, exit
status 2, and never a traceback. Every case runs the real ``pimc reference`` command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from onnx import helper

from onnx_builders import graph_model, light_path, save

N = helper.make_node


def pimc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pimc.cli", *map(str, args)], capture_output=True, text=True, timeout=300)


def _assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert proc.stderr.startswith("error: "), proc.stderr
    for f in fragments:
        assert f in proc.stderr, f"{f!r} not in {proc.stderr!r}"
    return proc.stderr


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((1, 4, 8, 8), np.float32))
    return path


def _conv_model(tmp_path, **kw):
    w = np.ones((2, 4, 3, 3), np.float32)
    return save(graph_model([N("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], {"x": (1, 4, 8, 8)}, ["y"], {"w": w}, **kw), tmp_path)


def test_truncated_model(tmp_path, image):
    data = light_path("light_squeezenet").read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 3])
    _assert_user_error(pimc("reference", bad, "-i", image, "-o", tmp_path / "y.npy"), str(bad), "truncated")


def test_not_an_onnx_file(tmp_path, image):
    bad = tmp_path / "notes.onnx"
    bad.write_text("these are my notes, not a model\n" * 20)
    _assert_user_error(pimc("reference", bad, "-i", image, "-o", tmp_path / "y.npy"), str(bad), "not an ONNX model")


def test_missing_model_file(tmp_path, image):
    _assert_user_error(pimc("reference", tmp_path / "nope.onnx", "-i", image, "-o", tmp_path / "y.npy"), "nope.onnx")


def test_every_unsupported_node_is_listed_at_once(tmp_path, image):
    nodes = [
        N("Erf", ["x"], ["e"], name="erf_1"),
        N("Transpose", ["x"], ["t"], perm=[1, 0, 2, 3], name="moves_batch"),
        N("Relu", ["x"], ["r"], name="fine"),
        N("Relu", ["x"], ["r2"], name="fine2"),
        N("MatMul", ["r", "r2"], ["m"], name="two_runtime"),
        N("Conv", ["x", "w"], ["c"], auto_pad="SAME_UPPER", name="ok_conv"),
        N("Softmax", ["c"], ["s"], axis=0, name="batch_softmax"),
        N("Floor", ["s"], ["f"], name="floor_2"),
        N("Add", ["t", "m"], ["a"]),
        N("Add", ["a", "f"], ["a2"]),
        N("Add", ["a2", "e"], ["y"]),
    ]
    model = graph_model(nodes, {"x": (1, 4, 8, 8)}, {"y": ("N", 4, 8, 8)}, {"w": np.ones((4, 4, 3, 3), np.float32)})
    path = save(model, tmp_path)
    err = _assert_user_error(
        pimc("reference", path, "-i", image, "-o", tmp_path / "y.npy"),
        str(path),
        "5 unsupported nodes",
        "node 'erf_1' (Erf): operator Erf is not supported",
        "node 'moves_batch' (Transpose): attribute perm=[1, 0, 2, 3]",
        "node 'two_runtime' (MatMul): MatMul of two runtime tensors",
        "node 'batch_softmax' (Softmax): attribute axis=0",
        "node 'floor_2' (Floor)",
        "supported operators:",
    )
    assert "ok_conv" not in err and "fine" not in err


def test_reshape_that_moves_the_batch(tmp_path, image):
    nodes = [N("Reshape", ["x", "s"], ["y"], name="bad_reshape")]
    model = graph_model(nodes, {"x": (1, 4, 8, 8)}, {"y": (4, 64)}, {"s": np.array([4, 64], np.int64)})
    path = save(model, tmp_path)
    _assert_user_error(
        pimc("reference", path, "-i", image, "-o", tmp_path / "y.npy"),
        "node 'bad_reshape' (Reshape)", "does not keep the batch axis",
    )


def test_missing_dynamic_shape_then_given(tmp_path):
    nodes = [N("Conv", ["x", "w"], ["y"])]
    model = graph_model(nodes, {"x": ("N", 4, "H", "W")}, {"y": ("N", 2, "H2", "W2")}, {"w": np.ones((2, 4, 3, 3), np.float32)})
    path = save(model, tmp_path)
    x = tmp_path / "x.npy"
    np.save(x, np.ones((2, 4, 10, 12), np.float32))
    _assert_user_error(
        pimc("reference", path, "-i", x, "-o", tmp_path / "y.npy"),
        "input 'x' has a dynamic dimension 2 ('H')", "--input-shape x=",
    )
    ok = pimc("reference", path, "-i", x, "-o", tmp_path / "y.npy", "--input-shape", "x=1x4x10x12")
    assert ok.returncode == 0, ok.stderr
    assert np.load(tmp_path / "y.npy").shape == (2, 2, 8, 10)
    _assert_user_error(
        pimc("reference", path, "-i", x, "-o", tmp_path / "y.npy", "--input-shape", "x=1x5x10x12"),
        "disagrees with the model's static dimension 1 = 4",
    )
    _assert_user_error(
        pimc("reference", path, "-i", x, "-o", tmp_path / "y.npy", "--input-shape", "z=1x4x10x12"),
        "'z'", "model's inputs are 'x'",
    )


def test_wrong_input_shape(tmp_path):
    path = _conv_model(tmp_path)
    x = tmp_path / "wrong.npy"
    np.save(x, np.zeros((3, 4, 8, 9), np.float32))
    _assert_user_error(
        pimc("reference", path, "-i", x, "-o", tmp_path / "y.npy"),
        str(x), "input 'x' has shape [3, 4, 8, 9]", "expected [N, 4, 8, 8]",
    )


def test_wrong_input_rank_and_dtype(tmp_path):
    path = _conv_model(tmp_path)
    x = tmp_path / "rank.npy"
    np.save(x, np.zeros((4, 8, 8), np.float32))
    _assert_user_error(pimc("reference", path, "-i", x, "-o", tmp_path / "y.npy"), "has shape [4, 8, 8]", "expected [N, 4, 8, 8]")
    s = tmp_path / "strings.npy"
    np.save(s, np.full((1, 4, 8, 8), "a"))
    _assert_user_error(pimc("reference", path, "-i", s, "-o", tmp_path / "y.npy"), "dtype <U1", "numeric")
    z = tmp_path / "named.npz"
    np.savez(z, image=np.zeros((1, 4, 8, 8), np.float32), other=np.zeros(3))
    _assert_user_error(pimc("reference", path, "-i", z, "-o", tmp_path / "y.npy"), "missing 'x'", "unknown 'image', 'other'")
    t = tmp_path / "garbage.npy"
    t.write_text("no numpy here")
    _assert_user_error(pimc("reference", path, "-i", t, "-o", tmp_path / "y.npy"), str(t), "not a readable NumPy")


def test_int_without_calibration_says_how(tmp_path, image):
    path = _conv_model(tmp_path)
    _assert_user_error(pimc("reference", path, "-i", image, "-o", tmp_path / "y.npy", "--int"), "calibration", "--calibration")


def test_float_reference_command_writes_output(tmp_path, image):
    path = _conv_model(tmp_path)
    proc = pimc("reference", path, "-i", image, "-o", tmp_path / "y.npy")
    assert proc.returncode == 0, proc.stderr
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (1, 2, 8, 8) and y.dtype == np.float32


def test_several_inputs_and_outputs_use_npz(tmp_path):
    nodes = [N("Add", ["a", "b"], ["s"]), N("Relu", ["s"], ["r"])]
    path = save(graph_model(nodes, {"a": (1, 3), "b": (1, 3)}, ["s", "r"]), tmp_path)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 3), np.float32))
    _assert_user_error(pimc("reference", path, "-i", x, "-o", tmp_path / "y.npz"), "2 inputs (a, b)", ".npz")
    z = tmp_path / "x.npz"
    np.savez(z, a=np.full((2, 3), -1.0, np.float32), b=np.arange(6, dtype=np.float32).reshape(2, 3))
    _assert_user_error(pimc("reference", path, "-i", z, "-o", tmp_path / "y.npy"), "2 outputs (s, r)", ".npz")
    ok = pimc("reference", path, "-i", z, "-o", tmp_path / "y.npz")
    assert ok.returncode == 0, ok.stderr
    with np.load(tmp_path / "y.npz") as out:
        np.testing.assert_array_equal(out["s"], np.arange(6).reshape(2, 3) - 1.0)
        np.testing.assert_array_equal(out["r"], np.maximum(np.arange(6).reshape(2, 3) - 1.0, 0))


def test_int_reference_of_a_qdq_model_needs_no_calibration(tmp_path):
    """A model quantized by onnxruntime's static quantizer: --int adopts its scales and zero
    points (no --calibration), and agrees with onnxruntime's own run of the QDQ model."""
    from onnx_builders import EXAMPLE_DIR as root
    from onnx_builders import ort_run, quantize_example_with_onnxruntime

    qdq = quantize_example_with_onnxruntime(tmp_path, "QDQ")
    x = np.load(root / "samples.npy")[:32].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = pimc("reference", qdq, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--int")
    assert proc.returncode == 0, proc.stderr
    got, want = np.load(tmp_path / "y.npy"), ort_run(qdq, {"input": x})[0]
    assert np.mean(np.argmax(got, 1) == np.argmax(want, 1)) >= 0.95
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()

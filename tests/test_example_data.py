"""The committed MNIST example: files load with the documented shapes and dtypes, the held-out and
calibration sets are disjoint, and the float model really reaches its accuracy (computed here with
onnxruntime, not copied from the README)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist_cnn"


def _load(name: str) -> np.ndarray:
    return np.load(EXAMPLE / name, allow_pickle=False)


@pytest.mark.parametrize(
    "name, shape, dtype",
    [
        ("test_images.npy", (1200, 1, 28, 28), np.float32),
        ("test_labels.npy", (1200,), np.int64),
        ("samples.npy", (8, 1, 28, 28), np.float32),
        ("sample_labels.npy", (8,), np.int64),
        ("calib.npy", (256, 1, 28, 28), np.float32),
    ],
)
def test_array_shape_and_dtype(name, shape, dtype):
    a = _load(name)
    assert a.shape == shape
    assert a.dtype == dtype
    if a.dtype == np.float32:
        assert np.isfinite(a).all()
        assert a.min() >= 0.0 and a.max() <= 1.0
        assert a.max() > 0.5  # really scaled pixels, not all zero
        # pixels are k/255 (the documented preprocessing)
        np.testing.assert_allclose(a * 255.0, np.round(a * 255.0), atol=1e-3)
    else:
        assert a.min() >= 0 and a.max() <= 9


def test_held_out_labels_cover_all_digits():
    y = _load("test_labels.npy")
    assert np.bincount(y, minlength=10).tolist() == [120] * 10


def _rows(a: np.ndarray) -> set[bytes]:
    return {img.tobytes() for img in np.ascontiguousarray(a)}


def test_held_out_and_calibration_are_disjoint():
    test = _rows(_load("test_images.npy"))
    calib = _rows(_load("calib.npy"))
    assert len(test) == 1200  # no duplicate held-out images
    assert len(calib) == 256
    assert not test & calib


def test_samples_are_held_out_images():
    x = _load("test_images.npy")
    y = _load("test_labels.npy")
    index = {img.tobytes(): i for i, img in enumerate(x)}
    samples = _load("samples.npy")
    labels = _load("sample_labels.npy")
    for img, label in zip(samples, labels):
        i = index.get(img.tobytes())
        assert i is not None, "sample is not one of the held-out images"
        assert y[i] == label


def test_model_is_valid_with_dynamic_batch():
    import onnx
    m = onnx.load(str(EXAMPLE / "model.onnx"))
    onnx.checker.check_model(m, full_check=True)
    (inp,) = m.graph.input
    (out,) = m.graph.output
    assert inp.name == "input" and out.name == "logits"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in out.type.tensor_type.shape.dim[1:]] == [10]
    assert (EXAMPLE / "model.onnx").stat().st_size < 1_000_000


def test_onnxruntime_held_out_accuracy():
    import onnxruntime as ort  # in the `test` extra: a missing install is a failure, not a skip
    sess = ort.InferenceSession(str(EXAMPLE / "model.onnx"), providers=["CPUExecutionProvider"])
    x = _load("test_images.npy")
    y = _load("test_labels.npy")
    logits = sess.run(["logits"], {"input": x})[0]
    assert logits.shape == (1200, 10)
    acc = float(np.mean(logits.argmax(axis=1) == y))
    assert acc >= 0.95, acc
    # any batch size runs (dynamic batch axis) and gives the same logits
    one = sess.run(["logits"], {"input": x[:1]})[0]
    np.testing.assert_allclose(one, logits[:1], rtol=1e-5, atol=1e-5)

"""The real architectures of ONNX's backend test data: import, and float reference vs onnxruntime.

The light models store every weight as a ConstantOfShape fill (0.02), which makes all logits equal
and the softmax uniform, so a broken layer could hide. Each model is therefore checked twice: as
shipped (the files themselves, output compared), and with the same graph given random weights,
comparing both the softmax and the logits before it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_builders import (
    LIGHT_MODELS,
    float_vs_ort,
    light_path,
    logits_name,
    ort_run,
    randomize_weights,
    rel_err,
    runtime_inputs,
    save,
    with_outputs,
)

TOL = 1e-4


def _image(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 224, 224)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_as_shipped(name):
    path = light_path(name)
    (inp,) = runtime_inputs(onnx.load(path))
    err, ours, theirs = float_vs_ort(path, {inp.name: _image(1)})
    assert err <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_random_weights(tmp_path, name):
    model = randomize_weights(onnx.load(light_path(name)), seed=7)
    logits = logits_name(model)
    if logits:
        model = with_outputs(model, [logits])
    path = save(model, tmp_path, f"{name}_random.onnx")
    (inp,) = runtime_inputs(model)
    err, ours, theirs = float_vs_ort(path, {inp.name: _image(1, seed=3)})
    assert err <= TOL, f"{name}: relative error {err}"
    # the random weights make the outputs informative (not a constant vector)
    assert all(np.std(t) > 0 for t in theirs)


@pytest.mark.slow
def test_light_resnet50_dynamic_batch(tmp_path):
    """The file declares batch 1; pimc's IR has batch ``?`` and runs 2 images at once."""
    from pimc.frontend.onnx_import import import_onnx
    from pimc.reference.float_ref import run_float

    model = randomize_weights(onnx.load(light_path("light_resnet50")), seed=11)
    model = with_outputs(model, [logits_name(model)])
    path = save(model, tmp_path, "resnet50_random.onnx")
    (inp,) = runtime_inputs(model)
    module = import_onnx(path)
    fn_text = str(module)
    assert "tensor<?x3x224x224xf32>" in fn_text
    x = _image(2, seed=5)
    ours = run_float(module, {inp.name: x})
    for out_name, got in ours.items():
        assert got.shape[0] == 2
    theirs = [ort_run(path, {inp.name: x[i : i + 1]}) for i in range(2)]
    for k, got in enumerate(ours.values()):
        want = np.concatenate([t[k] for t in theirs])
        assert rel_err(got, want) <= TOL

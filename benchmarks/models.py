"""Benchmark models built by the project: a ResNet-18-class and a MobileNetV2-class CNN at 224x224.

Both are written with plain ``onnx.helper`` (no torch), opset 13, with a dynamic batch dimension:
input ``input`` float32 [batch, 3, 224, 224], output ``logits`` float32 [batch, 1000]. The topologies
are the standard ones (torchvision's ``resnet18`` and ``mobilenet_v2``, width 1.0); the weights are
random. They are generated when the benchmarks run and are not committed::

    python benchmarks/models.py OUTDIR          # writes OUTDIR/resnet18.onnx, OUTDIR/mobilenetv2.onnx

How the random weights are drawn (seeded, NumPy ``default_rng(seed)``):

* Conv weights ~ N(0, 2 / fan_in) (He), fan_in = in_channels / groups * kh * kw; convs have no bias,
  each is followed by a BatchNormalization node, as in the originals (pimc's front end folds them).
* BatchNormalization: gamma ~ U(0.5, 1.5) (U(0.25, 0.75) on the last BN of a residual branch, so the
  residual sums do not blow up), beta ~ N(0, 0.1^2), and running mean/variance set to the *actual*
  per-channel mean/variance of that BN's input when the network is run (in float64 NumPy) on
  ``random_inputs(4, seed)``: standard-normal images, i.e. like ImageNet inputs after the usual
  mean/std normalisation. So every BN really normalises, activations stay O(1) through the whole
  network, and folding BN gives per-channel scales that differ, as in a trained model.
* Final Gemm: weights ~ N(0, 1 / fan_in), then scaled and given a bias so that on the stats batch the
  logits have zero mean per class and unit standard deviation between images (plus N(0, 0.01^2) bias noise).
  Without this, the part of the pooled features common to all images dominates the logits and every
  image gets the same top-1 class.

Use ``random_inputs`` (standard-normal) for calibration and benchmark inputs: that is the input
distribution the BN statistics were taken on. ``check_model`` runs onnx.checker and onnxruntime on a
random batch and checks the logits are finite, O(1), differ between images, and agree with the
NumPy forward pass used to build the model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8
IMAGE = 224
NUM_CLASSES = 1000
BN_EPS = 1e-5
STATS_BATCH = 4

# torchvision mobilenet_v2: expansion t, output channels c, repeats n, first stride s
MOBILENETV2_STAGES = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def random_inputs(n: int, seed: int = 0, size: int = IMAGE) -> np.ndarray:
    """Standard-normal float32 images [n, 3, size, size] (normalised-ImageNet-like)."""
    return np.random.default_rng(seed + 10_000).standard_normal((n, 3, size, size)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# NumPy float64 forward ops (used to take real BN statistics while building, and to check the export)


def _np_conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int, groups: int) -> np.ndarray:
    n, c, _, _ = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    ho, wo = win.shape[2], win.shape[3]
    if groups == 1:
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)
        y = cols @ w.reshape(o, -1).T
        return y.reshape(n, ho, wo, o).transpose(0, 3, 1, 2)
    if groups == c == o and cg == 1:  # depthwise
        return np.einsum("nchwij,cij->nchw", win, w[:, 0], optimize=True)
    raise NotImplementedError("only dense and depthwise convolutions are used here")


def _np_maxpool(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return win.max(axis=(4, 5))


# ---------------------------------------------------------------------------------------------------


class _Builder:
    """Emits ONNX nodes and initializers while running the same network in NumPy float64."""

    def __init__(self, seed: int, x: np.ndarray):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.val = {"input": x.astype(np.float64)}  # tensor name -> NumPy value on the stats batch
        self.stats: list[tuple[str, float, float]] = []  # (tensor, std, max |x|) for the report
        self.clip_bounds = False  # relu6.min / relu6.max initializers emitted

    def _init(self, name: str, a: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(a.astype(np.float32)), name))
        return name

    def _node(self, op: str, inputs: list[str], output: str, value: np.ndarray, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        self.val[output] = value
        self.stats.append((output, float(value.std()), float(np.abs(value).max())))
        return output

    def conv(self, x: str, name: str, cout: int, k: int, stride: int = 1, groups: int = 1) -> str:
        xv = self.val[x]
        cin = xv.shape[1]
        pad = k // 2
        fan_in = cin // groups * k * k
        w = self.rng.standard_normal((cout, cin // groups, k, k)) * np.sqrt(2.0 / fan_in)
        w = w.astype(np.float32).astype(np.float64)  # the NumPy pass uses exactly the stored weights
        y = _np_conv(xv, w, stride, pad, groups)
        return self._node(
            "Conv", [x, self._init(f"{name}.weight", w)], name, y,
            kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
            dilations=[1, 1], group=groups,
        )

    def bn(self, x: str, name: str, residual_last: bool = False) -> str:
        xv = self.val[x]
        c = xv.shape[1]
        lo, hi = (0.25, 0.75) if residual_last else (0.5, 1.5)
        gamma = self.rng.uniform(lo, hi, c).astype(np.float32).astype(np.float64)
        beta = (self.rng.standard_normal(c) * 0.1).astype(np.float32).astype(np.float64)
        mean = xv.mean(axis=(0, 2, 3)).astype(np.float32).astype(np.float64)
        var = xv.var(axis=(0, 2, 3)).astype(np.float32).astype(np.float64)
        scale = gamma / np.sqrt(var + BN_EPS)
        y = (xv - mean[None, :, None, None]) * scale[None, :, None, None] + beta[None, :, None, None]
        ins = [x] + [self._init(f"{name}.{p}", a) for p, a in
                     (("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var))]
        return self._node("BatchNormalization", ins, name, y, epsilon=BN_EPS, momentum=0.9)

    def relu(self, x: str, name: str) -> str:
        return self._node("Relu", [x], name, np.maximum(self.val[x], 0.0))

    def relu6(self, x: str, name: str) -> str:
        if not self.clip_bounds:
            self._init("relu6.min", np.array(0.0, np.float32))
            self._init("relu6.max", np.array(6.0, np.float32))
            self.clip_bounds = True
        return self._node("Clip", [x, "relu6.min", "relu6.max"], name, np.clip(self.val[x], 0.0, 6.0))

    def add(self, a: str, b: str, name: str) -> str:
        return self._node("Add", [a, b], name, self.val[a] + self.val[b])

    def maxpool(self, x: str, name: str, k: int = 3, stride: int = 2, pad: int = 1) -> str:
        return self._node(
            "MaxPool", [x], name, _np_maxpool(self.val[x], k, stride, pad),
            kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
        )

    def head(self, x: str, num_classes: int = NUM_CLASSES) -> str:
        pooled = self._node("GlobalAveragePool", [x], "avgpool", self.val[x].mean(axis=(2, 3), keepdims=True))
        flat = self._node("Flatten", [pooled], "flatten", self.val[pooled].reshape(len(self.val[x]), -1), axis=1)
        fv = self.val[flat]
        w = self.rng.standard_normal((num_classes, fv.shape[1])) / np.sqrt(fv.shape[1])
        # Centre and scale the logits on the stats batch (data-dependent init of the classifier):
        # otherwise the input-independent part of the pooled features dominates them and every image
        # gets the same top-1 class, which would make top-1 agreement checks meaningless.
        z = fv @ w.T
        w = w / (z - z.mean(axis=0)).std()
        b = -(fv.mean(axis=0) @ w.T) + self.rng.standard_normal(num_classes) * 0.01
        w = w.astype(np.float32)
        b = b.astype(np.float32)
        y = fv @ w.astype(np.float64).T + b.astype(np.float64)
        return self._node(
            "Gemm", [flat, self._init("fc.weight", w), self._init("fc.bias", b)], "logits", y,
            alpha=1.0, beta=1.0, transB=1,
        )

    def model(self, graph_name: str, channels: int = 3, size: int = IMAGE) -> onnx.ModelProto:
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, size, size])
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES])
        graph = helper.make_graph(self.nodes, graph_name, [inp], [out], initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="pimc-benchmarks", ir_version=IR_VERSION)
        return m


def _resnet18(seed: int, size: int) -> _Builder:
    b = _Builder(seed, random_inputs(STATS_BATCH, seed, size))
    x = b.relu(b.bn(b.conv("input", "conv1", 64, 7, stride=2), "bn1"), "relu")
    x = b.maxpool(x, "maxpool")
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512), start=1):
        for blk in range(2):
            stride = 2 if (blk == 0 and stage > 1) else 1
            p = f"layer{stage}.{blk}"
            y = b.relu(b.bn(b.conv(x, f"{p}.conv1", cout, 3, stride), f"{p}.bn1"), f"{p}.relu1")
            y = b.bn(b.conv(y, f"{p}.conv2", cout, 3), f"{p}.bn2", residual_last=True)
            if stride != 1 or cin != cout:
                sc = b.bn(b.conv(x, f"{p}.downsample.0", cout, 1, stride), f"{p}.downsample.1")
            else:
                sc = x
            x = b.relu(b.add(y, sc, f"{p}.add"), f"{p}.relu2")
            cin = cout
    b.head(x)
    return b


def _mobilenetv2(seed: int, size: int) -> _Builder:
    b = _Builder(seed, random_inputs(STATS_BATCH, seed, size))
    x = b.relu6(b.bn(b.conv("input", "features.0.conv", 32, 3, stride=2), "features.0.bn"), "features.0.relu6")
    cin = 32
    idx = 1
    for t, c, n, s in MOBILENETV2_STAGES:
        for i in range(n):
            stride = s if i == 0 else 1
            p = f"features.{idx}"
            hidden = cin * t
            y = x
            if t != 1:
                y = b.relu6(b.bn(b.conv(y, f"{p}.expand", hidden, 1), f"{p}.expand_bn"), f"{p}.expand_relu6")
            y = b.relu6(b.bn(b.conv(y, f"{p}.dw", hidden, 3, stride, groups=hidden), f"{p}.dw_bn"),
                        f"{p}.dw_relu6")
            residual = stride == 1 and cin == c
            y = b.bn(b.conv(y, f"{p}.project", c, 1), f"{p}.project_bn", residual_last=residual)
            x = b.add(x, y, f"{p}.add") if residual else y
            cin = c
            idx += 1
    x = b.relu6(b.bn(b.conv(x, f"features.{idx}.conv", 1280, 1), f"features.{idx}.bn"), f"features.{idx}.relu6")
    b.head(x)
    return b


def build_resnet18(seed: int = 0, size: int = IMAGE) -> onnx.ModelProto:
    """Standard ResNet-18 topology (conv7x7/2, BN, ReLU, maxpool 3x3/2, 4 stages x 2 basic blocks of
    64/128/256/512 channels with residual Add and 1x1 projection shortcuts, GlobalAveragePool, Gemm
    512->1000); random weights as the module docstring describes. ~11.7 M parameters."""
    return _resnet18(seed, size).model("resnet18", size=size)


def build_mobilenetv2(seed: int = 0, size: int = IMAGE) -> onnx.ModelProto:
    """Standard MobileNetV2 topology, width 1.0 (conv3x3/2 32, the 7-row inverted-residual stage table
    with expansion 6 and depthwise 3x3, linear bottlenecks, ReLU6 as Clip(0, 6), conv1x1 1280,
    GlobalAveragePool, Gemm 1280->1000); random weights as the module docstring describes. ~3.5 M
    parameters."""
    return _mobilenetv2(seed, size).model("mobilenetv2", size=size)


MODELS = {"resnet18": build_resnet18, "mobilenetv2": build_mobilenetv2}


def param_count(model: onnx.ModelProto) -> int:
    """Parameters excluding BN running statistics."""
    return int(sum(np.prod(t.dims) for t in model.graph.initializer
                   if not t.name.endswith(("running_mean", "running_var")) and not t.name.startswith("relu6.")))


def check_model(model: onnx.ModelProto, batch: int = 2, seed: int = 123) -> dict:
    """onnx.checker + onnxruntime on a random batch; returns a few statistics, raises on failure."""
    import onnxruntime as ort

    onnx.checker.check_model(model, full_check=True)
    size = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    x = random_inputs(batch, seed, size)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    (logits,) = sess.run(["logits"], {"input": x})
    ort_s = time.perf_counter() - t0
    if logits.shape != (batch, NUM_CLASSES):
        raise AssertionError(f"logits shape {logits.shape}")
    if not np.isfinite(logits).all():
        raise AssertionError("non-finite logits")
    std_classes = float(logits.std(axis=1).mean())  # spread over the 1000 classes, per image
    diff_images = float(np.abs(logits[0] - logits[1:]).max()) if batch > 1 else float("nan")
    if not 0.05 < std_classes < 100:
        raise AssertionError(f"degenerate logits: std over classes {std_classes}")
    if batch > 1 and not diff_images > 1e-3:
        raise AssertionError("logits do not depend on the input")
    return {
        "logits_std_over_classes": std_classes,
        "logits_max_abs": float(np.abs(logits).max()),
        "max_logit_diff_between_images": diff_images,
        "onnxruntime_s": ort_s,
    }


def _check_against_numpy(builder: _Builder, model: onnx.ModelProto) -> float:
    """The ONNX graph computes what the NumPy pass computed (same stats batch), max |diff| of logits."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"input": builder.val["input"].astype(np.float32)})
    return float(np.abs(logits - builder.val["logits"]).max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write the benchmark models (random weights) as ONNX files.")
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-check", action="store_true", help="skip the onnx.checker/onnxruntime check")
    args = ap.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        t0 = time.perf_counter()
        builder = (_resnet18 if name == "resnet18" else _mobilenetv2)(args.seed, IMAGE)
        model = builder.model(name)
        path = args.outdir / f"{name}.onnx"
        onnx.save(model, str(path))
        line = (f"{name}: {path} ({path.stat().st_size / 2**20:.1f} MiB, {param_count(model) / 1e6:.2f} M params, "
                f"{len(model.graph.node)} nodes, built in {time.perf_counter() - t0:.1f} s)")
        print(line)
        if not args.no_check:
            stats = check_model(model)
            worst = max(builder.stats, key=lambda s: s[2])
            print(f"  checker OK; onnxruntime batch 2: logits std over classes {stats['logits_std_over_classes']:.3f}, "
                  f"max |logit| {stats['logits_max_abs']:.3f}, max diff between images "
                  f"{stats['max_logit_diff_between_images']:.3f}")
            print(f"  onnxruntime vs NumPy build pass: max |diff| {_check_against_numpy(builder, model):.2e}; "
                  f"largest activation |x| {worst[2]:.1f} at {worst[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

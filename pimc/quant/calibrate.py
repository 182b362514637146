"""Calibration: run the float network on user data and record each tensor's real range.

The ranges are stored in the IR (``pimc.range = array<f64: lo, hi>`` on every op producing a float
tensor and in the func's ``arg_attrs``), so that ``nn-quantize`` is a pure IR -> IR pass that works
the same from ``pimc compile`` and from ``pimc opt`` on textual IR.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, DenseArrayBase, DictionaryAttr, ModuleOp, StringAttr, f64
from xdsl.ir import Operation, SSAValue

from pimc.dialects import nn
from pimc.errors import InputError

RANGE_ATTR = "pimc.range"
METHODS = ("minmax", "percentile")


def main_func(module: ModuleOp) -> func.FuncOp:
    """The module's ``func.func @main`` (the network)."""
    for op in module.ops:
        if isinstance(op, func.FuncOp) and op.sym_name.data == "main":
            return op
    raise InputError("the module has no func.func @main: is it an nn-level module from the ONNX front end?")


def range_attr(lo: float, hi: float) -> DenseArrayBase:
    return DenseArrayBase.from_list(f64, [float(lo), float(hi)])


def get_range(attrs: Mapping) -> tuple[float, float] | None:
    attr = attrs.get(RANGE_ATTR)
    if attr is None:
        return None
    lo, hi = attr.get_values()
    return float(lo), float(hi)


def arg_names(fn: func.FuncOp) -> list[str]:
    """The model-level input names of the func's arguments (``pimc.name``, else ``arg<i>``)."""
    return _names(fn.arg_attrs, len(fn.body.block.args), "arg")


def result_names(fn: func.FuncOp) -> list[str]:
    """The model-level output names of the func's results (``pimc.name``, else ``out<i>``)."""
    return _names(fn.res_attrs, len(fn.function_type.outputs.data), "out")


def _names(attrs: ArrayAttr | None, n: int, prefix: str) -> list[str]:
    names = []
    for i in range(n):
        name = None
        if attrs is not None and i < len(attrs.data):
            entry = attrs.data[i].data.get("pimc.name")
            if isinstance(entry, StringAttr):
                name = entry.data
        names.append(name or f"{prefix}{i}")
    return names


def check_inputs(fn: func.FuncOp, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs by name, checked against the func's argument shapes (batch free)."""
    names = arg_names(fn)
    missing = [n for n in names if n not in inputs]
    if missing:
        raise InputError(f"missing input(s) {', '.join(missing)}; the model's inputs are {', '.join(names)}")
    out = {}
    for name, arg in zip(names, fn.body.block.args):
        a = np.asarray(inputs[name])
        want = nn.shape_of(arg)
        if a.ndim != len(want) or any(w >= 0 and w != d for w, d in zip(want[1:], a.shape[1:])):
            shown = "x".join("?" if d < 0 else str(d) for d in want)
            raise InputError(f"input {name!r} has shape {list(a.shape)}, the model expects {shown} (batch first)")
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise InputError(f"input {name!r} has dtype {a.dtype}; give numbers (float32)")
        out[name] = a
    return out


class _Tracker:
    """Running range of one tensor over the calibration batches."""

    __slots__ = ("lo", "hi", "n")

    def __init__(self) -> None:
        self.lo = 0.0
        self.hi = 0.0
        self.n = 0

    def add(self, a: np.ndarray, method: str, percentile: float) -> None:
        a = np.asarray(a)
        if a.size == 0:
            return
        if not np.issubdtype(a.dtype, np.floating):
            return
        finite = a[np.isfinite(a)] if not np.all(np.isfinite(a)) else a
        if finite.size == 0:
            return
        if method == "minmax":
            self.lo = min(self.lo, float(finite.min()))
            self.hi = max(self.hi, float(finite.max()))
        else:
            # tails: the (100-p)th and pth percentiles of this batch, averaged over batches
            # weighted by their element counts (exact for a single batch)
            lo, hi = np.percentile(finite.ravel(), [100.0 - percentile, percentile])
            total = self.n + finite.size
            self.lo = (self.lo * self.n + float(lo) * finite.size) / total
            self.hi = (self.hi * self.n + float(hi) * finite.size) / total
        self.n += finite.size


def annotate_ranges(
    module: ModuleOp,
    batches: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]],
    method: str = "minmax",
    percentile: float = 99.99,
) -> ModuleOp:
    """Run the float reference on every batch and store each float tensor's range in the IR.

    ``batches`` is one dict of inputs (by model input name) or an iterable of such dicts. Ranges
    always include 0. ``method`` is ``minmax`` (smallest and largest value seen) or
    ``percentile`` (the ``100-p`` and ``p`` percentiles, clipping outliers of both tails).
    """
    from pimc.reference.float_ref import run_float

    if method not in METHODS:
        raise InputError(f"unknown calibration method {method!r}: use one of {', '.join(METHODS)}")
    if not 50.0 <= float(percentile) <= 100.0:
        raise InputError(f"calibration percentile must be in [50, 100], got {percentile}")
    if isinstance(batches, Mapping):
        batches = [batches]
    fn = main_func(module)
    names = arg_names(fn)
    trackers: dict[Operation, _Tracker] = {}
    arg_trackers = [_Tracker() for _ in names]

    def observe(op: Operation, array: np.ndarray) -> None:
        if op.results and _is_float(op.results[0]):
            trackers.setdefault(op, _Tracker()).add(array, method, percentile)

    seen = 0
    for batch in batches:
        try:
            batch = check_inputs(fn, batch)
        except InputError as err:
            raise InputError(f"calibration data: {err}") from None
        for tracker, name in zip(arg_trackers, names):
            tracker.add(np.asarray(batch[name]), method, percentile)
        run_float(module, {n: batch[n] for n in names}, observe=observe)
        seen += 1
    if seen == 0:
        raise InputError("no calibration data: give --calibration FILE.npy (or .npz keyed by input name)")

    for op in fn.body.walk():
        if op.results and _is_float(op.results[0]):
            tracker = trackers.get(op)
            if tracker is None:
                if isinstance(op, nn.ConstantOp):
                    value = nn.numpy_from_dense(op.value)
                    tracker = _Tracker()
                    tracker.add(np.asarray(value, dtype=np.float64), "minmax", 100.0)
                else:
                    continue  # never executed (not reachable from the outputs): nothing to quantize
            op.attributes[RANGE_ATTR] = range_attr(tracker.lo, tracker.hi)
    new_arg_attrs = []
    for i, tracker in enumerate(arg_trackers):
        old = dict(fn.arg_attrs.data[i].data) if fn.arg_attrs is not None and i < len(fn.arg_attrs.data) else {}
        old[RANGE_ATTR] = range_attr(tracker.lo, tracker.hi)
        new_arg_attrs.append(DictionaryAttr(old))
    fn.arg_attrs = ArrayAttr(new_arg_attrs)
    return module


def _is_float(value: SSAValue) -> bool:
    from xdsl.dialects.builtin import Float32Type, Float64Type, TensorType

    return isinstance(value.type, TensorType) and isinstance(value.type.element_type, (Float32Type, Float64Type))

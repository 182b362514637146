"""User input arrays (``.npy`` / ``.npz``) checked against the imported model's signature.

Shared by ``pimc reference``, calibration, ``run`` and ``eval`` so every command rejects a wrong
file the same way: the message names the file, the input, and the expected vs the given shape or
dtype. The batch (axis 0) may have any size; every other axis must match the model.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from pimc.errors import InputError


def input_signature(module: ModuleOp) -> dict[str, tuple[int, ...]]:
    """{ONNX input name: shape with the batch as -1} of ``@main``."""
    from pimc.reference.float_ref import io_names, main_func

    fn = main_func(module)
    names, _ = io_names(fn)
    shapes = {}
    for name, arg in zip(names, fn.body.blocks[0].args):
        shapes[name] = tuple(-1 if d < 0 else int(d) for d in arg.type.get_shape())
    return shapes


def _shape_text(shape) -> str:
    return "[" + ", ".join("N" if d == -1 else str(d) for d in shape) + "]"


def read_arrays(path: str | Path) -> dict[str, np.ndarray] | np.ndarray:
    """The raw contents of a .npy (one array) or .npz (named arrays) file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such input file")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise InputError(f"{path}: expected a .npy (one input) or .npz (keyed by input name) file")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a readable NumPy {suffix} file ({err})") from None


def check_array(path, name: str, array: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    """A float32 copy of ``array`` after checking its dtype, rank and non-batch dimensions."""
    if array.dtype.kind not in "fiub":
        raise InputError(f"{path}: input '{name}' has dtype {array.dtype}; expected a numeric array (float32 preferred)")
    if array.ndim != len(expected) or tuple(array.shape[1:]) != tuple(expected[1:]):
        raise InputError(
            f"{path}: input '{name}' has shape {list(array.shape)}; expected {_shape_text(expected)} "
            f"(N = any batch size)"
        )
    if array.shape[0] == 0:
        raise InputError(f"{path}: input '{name}' has an empty batch (shape {list(array.shape)})")
    return np.ascontiguousarray(array, dtype=np.float32)


def load_inputs(path: str | Path, module: ModuleOp) -> dict[str, np.ndarray]:
    """Inputs for ``module`` from ``path``: a .npy for a single-input model, else a .npz by name."""
    sig = input_signature(module)
    data = read_arrays(path)
    if isinstance(data, np.ndarray):
        if len(sig) != 1:
            raise InputError(
                f"{path}: the model has {len(sig)} inputs ({', '.join(sig)}); give a .npz file keyed by input name"
            )
        (name, expected), = sig.items()
        return {name: check_array(path, name, data, expected)}
    if len(sig) == 1 and len(data) == 1 and next(iter(sig)) not in data:
        # a single-array .npz (e.g. saved with np.savez(f, x)) feeds the only input
        (name, expected), = sig.items()
        return {name: check_array(path, name, next(iter(data.values())), expected)}
    missing = [n for n in sig if n not in data]
    extra = [k for k in data if k not in sig]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(repr(m) for m in missing)}")
        if extra:
            parts.append(f"unknown {', '.join(repr(e) for e in extra)}")
        raise InputError(f"{path}: {'; '.join(parts)}; the model's inputs are {', '.join(repr(n) for n in sig)}")
    out = {n: check_array(path, n, data[n], sig[n]) for n in sig}
    batches = {a.shape[0] for a in out.values()}
    if len(batches) > 1:
        raise InputError(f"{path}: inputs have different batch sizes {sorted(batches)}")
    return out


def save_outputs(path: str | Path, outputs: dict[str, np.ndarray]) -> None:
    """One output -> .npy; several -> .npz keyed by output name (the path's suffix must agree)."""
    path = Path(path)
    if len(outputs) == 1 and path.suffix.lower() != ".npz":
        np.save(path, next(iter(outputs.values())))
        return
    if path.suffix.lower() != ".npz":
        raise InputError(f"{path}: the model has {len(outputs)} outputs ({', '.join(outputs)}); write them to a .npz file")
    np.savez(path, **outputs)



"""Post-training quantization (``spec/quantization.md``): calibration, the integer arithmetic, the
``nn-quantize`` driver and the QDQ ONNX export.

``quantize_module`` is what the compile driver and ``pimc quantize`` call: calibrate the float
network on the user's inputs (ranges stored in the IR), then run the ``nn-quantize`` pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from pimc.errors import InputError

CALIBRATION_BATCH = 8  # images per float-reference run during calibration (bounds memory)


def _batches(calib: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]], size: int):
    """Split one dict of arrays (batch first) into dicts of at most ``size`` images."""
    if not isinstance(calib, Mapping):
        yield from calib
        return
    arrays = {k: np.asarray(v) for k, v in calib.items()}
    n = min((a.shape[0] for a in arrays.values() if a.ndim), default=0)
    if n == 0:
        raise InputError("the calibration data holds no images (its batch axis is empty)")
    for i in range(0, n, size):
        yield {k: a[i : i + size] for k, a in arrays.items()}


def quantize_module(
    module: ModuleOp,
    calib_inputs: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]] | None,
    cfg: dict | None = None,
    weight_bits: int | None = None,
    act_bits: int | None = None,
    method: str = "minmax",
    percentile: float = 99.99,
) -> ModuleOp:
    """Calibrate (if the module is float) and quantize ``module`` in place; returns it.

    Bits: the explicit arguments, else ``cfg["precision"]``, else the module's ``pimc.hw``
    configuration, else 8/8.
    """
    from pimc.quant.calibrate import annotate_ranges
    from pimc.transforms.nn_quantize import _bits_of_cfg, bits_from_config, missing_ranges, quantize_ir

    if calib_inputs is not None:
        annotate_ranges(module, _batches(calib_inputs, CALIBRATION_BATCH), method, percentile)
    else:
        missing = missing_ranges(module)
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            source = module.attributes.get("pimc.source")
            what = source.data if source is not None else "the model"
            raise InputError(
                f"{what} is a float model: quantization needs calibration inputs to choose activation "
                "ranges; give a batch of typical inputs with --calibration FILE.npy (batch first, in the "
                "model's input layout) or --calibration FILE.npz (one array per input name) "
                f"(without quantization parameters: {', '.join(missing[:3])}{more})"
            )
    cw, ca = _bits_of_cfg(cfg) if cfg else (None, None)
    mw, ma = bits_from_config(module)
    wb = weight_bits or cw or mw or 8
    ab = act_bits or ca or ma or 8
    return quantize_ir(module, int(wb), int(ab))


__all__ = ["quantize_module"]

"""``xbar-bit-slice``: signed integer weights -> the stored matrix of c-bit cells and its column map.

The stored matrix is the layer as one (huge) crossbar: ``cells`` [K, S] and ``colmap`` [S, 5] with
the ``shiftadd`` meaning of ``spec/isa.md`` §3.3, so that Σ over stored columns of
``sign·2^shift·(src or flip·U − src)`` equals x·W exactly. The per-scheme encodings (and why twos
keeps the sign bit on a column of its own) are in ``pimc.dialects.xbar``. The flipped-weight
encoding is only *requested* here (``flip = 1``, plus a unit column): whether a column is
complemented depends on its row block, which ``xbar-tile`` decides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, StringAttr

from xdsl.passes import ModulePass

from pimc.dialects.nn import dense_from_numpy
from pimc.dialects.xbar import OUT_ALL, OUT_NONE, ORDERS, SCHEMES, LayerOp, i64_attr
from pimc.errors import PipelineError


def config_or_default(module: ModuleOp) -> dict:
    """The module's ``pimc.hw`` configuration, or the default preset when it has none."""
    from pimc.hw import config_of

    return config_of(module)


def magnitude_bits(w: np.ndarray, weight_bits: int) -> int:
    """Bits of |w| for differential: b−1, or b if the weights reach −2^(b−1)."""
    return weight_bits if w.size and int(w.min()) < -((1 << (weight_bits - 1)) - 1) else weight_bits - 1


def _digits(values: np.ndarray, ndig: int, c: int, out: np.ndarray) -> None:
    """out[..., j] = (values >> (j·c)) & (2^c − 1) for j < ndig (values >= 0), into u8."""
    mask = (1 << c) - 1
    for j in range(ndig):  # a loop per slice, each a whole-matrix operation
        out[..., j] = ((values >> (j * c)) & mask).astype(np.uint8)


def slice_matrix(
    w: np.ndarray, weight_bits: int, cell_bits: int, scheme: str, flip: bool, groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """(cells u8 [K, S], colmap i64 [S, 5]) of the integer matrix ``w`` [K, N].

    Exact: for any x ≥ 0, Σ_c contribution(c) = x @ w, where a column's contribution is
    ``sign·2^shift·src`` (flip == 0) or ``sign·2^shift·(flip·U − src)`` (flip > 0), U = Σx over the
    rows, and a column with out = −1 adds to every output.
    """
    b, c = weight_bits, cell_bits
    k, n = w.shape
    wide = np.int16 if b <= 14 else np.int32  # w + 2^(b-1) and |w| must fit
    w = np.asarray(w).astype(wide, copy=False)
    if scheme == "offset":
        d, has_unit = -(-b // c), True
    elif scheme == "differential":
        m = magnitude_bits(w, b)
        dm = -(-m // c)
        d, has_unit = 2 * dm, flip
    elif scheme == "twos":
        dl = -(-(b - 1) // c)
        d, has_unit = dl + 1, flip
    else:
        raise PipelineError(f"xbar-bit-slice: unknown scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")
    s = n * d + int(has_unit)
    stored = np.empty((k, s), dtype=np.uint8)
    cells = stored[:, : n * d].reshape(k, n, d)  # a view: digits are written in place
    assert np.may_share_memory(cells, stored)
    if scheme == "offset":
        _digits(w + wide(1 << (b - 1)), d, c, cells)
        shift = np.arange(d) * c
        sign = np.ones(d, dtype=np.int64)
    elif scheme == "differential":
        _digits(np.maximum(w, 0), dm, c, cells[:, :, :dm])
        _digits(np.maximum(-w, 0), dm, c, cells[:, :, dm:])
        shift = np.tile(np.arange(dm) * c, 2)
        sign = np.repeat(np.array([1, -1], dtype=np.int64), dm)
    else:
        _digits(w & wide((1 << (b - 1)) - 1), dl, c, cells[:, :, :dl])
        cells[:, :, dl] = w < 0
        shift = np.append(np.arange(dl) * c, b - 1)
        sign = np.append(np.ones(dl, dtype=np.int64), -1)

    colmap = np.zeros((s, 5), dtype=np.int64)
    colmap[: n * d, 0] = np.repeat(np.arange(n, dtype=np.int64), d)
    colmap[: n * d, 1] = np.tile(shift, n)
    colmap[: n * d, 2] = np.tile(sign, n)
    if has_unit:
        stored[:, -1] = 1
        unit = s - 1
        if scheme == "offset" and groups == 1:
            colmap[unit] = (OUT_ALL, b - 1, -1, 0, 0)
        else:
            colmap[unit] = (OUT_NONE, 0, 1, 0, 0)
        if scheme == "offset" and groups > 1:
            # each output's top digit subtracts the offset over its own rows: 2^(jt·c)·(src − o·U)
            jt = d - 1
            top = np.arange(n) * d + jt
            colmap[top, 2] = -1
            colmap[top, 3] = 1 << (b - 1 - jt * c)
            colmap[top, 4] = unit
    return stored, colmap


@dataclass(frozen=True)
class XbarBitSlice(ModulePass):
    """Bit-slice every ``xbar.layer``: stored cells + column map (scheme, cell and DAC widths, order).

    Options override the module's hardware config: ``cell-bits`` (1..4, crossbar.cell_bits),
    ``dac-bits`` (crossbar.dac_bits), ``scheme`` offset|differential|twos (mapping.scheme),
    ``order`` lsb|msb (mapping.order), ``flip`` (crossbar.flip_encoding).
    """

    name = "xbar-bit-slice"

    cell_bits: int | None = None
    dac_bits: int | None = None
    scheme: str | None = None
    order: str | None = None
    flip: bool | None = None

    def resolved(self, module: ModuleOp) -> tuple[int, int, str, str, bool]:
        cfg = config_or_default(module)
        xb, mp = cfg.get("crossbar", {}), cfg.get("mapping", {})
        c = self.cell_bits if self.cell_bits is not None else xb.get("cell_bits", 2)
        v = self.dac_bits if self.dac_bits is not None else xb.get("dac_bits", 1)
        scheme = self.scheme if self.scheme is not None else mp.get("scheme", "offset")
        order = self.order if self.order is not None else mp.get("order", "lsb")
        flip = self.flip if self.flip is not None else bool(xb.get("flip_encoding", False))
        if not 1 <= int(c) <= 4:
            raise PipelineError(f"xbar-bit-slice: cell-bits must be in 1..4, got {c}")
        if not 1 <= int(v) <= 8:
            raise PipelineError(f"xbar-bit-slice: dac-bits must be in 1..8, got {v}")
        if scheme not in SCHEMES:
            raise PipelineError(f"xbar-bit-slice: scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        if order not in ORDERS:
            raise PipelineError(f"xbar-bit-slice: order must be one of {', '.join(ORDERS)}, got {order!r}")
        return int(c), int(v), str(scheme), str(order), bool(flip)

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        c, v, scheme, order, flip = self.resolved(op)
        for layer in [o for o in op.walk() if isinstance(o, LayerOp)]:
            if layer.cells is not None or layer.crossbars():
                raise PipelineError(
                    f"xbar-bit-slice: layer '{layer.layer_name}' is already bit-sliced; run the pass once, before xbar-tile"
                )
            cells, colmap = slice_matrix(
                layer.weight_array(), layer.int_prop("weight_bits"), c, scheme, flip, layer.int_prop("groups")
            )
            layer.properties.update(
                {
                    "cell_bits": i64_attr(c),
                    "dac_bits": i64_attr(v),
                    "scheme": StringAttr(scheme),
                    "order": StringAttr(order),
                    "flip": i64_attr(int(flip)),
                    "cells": dense_from_numpy(cells),
                    "colmap": dense_from_numpy(colmap),
                }
            )

"""``xbar-tile``: cut each layer's stored matrix into crossbar-sized ``xbar.crossbar`` ops.

Dense layers (and groups too large for one crossbar) are cut into ⌈Kg/R⌉ row blocks × column
chunks of the group's stored columns, the unit column last so that each row block holds exactly one
copy of it (the closed forms ⌈K/R⌉·⌈(N·D + u)/C⌉). Grouped convs whose groups fit pack as many
whole groups as fit block-diagonally into one crossbar, row blocks aligned to group boundaries.
Each row block's column map points ``unit`` at its own unit column in the layer's column space.
ISAAC's flipped-weight encoding, when requested, is applied here because it is decided per column
*within a row block*. See ``pimc.dialects.xbar`` for the contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp

from xdsl.passes import ModulePass

from pimc.dialects.nn import numpy_from_dense
from pimc.dialects.xbar import ADC_MODES, FLIP, OUT, OUT_ALL, OUT_NONE, SIGN, UNIT, CrossbarOp, LayerOp, dense, i64_attr
from pimc.errors import PipelineError
from pimc.transforms.xbar_bit_slice import config_or_default


@dataclass
class TileSpec:
    """One crossbar to build: rows [r0, r1) of the stored matrix, stored columns ``cols``."""

    r0: int
    r1: int
    cols: np.ndarray  # stored column indices
    block: int  # row-block id (crossbars with the same rows share one unit column)


def plan_tiles(
    k: int, groups: int, n_per_group: int, digits: int, has_unit: bool, rows: int, cols: int
) -> list[TileSpec]:
    """The crossbars of a layer's stored matrix (before dropping all-zero ones)."""
    kg = k // groups
    gcols = n_per_group * digits  # stored columns per group (output-major, groups contiguous)
    unit = groups * gcols if has_unit else -1
    u = int(has_unit)
    specs: list[TileSpec] = []
    block = 0
    per_xbar = min(rows // kg, (cols - u) // gcols) if gcols <= cols - u else 0
    if groups > 1 and per_xbar >= 1:
        for g0 in range(0, groups, per_xbar):
            g1 = min(groups, g0 + per_xbar)
            c = np.arange(g0 * gcols, g1 * gcols)
            if has_unit:
                c = np.append(c, unit)
            specs.append(TileSpec(g0 * kg, g1 * kg, c, block))
            block += 1
        return specs
    for g in range(groups):  # dense cutting, group by group
        c_all = np.arange(g * gcols, (g + 1) * gcols)
        if has_unit:
            c_all = np.append(c_all, unit)
        for r0 in range(g * kg, (g + 1) * kg, rows):
            r1 = min(r0 + rows, (g + 1) * kg)
            for c0 in range(0, len(c_all), cols):
                specs.append(TileSpec(r0, r1, c_all[c0 : c0 + cols], block))
            block += 1
    return specs


def flip_columns(image: np.ndarray, colmap: np.ndarray, cell_bits: int, unit_cols: np.ndarray) -> None:
    """ISAAC's flipped-weight encoding, in place, over one row block (all its rows in use).

    A column whose cell sum exceeds half its range (R'·M/2) is stored complemented (M − cell) and its
    column-map row rewritten so that its contribution is unchanged: with contribution
    2^shift·(α·U + β·src), complementing gives α' = α + β·M, β' = −β, encoded as flip = −α'β',
    sign = −β' (or flip = 0, sign = β' when α' = 0).
    """
    m = (1 << cell_bits) - 1
    r = image.shape[0]
    sums = image.sum(axis=0, dtype=np.int64)
    flipped = colmap[:, FLIP] > 0
    alpha = np.where(flipped, colmap[:, SIGN] * colmap[:, FLIP], 0)
    beta = np.where(flipped, -colmap[:, SIGN], colmap[:, SIGN])
    candidate = (2 * sums > r * m) & ~unit_cols & (colmap[:, OUT] != OUT_NONE) & (alpha * beta + m >= 0)
    if not candidate.any():
        return
    a2 = alpha + beta * m
    b2 = -beta
    image[:, candidate] = m - image[:, candidate]
    zero = a2 == 0
    new_sign = np.where(zero, b2, -b2)
    new_flip = np.where(zero, 0, -a2 * b2)
    colmap[candidate, SIGN] = new_sign[candidate]
    colmap[candidate, FLIP] = new_flip[candidate]
    # the unit index is filled by the caller for every column with flip > 0
    colmap[candidate & zero, UNIT] = 0


def tile_layer(layer: LayerOp, rows: int, cols: int, adc_bits: int, adc_mode: str) -> list[CrossbarOp]:
    """Build the crossbars of one bit-sliced layer (in layer column order)."""
    cells = numpy_from_dense(layer.cells)
    smap = numpy_from_dense(layer.colmap)
    k, s = cells.shape
    g = layer.int_prop("groups")
    n = layer.n
    c = layer.int_prop("cell_bits")
    v = layer.int_prop("dac_bits")
    has_unit = s > 0 and smap[-1, OUT] in (OUT_ALL, OUT_NONE)
    digits = (s - int(has_unit)) // n
    if digits * n + int(has_unit) != s:
        raise PipelineError(f"xbar-tile: layer '{layer.layer_name}': stored columns {s} are not N·D (+1 unit)")
    unit_stored = s - 1 if has_unit else -1
    specs = plan_tiles(k, g, n // g, digits, has_unit, rows, cols)

    flip = bool(layer.int_prop("flip"))
    dmax = (1 << v) - 1
    m = (1 << c) - 1
    # an all-zero weight matrix keeps one crossbar, so that the layer still has a column space and
    # code generation a crossbar to read (its output is the bias alone)
    all_zero = not cells.any() and not np.any(smap[:, FLIP] > 0)
    if all_zero:
        specs = specs[:1]
    out: list[CrossbarOp] = []
    col = 0  # next free column of the layer's column space
    blocks: dict[int, list[TileSpec]] = {}
    for sp in specs:
        blocks.setdefault(sp.block, []).append(sp)
    for block_specs in blocks.values():  # one row block at a time: its rows and all its columns
        r0, r1 = block_specs[0].r0, block_specs[0].r1
        all_cols = np.concatenate([sp.cols for sp in block_specs])
        lo, hi = int(all_cols[0]), int(all_cols[-1]) + 1
        if hi - lo == len(all_cols) and np.all(np.diff(all_cols) == 1):
            slab = cells[r0:r1, lo:hi].copy()  # contiguous columns: a slice
        else:
            slab = cells[r0:r1, all_cols]  # (a gather copies)
        cmap = smap[all_cols].copy()
        bounds = np.cumsum([0] + [len(sp.cols) for sp in block_specs])
        unit_cols = all_cols == unit_stored
        if flip:  # decided per column over this row block's rows
            if not unit_cols.any():
                raise PipelineError(f"xbar-tile: layer '{layer.layer_name}': flip needs a unit column in every row block")
            flip_columns(slab, cmap, c, unit_cols)
        # drop crossbars that contribute nothing: all cells zero and no column with a correction term
        # (decided after flipping, which can turn a column of full cells with a correction into zeros)
        nonzero = slab.any(axis=0)
        keep = [
            i for i in range(len(block_specs))
            if all_zero or nonzero[bounds[i] : bounds[i + 1]].any() or np.any(cmap[bounds[i] : bounds[i + 1], FLIP] > 0)
        ]
        # layer columns of the kept crossbars, and where this row block's unit column lands
        col0s, unit_at = {}, None
        for i in keep:
            col0s[i] = col
            hit = np.flatnonzero(unit_cols[bounds[i] : bounds[i + 1]])
            if hit.size:
                unit_at = col + int(hit[0])
            col += bounds[i + 1] - bounds[i]
        refs = cmap[:, FLIP] > 0
        if refs.any():
            if unit_at is None:
                raise PipelineError(f"xbar-tile: layer '{layer.layer_name}': a column references a missing unit column")
            cmap[refs, UNIT] = unit_at
        cmap[~refs, UNIT] = 0
        if adc_mode == "drop-lsb":  # drops bits by the worst-case sum R'·(2^v−1)·(2^c−1) (isa §3.2)
            worst = np.full(len(all_cols), (r1 - r0) * dmax * m, dtype=np.int64)
        else:  # saturate: only a sum beyond 2^A − 1 changes: the data-aware bound
            worst = slab.sum(axis=0, dtype=np.int64) * dmax
        table = dense(np.arange(r0, r1, dtype=np.int32))  # shared by the row block's crossbars
        for i in keep:
            a, b = bounds[i], bounds[i + 1]
            out.append(
                CrossbarOp(
                    dense(slab[:, a:b]),
                    table,
                    col0s[i],
                    dense(cmap[a:b]),
                    adc_bits,
                    adc_mode,
                    (1 << adc_bits) > int(worst[a:b].max()),
                )
            )
    return out


@dataclass(frozen=True)
class XbarTile(ModulePass):
    """Cut bit-sliced layers into crossbars of ``rows`` × ``cols`` (default crossbar.rows/cols).

    ``adc-bits`` and ``adc-mode`` (saturate|drop-lsb) default to the config's adc.bits / adc.mode.
    """

    name = "xbar-tile"

    rows: int | None = None
    cols: int | None = None
    adc_bits: int | None = None
    adc_mode: str | None = None

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        cfg = config_or_default(op)
        xb, adc = cfg.get("crossbar", {}), cfg.get("adc", {})
        rows = int(self.rows if self.rows is not None else xb.get("rows", 128))
        cols = int(self.cols if self.cols is not None else xb.get("cols", 128))
        abits = int(self.adc_bits if self.adc_bits is not None else adc.get("bits", 8))
        amode = str(self.adc_mode if self.adc_mode is not None else adc.get("mode", "saturate"))
        if rows < 1 or cols < 2:
            raise PipelineError(f"xbar-tile: rows must be >= 1 and cols >= 2, got rows={rows}, cols={cols}")
        if not 1 <= abits <= 32:
            raise PipelineError(f"xbar-tile: adc-bits must be in 1..32, got {abits}")
        if amode not in ADC_MODES:
            raise PipelineError(f"xbar-tile: adc-mode must be one of {', '.join(ADC_MODES)}, got {amode!r}")
        for layer in [o for o in op.walk() if isinstance(o, LayerOp)]:
            if layer.crossbars():
                raise PipelineError(f"xbar-tile: layer '{layer.layer_name}' is already tiled")
            if layer.cells is None:
                raise PipelineError(
                    f"xbar-tile: layer '{layer.layer_name}' is not bit-sliced; run xbar-bit-slice before xbar-tile"
                )
            xbars = tile_layer(layer, rows, cols, abits, amode)
            block = layer.body.block
            for x in xbars:
                block.add_op(x)
            del layer.properties["cells"]
            del layer.properties["colmap"]
            layer.properties["xbar_rows"] = i64_attr(rows)
            layer.properties["xbar_cols"] = i64_attr(cols)
            layer.properties["columns"] = i64_attr(sum(x.shape[1] for x in xbars))

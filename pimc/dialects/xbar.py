"""The ``xbar`` dialect: the mapping level between the integer ``nn`` ops and the ``isa`` ops.

Two ops. ``xbar.layer`` replaces one quantized ``nn.conv2d`` / ``nn.gemm``; ``xbar.crossbar`` ops
live in the layer's single-block region (no terminator), one per physical crossbar. Every other
quantized ``nn`` op (lut, add, mul, pools, concat, reshape, transpose, pad, requantize, softmax,
lrn, quantize/dequantize) stays as it is. Arrays are dense attributes built from bytes.

Contract: what each op carries after each pass
==============================================

``convert-nn-to-xbar`` creates ``xbar.layer`` (operand: the quantized input tensor, result: the
quantized output tensor, both ``!nn.q``; discardable attribute ``pimc.name`` = the layer name).
Properties:

- ``kind``: ``"conv"`` | ``"gemm"``.
- ``weight``: dense ``i8`` (b ≤ 8) / ``i16`` [K, N], the signed integer weight matrix, K = Cin·kh·kw
  (gemm: the input's last axis), N = Cout. Row ``(c·kh + u)·kw + v`` is input channel c, kernel
  offset (u, v): the im2col column order of ``spec/isa.md`` §3.1. A grouped / depthwise conv is
  **block-diagonal**: group g owns rows ``[g·Kg, (g+1)·Kg)`` (Kg = Cin/groups·kh·kw) and columns
  ``[g·Ng, (g+1)·Ng)`` (Ng = Cout/groups); all other entries are 0.
- ``kernel`` [kh, kw], ``strides`` [sh, sw], ``pads`` [top, left, bottom, right],
  ``dilations`` [dh, dw] (dense i64 arrays; gemm: [1,1], [1,1], [0,0,0,0], [1,1]), ``groups`` (i64).
- ``bias`` dense i64 [N]: the *effective* bias ``b[n] - zp_in·Σ_k W[k, n]`` copied from the integer
  ``nn`` op (``spec/quantization.md`` §4; 0 when the op has none): the crossbars see unsigned codes
  and the zero-point term is folded here (``spec/isa.md`` §3.4).
- ``requant_multiplier``, ``requant_shift`` dense i64 [N]; ``clamp`` i64 [lo, hi];
  ``zp_in``, ``zp_out``, ``act_bits`` (input code width), ``out_bits``, ``weight_bits`` (i64);
  ``activation`` (``none``/``relu``/``clip``); optional ``weight_scale`` dense f32 [N].
  So a layer computes ``requant(Σ_k x[k]·W[k, n] + bias[n])`` on unsigned input codes x
  (``spec/isa.md`` §3.4, ``pimc.quant.intmath.requantize``).

``xbar-bit-slice`` adds the *stored matrix*, the whole layer as if it were one huge crossbar:

- ``cell_bits`` c, ``dac_bits`` v, ``scheme`` (``offset``/``differential``/``twos``), ``order``
  (``lsb``/``msb``), ``flip`` (0/1: ISAAC's flipped-weight encoding requested; applied by
  ``xbar-tile``, because a column's complement depends on its row block).
- ``cells`` dense ui8 [K, S] (cell values in [0, 2^c − 1]) and ``colmap`` dense i64 [S, 5], one row
  per stored column ``(out, shift, sign, flip, unit)`` with exactly the meaning of ``spec/isa.md``
  §3.3 ``shiftadd``, where ``unit`` here is the *stored* column index of the unit column (at most
  one, always the last stored column ``S − 1``) and ``src[unit]`` means "the unit column over the
  same rows" (``unit`` is 0 where ``flip`` is 0). Columns are output-major: output n's digits are
  adjacent, then the unit column.
  Let b = weight_bits, M = 2^c − 1, D = ⌈b/c⌉:

  * ``offset``: digit j (shift j·c, j < D) of w + 2^(b−1); a unit column of ones. Dense layers
    (groups = 1): the unit column is ``(-1, b-1, -1, 0, 0)``: every output gets −2^(b−1)·Σx.
    Grouped layers: an output must only be corrected by the rows of its own group, so the unit
    column is ``(-2, 0, 1, 0, 0)`` (referenced, never accumulated) and each output's top digit
    column carries its own correction: ``(n, jt·c, -1, o, unit)`` with jt = ⌊(b−1)/c⌋ and
    o = 2^(b−1−jt·c), i.e. ``2^(jt·c)·(src − o·U)``. Off-group entries of the block-diagonal
    matrix hold the encoded zero (2^(b−1)), which that correction cancels exactly.
  * ``differential``: magnitudes of W⁺ = max(w, 0) then W⁻ = max(−w, 0) in m-bit digits
    (m = b − 1 when every w > −2^(b−1), else b), W⁻ columns have sign −1. No unit column unless
    ``flip``, in which case a unit column ``(-2, 0, 1, 0, 0)`` is added.
  * ``twos``: w = −2^(b−1)·s + Σ_{k<b−1} bit_k·2^k; the low b−1 bits in ⌈(b−1)/c⌉ c-bit digits
    (shift j·c), then the sign bit s on its own column ``(n, b-1, -1, 0, 0)`` (cell 0/1): the top
    slice's contribution is negative and exact for any c (c need not divide b). Unit column only
    with ``flip`` (as differential).

  Per output: D_offset = ⌈b/c⌉, D_diff = 2·⌈m/c⌉, D_twos = ⌈(b−1)/c⌉ + 1 digit columns.

``xbar-tile`` cuts the stored matrix into crossbars, removes ``cells``/``colmap`` from the layer
and adds ``xbar_rows``, ``xbar_cols`` (the physical crossbar size R × C) and ``columns`` (Ctot,
the layer's column space = Σ crossbar widths). Each ``xbar.crossbar`` carries:

- ``image`` dense ui8 [R', C'] (R' ≤ R, C' ≤ C: only the rows and columns in use; no all-zero
  crossbar is emitted, except one for a layer whose weights are all zero), ``row_table`` dense i32 [R'] (the row of ``weight`` = im2col column that
  drives each physical row; −1 = unused, driven with 0; ``xbar-tile`` itself only emits contiguous
  ranges, −1 is for later passes such as squeeze-out), ``col0`` (its first column in the layer's
  column space), ``colmap`` dense i64 [C', 5] (its columns' ``(out, shift, sign, flip, unit)``,
  ``unit`` now an index into the layer's column space, pointing at the unit column of the crossbar
  with the same rows), ``adc_bits``, ``adc_mode`` (``saturate``/``drop-lsb``, from the config) and
  ``lossless`` (``saturate``: 1 iff 2^adc_bits > max over columns of Σ_rows cell·(2^v − 1), the
  data-aware bound; ``drop-lsb``: 1 iff 2^adc_bits > R'·(2^v − 1)·(2^c − 1), because that mode
  drops bits by the worst-case sum whatever the cells, ``spec/isa.md`` §3.2).
- Flip (when requested): a non-unit column whose cell sum exceeds R'·M/2 is stored complemented,
  M − cell on its rows, and its colmap row is rewritten so that ``sign·2^shift·(flip·U − src)``
  still equals its old contribution (flip = M for a plain column).
- Tiling: dense layers (or groups too large for one crossbar) are cut into ⌈Kg/R⌉ row blocks ×
  column blocks of the group's stored columns, each row block holding its own copy of the unit
  column. Otherwise as many whole groups as fit (rows and columns) go block-diagonally into one
  crossbar, row blocks aligned to group boundaries. Closed forms, u = 1 for offset and for any
  scheme with flip, else 0: dense ⌈K/R⌉·⌈(N·D + u)/C⌉ crossbars; grouped with
  g× = min(⌊R/Kg⌋, ⌊(C − u)/(Ng·D)⌋) ≥ 1 groups per crossbar: ⌈G/g×⌉; grouped otherwise
  G·⌈Kg/R⌉·⌈(Ng·D + u)/C⌉. Crossbars whose cells are all zero (and that carry no correction
  term) are not emitted, so weights with all-zero blocks can need fewer.

``xbar-place`` adds ``replication`` (i64 ≥ 1) to every layer, ``chip``, ``tile``, ``ima`` to every
crossbar (the place of its first copy), ``copies`` (dense i64 array ``[chip, tile, ima, ...]``, the
places of its other replication − 1 copies; absent when the layer is not replicated), and on the module
``pimc.chips`` (i64) and ``pimc.chip_traffic_bytes`` (i64, activation bytes per inference that
cross between chips).
"""

from __future__ import annotations

import functools

import numpy as np
from xdsl.dialects.builtin import (
    BytesAttr,
    DenseArrayBase,
    DenseIntOrFPElementsAttr,
    IntegerAttr,
    IntegerType,
    Signedness,
    StringAttr,
    TensorType,
    i64,
)
from xdsl.ir import Attribute, Block, Dialect, Region, SSAValue
from xdsl.irdl import (
    IRDLOperation,
    irdl_op_definition,
    operand_def,
    opt_prop_def,
    prop_def,
    region_def,
    result_def,
    traits_def,
)
from xdsl.traits import NoTerminator
from xdsl.utils.exceptions import VerifyException

from pimc.dialects.nn import QuantType, dense_from_numpy, element_of, ints, numpy_from_dense, shape_of

KINDS = ("conv", "gemm")
SCHEMES = ("offset", "differential", "twos")
ORDERS = ("lsb", "msb")
ADC_MODES = ("saturate", "drop-lsb")
ACTIVATIONS = ("none", "relu", "clip")

#: colmap column meanings (spec/isa.md §3.3)
OUT, SHIFT, SIGN, FLIP, UNIT = range(5)
OUT_ALL = -1  # unit column: added to every output
OUT_NONE = -2  # padding / referenced-only column


@functools.lru_cache(maxsize=1 << 16)
def _i64_attr(value: int) -> IntegerAttr:
    return IntegerAttr(value, i64)


def i64_attr(value: int) -> IntegerAttr:
    """An i64 IntegerAttr (cached: attributes are immutable, and a ResNet has ~10^5 of them)."""
    return _i64_attr(int(value))


@functools.lru_cache(maxsize=256)
def _string_attr(value: str) -> StringAttr:
    return StringAttr(value)


_TENSOR_TYPES: dict[tuple[str, tuple[int, ...]], TensorType] = {}


def dense(array: np.ndarray) -> DenseIntOrFPElementsAttr:
    """``dense_from_numpy`` with the tensor type cached per (dtype, shape): crossbars share shapes."""
    array = np.ascontiguousarray(array)
    key = (array.dtype.str, array.shape)
    t = _TENSOR_TYPES.get(key)
    if t is None:
        if len(_TENSOR_TYPES) > 4096:
            _TENSOR_TYPES.clear()
        attr = dense_from_numpy(array)
        _TENSOR_TYPES[key] = attr.type
        return attr
    return DenseIntOrFPElementsAttr(t, BytesAttr(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()))


def _view(attr: DenseIntOrFPElementsAttr, dtype: str) -> np.ndarray:
    """A NumPy view of a dense attribute whose element type is already known (verified)."""
    return np.frombuffer(attr.data.data, dtype=dtype).reshape(attr.get_shape())


def _int(attr: IntegerAttr) -> int:
    return int(attr.value.data)


def _u8_type(attr: DenseIntOrFPElementsAttr) -> bool:
    t = attr.get_element_type()
    return isinstance(t, IntegerType) and t.width.data == 8 and t.signedness.data == Signedness.UNSIGNED


def _int_elem(attr: DenseIntOrFPElementsAttr, width: int | None = None) -> bool:
    t = attr.get_element_type()
    return isinstance(t, IntegerType) and (width is None or t.width.data == width)


def digits_per_output(scheme: str, weight_bits: int, cell_bits: int, magnitude_bits: int | None = None) -> int:
    """Stored columns per output channel for a scheme (the D of the closed forms)."""
    b, c = weight_bits, cell_bits
    if scheme == "offset":
        return -(-b // c)
    if scheme == "differential":
        m = b - 1 if magnitude_bits is None else magnitude_bits
        return 2 * -(-m // c)
    if scheme == "twos":
        return -(-(b - 1) // c) + 1
    raise ValueError(f"unknown scheme {scheme!r}")


def _check_colmap(where: str, colmap: np.ndarray, cols: int, unit_limit: int, n_out: int) -> None:
    if colmap.ndim != 2 or colmap.shape != (cols, 5):
        raise VerifyException(f"{where}: colmap must be [{cols}, 5], got {list(colmap.shape)}")
    if cols == 0:
        return
    out, shift, sign, flip, unit = colmap.T
    flipped = flip > 0
    bad = (out < OUT_NONE) | (out >= n_out) | (np.abs(sign) != 1) | (shift < 0) | (shift > 62) | (flip < 0)
    bad |= flipped & ((unit < 0) | (unit >= unit_limit))
    if not bad.any():  # one pass in the common case; the messages below name the first problem
        return
    if np.any(colmap[:, OUT] < OUT_NONE):
        raise VerifyException(f"{where}: colmap 'out' must be >= -2")
    if np.any(colmap[:, OUT] >= n_out):
        raise VerifyException(f"{where}: colmap 'out' >= N = {n_out}")
    if np.any(np.abs(colmap[:, SIGN]) != 1):
        raise VerifyException(f"{where}: colmap 'sign' must be +1 or -1")
    if np.any(colmap[:, SHIFT] < 0) or np.any(colmap[:, SHIFT] > 62):
        raise VerifyException(f"{where}: colmap 'shift' must be in [0, 62]")
    if np.any(colmap[:, FLIP] < 0):
        raise VerifyException(f"{where}: colmap 'flip' must be >= 0")
    bad = flipped & ((colmap[:, UNIT] < 0) | (colmap[:, UNIT] >= unit_limit))
    if np.any(bad):
        raise VerifyException(
            f"{where}: a column with flip > 0 needs 'unit' in [0, {unit_limit}), got {int(colmap[bad][0, UNIT])}"
        )


# --------------------------------------------------------------------------------------------------
# xbar.crossbar
# --------------------------------------------------------------------------------------------------


@irdl_op_definition
class CrossbarOp(IRDLOperation):
    """One physical crossbar of a layer: its cell image, row table, column map, ADC and place."""

    name = "xbar.crossbar"

    image = prop_def(DenseIntOrFPElementsAttr)
    row_table = prop_def(DenseIntOrFPElementsAttr)
    col0 = prop_def(IntegerAttr)
    colmap = prop_def(DenseIntOrFPElementsAttr)
    adc_bits = prop_def(IntegerAttr)
    adc_mode = prop_def(StringAttr)
    lossless = prop_def(IntegerAttr)
    chip = opt_prop_def(IntegerAttr)
    tile = opt_prop_def(IntegerAttr)
    ima = opt_prop_def(IntegerAttr)
    #: places of the extra copies of a replicated layer's crossbar: [chip, tile, ima] per copy
    copies = opt_prop_def(DenseArrayBase)

    def __init__(
        self,
        image: DenseIntOrFPElementsAttr,
        row_table: DenseIntOrFPElementsAttr,
        col0: int,
        colmap: DenseIntOrFPElementsAttr,
        adc_bits: int,
        adc_mode: str,
        lossless: bool,
    ):
        super().__init__(
            properties={
                "image": image,
                "row_table": row_table,
                "col0": i64_attr(col0),
                "colmap": colmap,
                "adc_bits": i64_attr(adc_bits),
                "adc_mode": _string_attr(adc_mode),
                "lossless": i64_attr(int(lossless)),
            }
        )

    # numpy views -------------------------------------------------------------------------------
    def image_array(self) -> np.ndarray:
        return _view(self.image, "u1") if _u8_type(self.image) else numpy_from_dense(self.image)

    def row_table_array(self) -> np.ndarray:
        return numpy_from_dense(self.row_table)

    def colmap_array(self) -> np.ndarray:
        return numpy_from_dense(self.colmap)

    @property
    def shape(self) -> tuple[int, int]:
        r, c = self.image.get_shape()
        return int(r), int(c)

    def verify_(self) -> None:
        ishape = self.image.get_shape()
        if len(ishape) != 2 or not _u8_type(self.image):
            raise VerifyException(f"xbar.crossbar: image must be a 2-D ui8 tensor, got {self.image.type}")
        rows, cols = ishape
        if rows == 0 or cols == 0:
            raise VerifyException("xbar.crossbar: image must not be empty")
        if self.row_table.get_shape() != (rows,) or not _int_elem(self.row_table, 32):
            raise VerifyException(f"xbar.crossbar: row_table must be i32 [{rows}], got {self.row_table.type}")
        if self.colmap.get_shape() != (cols, 5) or not _int_elem(self.colmap, 64):
            raise VerifyException(f"xbar.crossbar: colmap must be i64 [{cols}, 5], got {self.colmap.type}")
        if _int(self.col0) < 0:
            raise VerifyException("xbar.crossbar: col0 must be >= 0")
        if not 1 <= _int(self.adc_bits) <= 32:
            raise VerifyException(f"xbar.crossbar: adc_bits must be in [1, 32], got {_int(self.adc_bits)}")
        if self.adc_mode.data not in ADC_MODES:
            raise VerifyException(f"xbar.crossbar: adc_mode must be one of {ADC_MODES}, got {self.adc_mode.data!r}")
        if _int(self.lossless) not in (0, 1):
            raise VerifyException("xbar.crossbar: lossless must be 0 or 1")
        for f in ("chip", "tile", "ima"):
            a = getattr(self, f)
            if a is not None and _int(a) < 0:
                raise VerifyException(f"xbar.crossbar: {f} must be >= 0")
        if self.copies is not None:
            places = [int(v) for v in self.copies.get_values()]
            if len(places) % 3 or min(places, default=0) < 0:
                raise VerifyException("xbar.crossbar: copies must be [chip, tile, ima] triples of integers >= 0")
        rt = _view(self.row_table, "<i4")
        lo, hi = int(rt.min()), int(rt.max())
        if lo < -1:
            raise VerifyException("xbar.crossbar: row_table entries must be >= -1")
        layer = self.parent_op()
        if layer is not None and not isinstance(layer, LayerOp):
            raise VerifyException(f"xbar.crossbar: must be inside an xbar.layer, not {layer.name}")
        if isinstance(layer, LayerOp):
            if hi >= layer.k:
                raise VerifyException(f"xbar.crossbar: row_table entry >= K = {layer.k}")
            if layer.cell_bits is not None:
                m = (1 << _int(layer.cell_bits)) - 1
                if int(self.image_array().max()) > m:
                    raise VerifyException(f"xbar.crossbar: a cell value exceeds 2^cell_bits - 1 = {m}")
            total = layer.columns
            limit = total if total is not None else 1 << 62
            if total is not None and _int(self.col0) + cols > total:
                raise VerifyException(
                    f"xbar.crossbar: columns [{_int(self.col0)}, {_int(self.col0) + cols}) exceed the layer's {total}"
                )
            cm = _view(self.colmap, "<i8")
            _check_colmap("xbar.crossbar", cm, cols, limit, layer.n)


# --------------------------------------------------------------------------------------------------
# xbar.layer
# --------------------------------------------------------------------------------------------------


@irdl_op_definition
class LayerOp(IRDLOperation):
    """A matrix layer (one quantized conv2d or gemm) at the mapping level; see the module docstring."""

    name = "xbar.layer"

    input = operand_def(TensorType)
    output = result_def(TensorType)

    kind = prop_def(StringAttr)
    weight = prop_def(DenseIntOrFPElementsAttr)
    kernel = prop_def(DenseArrayBase)
    strides = prop_def(DenseArrayBase)
    pads = prop_def(DenseArrayBase)
    dilations = prop_def(DenseArrayBase)
    groups = prop_def(IntegerAttr)
    bias = prop_def(DenseIntOrFPElementsAttr)
    requant_multiplier = prop_def(DenseIntOrFPElementsAttr)
    requant_shift = prop_def(DenseIntOrFPElementsAttr)
    clamp = prop_def(DenseArrayBase)
    zp_in = prop_def(IntegerAttr)
    zp_out = prop_def(IntegerAttr)
    act_bits = prop_def(IntegerAttr)
    out_bits = prop_def(IntegerAttr)
    weight_bits = prop_def(IntegerAttr)
    activation = prop_def(StringAttr)
    weight_scale = opt_prop_def(DenseIntOrFPElementsAttr)
    # xbar-bit-slice
    cell_bits = opt_prop_def(IntegerAttr)
    dac_bits = opt_prop_def(IntegerAttr)
    scheme = opt_prop_def(StringAttr)
    order = opt_prop_def(StringAttr)
    flip = opt_prop_def(IntegerAttr)
    cells = opt_prop_def(DenseIntOrFPElementsAttr)
    colmap = opt_prop_def(DenseIntOrFPElementsAttr)
    # xbar-tile
    xbar_rows = opt_prop_def(IntegerAttr)
    xbar_cols = opt_prop_def(IntegerAttr)
    columns_attr = opt_prop_def(IntegerAttr, prop_name="columns")
    # xbar-place
    replication = opt_prop_def(IntegerAttr)

    body = region_def("single_block")

    traits = traits_def(NoTerminator())

    def __init__(self, input: SSAValue, result_type: Attribute, properties: dict[str, Attribute], name: str):
        super().__init__(
            operands=[input],
            result_types=[result_type],
            properties=properties,
            attributes={"pimc.name": StringAttr(name)},
            regions=[Region([Block()])],
        )

    # convenience ---------------------------------------------------------------------------------
    @property
    def layer_name(self) -> str:
        a = self.attributes.get("pimc.name")
        return a.data if isinstance(a, StringAttr) else ""

    @property
    def k(self) -> int:
        return int(self.weight.get_shape()[0])

    @property
    def n(self) -> int:
        return int(self.weight.get_shape()[1])

    @property
    def columns(self) -> int | None:
        return None if self.columns_attr is None else _int(self.columns_attr)

    def int_prop(self, name: str) -> int | None:
        a = getattr(self, name)
        return None if a is None else _int(a)

    def weight_array(self) -> np.ndarray:
        return numpy_from_dense(self.weight)

    def crossbars(self) -> list[CrossbarOp]:
        return [op for op in self.body.block.ops if isinstance(op, CrossbarOp)]

    def group_shape(self) -> tuple[int, int, int]:
        """(groups, Kg, Ng)."""
        g = _int(self.groups)
        return g, self.k // g, self.n // g

    def verify_(self) -> None:
        where = "xbar.layer"
        if self.kind.data not in KINDS:
            raise VerifyException(f"{where}: kind must be one of {KINDS}, got {self.kind.data!r}")
        wshape = self.weight.get_shape()
        if len(wshape) != 2 or not _int_elem(self.weight):
            raise VerifyException(f"{where}: weight must be a 2-D integer tensor [K, N], got {self.weight.type}")
        k, n = wshape
        for attr_name, size in (("kernel", 2), ("strides", 2), ("pads", 4), ("dilations", 2), ("clamp", 2)):
            vals = ints(getattr(self, attr_name))
            if len(vals) != size:
                raise VerifyException(f"{where}: '{attr_name}' needs {size} values, got {len(vals)}")
        g = _int(self.groups)
        if g < 1 or k % g or n % g:
            raise VerifyException(f"{where}: groups = {g} must divide K = {k} and N = {n}")
        for attr_name in ("bias", "requant_multiplier", "requant_shift"):
            a = getattr(self, attr_name)
            if a.get_shape() != (n,) or not _int_elem(a, 64):
                raise VerifyException(f"{where}: '{attr_name}' must be i64 [{n}], got {a.type}")
        if self.activation.data not in ACTIVATIONS:
            raise VerifyException(f"{where}: activation must be one of {ACTIVATIONS}, got {self.activation.data!r}")
        in_t, out_t = element_of(self.input), element_of(self.output)
        if not isinstance(in_t, QuantType) or not isinstance(out_t, QuantType):
            raise VerifyException(f"{where}: input and output must be quantized (!nn.q) tensors")
        if in_t.signed.data:
            raise VerifyException(f"{where}: crossbar inputs must be unsigned codes, got {in_t}")
        if (in_t.zero_point.data, in_t.bits.data) != (_int(self.zp_in), _int(self.act_bits)):
            raise VerifyException(f"{where}: zp_in/act_bits disagree with the input type {in_t}")
        if (out_t.zero_point.data, out_t.bits.data) != (_int(self.zp_out), _int(self.out_bits)):
            raise VerifyException(f"{where}: zp_out/out_bits disagree with the output type {out_t}")
        wb = _int(self.weight_bits)
        if not 2 <= wb <= 16:
            raise VerifyException(f"{where}: weight_bits must be in [2, 16], got {wb}")
        in_shape, out_shape = shape_of(self.input), shape_of(self.output)
        if self.kind.data == "conv":
            kh, kw = ints(self.kernel)
            if len(in_shape) != 4 or len(out_shape) != 4:
                raise VerifyException(f"{where}: a conv needs 4-D NCHW input and output, got {in_shape}, {out_shape}")
            if in_shape[1] * kh * kw != k or out_shape[1] != n:
                raise VerifyException(
                    f"{where}: K = {k} must be Cin·kh·kw = {in_shape[1] * kh * kw} and N = {n} must be Cout = {out_shape[1]}"
                )
            sh, sw = ints(self.strides)
            pt, pl, pb, pr = ints(self.pads)
            dh, dw = ints(self.dilations)
            if min(sh, sw, dh, dw) < 1 or min(pt, pl, pb, pr) < 0:
                raise VerifyException(f"{where}: strides and dilations must be >= 1, pads >= 0")
            ho = (in_shape[2] + pt + pb - dh * (kh - 1) - 1) // sh + 1
            wo = (in_shape[3] + pl + pr - dw * (kw - 1) - 1) // sw + 1
            if (ho, wo) != tuple(out_shape[2:]):
                raise VerifyException(f"{where}: output spatial shape {out_shape[2:]} != computed {(ho, wo)}")
        else:
            if g != 1:
                raise VerifyException(f"{where}: a gemm has groups = 1")
            if in_shape[-1] != k or out_shape[-1] != n:
                raise VerifyException(f"{where}: gemm input last axis must be K = {k} and output last axis N = {n}")
        self._verify_sliced(k, n, wb)
        xbars = self.crossbars()
        if any(not isinstance(op, CrossbarOp) for op in self.body.block.ops):
            raise VerifyException(f"{where}: the region holds only xbar.crossbar ops")
        if xbars and (self.xbar_rows is None or self.xbar_cols is None or self.columns is None):
            raise VerifyException(f"{where}: a tiled layer needs xbar_rows, xbar_cols and columns")
        if xbars:
            r, c = _int(self.xbar_rows), _int(self.xbar_cols)
            ends = 0
            for x in xbars:
                xr, xc = x.shape
                if xr > r or xc > c:
                    raise VerifyException(f"{where}: crossbar image {xr}x{xc} exceeds the crossbar size {r}x{c}")
                ends += xc
            if ends != self.columns:
                raise VerifyException(f"{where}: crossbar widths sum to {ends}, but columns = {self.columns}")
        if self.replication is not None and _int(self.replication) < 1:
            raise VerifyException(f"{where}: replication must be >= 1")
        for x in xbars:
            if x.copies is not None and len(x.copies.get_values()) != 3 * ((_int(self.replication) if self.replication is not None else 1) - 1):
                raise VerifyException(f"{where}: each crossbar lists the places of replication - 1 copies")

    def _verify_sliced(self, k: int, n: int, wb: int) -> None:
        where = "xbar.layer"
        sliced = [self.cell_bits, self.dac_bits, self.scheme, self.order, self.flip]
        if all(a is None for a in sliced):
            if self.cells is not None or self.colmap is not None:
                raise VerifyException(f"{where}: cells/colmap need cell_bits, dac_bits, scheme, order and flip")
            return
        if any(a is None for a in sliced):
            raise VerifyException(f"{where}: a bit-sliced layer needs cell_bits, dac_bits, scheme, order and flip")
        c, v = _int(self.cell_bits), _int(self.dac_bits)
        if not 1 <= c <= 4:
            raise VerifyException(f"{where}: cell_bits must be in [1, 4], got {c}")
        if not 1 <= v <= 8:
            raise VerifyException(f"{where}: dac_bits must be in [1, 8], got {v}")
        if self.scheme.data not in SCHEMES:
            raise VerifyException(f"{where}: scheme must be one of {SCHEMES}, got {self.scheme.data!r}")
        if self.order.data not in ORDERS:
            raise VerifyException(f"{where}: order must be one of {ORDERS}, got {self.order.data!r}")
        if _int(self.flip) not in (0, 1):
            raise VerifyException(f"{where}: flip must be 0 or 1")
        if (self.cells is None) != (self.colmap is None):
            raise VerifyException(f"{where}: cells and colmap come together")
        if self.cells is not None:
            cshape = self.cells.get_shape()
            if len(cshape) != 2 or cshape[0] != k or not _u8_type(self.cells):
                raise VerifyException(f"{where}: cells must be ui8 [{k}, S], got {self.cells.type}")
            if self.colmap.get_shape() != (cshape[1], 5) or not _int_elem(self.colmap, 64):
                raise VerifyException(f"{where}: colmap must be i64 [{cshape[1]}, 5], got {self.colmap.type}")
            cells = numpy_from_dense(self.cells)
            if cells.size and int(cells.max()) > (1 << c) - 1:
                raise VerifyException(f"{where}: a cell value exceeds 2^cell_bits - 1 = {(1 << c) - 1}")
            cm = numpy_from_dense(self.colmap)
            _check_colmap(where, cm, cshape[1], cshape[1], n)


XBAR = Dialect("xbar", [LayerOp, CrossbarOp], [])

__all__ = [
    "XBAR",
    "LayerOp",
    "CrossbarOp",
    "SCHEMES",
    "ORDERS",
    "ADC_MODES",
    "KINDS",
    "digits_per_output",
    "OUT_ALL",
    "OUT_NONE",
]

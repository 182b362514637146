"""The fast path of a whole lossless convolution layer (isa.md §6).

A layer's ``im2col -> mvm ... -> shiftadd -> requant`` chain, when every crossbar is lossless and
no other instruction reads the intermediate buffers, is the exact integer computation

    out[b, n, ho, wo] = clamp(rne((Σ_k cols[p, k]·W_eff[k, n] + bias[n])·mult[n] / 2^shift[n]) + zp)

with ``W_eff`` the layer matrix (``kernels.layer_matrix``). It is computed here *channel-major*,
``Y^T = W_eff^T @ X^T`` per block of output rows, where ``X^T[k, p]`` is read straight from a
strided view of the padded input (a wide stride-2 layer: a view per tap of its stride phases,
``_tap_view``): the im2col matrix, the column results and the int64 sums are
never materialized, and the output lands in NCHW order without a transpose. Depthwise layers
(every output channel reads one input channel) are ``kh·kw`` multiply-adds over shifted slices of
the padded input's stride phases (``jit.depthwise``) instead of a block-diagonal product.

Exactness is proved once, at preparation (``plan_conv``): dense products run in float32 on chunks
of the K axis whose worst-case partial sums stay below 2^24 (as ``kernels.LayerMatrix``), else in
float64 below 2^53 (no plan beyond); depthwise sums in int32 or int64 by the same worst case. The
requantization is binary64 arithmetic where that is proved exact (``binary64_scales``), else
integer arithmetic (``jit.requant_block``), exact where ``|sum + bias|·mult < 2^63`` holds for every
possible input; where that is not proved, each block checks its actual sums, and a block beyond it
takes the arbitrary-precision path (``kernels.requant``).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field

import numpy as np

from runtime import jit as JIT
from runtime.kernels import PARALLEL_MIN_WORK, LayerMatrix, _map, first_time, requant

#: elements of one block's float32 input columns (K x block) and of its sums (N x block): blocks
#: past L2's size, as each block is ~10 NumPy and numba calls whose fixed cost outweighed cache
#: misses (2^16 sums: MobileNetV2 fast path ~15 % slower at batch 8, ResNet-18 ~15 % at batch 1)
XT_BLOCK_ELEMS = 1 << 20
SUM_BLOCK_ELEMS = 1 << 19
#: ``jit.split_stride2`` reads words as little-endian
LITTLE_ENDIAN = sys.byteorder == "little"
#: least output width of a stride-2 dense layer whose im2col columns are copied from its input's
#: stride phases, a view per tap (rows of contiguous runs), rather than from one strided view of
#: the padded input (single bytes 2 apart): measured 3 channels of 224 x 224, 3 x 3: 431 against
#: 498 µs; 7 x 7: 1869 against 2318; 64 of 56 x 56: 776 against 853; narrower, a copy per tap
#: costs more (128 of 28 x 28: 760 against 727; 256 of 14 x 14: 903 against 794), and a 1 x 1
#: window reads only a quarter of the phases
PHASE_VIEWS_MIN_WO = 28


@dataclass
class ConvPlan:
    """What a fused conv layer multiplies by, proved exact for ``bits``-wide input codes."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int, int, int]
    dilation: tuple[int, int]
    pad_value: int
    C: int
    N: int
    chunks: list[tuple[int, int, np.ndarray]] | None  # dense: (k0, k1, W_eff^T[:, k0:k1] float32)
    wt64: np.ndarray | None  # dense, when float32 chunks cannot be exact: W_eff^T float64
    #: depthwise: [N, kh·kw] integer coefficients, int32 where every partial sum fits it, else int64
    dw: np.ndarray | None
    #: float32, single chunk, |sum| + |bias| < 2^24: [N, K + 1] with the bias as its last column
    biased: np.ndarray | None
    ints: tuple[np.ndarray, np.ndarray, np.ndarray]  # bias, mult, shift as int64 [N]
    zp: int
    lo: int
    hi: int
    #: the worst case |sum + bias|·mult reaches 2^63: each block checks its actual sums (max |bias|, max |mult|)
    check: tuple[int, int] | None
    #: mult·2^−shift per channel (float64), where the requantization is proven exact in binary64
    #: (``jit._requant_f64``; then ``check`` is moot); else empty
    fscale: np.ndarray = field(default_factory=lambda: np.empty(0))
    cache: dict = field(default_factory=dict)  # per input shape: the stride-phase taps, ones_per_column's selections


def _depthwise_coefs(Wm: np.ndarray, C: int, kk: int) -> np.ndarray | None:
    """[N, kk] coefficients when output channel n reads input channel n only (N == C), else None."""
    K, N = Wm.shape
    if N != C or K != C * kk or C < 2:
        return None
    blocks = Wm.reshape(C, kk, N)
    diag = blocks[np.arange(C), :, np.arange(C)]  # [C, kk]: channel c's rows, its own column
    if np.count_nonzero(Wm) != np.count_nonzero(diag):
        return None
    return diag


def plan_conv(lm: LayerMatrix, bits: int, kernel, stride, pad, dilation, pad_value: int, C: int,
              bias: np.ndarray, mult: np.ndarray, shift: np.ndarray, zp: int, lo: int, hi: int) -> ConvPlan | None:
    """The exact plan of a fused conv layer, or None when exactness cannot be proved."""
    Wm = lm.Wm
    K, N = Wm.shape
    kh, kw = (int(k) for k in kernel)
    if K != C * kh * kw or bits < 1:
        return None
    bias, mult, shift = (np.ascontiguousarray(np.broadcast_to(np.asarray(v, dtype=np.int64).reshape(-1), (N,)))
                         for v in (bias, mult, shift))
    if N and (int(shift.min()) < 0 or int(shift.max()) > 62):
        return None
    if not (-(1 << 63) <= lo <= hi < (1 << 63)):
        return None
    # |sum| <= (2^bits − 1)·max_n Σ_k |W[k, n]|; the integer requantization is exact below 2^63
    vmax = ((1 << bits) - 1) * lm.colsum
    bmax = vmax + (int(np.abs(bias).max()) if N else 0)
    mmax = int(np.abs(mult).max()) if N else 0
    chunks = wt64 = dw = biased = None
    coefs = _depthwise_coefs(Wm, C, kh * kw)
    if coefs is not None:
        if vmax >= (1 << 63):
            return None
        dw = np.ascontiguousarray(coefs, dtype=np.int32 if vmax < (1 << 31) else np.int64)
    else:
        plan = lm.plan(bits)
        if plan is None:
            if vmax >= (1 << 53):
                return None
            wt64 = np.ascontiguousarray(Wm.T.astype(np.float64))
        else:
            chunks = [(k0, k1, np.ascontiguousarray(Wm[k0:k1].T.astype(np.float32))) for k0, k1 in plan]
            if len(chunks) == 1 and bmax < (1 << 24):
                biased = np.concatenate([chunks[0][2], bias.astype(np.float32).reshape(N, 1)], axis=1)
    return ConvPlan(
        kernel=(kh, kw), stride=tuple(int(s) for s in stride), pad=tuple(int(p) for p in pad),
        dilation=tuple(int(d) for d in dilation), pad_value=int(pad_value), C=C, N=N,
        chunks=chunks, wt64=wt64, dw=dw, biased=biased, ints=(bias, mult, shift), zp=int(zp), lo=int(lo), hi=int(hi),
        check=None if bmax * mmax < (1 << 63) else (bmax - vmax, mmax),
        fscale=binary64_scales(bmax, mult, shift, int(zp), int(lo), int(hi)),
    )


def binary64_scales(bmax: int, mult: np.ndarray, shift: np.ndarray, zp: int, lo: int, hi: int) -> np.ndarray:
    """mult·2^−shift per channel (float64) where binary64 requantizes exactly (``jit._requant_f64``):
    every |sum + bias| <= bmax below 2^53, every |mult| below 2^53 (so the scales are exact),
    the clamp's bounds below 2^53, and 2^(53 − shift) ≥ max(|hi − zp|, |zp − lo|) + 2, at most
    2^51 (its rounding by 1.5·2^52 needs the clamped quotient below 2^51); else empty."""
    far = max(abs(hi - zp), abs(zp - lo)) + 2
    if (not mult.size or bmax >= (1 << 53) or int(np.abs(mult).max()) >= (1 << 53) or far > (1 << 51)
            or max(abs(lo), abs(hi), abs(zp)) >= (1 << 53) or int(shift.max()) > 53 - (far - 1).bit_length()):
        return np.empty(0)
    return np.ldexp(mult.astype(np.float64), -shift.astype(np.int32))


def out_hw(plan: ConvPlan, H: int, W: int) -> tuple[int, int]:
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = plan.kernel, plan.stride, plan.pad, plan.dilation
    return (H + pt + pb - dh * (kh - 1) - 1) // sh + 1, (W + pl + pr - dw * (kw - 1) - 1) // sw + 1


def padded_input(src: np.ndarray, plan: ConvPlan) -> np.ndarray:
    pt, pl, pb, pr = plan.pad
    if not (pt or pl or pb or pr):
        return src
    B, C, H, W = src.shape
    # filled whole, then the interior copied (faster than writing the four borders, or np.pad)
    xp = np.full((B, C, H + pt + pb, W + pl + pr), plan.pad_value, dtype=src.dtype)
    xp[:, :, pt : H + pt, pl : W + pl] = src
    return xp


def _window(xp: np.ndarray, plan: ConvPlan, Ho: int, Wo: int) -> np.ndarray:
    """[B, C, kh, kw, Ho, Wo] strided view of the padded input: im2col's X^T per image."""
    (kh, kw), (sh, sw), (dh, dw) = plan.kernel, plan.stride, plan.dilation
    sB, sC, sH, sW = xp.strides
    shape, strides = (*xp.shape[:2], kh, kw, Ho, Wo), (sB, sC, sH * dh, sW * dw, sH * sh, sW * sw)
    if not xp.flags.c_contiguous:
        return np.lib.stride_tricks.as_strided(xp, shape=shape, strides=strides, writeable=False)
    win = np.ndarray(shape, dtype=xp.dtype, buffer=xp, strides=strides)  # (5x cheaper than as_strided)
    win.flags.writeable = False
    return win


def _phases(src: np.ndarray, plan: ConvPlan, Ho: int, Wo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The padded input split into its sh x sw stride phases (rows ≡ p mod sh, columns ≡ q mod sw),
    each flattened with grid width Wq: [B, C, sh·sw, Hq·Wq], built from ``src`` (unpadded: each
    phase is filled with the pad value, then its share of ``src`` copied in). Output (ho, wo) sits
    at grid position ho·Wq + wo, and kernel tap (i, j) reads phase ((i·dh) mod sh, (j·dw) mod sw)
    there plus ⌊i·dh/sh⌋·Wq + ⌊j·dw/sw⌋: so each tap is ONE contiguous run of a phase (grid columns
    past Wo are computed and dropped). Returns (phases, tap phase, tap offset, Wq)."""
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = plan.kernel, plan.stride, plan.pad, plan.dilation
    B, C, H, W = src.shape
    Hp, Wp = H + pt + pb, W + pl + pr
    if sh == sw == 1:
        ph, Hq, Wq = np.ascontiguousarray(padded_input(src, plan)).reshape(B, C, 1, Hp * Wp), Hp, Wp
    else:
        Hq, Wq = -(-Hp // sh), -(-Wp // sw)
        ph = np.full((B, C, sh * sw, Hq * Wq), plan.pad_value, dtype=src.dtype)
        grid = ph.reshape(B, C, sh, sw, Hq, Wq)
        if (sh, sw) == (2, 2) and _words_split(src):
            JIT.split_stride2(src, grid.reshape(B, C, 4, Hq, Wq), Hq, Wq, pt, pl)
        else:
            _split_phases(src, grid, pt, pl)
    taps = plan.cache.get(("taps", Wq))
    if taps is None:
        tp = np.array([((i * dh) % sh) * sw + (j * dw) % sw for i in range(kh) for j in range(kw)], dtype=np.int64)
        to = np.array([(i * dh // sh) * Wq + (j * dw // sw) for i in range(kh) for j in range(kw)], dtype=np.int64)
        # every tap's run of (Ho − 1)·Wq + Wo stays inside its phase (jit reads it unchecked)
        assert int(to.max()) + (Ho - 1) * Wq + Wo <= Hq * Wq
        taps = plan.cache[("taps", Wq)] = (tp, to)
    return ph, *taps, Wq


def _words_split(src: np.ndarray) -> bool:
    """Whether ``jit.split_stride2`` splits ``src``: one-byte codes in C order, little-endian words."""
    return src.dtype.itemsize == 1 and src.flags.c_contiguous and LITTLE_ENDIAN


def _tap_view(ph: np.ndarray, phase: int, offset: int, Wq: int, Ho: int, Wo: int) -> np.ndarray:
    """[B, C, Ho, Wo] read-only view of what a kernel tap reads in the stride phases ``ph`` [B, C,
    S, Hq·Wq] (C order; ``_phases``): phase ``phase`` from ``offset``, rows Wq apart."""
    B, C, S, L = ph.shape
    isz = ph.itemsize
    view = np.ndarray((B, C, Ho, Wo), dtype=ph.dtype, buffer=ph, offset=(phase * L + offset) * isz,
                      strides=(C * S * L * isz, S * L * isz, Wq * isz, isz))
    view.flags.writeable = False
    return view


def _split_phases(src: np.ndarray, grid: np.ndarray, pt: int, pl: int) -> None:
    """``_phases``' split by NumPy's strided copies: ``grid`` [B, C, sh, sw, Hq, Wq] (filled with
    the pad value) gets padded element (r, w) of ``src`` at [r mod sh, w mod sw, r // sh, w // sw]."""
    sh, sw = grid.shape[2], grid.shape[3]
    for p in range(sh):
        h0 = -(-(pt - p) // sh) if pt > p else 0  # the phase's first row on a real input row
        r0 = h0 * sh + p - pt
        for q in range(sw):
            w0 = -(-(pl - q) // sw) if pl > q else 0
            c0 = w0 * sw + q - pl
            part = src[:, :, r0::sh, c0::sw]
            grid[:, :, p, q, h0 : h0 + part.shape[2], w0 : w0 + part.shape[3]] = part


def _requant(acc: np.ndarray, plan: ConvPlan, n0: int, out: np.ndarray, b0: int, h0: int, biased: bool = False) -> None:
    """out[b0 + b, n0 + n, h0 + h] (integer) = clamp(rne((acc + bias)·mult / 2^shift) + zp) from
    ``acc`` [n, nb, nh, Wo] (C order), exact integer sums of any type, for channels n0..n0 + n;
    ``biased``: acc already holds the bias. Where the worst case was not proved below 2^63, the
    block's actual sums are checked, and the rare block beyond it takes the arbitrary-precision path."""
    n, nb, nh, _Wo = acc.shape
    bias, mult, shift = (v[n0 : n0 + n] for v in plan.ints)
    if biased:
        bias = _zeros(n)
    if plan.check is not None and not plan.fscale.size:
        bias_max, mmax = plan.check
        amax = max(float(acc.max()), -float(acc.min())) if acc.size else 0.0
        if (int(amax) + bias_max) * mmax >= (1 << 63):
            dst = out[b0 : b0 + nb, n0 : n0 + n, h0 : h0 + nh].transpose(1, 0, 2, 3)
            flat = np.asarray(acc, dtype=np.int64).reshape(n, -1)
            y = requant(flat.T, bias, mult, shift, plan.zp, plan.lo, plan.hi, channel_major=True, out_dtype=dst.dtype)
            dst[...] = y.reshape(dst.shape)
            return
    fscale = plan.fscale[n0 : n0 + n] if plan.fscale.size else plan.fscale
    JIT.requant_block(acc, bias, mult, shift, fscale, plan.zp, plan.lo, plan.hi, out, b0, n0, h0)


_NO_SCALES = np.empty(0)  # the integer requantization (jit.requant_block, jit.depthwise)


@functools.lru_cache(maxsize=64)
def _zeros(n: int) -> np.ndarray:
    """An int64 zero vector of n elements, shared: the bias of sums that already hold it (never
    written; not flagged read-only, which numba would compile its kernels for anew)."""
    return np.zeros(n, dtype=np.int64)


def _blocks(B: int, n: int, per_image: int, inner: int, target: int) -> list[tuple[int, int, int, int]]:
    """Work blocks (b0, b1, i0, i1) of about ``target`` elements: several whole images when one
    image's ``per_image`` elements (n slices of ``inner``) are fewer, else slices of one image."""
    if per_image <= target:
        nb = max(1, min(B, target // max(per_image, 1)))
        return [(b0, min(B, b0 + nb), 0, n) for b0 in range(0, B, nb)]
    step = max(1, target // max(inner, 1))
    return [(b, b + 1, i0, min(n, i0 + step)) for b in range(B) for i0 in range(0, n, step)]


def run_conv(src: np.ndarray, plan: ConvPlan, out_dtype) -> np.ndarray:
    """The fused layer on ``src`` [B, C, H, W] codes: the requantized output [B, N, Ho, Wo]."""
    B, C, H, W = src.shape
    Ho, Wo = out_hw(plan, H, W)
    N, (kh, kw) = plan.N, plan.kernel
    out = np.empty((B, N, Ho, Wo), dtype=out_dtype)
    if plan.dw is not None:  # blocks of channels (output channel c reads input channel c)
        ph, tp, to, Wq = _phases(src, plan, Ho, Wo)

        def dw_block(item) -> None:
            b0, b1, c0, c1 = item
            if plan.check is None or plan.fscale.size:
                JIT.depthwise(ph, tp, to, plan.dw, *plan.ints, plan.fscale, plan.zp, plan.lo, plan.hi, Wq, b0, b1, c0, c1, out, 0, 0)
            else:  # the int64 sums (an identity requantization), then requantized beyond int64 where needed
                sums = np.empty((b1 - b0, c1 - c0, Ho, Wo), dtype=np.int64)
                zero, one = np.zeros(C, dtype=np.int64), np.ones(C, dtype=np.int64)
                JIT.depthwise(ph, tp, to, plan.dw, zero, one, zero, _NO_SCALES, 0, -(1 << 63), (1 << 63) - 1, Wq, b0, b1, c0, c1,
                              sums, b0, c0)
                _requant(np.ascontiguousarray(sums.transpose(1, 0, 2, 3)), plan, c0, out, b0, 0)

        _map(dw_block, _blocks(B, C, C * Ho * Wo, Ho * Wo, SUM_BLOCK_ELEMS), work=B * C * Ho * Wo * kh * kw)
        return out
    # dense: blocks of output rows, X^T [K, images·rows·Wo] copied (and converted) from views
    if plan.stride == (2, 2) and kh * kw > 1 and Wo >= PHASE_VIEWS_MIN_WO and _words_split(src):  # (a view per tap of the stride phases)
        ph, tp, to, Wq = _phases(src, plan, Ho, Wo)
        taps = [_tap_view(ph, int(p), int(o), Wq, Ho, Wo) for p, o in zip(tp, to)]

        def fill(xt: np.ndarray, b0: int, b1: int, h0: int, h1: int) -> None:
            xt = xt.reshape(C, kh * kw, b1 - b0, h1 - h0, Wo)
            for t, view in enumerate(taps):
                np.copyto(xt[:, t], view[b0:b1, :, h0:h1].transpose(1, 0, 2, 3), casting="unsafe")
    else:  # (a view of the whole window)
        win = _window(padded_input(src, plan), plan, Ho, Wo)

        def fill(xt: np.ndarray, b0: int, b1: int, h0: int, h1: int) -> None:
            np.copyto(xt.reshape(C, kh, kw, b1 - b0, h1 - h0, Wo), win[b0:b1, :, :, :, h0:h1].transpose(1, 2, 3, 0, 4, 5),
                      casting="unsafe")
    K = C * kh * kw
    target = max(1, min(XT_BLOCK_ELEMS // max(K, 1), SUM_BLOCK_ELEMS // max(N, 1)))
    ftype = np.float32 if plan.chunks is not None else np.float64
    ones_row = plan.biased is not None  # the bias rides on a row of ones

    def dense_block(item) -> None:
        b0, b1, h0, h1 = item
        nb, nh = b1 - b0, h1 - h0
        buf = np.empty((K + ones_row) * nb * nh * Wo, dtype=ftype)
        fill(buf[: K * nb * nh * Wo], b0, b1, h0, h1)
        if ones_row:
            buf[K * nb * nh * Wo :] = 1
        xt = buf.reshape(K + ones_row, -1)
        if plan.biased is not None:
            acc = plan.biased @ xt
        elif plan.chunks is None:
            acc = plan.wt64 @ xt
        elif len(plan.chunks) == 1:
            acc = plan.chunks[0][2] @ xt
        else:  # every chunk's partial sums exact in float32, their total in float64
            acc = None
            for k0, k1, wt in plan.chunks:
                part = wt @ xt[k0:k1]
                acc = part.astype(np.float64) if acc is None else np.add(acc, part, out=acc)
        _requant(acc.reshape(N, nb, nh, Wo), plan, 0, out, b0, h0, biased=ones_row)

    _map(dense_block, _blocks(B, Ho, Ho * Wo, Wo, target), work=B * Ho * Wo * K * N)
    return out


#: most elements of the im2col matrix, with its row of ones (B·Ho·Wo·(K + 1)), for which
#: ``run_conv_counting`` builds it in one compiled call with the layer's DAC-digit counts; and the
#: most for a layer with a window, or with fewer inputs than outputs per position (K < N).
#: Measured against ``run_conv`` and ``ones_per_column`` on MobileNetV2's and the example's layers:
#: always faster up to ~30,000 elements (the example's at batch 1: 21 against 40 µs at ~14,000);
#: beyond, faster for 3 x 3 windows (the example's at batch 8: 151 against 174 µs at ~114,000)
#: and where K < N (16 to 96 channels at 112 x 112: 840 against 920 µs), slower for the other
#: 1 x 1 layers (960 to 160 channels at 7 x 7: 173 against 151 µs) and past ~300,000 (3 to 32
#: channels at 224 x 224, 3 x 3, stride 2: 708 against 644 µs)
ONE_CALL_MAX = 1 << 15
ONE_CALL_WIDE_MAX = 1 << 18


def run_conv_counting(src: np.ndarray, plan: ConvPlan, out_dtype, table: np.ndarray | None):
    """``run_conv``'s output and ``ones_per_column``'s counts (for one DAC width, ``table``) for a
    small dense layer whose product and bias are exact in one float32 chunk (``biased``) and
    whose requantization needs no checks of the sums: its im2col matrix and counts in one
    compiled call (``jit.im2col_counts``), one product, one requantization; else None.
    ``table`` must have an entry for every code of ``src`` and for the pad value (the caller's
    checked bounds: the compiled count reads it unchecked)."""
    if plan.biased is None or (plan.check is not None and not plan.fscale.size):
        return None
    B, C, H, W = src.shape
    Ho, Wo = out_hw(plan, H, W)
    K = C * plan.kernel[0] * plan.kernel[1]
    elems = B * Ho * Wo * (K + 1)
    # (a product that run_conv would share among the worker threads keeps run_conv)
    wide = K < plan.N or plan.kernel != (1, 1)
    if (elems > (ONE_CALL_WIDE_MAX if wide else ONE_CALL_MAX) or elems * plan.N >= PARALLEL_MIN_WORK
            or not 0 <= plan.pad_value < (1 << 16)):
        return None
    xt = np.empty((K + 1, B * Ho * Wo), dtype=np.float32)
    ones = np.empty(K, dtype=np.int64)
    JIT.im2col_counts(src, *plan.kernel, *plan.stride, plan.pad[0], plan.pad[1], *plan.dilation, Ho, Wo, plan.pad_value,
                      _NO_TABLE if table is None else table, xt, ones)
    out = np.empty((B, plan.N, Ho, Wo), dtype=out_dtype)
    _bias, mult, shift = plan.ints  # (the bias rides on xt's row of ones; no checks, by the conditions above)
    JIT.requant_block((plan.biased @ xt).reshape(plan.N, B, Ho, Wo), _zeros(plan.N), mult, shift, plan.fscale, plan.zp, plan.lo,
                      plan.hi, out, 0, 0, 0)
    return out, ones


def warm_up(plan: ConvPlan, src_dtype, out_dtype) -> None:
    """Run ``plan`` and count its DAC digits once on a smallest input, so that numba compiles the
    kernels they call for these operand types (or loads them from its cache) before a run is
    timed; once per kind a process."""
    kind = ("conv", plan.dw.dtype.str if plan.dw is not None else plan.wt64 is None, plan.biased is None,
            plan.check is None, np.dtype(src_dtype).str, np.dtype(out_dtype).str)
    if not first_time(kind):
        return
    (kh, kw), (pt, pl, pb, pr), (dh, dw) = plan.kernel, plan.pad, plan.dilation
    h, w = max(1, dh * (kh - 1) + 1 - pt - pb), max(1, dw * (kw - 1) + 1 - pl - pr)
    x = np.zeros((1, plan.C, h, w), dtype=src_dtype)
    run_conv(x, plan, out_dtype)
    if 0 <= plan.pad_value < (1 << 16):  # (the DAC digits' counts of small sources; a table to the pad value)
        for table in (None, np.zeros(plan.pad_value + 1, dtype=np.uint8)):
            ones_per_column(x, plan, table)
            run_conv_counting(x, plan, out_dtype, table)
            # (small maps' counts by the window masks: too small here for ones_per_column to take them)
            JIT.digits_f32(x, _NO_TABLE if table is None else table, np.empty(x.shape, dtype=np.float32))
    if np.dtype(src_dtype) == np.uint8:  # (large maps' counts by planes, and stride-2 splits: likewise)
        JIT.plane_features(x, _NO_ROWS, _NO_ROWS, np.empty((plan.C, 1), dtype=np.int64))
    if np.dtype(src_dtype).itemsize == 1 and LITTLE_ENDIAN:
        JIT.split_stride2(x, np.empty((*x.shape[:2], 4, *x.shape[2:]), dtype=x.dtype), x.shape[2], x.shape[3], 0, 0)


def _selection(n_in: int, lead: int, k: int, dil: int, stride: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """For each kernel offset j < k: which of the n_in real positions its n_out window positions
    read (a [n_in, k] 0/1 float32 matrix; each position at most once per offset), and how many of
    them fall in the padding (``lead`` padded positions come first)."""
    sel = np.zeros((n_in, k), dtype=np.float32)
    pads = np.zeros(k, dtype=np.int64)
    t = np.arange(n_out)
    for j in range(k):  # per kernel offset
        pos = j * dil + stride * t - lead
        real = (pos >= 0) & (pos < n_in)
        sel[pos[real], j] = 1.0
        pads[j] = n_out - int(real.sum())
    return sel, pads


def _offset_totals(a: np.ndarray, rsel: np.ndarray, free: np.ndarray, pad_count: int) -> np.ndarray:
    """ones_per_column's result from ``a`` [C, kw, H] float64, each input row's count per column
    offset: Σ_h rsel[h, i]·a[c, j, h] (one float64 product: every sum an integer below 2^53, so the
    conversion to int64 is exact), plus ``pad_count`` (the pad value's count times the images) for
    each of the ``free`` [kh, kw] window positions in the padding (``_row_terms``)."""
    C, kw, H = a.shape
    res = (a.reshape(C * kw, H) @ rsel).reshape(C, kw, -1).transpose(0, 2, 1)  # [C, kh, kw]
    return _with_pad_terms(res, free, pad_count)


def _with_pad_terms(res: np.ndarray, free: np.ndarray, pad_count: int) -> np.ndarray:
    """int64 [C·kh·kw] of ``res`` [C, kh, kw] (float integers of the real window positions' counts)
    plus ``pad_count`` for each of the ``free`` [kh, kw] window positions in the padding."""
    out = np.empty(res.shape, dtype=np.int64)
    np.add(res, float(pad_count) * free if pad_count else 0.0, out=out, casting="unsafe")
    return out.reshape(-1)


def _window_masks(plan: ConvPlan, H: int, W: int, Ho: int, Wo: int) -> np.ndarray:
    """[H·W, kh·kw] float32: 1 where input pixel (h, w) is read by kernel tap (i, j) at some output
    position (each pixel at most once per tap), cached per input size: ``ones_per_column``'s one
    product for small maps."""
    key = ("masks", H, W)
    if key not in plan.cache:
        csel, _cpad, rsel, _rpad = _selections(plan, H, W, Ho, Wo)
        plan.cache[key] = np.einsum("hi,wj->hwij", rsel, csel).reshape(H * W, -1).astype(np.float32)
    return plan.cache[key]


def _row_terms(plan: ConvPlan, H: int, W: int, Ho: int, Wo: int) -> tuple[np.ndarray, np.ndarray]:
    """For ``_offset_totals``: the rows' selection [H, kh] as float64, and per kernel offset (i, j)
    the window positions that fall in the padding, [kh, kw] float64 (cached per input size)."""
    key = ("terms", H, W)
    if key not in plan.cache:
        _csel, cpad, rsel, rpad = _selections(plan, H, W, Ho, Wo)
        free = Ho * Wo - np.outer(Ho - rpad, Wo - cpad)
        plan.cache[key] = (rsel.astype(np.float64), free.astype(np.float64))
    return plan.cache[key]


def _selections(plan: ConvPlan, H: int, W: int, Ho: int, Wo: int) -> tuple[np.ndarray, ...]:
    """``_selection`` of the columns and of the rows of an H x W input: (csel, cpad, rsel, rpad), cached."""
    sel = plan.cache.get((H, W))
    if sel is None:
        (kh, kw), (sh, sw), (pt, pl, _pb, _pr), (dh, dw) = plan.kernel, plan.stride, plan.pad, plan.dilation
        sel = plan.cache[(H, W)] = (*_selection(W, pl, kw, dw, sw, Wo), *_selection(H, pt, kh, dh, sh, Ho))
    return sel


ALL_BYTES = np.uint64(0xFFFFFFFFFFFFFFFF)


def row_popcounts(a: np.ndarray, row_bytes: int, mask: np.uint64 = ALL_BYTES) -> np.ndarray:
    """The set bits of each run of ``row_bytes`` bytes of ``a`` (one-byte elements, in C order),
    of the bytes ``mask`` keeps in every 8-byte word (rows of whole words only): int64
    [a.size // row_bytes] (``jit.word_row_popcounts``, ``jit.run_popcounts``)."""
    flat = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    out = np.empty(flat.size // row_bytes, dtype=np.int64)
    if row_bytes % 8 == 0:
        JIT.word_row_popcounts(flat.view(np.uint64).reshape(out.size, row_bytes // 8), mask, out)
        return out
    if mask != ALL_BYTES:
        raise ValueError("a byte mask needs rows of whole words")
    JIT.run_popcounts(flat, row_bytes, out)
    return out


#: most columns of a stride class that a kernel column offset may skip for ``_ones_by_word_popcounts``
WORD_POPCOUNT_MAX_SKIPPED = 4


def _ones_by_word_popcounts(src: np.ndarray, plan: ConvPlan, Ho: int, Wo: int, pad_ones: int) -> np.ndarray | None:
    """``ones_per_column`` for 1-bit digits by popcounts of whole 8-byte words, where each row is
    whole words (W % 8 == 0) and the column stride divides 8; None elsewhere.

    Column offset j reads the columns of one stride class (w ≡ j·dw − pl mod sw) but for a few at
    the ends: its row sums are the class's (a word popcount with the class's bytes masked), less
    those few columns. The rows of offset i are then a 0/1 selection, as in ``ones_per_column``."""
    B, C, H, W = src.shape
    kw, sw, pl, dw = plan.kernel[1], plan.stride[1], plan.pad[1], plan.dilation[1]
    if W % 8 or 8 % sw or not src.flags.c_contiguous or src.dtype.itemsize != 1:
        return None  # (narrower rows: the selection products cost less than widening them)
    key = ("words", H, W)
    cached = plan.cache.get(key)
    if cached is None:
        offsets = []
        for j in range(kw):
            first = j * dw - pl  # window position of output column 0 (may lie in the padding)
            cls = first % sw
            lo = first if first >= 0 else first + sw * (-(-(-first) // sw))  # first real column read
            hi = min(first + sw * (Wo - 1), W - 1 - (W - 1 - cls) % sw)  # last real column read
            skipped = [w for w in range(cls, W, sw) if w < lo or w > hi]
            if len(skipped) > WORD_POPCOUNT_MAX_SKIPPED:
                plan.cache[key] = False
                return None
            offsets.append((cls, skipped))
        masks = [np.uint64(sum(0xFF << (8 * b) for b in range(8) if b % sw == c)) for c in range(sw)]
        cached = plan.cache[key] = (offsets, masks)
    if cached is False:
        return None
    offsets, masks = cached

    def row_ones(mask: np.uint64) -> np.ndarray:
        """[C, H] popcounts of the rows' bytes that ``mask`` keeps, summed over the images."""
        return row_popcounts(src, W, mask).reshape(B, C, H).sum(axis=0)

    per_class = [row_ones(ALL_BYTES)] if sw == 1 else [row_ones(m) for m in masks[:-1]]
    if sw > 1:  # the last class: what the others leave of the whole rows
        per_class.append(row_ones(ALL_BYTES) - sum(per_class))  # [C, H] each
    a = np.empty((C, kw, H), dtype=np.float64)
    for j, (cls, skipped) in enumerate(offsets):
        row = per_class[cls]
        for w in skipped:
            row = row - np.bitwise_count(src[:, :, :, w]).sum(axis=0, dtype=np.int64)
        a[:, j] = row
    return _offset_totals(a, *_row_terms(plan, H, W, Ho, Wo), B * pad_ones)


#: most source elements times kernel columns for which ``ones_per_column`` counts in one compiled
#: call (``jit.window_ones``): measured 2–4 µs against 12–14 µs on the example's conv layers, and
#: slower past ~25,000 (32 channels of 28 x 28: 53 against 36 µs)
WINDOW_ONES_MAX = 1 << 14
_NO_TABLE = np.empty(0, dtype=np.uint8)  # (window_ones counts set bits)
_NO_ROWS = np.empty(0, dtype=np.int64)  # (plane_features of no rows or columns left out)
#: most pixels of an input map (H·W) for which ``ones_per_column`` counts every tap at once, as one
#: product of the digits' counts with the taps' window masks: measured on MobileNetV2's
#: depthwise layers, 960 channels of 7 x 7: 30 against 98 µs; 192 of 28 x 28: 81 against 114 µs;
#: at 56 x 56 slower (223 against 122 µs) than the separable products
MASK_PRODUCT_MAX_HW = 1024


#: most rows, and most columns, that some kernel row (column) of a stride-1 window does not read,
#: for ``ones_per_column`` to count by whole planes less those (``_ones_by_planes``)
PLANE_MAX_EXCLUDED = 8
#: least pixels of an input map (H·W) for that: measured on MobileNetV2's 3 x 3 layers, 32 channels
#: of 112 x 112: 15 against 67 µs; 144 of 56 x 56: 28 against 115; 192 of 28 x 28: 27 against 76;
#: on smaller maps the few terms per channel cost more than the window-mask product (960 of 7 x 7:
#: 97 against 30; 384 of 14 x 14: 44 against 38)
PLANE_MIN_HW = 512


def _plane_terms(plan: ConvPlan, H: int, W: int, Ho: int, Wo: int) -> tuple[np.ndarray, ...] | None:
    """For ``_ones_by_planes`` (stride 1), cached per input size: the rows and the columns that
    some kernel row or column does not read; [F, kh·kw] float64, how each of ``jit.plane_features``'
    terms adds to each tap (its plane +1, each row and column it does not read −1, each crossing
    of two of those +1); and [kh, kw], each tap's window positions in the padding. None where the
    rows or columns left out are more than PLANE_MAX_EXCLUDED."""
    key = ("plane", H, W)
    if key not in plan.cache:
        (kh, kw), (pt, pl, _pb, _pr), (dh, dw) = plan.kernel, plan.pad, plan.dilation

        def reads(k: int, d: int, lead: int, n_in: int, n_out: int) -> np.ndarray:
            """[k, n_in]: whether kernel offset t reads input position p (stride 1: one run)."""
            pos = np.arange(n_in)
            first = np.arange(k)[:, None] * d - lead
            return (pos >= first) & (pos < first + n_out)

        rows, cols = reads(kh, dh, pt, H, Ho), reads(kw, dw, pl, W, Wo)
        ex_rows, ex_cols = np.flatnonzero(~rows.all(axis=0)), np.flatnonzero(~cols.all(axis=0))
        if ex_rows.size > PLANE_MAX_EXCLUDED or ex_cols.size > PLANE_MAX_EXCLUDED:
            plan.cache[key] = None
            return None
        row_out = (~rows[:, ex_rows]).astype(np.float64)  # [kh, nr]: kernel row i leaves out ex_rows[a]
        col_out = (~cols[:, ex_cols]).astype(np.float64)  # [kw, nc]
        terms = [np.ones((kh, kw))]
        terms += [-np.broadcast_to(row_out[:, a, None], (kh, kw)) for a in range(ex_rows.size)]
        terms += [-np.broadcast_to(col_out[None, :, e], (kh, kw)) for e in range(ex_cols.size)]
        terms += [np.outer(row_out[:, a], col_out[:, e]) for a in range(ex_rows.size) for e in range(ex_cols.size)]
        coef = np.stack([t.reshape(-1) for t in terms]).astype(np.float64)
        free = Ho * Wo - np.outer(rows.sum(axis=1), cols.sum(axis=1))
        plan.cache[key] = (ex_rows.astype(np.int64), ex_cols.astype(np.int64), coef, free.astype(np.float64))
    return plan.cache[key]


def _ones_by_planes(src: np.ndarray, plan: ConvPlan, Ho: int, Wo: int, pad_ones: int) -> np.ndarray | None:
    """``ones_per_column`` for 1-bit digits of a stride-1 window over one-byte codes in C order:
    each tap's count is its channel's planes' less the rows and columns it does not read, plus
    their crossings (counted twice), plus the pad value's for its window positions in the
    padding: a few terms per channel in one pass (``jit.plane_features``), then one product with
    each tap's coefficients (float64: every count an integer below 2^53). None where the rows or
    columns some tap leaves out are many (``_plane_terms``)."""
    B, C, H, W = src.shape
    terms = _plane_terms(plan, H, W, Ho, Wo)
    if terms is None:
        return None
    ex_rows, ex_cols, coef, free = terms
    feats = np.empty((C, coef.shape[0]), dtype=np.int64)
    JIT.plane_features(src, ex_rows, ex_cols, feats)
    res = feats.astype(np.float64) @ coef  # [C, kh·kw]
    return _with_pad_terms(res.reshape(C, *plan.kernel), free, B * pad_ones)


def ones_per_column(src: np.ndarray, plan: ConvPlan, table: np.ndarray | None) -> np.ndarray:
    """For every im2col column k = (c, i, j): the non-zero DAC digits of its inputs summed over all
    iterations (``dac_ones`` before the row-table gather), from the source, without im2col.
    ``table``: non-zero digits per code value, an entry for every code of ``src`` and the pad
    value (small sources are counted by ``jit.window_ones``, which reads it unchecked); None for
    1-bit digits (a popcount).

    Separable: the window's columns of offset j are a 0/1 selection over the real input columns
    (one skinny product over all rows), then its rows of offset i likewise; the window positions
    in the padding each add the pad value's count."""
    B, C, H, W = src.shape
    (kh, kw), (sh, sw), (pt, pl, _pb, _pr) = plan.kernel, plan.stride, plan.pad
    Ho, Wo = out_hw(plan, H, W)
    pv = plan.pad_value
    pad_ones = int(pv).bit_count() if table is None else int(table[pv])
    if (kh, kw) == (1, 1) and (sh, sw) == (1, 1) and (Ho, Wo) == (H, W) and (pt, pl) == (0, 0):
        if table is None and src.dtype.itemsize == 1:
            return row_popcounts(src, H * W).reshape(B, C).sum(axis=0)
        flat = src.reshape(B, C, H * W)
        ones = np.bitwise_count(flat) if table is None else np.take(table, flat)
        return ones.sum(axis=(0, 2), dtype=np.int64)
    if src.size * kw <= WINDOW_ONES_MAX:
        out = np.empty(C * kh * kw, dtype=np.int64)
        JIT.window_ones(src, _NO_TABLE if table is None else table, kh, kw, sh, sw, pt, pl, *plan.dilation, Ho, Wo, pad_ones, out)
        return out
    if table is None and (sh, sw) == (1, 1) and H * W >= PLANE_MIN_HW and src.dtype == np.uint8 and src.flags.c_contiguous:
        res = _ones_by_planes(src, plan, Ho, Wo, pad_ones)
        if res is not None:
            return res
    if H * W <= MASK_PRODUCT_MAX_HW:
        digits = np.empty((B * C, H * W), dtype=np.float32)
        JIT.digits_f32(np.ascontiguousarray(src), _NO_TABLE if table is None else table, digits)
        # [B·C, H·W] @ [H·W, kh·kw]: every sum at most (max count)·H·W, exact in float32
        res = digits @ _window_masks(plan, H, W, Ho, Wo)
        tot = res.reshape(B, C * kh * kw).sum(axis=0, dtype=np.float64) if B > 1 else res.reshape(-1)
        return _with_pad_terms(tot.reshape(C, kh, kw), _row_terms(plan, H, W, Ho, Wo)[1], B * pad_ones)
    if table is None:
        res = _ones_by_word_popcounts(src, plan, Ho, Wo, pad_ones)
        if res is not None:
            return res
    ones = np.bitwise_count(src) if table is None else np.take(table, src)
    csel = _selections(plan, H, W, Ho, Wo)[0]
    # [B·C·H, W] @ [W, kw]: every sum at most (max count)·W, exact in float32
    a = (ones.reshape(-1, W).astype(np.float32) @ csel).reshape(B, C, H, kw).sum(axis=0, dtype=np.float64)
    return _offset_totals(np.ascontiguousarray(a.transpose(0, 2, 1)), *_row_terms(plan, H, W, Ho, Wo), B * pad_ones)

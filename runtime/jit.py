"""The simulator's compiled inner loops (numba), for the steps that NumPy can only do as several
whole-array passes: on the fused fast path, a depthwise layer's multiply-adds with its
requantization, the requantization of a dense layer's sums, a small layer's im2col matrix, the
popcounts of the DAC digits (``dac_ones``) and the host's input quantization; on the bit-level
path, the bit-planes of a crossbar group's inputs, the byte-wise ADC and shift-and-add of its
packed product, the whole product of a group of sparse columns (``sparse_group``), and the
shiftadd of the compiler's column runs. The dense products themselves stay BLAS.

Every kernel here is exact integer arithmetic, or binary64 arithmetic proved to give the same
result (``_requant_f64``); the caller proves the bounds that make it so
(``kernels_conv.plan_conv``, ``kernels._byte_plan``, ``ShiftaddPlan.exact_for``): the
accumulator's type holds every partial sum, and ``|sum + bias|·mult < 2^63``. Kernels release
the GIL, so the runtime's worker threads run them side by side, and are cached on disk after
their first compilation.

Loops index either slices by the loop variable, or whole arrays read flat at unsigned (uint64)
offsets with an unsigned loop variable: never a signed computed offset ``a[o + k]``, whose
wraparound test for negative indices keeps LLVM from vectorizing the loop. Kernels that work in
many short runs (the requantization of 7 x 7 maps, the depthwise sums) take the flat form: a
view, or a call with array arguments, costs a reference count per array (measured ~20 ns each
here, 3x the requantization of a 49-sum line).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_JIT = dict(cache=True, nogil=True, error_model="numpy")


@intrinsic
def _popcount(typingctx, x):
    """The set bits of a uint64: LLVM's ctpop (one popcnt, or vpopcntq in a vectorized loop; a
    bit-parallel sum where the processor has neither). NumPy's bitwise_count took ~3x longer here."""
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@intrinsic
def _load_u64(typingctx, arr, k):
    """The 8 bytes of a C-ordered uint8 array from byte k as one little-endian uint64 (an unaligned
    load; the caller keeps k + 8 within the array)."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(ptr, align=1)

    return types.uint64(arr, k), codegen


@intrinsic
def _store_u32(typingctx, arr, k, v):
    """Bytes k..k + 3 of a C-ordered uint8 array = the low 32 bits of ``v``, little-endian (an
    unaligned store; the caller keeps k + 4 within the array)."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(32).as_pointer())
        builder.store(builder.trunc(args[2], ir.IntType(32)), ptr, align=1)
        return context.get_dummy_value()

    return types.none(arr, k, v), codegen


_EVEN_BYTES = np.uint64(0x00FF00FF00FF00FF)
_EVEN_PAIRS = np.uint64(0x0000FFFF0000FFFF)
_LOW_HALF = np.uint64(0x00000000FFFFFFFF)


@njit(**_JIT)
def _even_bytes(x):
    """Bytes 0, 2, 4, 6 of a little-endian uint64, packed into its low 4 bytes."""
    x &= _EVEN_BYTES
    x = (x | (x >> np.uint64(8))) & _EVEN_PAIRS
    return (x | (x >> np.uint64(16))) & _LOW_HALF


@njit(**_JIT)
def split_stride2(src, ph, Hq, Wq, pt, pl):
    """The 2 x 2 stride phases of ``src`` [B, C, H, W] (one-byte codes, C order) padded by pt rows
    on top and pl columns on the left, into ``ph`` [B, C, 4, Hq, Wq] (C order, already filled
    with the pad value): padded element (r, w) goes to phase (r mod 2)·2 + (w mod 2) at
    (r // 2, w // 2) (``kernels_conv._phases``; the caller checks the grid holds every element).

    Each row is read 8 bytes at a time and its even and odd columns separated with word shifts
    and masks (little-endian words: the caller checks the byte order). NumPy's strided byte
    copies took ~0.3 ns a byte here (96 channels of 112 x 112: 379 against 129 µs)."""
    B, C, H, W = src.shape
    s, o = src.reshape(src.size), ph.reshape(ph.size)
    plane = Hq * Wq
    # real column w: even w to phase column pl mod 2 at w/2 + pl//2; odd w to the other at (w − 1)/2 + (pl + 1)//2
    even_at = (pl % 2) * plane + pl // 2
    odd_at = ((pl + 1) % 2) * plane + (pl + 1) // 2
    words = W // 8
    for b in range(B):
        for c in range(C):
            for r in range(H):
                pr = r + pt
                k0 = np.uint64(((b * C + c) * H + r) * W)
                row = np.uint64(((b * C + c) * 4 + (pr % 2) * 2) * plane + (pr // 2) * Wq)
                de, do = row + np.uint64(even_at), row + np.uint64(odd_at)
                for t in range(np.uint64(words)):
                    x = _load_u64(s, k0 + np.uint64(8) * t)
                    _store_u32(o, de + np.uint64(4) * t, _even_bytes(x))
                    _store_u32(o, do + np.uint64(4) * t, _even_bytes(x >> np.uint64(8)))
                for w in range(8 * words, W):
                    o[(de if w % 2 == 0 else do) + np.uint64(w // 2)] = s[k0 + np.uint64(w)]


@njit(**_JIT)
def _digits(table, v):
    """The non-zero DAC digits of code ``v``: ``table[v]``, or its set bits when ``table`` is empty."""
    return np.int64(table[v]) if table.size else np.int64(_popcount(np.uint64(v)))


@njit(**_JIT)
def word_row_popcounts(words, mask, out):
    """out[r] = the set bits of row r of ``words`` [R, n] uint64, each word ANDed with ``mask``."""
    n = words.shape[1]
    for r in range(out.size):
        row = words[r]
        s = np.uint64(0)
        for i in range(n):
            s += _popcount(row[i] & mask)
        out[r] = s


@njit(**_JIT)
def quantize_f32(x, scale, lo, hi, zp, out):
    """out[i] = clamp(rint(x[i] / scale), lo, hi) + zp, every operand binary32 (``lo`` and ``hi``
    the clamp's bounds less zp, each exact in binary32, as zp): host-side input quantization
    (``executor.quantize_input``); NaN becomes zp, ±inf saturate."""
    for i in range(x.size):
        v = x[i] / scale
        if v != v:
            v = np.float32(0.0)
        out[i] = min(max(np.rint(v), lo), hi) + zp


@njit(**_JIT)
def block_sums(per, rows, starts, blocks, out):
    """out[blocks[g]] = Σ per[rows[starts[g] : starts[g + 1]]] (the last segment to the end of
    ``rows``): a fused layer's ``dac_ones`` per row block from its counts per im2col column
    (``executor.Machine._dac_ones``; one call instead of a gather, a segmented sum and a scatter)."""
    n = starts.size
    for g in range(n):
        end = starts[g + 1] if g + 1 < n else rows.size
        s = np.int64(0)
        for i in range(starts[g], end):
            s += per[rows[i]]
        out[blocks[g]] = s


@njit(**_JIT)
def im2col_counts(src, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo, pad_value, table, xt, ones):
    """A small dense layer's im2col matrix transposed into ``xt`` [K + 1, B·Ho·Wo] (its type; the
    last row ones, for a bias column of the layer matrix) from ``src`` [B, C, H, W] (``pad_value``
    in the padding), with each column's non-zero DAC digits into ``ones`` [K] (``table`` [code],
    or set bits when empty; ``window_ones``): ``kernels_conv.run_conv_counting``.

    One test per element for the padding, not a split of each row into runs: views of arrays
    cost a reference count each in numba, which made the split version 2-4x slower here."""
    B, C, H, W = src.shape
    K = C * kh * kw
    pv = np.int64(pad_value)
    if kh == kw == H == W == Ho == Wo == 1 and pt == pl == 0:  # a fully connected layer: one code per column and image
        for c in range(C):  # (no views: one per column cost more than its one element here)
            cnt = np.int64(0)
            for b in range(B):
                v = np.int64(src[b, c, 0, 0])
                xt[c, b] = v
                cnt += _digits(table, v)
            ones[c] = cnt
        xt[K] = 1
        return
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                k = (c * kh + i) * kw + j
                row = xt[k]
                cnt = np.int64(0)
                for b in range(B):
                    img = src[b, c]
                    for ho in range(Ho):
                        r = ho * sh + i * dh - pt
                        for wo in range(Wo):
                            col = wo * sw + j * dw - pl
                            v = np.int64(img[r, col]) if (0 <= r < H and 0 <= col < W) else pv
                            row[(b * Ho + ho) * Wo + wo] = v
                            cnt += _digits(table, v)
                ones[k] = cnt
    xt[K] = 1


@njit(**_JIT)
def digits_f32(src, table, out):
    """out[k] = the non-zero DAC digits of code src[k] (both whole arrays, read flat; ``out``
    float32): ``table`` [code], or its set bits when ``table`` is empty (``_digits``)."""
    s, o = src.reshape(src.size), out.reshape(out.size)
    if table.size:
        for k in range(np.uint64(s.size)):
            o[k] = table[s[k]]
    else:
        for k in range(np.uint64(s.size)):
            o[k] = np.float32(_popcount(np.uint64(s[k])))


@njit(**_JIT)
def _run_ones(s, k0, n):
    """The set bits of bytes k0..k0 + n of the flat uint8 array ``s`` (unsigned offset and count):
    8 bytes a load, the last partial word as the run's last 8 bytes shifted (runs shorter than a
    word byte by byte)."""
    t = np.uint64(0)
    eight = np.uint64(8)
    if n >= eight:
        for i in range(n // eight):
            t += _popcount(_load_u64(s, k0 + eight * i))
        tail = n % eight
        if tail:
            t += _popcount(_load_u64(s, k0 + n - eight) >> (eight * (eight - tail)))
    else:
        for i in range(n):
            t += _popcount(np.uint64(s[k0 + i]))
    return np.int64(t)


@njit(**_JIT)
def run_popcounts(data, row_bytes, out):
    """out[r] = the set bits of bytes r·row_bytes .. (r + 1)·row_bytes − 1 of ``data`` (uint8, flat):
    rows that are not whole words (``_run_ones``: no read past a row's end)."""
    n = np.uint64(row_bytes)
    for r in range(np.uint64(out.size)):
        out[r] = _run_ones(data, r * n, n)


@njit(**_JIT)
def plane_features(src, ex_rows, ex_cols, feats):
    """Per channel c of ``src`` [B, C, H, W] (one-byte codes, C order), summed over the images:
    feats[c] = (the set bits of its plane; of its rows ex_rows[a], for each a; of its columns
    ex_cols[e], for each e; of each crossing (ex_rows[a], ex_cols[e]), a-major), the terms of
    which ``kernels_conv._ones_by_planes`` makes each stride-1 tap's count. Planes and rows are
    read 8 bytes at a time (``_run_ones``), columns byte by byte; flat unsigned offsets."""
    B, C, H, W = src.shape
    s, f = src.reshape(src.size), feats.reshape(feats.size)
    nr, nc = ex_rows.size, ex_cols.size
    F = np.uint64(feats.shape[1])
    plane, w = np.uint64(H * W), np.uint64(W)
    rows = np.empty(nr, dtype=np.uint64)
    cols = np.empty(nc, dtype=np.uint64)
    for a in range(nr):
        rows[a] = np.uint64(ex_rows[a]) * w
    for e in range(nc):
        cols[e] = np.uint64(ex_cols[e])
    for c in range(np.uint64(C)):
        o = c * F
        for k in range(F):
            f[o + k] = 0
        for b in range(np.uint64(B)):
            k0 = (b * np.uint64(C) + c) * plane
            f[o] += _run_ones(s, k0, plane)
            for a in range(nr):
                r0 = k0 + rows[a]
                f[o + np.uint64(1 + a)] += _run_ones(s, r0, w)
                x0 = o + np.uint64(1 + nr + nc + a * nc)
                for e in range(nc):
                    f[x0 + np.uint64(e)] += np.int64(_popcount(np.uint64(s[r0 + cols[e]])))
            for e in range(nc):
                t = np.uint64(0)
                q = k0 + cols[e]
                for r in range(np.uint64(H)):
                    t += _popcount(np.uint64(s[q + r * w]))
                f[o + np.uint64(1 + nr + e)] += np.int64(t)


@njit(**_JIT)
def window_ones(src, table, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo, pad_ones, out):
    """out[(c·kh + i)·kw + j] = the non-zero DAC digits of im2col column (c, i, j) over every window
    of ``src`` [B, C, H, W] (codes): ``table`` [code] the digits of each code, or empty for set
    bits; a window position in the padding has ``pad_ones``. Separable, as
    ``kernels_conv.ones_per_column``: per input row, the sums over each column offset's window
    columns, then per row offset the sums of those over its window rows."""
    B, C, H, W = src.shape
    a = np.zeros((kw, H), dtype=np.int64)
    for c in range(C):
        a[:] = 0
        for b in range(B):
            for r in range(H):
                for j in range(kw):
                    s = np.int64(0)
                    for wo in range(Wo):
                        col = wo * sw + j * dw - pl
                        if 0 <= col < W:
                            v = src[b, c, r, col]
                            s += _digits(table, v)
                    a[j, r] += s
        for i in range(kh):
            rows_in = 0
            for ho in range(Ho):
                r = ho * sh + i * dh - pt
                rows_in += 1 if 0 <= r < H else 0
            for j in range(kw):
                cols_in = 0
                for wo in range(Wo):
                    col = wo * sw + j * dw - pl
                    cols_in += 1 if 0 <= col < W else 0
                t = np.int64(B) * pad_ones * (Ho * Wo - rows_in * cols_in)
                for ho in range(Ho):
                    r = ho * sh + i * dh - pt
                    if 0 <= r < H:
                        t += a[j, r]
                out[(c * kh + i) * kw + j] = t


@njit(**_JIT)
def _requant_int(a, bias, mult, shift, zp, lo, hi):
    """clamp(rne((a + bias)·mult / 2^shift) + zp, lo, hi) (isa.md §3.4): the quotient rounded
    down, then up when the remainder is past half, or at half and odd."""
    half = (np.int64(1) << shift) >> 1
    mask = (np.int64(1) << shift) - 1
    odd = np.int64(1) if shift > 0 else np.int64(0)  # (no remainder, no tie, when nothing is shifted out)
    t = (np.int64(a) + bias) * mult
    q = t >> shift
    r = t & mask
    q += np.int64(r > half) | (np.int64(r == half) & q & odd)
    q += zp
    return min(max(q, lo), hi)


@intrinsic
def _f64_bits(typingctx, x):
    """The bits of a float64 as an int64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


_ROUNDER = 6755399441055744.0  # 1.5·2^52: adding it to |y| < 2^51 rounds y to an integer, half to even
_ROUNDER_BITS = np.int64(0x4338000000000000)  # its bits: those of 1.5·2^52 + k are these plus k


@njit(**_JIT)
def _f64_bounds(zp, lo, hi):
    """``_requant_f64``'s clamp bounds lo − zp, hi − zp (float64) and its offset zp − bits(1.5·2^52)."""
    return np.float64(np.int64(lo) - np.int64(zp)), np.float64(np.int64(hi) - np.int64(zp)), np.int64(zp) - _ROUNDER_BITS


@njit(**_JIT)
def _requant_f64(a, bias, scale, zlo, zhi, zbits):
    """``_requant_int``'s result in binary64, clamp(rint((a + bias)·scale) + zp, lo, hi), where the
    caller proved it the same (``kernels_conv.binary64_scales``): every a + bias an integer below
    2^53, scale = mult·2^−shift exactly, and 2^(53 − shift) ≥ max(|hi − zp|, |zp − lo|) + 2, at
    most 2^51. Then the exact quotient, wherever it is not clamped, has at most 53 significant
    bits: the product is exact, and where it rounds, the quotient lies past the clamp on the
    same side. ``zlo, zhi, zbits`` = ``_f64_bounds(zp, lo, hi)``.

    The product is clamped to [lo − zp, hi − zp] (integers: the same as clamping after rounding),
    then rounded half to even by adding 1.5·2^52, whose binade has integer spacing; the sum's
    bits less 1.5·2^52's are the integer, to which zp is added (as an integer: an odd zp added
    before rounding would move ties). Fewer vector operations than rint, a clamp and a
    conversion (0.31 → 0.23 ns a sum here); no 64-bit integer product (0.69 ns)."""
    return _f64_bits(min(max((np.float64(a) + bias) * scale, zlo), zhi) + _ROUNDER) + zbits


@njit(**_JIT)
def _requant_run_f64(src, s0, dst, d0, n, bias, scale, zlo, zhi, zbits):
    """dst[d0 + w] = ``_requant_f64``(src[s0 + w], ...) for w < n (flat arrays, uint64 offsets and
    count). Scalars for the channel's parameters, not its arrays: a call takes a reference to each
    array argument, which cost ~20 ns an array here (7 arrays, once a row of 7 x 7 maps: 3x the
    requantization itself)."""
    for w in range(n):
        dst[d0 + w] = _requant_f64(src[s0 + w], bias, scale, zlo, zhi, zbits)


@njit(**_JIT)
def _requant_run_int(src, s0, dst, d0, n, bias, mult, shift, zp, lo, hi):
    """dst[d0 + w] = ``_requant_int``(src[s0 + w], ...) for w < n, as ``_requant_run_f64``."""
    for w in range(n):
        dst[d0 + w] = _requant_int(src[s0 + w], bias, mult, shift, zp, lo, hi)


@njit(**_JIT)
def requant_block(acc, bias, mult, shift, fscale, zp, lo, hi, out, b0, n0, h0):
    """The requantization of a fused layer's block: ``acc`` [n, nb, nh, Wo] exact integer sums
    (any numeric type) into out[b0 + b, n0 + n, h0 : h0 + nh] of the layer's output [B, N, Ho, Wo],
    channel n with bias[n], mult[n], shift[n] (and fscale[n], when the binary64 form is proven).
    Each (image, channel) is one run of nh·Wo in both (whole C-ordered arrays)."""
    n, nb, nh, Wo = acc.shape
    N, Ho = out.shape[1], out.shape[2]
    L = nh * Wo
    a, o = acc.reshape(acc.size), out.reshape(out.size)
    zlo, zhi, zbits = _f64_bounds(zp, lo, hi)
    for c in range(n):
        for b in range(nb):
            s0, d0 = np.uint64((c * nb + b) * L), np.uint64((((b0 + b) * N + n0 + c) * Ho + h0) * Wo)
            if fscale.size:
                _requant_run_f64(a, s0, o, d0, np.uint64(L), np.float64(bias[c]), fscale[c], zlo, zhi, zbits)
            else:
                _requant_run_int(a, s0, o, d0, np.uint64(L), bias[c], mult[c], shift[c], zp, lo, hi)


@njit(**_JIT)
def requant_nchw(src, bias, mult, shift, fscale, zp, lo, hi, out, b, q0, q1):
    """A requant instruction to the NCHW layout (isa.md §3.4), for image b's pixels q0..q1:
    out[b, n, q] from src[b·HW + q, n] (``src`` [B·HW, N] exact integers, ``out`` [B, N, HW],
    both whole arrays, read flat), in binary64 where ``fscale`` (mult·2^−shift per channel) is
    given (``_requant_f64``), else in integers. Each pixel's N sums are requantized along the
    row (every channel's parameters side by side), into a block of 32 pixels, then written out
    channel by channel: 1.45 → 0.9 ns a sum against requantizing each channel's column."""
    HW, N = out.shape[2], out.shape[1]
    Q = 32
    blk = np.empty(Q * N, dtype=out.dtype)
    s, o = src.reshape(src.size), out.reshape(out.size)
    fb = bias.astype(np.float64)
    zlo, zhi, zbits = _f64_bounds(zp, lo, hi)
    n_ = np.uint64(N)
    for a in range(q0, q1, Q):
        m = min(q1, a + Q) - a
        for q in range(m):
            s0, t0 = np.uint64((b * HW + a + q) * N), np.uint64(q * N)
            if fscale.size:
                for n in range(n_):
                    blk[t0 + n] = _requant_f64(s[s0 + n], fb[n], fscale[n], zlo, zhi, zbits)
            else:
                for n in range(n_):
                    blk[t0 + n] = _requant_int(s[s0 + n], bias[n], mult[n], shift[n], zp, lo, hi)
        for n in range(n_):
            d0 = np.uint64((b * N) * HW + a) + n * np.uint64(HW)
            for q in range(np.uint64(m)):
                o[d0 + q] = blk[q * n_ + n]


#: output rows narrower than this are requantized as the grid's whole run, then copied out
#: (``depthwise``): measured 960 channels of 7 x 7, 140 against 180 µs; at 28 x 28 and wider, each
#: row's run requantized in place is the faster
DW_LINE_MAX_WO = 16


@njit(**_JIT)
def depthwise(ph, tp, to, coef, bias, mult, shift, fscale, zp, lo, hi, Wq, b0, b1, c0, c1, out, ob, oc):
    """Images b0..b1 and channels c0..c1 of a depthwise layer, requantized: out[b − ob, c − oc, ho, wo]
    from channel c's phases ``ph`` [B, C, S, Lq], kernel tap t reading phase tp[t] at flat offset
    to[t] + ho·Wq + wo (kernels_conv.run_conv); channel c has coef[c], bias[c], mult[c], shift[c]
    (and fscale[c], when the binary64 requantization is proven).
    Whole C-ordered arrays, read flat at unsigned offsets. The accumulator has coef's type; three
    taps a pass over it (a missing third or second tap: weight 0 on tap 0's run). (bias 0, mult 1,
    shift 0, zp 0 and int64's range give the sums.)"""
    C, S, Lq = ph.shape[1], ph.shape[2], ph.shape[3]
    No, Ho, Wo = out.shape[1], out.shape[2], out.shape[3]
    L = (Ho - 1) * Wq + Wo
    acc = np.empty(L, dtype=coef.dtype)
    line = np.empty(L, dtype=out.dtype)  # narrow rows: the grid's run requantized (the Wq − Wo columns between rows too)
    p, o = ph.reshape(ph.size), out.reshape(out.size)
    offs = np.empty(tp.size, dtype=np.uint64)
    for t in range(tp.size):
        offs[t] = tp[t] * Lq + to[t]
    T = tp.size
    zlo, zhi, zbits = _f64_bounds(zp, lo, hi)
    for b in range(b0, b1):
        for c in range(c0, c1):
            base = np.uint64((b * C + c) * S * Lq)
            zero = coef[c, 0] - coef[c, 0]
            for g in range(0, T, 3):
                w0 = coef[c, g]
                w1 = coef[c, g + 1] if g + 1 < T else zero
                w2 = coef[c, g + 2] if g + 2 < T else zero
                q0 = base + offs[g]
                q1 = base + offs[g + 1] if g + 1 < T else q0
                q2 = base + offs[g + 2] if g + 2 < T else q0
                if g == 0:
                    for k in range(np.uint64(L)):
                        acc[k] = w0 * p[q0 + k] + w1 * p[q1 + k] + w2 * p[q2 + k]
                else:
                    for k in range(np.uint64(L)):
                        acc[k] += w0 * p[q0 + k] + w1 * p[q1 + k] + w2 * p[q2 + k]
            d0 = ((b - ob) * No + c - oc) * Ho * Wo
            narrow = Wo < DW_LINE_MAX_WO
            # narrow rows: the grid's whole run into ``line``, then copied out; else each row's run in place
            dst, n = (line, np.uint64(L)) if narrow else (o, np.uint64(Wo))
            for ho in range(1 if narrow else Ho):
                s0, t0 = np.uint64(ho * Wq), np.uint64(0 if narrow else d0 + ho * Wo)
                if fscale.size:
                    _requant_run_f64(acc, s0, dst, t0, n, np.float64(bias[c]), fscale[c], zlo, zhi, zbits)
                else:
                    _requant_run_int(acc, s0, dst, t0, n, bias[c], mult[c], shift[c], zp, lo, hi)
            if narrow:
                for ho in range(Ho):
                    d, a0 = np.uint64(d0 + ho * Wo), np.uint64(ho * Wq)
                    for w in range(np.uint64(Wo)):
                        o[d + w] = line[a0 + w]


@njit(**_JIT)
def add_exact(a, b, za, zb, ma, mb, scale, zp, lo, hi, out):
    """out = clamp(rne((ma·(a − za) + mb·(b − zb))·scale) + zp, lo, hi) on flat arrays, in
    binary64 (``kernels_digital.add``: its caller has proved every term an integer below 2^53,
    ``scale`` a power of two, so each step is exact, and |lo − zp|, |hi − zp| ≤ 2^51), rounded as
    ``_requant_f64`` rounds, written in out's type (integer zp, lo, hi)."""
    zlo, zhi, zbits = _f64_bounds(zp, lo, hi)
    for i in range(out.size):
        y = ((a[i] - za) * ma + (b[i] - zb) * mb) * scale
        out[i] = _f64_bits(min(max(y, zlo), zhi) + _ROUNDER) + zbits


@njit(**_JIT)
def bit_planes(x, T, v, planes):
    """planes[t, i, r] = the DAC digit (x[i, r] >> (T − 1 − t)·v) & (2^v − 1), most significant
    step first, as float32 for the crossbar product; returns how many digits are non-zero."""
    P, R = x.shape
    mask = (1 << v) - 1
    ones = 0
    for t in range(T):
        sh = (T - 1 - t) * v
        for i in range(P):
            row = x[i]
            dst = planes[t, i]
            n = 0
            for r in range(R):
                d = (np.int64(row[r]) >> sh) & mask
                dst[r] = d
                n += d != 0
            ones += n
    return ones


@njit(**_JIT)
def _take_columns(res, tgt, cf, dst, tot):
    """One read's column results ``res`` [m] (exact integers) where ``tgt`` says: stored at
    dst[−2 − tgt[c]] (tgt <= −2), added to a fused shiftadd's sums as tot[tgt[c]] += cf[c]·res[c]
    (tgt >= 0), or dropped (−1)."""
    for c in range(res.size):
        k = tgt[c]
        r = np.int64(res[c])
        if k >= 0:
            tot[k] += cf[c] * r
        elif k <= -2:
            dst[-2 - k] = r


@njit(**_JIT)
def adc_shiftadd_bytes(S, thr, keep, v, Wp, w0, tgt, cf, out, sums):
    """The ADC and shift-and-add of a byte-packed crossbar product (kernels._mvm_group_bytes):
    ``S`` [T, P, Wq] float32 exact integers whose byte j of word w holds one read's sum of column
    c = j·Wp + w0 + w, most significant step first. Per byte: min with ``thr`` [3, Wq] (saturate)
    and ``& keep`` [3, Wq] (drop-lsb) (255: no effect), then acc = acc·2^v + byte over the steps.
    Column c's result r (C = tgt.size columns; a last word's spare bytes are dropped):
    tgt[c] <= −2: stored, out[·, −2 − tgt[c]] = r (``out`` [P, ·] int64);
    tgt[c] >= 0: the layer's shiftadd takes it at once, sums[·, tgt[c]] += cf[c]·r;
    tgt[c] = −1: nothing reads it."""
    T, P, Wq = S.shape
    C = tgt.size
    acc = np.empty((3, Wq), dtype=np.int64)
    n = np.empty(3, dtype=np.int64)  # columns of each byte that exist
    for j in range(3):
        n[j] = max(0, min(Wq, C - (j * Wp + w0)))
    t0, t1, t2 = thr[0], thr[1], thr[2]
    k0, k1, k2 = keep[0], keep[1], keep[2]
    for i in range(P):
        a0, a1, a2 = acc[0], acc[1], acc[2]
        a0[:] = 0
        a1[:] = 0
        a2[:] = 0
        for t in range(T):
            row = S[t, i]
            for w in range(Wq):
                word = np.int64(row[w])
                a0[w] = (a0[w] << v) + (min(word & 255, t0[w]) & k0[w])
                a1[w] = (a1[w] << v) + (min((word >> 8) & 255, t1[w]) & k1[w])
                a2[w] = (a2[w] << v) + (min((word >> 16) & 255, t2[w]) & k2[w])
        for j in range(3):
            c0 = j * Wp + w0
            _take_columns(acc[j, : n[j]], tgt[c0 : c0 + n[j]], cf[c0 : c0 + n[j]], out[i], sums[i])


@njit(**_JIT)
def adc_shiftadd_bytes_uniform(S, thr, v, Wp, w0, tgt, cf, out, sums):
    """``adc_shiftadd_bytes`` when every column saturates at the same ``thr`` (drop-lsb: none)
    and every result stays below 2^24: the same arithmetic in float32, exact on these integers
    (byte j is ⌊x / 2^(8j)⌋ mod 2^8, by power-of-two scalings and floors), over the block's
    P·Wq words as one run per step, so the loop runs in full-width SIMD whatever Wq."""
    T, P, Wq = S.shape
    C, L = tgt.size, P * Wq
    a0 = np.zeros(L, dtype=np.float32)
    a1 = np.zeros(L, dtype=np.float32)
    a2 = np.zeros(L, dtype=np.float32)
    h16, f16 = np.float32(1.0 / 65536.0), np.float32(65536.0)
    h8, f8 = np.float32(1.0 / 256.0), np.float32(256.0)
    base, th = np.float32(2.0**v), np.float32(thr)
    for t in range(T):
        row = S[t].reshape(L)
        for k in range(L):
            x = row[k]
            b2 = np.floor(x * h16)
            r = x - b2 * f16
            b1 = np.floor(r * h8)
            a0[k] = a0[k] * base + min(r - b1 * f8, th)
            a1[k] = a1[k] * base + min(b1, th)
            a2[k] = a2[k] * base + min(b2, th)
    for i in range(P):
        for j in range(3):
            c0 = j * Wp + w0
            m = max(0, min(Wq, C - c0))
            acc = a0 if j == 0 else (a1 if j == 1 else a2)
            _take_columns(acc[i * Wq : i * Wq + m], tgt[c0 : c0 + m], cf[c0 : c0 + m], out[i], sums[i])


@njit(**_JIT)
def columns_into_sums(res, tgt, cf, out, sums):
    """A crossbar's column results ``res`` [P, C] taken by a fused shiftadd as
    ``adc_shiftadd_bytes`` takes its own: tgt[c] >= 0 adds cf[c]·res[·, c] to sums[·, tgt[c]],
    tgt[c] <= −2 stores it at out[·, −2 − tgt[c]], −1 drops it."""
    for i in range(res.shape[0]):
        _take_columns(res[i], tgt, cf, out[i], sums[i])


@njit(**_JIT)
def unit_terms(src, units, rs, ru, rn, val, acc):
    """acc[p, rn[r] + k] += val[rs[r] + k]·src[p, units[ru[r]]] for k < rs[r + 1] − rs[r], for each
    run r of a shiftadd's unit-column terms (``kernels.ShiftaddPlan.apply_unit_terms``): consecutive
    outputs that one unit column reaches (a depthwise group's channels) are one vectorized run.
    ``src`` and ``acc`` C-ordered, read flat."""
    P, S = src.shape
    N = acc.shape[1]
    sf, af = src.reshape(src.size), acc.reshape(acc.size)
    for p in range(P):
        for r in range(ru.size):
            x = sf[np.uint64(p * S + units[ru[r]])]
            a0, v0 = np.uint64(p * N + rn[r]), np.uint64(rs[r])
            for k in range(np.uint64(rs[r + 1] - rs[r])):
                af[a0 + k] += val[v0 + k] * x


@njit(**_JIT)
def shiftadd_run(src, a, cf, acc):
    """acc[p, n] += Σ_d cf[n, d]·src[p, a + n·D + d]: one run of the compiler's column layout
    (outputs 0..N−1, each with D consecutive columns) shift-added (kernels.ShiftaddPlan)."""
    N, D = cf.shape
    for p in range(src.shape[0]):
        row = src[p, a : a + N * D]
        dst = acc[p]
        for n in range(N):
            s = dst[n]
            for d in range(D):
                s += row[n * D + d] * cf[n, d]
            dst[n] = s


@njit(**_JIT)
def _spread_block(xt, p0, p1, T, v, spt, nzc, sp, pop):
    """The digit lanes of iterations p0..p1 (``kernels_sparse``): sp[k, r, i] = word k of
    xt[r, p0 + i]'s digits, one per lane, most significant step first; pop[k, i] = Σ_r sp[k, r, i].
    Returns how many digits are non-zero. ``spt`` [256, words] is the lane table of every code;
    empty for 1-bit digits in 8-bit lanes (one word), which are spread by a multiplication instead."""
    R = xt.shape[0]
    n = p1 - p0
    NW = sp.shape[0]
    ones = 0
    for k in range(NW):
        pk = pop[k]
        for i in range(n):
            pk[i] = 0
    if spt.shape[0] == 0:
        # code c < 2^T copied into every byte, then byte 8 − T + t keeps bit T − 1 − t (step t),
        # then each byte becomes 0 or 1 (+0x7F carries a non-zero byte into its top bit)
        rep = np.uint64(0x0101010101010101)
        m = np.uint64(0)
        for t in range(T):
            m |= np.uint64(1 << (T - 1 - t)) << np.uint64(8 * (8 - T + t))
        c7, hi, s7 = np.uint64(0x7F7F7F7F7F7F7F7F), np.uint64(0x8080808080808080), np.uint64(7)
        low = np.uint64((1 << T) - 1)
        p = pop[0]
        for r in range(R):
            src, d = xt[r, p0:p1], sp[0, r]
            for i in range(n):
                w = ((((np.uint64(src[i]) & low) * rep) & m) + c7) & hi
                w >>= s7
                d[i] = w
                p[i] += w
        if R < 256:  # no lane of pop carries: the non-zero digits are the sum of its lanes
            for i in range(n):
                w = p[i]
                w = (w & np.uint64(0x00FF00FF00FF00FF)) + ((w >> np.uint64(8)) & np.uint64(0x00FF00FF00FF00FF))
                w = (w & np.uint64(0x0000FFFF0000FFFF)) + ((w >> np.uint64(16)) & np.uint64(0x0000FFFF0000FFFF))
                ones += np.int64((w & np.uint64(0xFFFFFFFF)) + (w >> np.uint64(32)))
        else:
            for r in range(R):
                src = xt[r, p0:p1]
                for i in range(n):
                    ones += nzc[src[i]]
        return ones
    for r in range(R):
        src = xt[r, p0:p1]
        for i in range(n):
            c = src[i]
            ones += nzc[c]
            for k in range(NW):
                w = spt[c, k]
                sp[k, r, i] = w
                pop[k, i] += w
    return ones


@njit(**_JIT)
def _exact_product(xt, p0, n, bx, xs, rows, vals, e0, e1, xmask, res):
    """res[i] = bx·xs[i] + Σ_e vals[e]·(xt[rows[e], p0 + i] & xmask) for e in e0..e1, i < n: an
    unsaturable column's exact product, or a sum's folded ones (``sparse_group``; ``xs`` is only
    read where bx is non-zero)."""
    for i in range(n):
        res[i] = bx * xs[i] if bx != 0 else 0
    for e in range(e0, e1):
        ex, src = np.int64(vals[e]), xt[rows[e], p0 : p0 + n]
        for i in range(n):
            res[i] += ex * (np.int64(src[i]) & xmask)


@njit(**_JIT)
def _add_into(res, n, fc, t, local, L, tmin, sums, p0):
    """Sum t of iterations p0..p0 + n gains fc·res (``sparse_group``): in the block's local rows
    ``L`` where it keeps them, else in ``sums``."""
    if local:
        Lj = L[t - tmin]
        for i in range(n):
            Lj[i] += fc * res[i]
    else:
        for i in range(n):
            sums[p0 + i, t] += fc * res[i]


@njit(**_JIT)
def sparse_group(xt, q0, q1, T, v, Lb, spt, nzc, bg, ptr, erow, ev, HM, TH, KP, smask, exact, xptr, xrow, xval, xtgt, xbg, tgt,
                 cf, out, sums, PB, wu, wi):
    """The bit-level mvm of a crossbar group with sparse columns (``kernels_sparse``) on
    iterations q0..q1 of ``xt`` [R, P] (uint8 codes of the group's used rows, row by row: the
    transpose of the mvm's source columns), its ADC and shift-and-add,
    and the column results taken as ``adc_shiftadd_bytes`` takes them (``tgt``, ``cf``, ``out``,
    ``sums``). Column c's words: bg[c]·pop + Σ_e ev[e]·sp[erow[e]] (uint64, modulo 2^64: exact,
    since every lane's true sum is below 2^Lb); its lanes saturate where a bit of HM[c] is set
    (to TH[c]) and keep KP[c]; then pairs of lanes merge into fields (smask) until one value is
    left per word. Blocks of PB iterations; results of one target add up in a local block
    before they go to ``sums``. ``wu``, ``wi``: uint64 and int64 scratch of at least
    (words·(R + 1) + 1)·PB and (2·C + 18)·PB elements (reused across calls: a fresh
    half-megabyte each call would cost its page faults). Returns how many digits are non-zero.

    A column with exact[c] (no read of it can reach its ADC's threshold, nor lose a bit) is its
    exact product instead, with no lanes: bg[c]·Σ_r x_r + Σ_e ev[e]·x[erow[e]], x the codes' low
    T·v bits (the digits the steps apply), which is what its steps shift-add to. Exact columns
    that a fused shiftadd adds into the same sum are one product (exact[c] = 2: skipped here):
    target k adds xbg[k]·Σ_r x_r + Σ_e xval[e]·x[xrow[e]] (e in xptr[k]..xptr[k + 1]) into
    sums[·, xtgt[k]], their coefficients and cells folded (``kernels_sparse.combined_exact``)."""
    R = xt.shape[0]
    nl = 64 // Lb
    NW = -(-T // nl)
    C = bg.size
    tmin, tmax = 1 << 62, -1
    for c in range(C):
        if tgt[c] >= 0:
            tmin = min(tmin, tgt[c])
            tmax = max(tmax, tgt[c])
    for k in range(xtgt.size):
        tmin = min(tmin, xtgt[k])
        tmax = max(tmax, xtgt[k])
    nt = tmax - tmin + 1 if tmax >= 0 else 0
    local = nt <= 2 * C + 16  # else each column adds into sums directly
    a, b = NW * R * PB, NW * PB
    sp = wu[:a].reshape((NW, R, PB))
    pop = wu[a : a + b].reshape((NW, PB))
    acc = wu[a + b : a + b + PB]
    res = wi[:PB]
    L = wi[PB : PB + (nt if local else 0) * PB].reshape((nt if local else 0, PB))
    xs = wi[PB + (nt if local else 0) * PB : (2 + (nt if local else 0)) * PB]  # the block's Σ_r x_r (exact columns)
    any_exact = False
    for c in range(C):
        any_exact |= exact[c] == 1
    for k in range(xbg.size):
        any_exact |= xbg[k] != 0
    xmask = np.int64((1 << (T * v)) - 1)
    low, top = np.uint64(0), np.uint64(0)
    for l in range(nl):
        low |= np.uint64((1 << (Lb - 1)) - 1) << np.uint64(Lb * l)
        top |= np.uint64(1 << (Lb - 1)) << np.uint64(Lb * l)
    lmask, sh_top = np.uint64((1 << Lb) - 1), np.uint64(Lb - 1)
    one, minus_one = np.uint64(1), ~np.uint64(0)
    # the merge stages (three at most: 8-bit lanes; a missing third one is the identity)
    m0, s0, f0, h0 = smask[0], np.uint64(v), np.uint64(Lb), smask[0]
    m1, s1, f1, h1 = smask[1], np.uint64(2 * v), np.uint64(2 * Lb), smask[1]
    if smask.size > 2:
        m2, s2, f2, h2 = smask[2], np.uint64(4 * v), np.uint64(4 * Lb), smask[2]
    else:
        m2, s2, f2, h2 = ~np.uint64(0), np.uint64(0), np.uint64(0), np.uint64(0)
    wsh = np.empty(NW, dtype=np.uint64)  # later words hold less significant steps
    for k in range(NW):
        wsh[k] = v * (NW - 1 - k) * nl
    ones = 0
    for p0 in range(q0, q1, PB):
        p1 = min(q1, p0 + PB)
        n = p1 - p0
        ones += _spread_block(xt, p0, p1, T, v, spt, nzc, sp, pop)
        for j in range(L.shape[0]):
            for i in range(n):
                L[j, i] = 0
        if any_exact:
            for i in range(n):
                xs[i] = 0
            for r in range(R):
                src = xt[r, p0:p1]
                for i in range(n):
                    xs[i] += np.int64(src[i]) & xmask
        for k in range(xtgt.size):  # the exact columns of one target, as one product
            _exact_product(xt, p0, n, np.int64(xbg[k]), xs, xrow, xval, xptr[k], xptr[k + 1], xmask, res)
            _add_into(res, n, np.int64(1), xtgt[k], local, L, tmin, sums, p0)
        for c in range(C):
            if exact[c] == 2:
                continue
            hm, th, kp = HM[c], TH[c], KP[c]
            if exact[c]:
                _exact_product(xt, p0, n, np.int64(bg[c]), xs, erow, ev, ptr[c], ptr[c + 1], xmask, res)
            for k in range(0 if exact[c] else NW):
                b, pk = bg[c], pop[k]
                for i in range(n):
                    acc[i] = b * pk[i]
                for e in range(ptr[c], ptr[c + 1]):
                    s, row = ev[e], sp[k, erow[e]]
                    if s == one:  # (cells one off the background are most exceptions: no multiply)
                        for i in range(n):
                            acc[i] += row[i]
                    elif s == minus_one:
                        for i in range(n):
                            acc[i] -= row[i]
                    else:
                        for i in range(n):
                            acc[i] += s * row[i]
                # the ADC (every lane at once: saturate where a bit of hm is set, keep kp), the
                # shift-and-add (pairs of fields merge, smask), and this word's weight, in one pass
                for i in range(n):
                    w = acc[i]
                    h = w & hm
                    over = ((((h & low) + low) | h) & top) >> sh_top  # 1 in each lane past the threshold
                    m = over * lmask
                    w = ((w & ~m) | (th & m)) & kp
                    w = ((w & m0) << s0) + ((w >> f0) & h0)
                    w = ((w & m1) << s1) + ((w >> f1) & h1)
                    w = ((w & m2) << s2) + ((w >> f2) & h2)
                    r = np.int64(w << wsh[k])
                    res[i] = r if k == 0 else res[i] + r
            t = tgt[c]
            if t >= 0:
                _add_into(res, n, cf[c], t, local, L, tmin, sums, p0)
            elif t <= -2:
                for i in range(n):
                    out[p0 + i, -2 - t] = res[i]
        if local:  # (indexed, not a view of each row: a view costs a reference count)
            for i in range(n):
                for j in range(nt):
                    sums[p0 + i, tmin + j] += L[j, i]
    return ones


@njit(**_JIT)
def sparse_groups(xk, j0, j1, q0, q1, rows0, nrows, coff, T, v, Lb, spt, nzc, bg, ptr, erow, ev, HM, TH, KP, smask, exact,
                  xoff, xptr, xrow, xval, xtgt, xbg, tgt, cf, out, sums, pb, wu, wi, ones):
    """``sparse_group`` for groups j0..j1 of a layer (``kernels_sparse.SparseBatch``), on
    iterations q0..q1, in one call: group j reads rows rows0[j]..rows0[j] + nrows[j] of ``xk``
    [rows, P] (uint8 codes, the k-major source) and owns columns coff[j]..coff[j + 1] of the
    side-by-side column arrays (``ptr`` holds global exception indices), and targets
    xoff[j]..xoff[j + 1] of its combined exact columns (``xptr`` global). ones[j] += its non-zero
    digits. (One call instead of one per group: a call from Python costs a few µs per array.)"""
    for j in range(j0, j1):
        c0, c1, k0, k1 = coff[j], coff[j + 1], xoff[j], xoff[j + 1]
        xt = xk[rows0[j] : rows0[j] + nrows[j]]
        ones[j] += sparse_group(xt, q0, q1, T, v, Lb, spt, nzc, bg[c0:c1], ptr[c0 : c1 + 1], erow, ev, HM[c0:c1], TH[c0:c1],
                                KP[c0:c1], smask, exact[c0:c1], xptr[k0 : k1 + 1], xrow, xval, xtgt[k0:k1], xbg[k0:k1],
                                tgt[c0:c1], cf[c0:c1], out, sums, pb[j], wu, wi)

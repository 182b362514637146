"""The fast path of a whole lossless convolution layer (isa.md §6).

A layer's ``im2col -> mvm ... -> shiftadd -> requant`` chain, when every crossbar is lossless and
no other instruction reads the intermediate buffers, is the exact integer computation

    out[b, n, ho, wo] = clamp(rne((Σ_k cols[p, k]·W_eff[k, n] + bias[n])·mult[n] / 2^shift[n]) + zp)

with ``W_eff`` the layer matrix (``kernels.layer_matrix``). It is computed here *channel-major*,
``Y^T = W_eff^T @ X^T`` per block of output rows, where ``X^T[k, p]`` is read straight from a
strided view of the padded input: the im2col matrix, the column results and the int64 sums are
never materialized, the output lands in NCHW order without a transpose, and the per-channel
requantization constants broadcast along long rows. Depthwise layers (every output channel reads
one input channel) are ``kh·kw`` multiply-adds over shifted slices of the padded input's stride
phases instead of a block-diagonal product.

Exactness is proved once, at preparation (``plan_conv``): the products run in float32 on chunks of
the K axis whose worst-case partial sums stay below 2^24 (as ``kernels.LayerMatrix``), else in
float64 below 2^53 (no plan beyond). The requantization runs in float64 where
``|sum + bias|·mult < 2^53`` holds for every possible input, so ``(sum + bias)·(mult·2^-shift)``
is an exact float64 and ``rint`` rounds half to even as rne does; where that worst case is not
proved, each block checks its actual sums and a block beyond it takes the integer path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.kernels import LayerMatrix, _map, requant

#: elements of one block's float32 input columns (K x block) and of its float64 sums (N x block)
XT_BLOCK_ELEMS = 1 << 17
SUM_BLOCK_ELEMS = 1 << 16

#: padded maps up to this many elements run depthwise as one flat array per block (kernels_conv.run_conv)
SMALL_MAP = 1024


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
    dw: np.ndarray | None  # depthwise: [N, kh·kw] coefficients (float32, or float64 when needed)
    #: float32, single chunk, |sum| + |bias| < 2^24: [N, K + 1] with the bias as its last column
    biased: np.ndarray | None
    scale: np.ndarray  # [N, 1] float64 mult·2^-shift (exact)
    bscaled: np.ndarray  # [N, 1] float64 bias·mult·2^-shift (exact)
    zp: int
    lo: int
    hi: int
    #: the worst case |sum + bias|·mult reaches 2^53: each block checks its actual sums (max |bias|, max |mult|)
    check: tuple[int, int] | None
    ints: tuple[np.ndarray, np.ndarray, np.ndarray]  # bias, mult, shift as int64 [N] (the integer path)
    selections: dict = field(default_factory=dict)  # per input shape: ones_per_column's selections, dw coefficients


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
    bias, mult, shift = (np.broadcast_to(np.asarray(v, dtype=np.int64).reshape(-1), (N,)) for v in (bias, mult, shift))
    if N and (int(shift.min()) < 0 or int(shift.max()) > 62):
        return None
    # |sum| <= (2^bits − 1)·max_n Σ_k |W[k, n]|; requantization exact in float64 below 2^53
    vmax = ((1 << bits) - 1) * lm.colsum
    bmax = vmax + (int(np.abs(bias).max()) if N else 0)
    mmax = int(np.abs(mult).max()) if N else 0
    if lo < -(1 << 53) or hi >= (1 << 53):
        return None
    scale = np.ldexp(mult.astype(np.float64), -shift).reshape(N, 1)
    bscaled = (bias.astype(np.float64) * scale[:, 0]).reshape(N, 1)  # bias·mult < 2^53: exact
    chunks = wt64 = dw = biased = None
    exact = bmax * mmax < (1 << 53)  # every (sum + bias)·mult below 2^53, whatever the input
    coefs = _depthwise_coefs(Wm, C, kh * kw)
    if coefs is not None:
        if vmax >= (1 << 53):
            return None
        dw = coefs.astype(np.float32 if vmax < (1 << 24) else np.float64)
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
        chunks=chunks, wt64=wt64, dw=dw, biased=biased, scale=scale, bscaled=bscaled, zp=int(zp), lo=int(lo), hi=int(hi),
        check=None if exact else (bmax - vmax, mmax), ints=(bias, mult, shift),
    )


def out_hw(plan: ConvPlan, H: int, W: int) -> tuple[int, int]:
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = plan.kernel, plan.stride, plan.pad, plan.dilation
    return (H + pt + pb - dh * (kh - 1) - 1) // sh + 1, (W + pl + pr - dw * (kw - 1) - 1) // sw + 1


def padded_input(src: np.ndarray, plan: ConvPlan) -> np.ndarray:
    pt, pl, pb, pr = plan.pad
    if not (pt or pl or pb or pr):
        return src
    B, C, H, W = src.shape
    xp = np.empty((B, C, H + pt + pb, W + pl + pr), dtype=src.dtype)
    xp[:, :, :pt] = plan.pad_value  # the border only (np.pad is slow on small arrays)
    xp[:, :, H + pt :] = plan.pad_value
    xp[:, :, pt : H + pt, :pl] = plan.pad_value
    xp[:, :, pt : H + pt, W + pl :] = plan.pad_value
    xp[:, :, pt : H + pt, pl : W + pl] = src
    return xp


def _window(xp: np.ndarray, plan: ConvPlan, Ho: int, Wo: int) -> np.ndarray:
    """[B, C, kh, kw, Ho, Wo] strided view of the padded input: im2col's X^T per image."""
    (kh, kw), (sh, sw), (dh, dw) = plan.kernel, plan.stride, plan.dilation
    sB, sC, sH, sW = xp.strides
    B, C = xp.shape[:2]
    return np.lib.stride_tricks.as_strided(xp, shape=(B, C, kh, kw, Ho, Wo),
                                           strides=(sB, sC, sH * dh, sW * dw, sH * sh, sW * sw), writeable=False)


def _finish(t: np.ndarray, plan: ConvPlan, out: np.ndarray, cols: int | None = None) -> None:
    """out = clamp(rint(t) + zp) for exact float64 t = (sum + bias)·mult / 2^shift (t is consumed);
    ``cols``: only the first ``cols`` of t's last axis go to out."""
    flat = t.reshape(-1) if t.flags.c_contiguous else t
    np.rint(flat, out=flat)  # half to even, as rne
    if plan.zp:
        flat += plan.zp
    if cols is not None:
        t = t[..., :cols]
    np.clip(t, plan.lo, plan.hi, out=out, casting="unsafe")  # integers within out's type (checked by the caller)


def _requant_rows(acc: np.ndarray, plan: ConvPlan, n0: int, n1: int, out: np.ndarray, biased: bool = False,
                  cols: int | None = None) -> None:
    """out (integer [n, ...]) = clamp(rint(acc·scale + bias·scale) + zp): exact (see plan_conv);
    ``biased``: acc already includes the bias; ``cols``: only the first ``cols`` of acc's last
    axis are results. Where the worst case was not provably exact, the block's actual sums are
    checked, and the rare block beyond float64 takes the integer path."""
    if cols is not None and plan.check is not None:
        acc = acc[..., :cols]  # (the dropped columns may hold anything)
        cols = None
    if plan.check is not None:
        bias_max, mmax = plan.check
        amax = max(float(acc.max()), -float(acc.min())) if acc.size else 0.0
        if (int(amax) + bias_max) * mmax >= (1 << 53):
            bias, mult, shift = (v[n0:n1] for v in plan.ints)
            if biased:  # (acc already holds it)
                bias = np.zeros_like(bias)
            flat = acc.reshape(n1 - n0, -1)
            y = requant(flat.T.astype(np.int64), bias, mult, shift, plan.zp, plan.lo, plan.hi, channel_major=True, out_dtype=out.dtype)
            out[...] = y.reshape(out.shape)
            return
    shape = acc.shape
    if acc.flags.c_contiguous:  # one long row per channel: numpy's inner loops run the whole row
        acc = acc.reshape(shape[0], -1)
    col = (-1,) + (1,) * (acc.ndim - 1)
    t = np.multiply(acc, plan.scale[n0:n1].reshape(col), dtype=np.float64)
    if not biased:
        t += plan.bscaled[n0:n1].reshape(col)
    _finish(t.reshape(shape), plan, out, cols)


def _expanded_coefs(plan: ConvPlan, c0: int, c1: int, per_channel: int) -> list[np.ndarray]:
    """Per kernel offset, channels c0..c1's depthwise coefficients each repeated ``per_channel``
    times (a flat block's multipliers); built once per block shape and kept on the plan."""
    key = ("dw", c0, c1, per_channel)
    got = plan.selections.get(key)
    if got is None:
        got = plan.selections[key] = [np.repeat(plan.dw[c0:c1, kk], per_channel) for kk in range(plan.dw.shape[1])]
    return got


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
    xp = padded_input(src, plan)
    # the requantized block [N', b, rows, Wo] lands in the output [b, N', rows, Wo] in place
    if plan.dw is not None:  # blocks of channels (output channel c reads input channel c)
        Hp, Wp = xp.shape[2:]
        (sh, sw), (dh, dwl) = plan.stride, plan.dilation
        # equal strides s: the padded input split into its s x s phases (rows ≡ p, columns ≡ q
        # mod s), each flattened with grid width Wq; output (h, w) at grid position h·Wq + w reads,
        # for kernel offset (i, j), phase ((i·dh) mod s, (j·dw) mod s) at that position plus
        # ⌊i·dh/s⌋·Wq + ⌊j·dw/s⌋. So each offset is ONE contiguous slice of a phase, not Ho short
        # (strided) rows; grid columns past Wo (and rows past Ho) are computed and dropped
        poly = sh == sw
        s_ = sh
        Hq, Wq = -(-Hp // s_), -(-Wp // s_)
        taps = [((i * dh) % s_, (j * dwl) % s_, (i * dh // s_) * Wq + (j * dwl // s_)) for i in range(kh) for j in range(kw)]
        tail = max(t[2] for t in taps)
        row = Hq * Wq + tail  # one (channel, image) of a phase, with room for the largest shift
        # small maps: a block's channels and images as one flat run per phase (the junk between
        # them computed and dropped too), each offset's coefficients expanded to it (cached)
        across = poly and Hq * Wq <= SMALL_MAP

        def dw_block(item) -> None:
            b0, b1, c0, c1 = item
            nc, nb = c1 - c0, b1 - b0
            ft = plan.dw.dtype
            dst = out[b0:b1, c0:c1].transpose(1, 0, 2, 3)  # [c, b, Ho, Wo]
            if not poly:  # unequal strides: shifted windows of the padded block
                wf = _window(xp[b0:b1, c0:c1].astype(ft), plan, Ho, Wo)
                views = [wf[:, :, i, j].transpose(1, 0, 2, 3) for i in range(kh) for j in range(kw)]
                coefs = [plan.dw[c0:c1, kk, None, None, None] for kk in range(kh * kw)]
            else:
                n = nc * nb * row
                buf = np.zeros(s_ * s_ * n + tail, dtype=ft)  # converted once
                for p in range(s_):
                    for q in range(s_):
                        part = xp[b0:b1, c0:c1, p::s_, q::s_].transpose(1, 0, 2, 3)
                        grid = buf[(p * s_ + q) * n : (p * s_ + q + 1) * n].reshape(nc, nb, row)[:, :, : Hq * Wq]
                        grid.reshape(nc, nb, Hq, Wq)[:, :, : part.shape[2], : part.shape[3]] = part
                if across:
                    views = [buf[(p * s_ + q) * n + o : (p * s_ + q + 1) * n + o] for p, q, o in taps]
                    coefs = _expanded_coefs(plan, c0, c1, nb * row)
                else:
                    views = [buf[(p * s_ + q) * n : (p * s_ + q + 1) * n].reshape(nc, nb, row)[:, :, o : o + Ho * Wq] for p, q, o in taps]
                    coefs = [plan.dw[c0:c1, kk, None, None] for kk in range(kh * kw)]
            acc = np.multiply(views[0], coefs[0])
            tmp = np.empty_like(acc)
            for view, coef in zip(views[1:], coefs[1:]):  # per kernel offset: one multiply-add over the block
                np.multiply(view, coef, out=tmp)
                acc += tmp
            if poly:
                if across:
                    acc = np.ascontiguousarray(acc.reshape(nc, nb, row)[:, :, : Ho * Wq])
                acc = acc.reshape(nc, nb, Ho, Wq)
            _requant_rows(acc, plan, c0, c1, dst, cols=Wo if poly else None)

        _map(dw_block, _blocks(B, C, C * Ho * Wo, Ho * Wo, SUM_BLOCK_ELEMS))
        return out
    # dense: blocks of output rows, X^T [K, images·rows·Wo] copied (and converted) from the view
    win = _window(xp, plan, Ho, Wo)
    K = C * kh * kw
    target = max(1, min(XT_BLOCK_ELEMS // max(K, 1), SUM_BLOCK_ELEMS // max(N, 1)))
    ftype = np.float32 if plan.chunks is not None else np.float64
    ones_row = plan.biased is not None  # the bias rides on a row of ones

    def dense_block(item) -> None:
        b0, b1, h0, h1 = item
        nb, nh = b1 - b0, h1 - h0
        buf = np.empty((K + ones_row) * nb * nh * Wo, dtype=ftype)
        xt = buf[: K * nb * nh * Wo].reshape(C, kh, kw, nb, nh, Wo)
        np.copyto(xt, win[b0:b1, :, :, :, h0:h1].transpose(1, 2, 3, 0, 4, 5), casting="unsafe")
        if ones_row:
            buf[K * nb * nh * Wo :] = 1
        xt = buf.reshape(K + ones_row, -1)
        dst = out[b0:b1, :, h0:h1].transpose(1, 0, 2, 3)
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
        _requant_rows(acc.reshape(dst.shape), plan, 0, N, dst, biased=plan.biased is not None)

    _map(dense_block, _blocks(B, Ho, Ho * Wo, Wo, target))
    return out


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


def ones_per_column(src: np.ndarray, plan: ConvPlan, table: np.ndarray | None) -> np.ndarray:
    """For every im2col column k = (c, i, j): the non-zero DAC digits of its inputs summed over all
    iterations (``dac_ones`` before the row-table gather), from the source, without im2col.
    ``table``: non-zero digits per code value; None for 1-bit digits (a popcount).

    Separable: the window's columns of offset j are a 0/1 selection over the real input columns
    (one skinny product over all rows), then its rows of offset i likewise; the window positions
    in the padding each add the pad value's count."""
    B, C, H, W = src.shape
    (kh, kw), (sh, sw), (pt, pl, _pb, _pr), (dh, dw) = plan.kernel, plan.stride, plan.pad, plan.dilation
    Ho, Wo = out_hw(plan, H, W)
    pv = plan.pad_value
    pad_ones = int(np.bitwise_count(np.uint64(pv))) if table is None else int(table[pv])
    if (kh, kw) == (1, 1) and (sh, sw) == (1, 1) and (Ho, Wo) == (H, W) and (pt, pl) == (0, 0):
        flat = src.reshape(B, C, H * W)
        if table is None and (H * W) % 8 == 0 and flat.flags.c_contiguous:
            ones = np.bitwise_count(flat.view(np.uint64))  # per 8 codes at once: their popcounts summed
        else:
            ones = np.bitwise_count(flat) if table is None else np.take(table, flat)
        return ones.sum(axis=(0, 2), dtype=np.int64)
    ones = np.bitwise_count(src) if table is None else np.take(table, src)
    sel = plan.selections.get((H, W))
    if sel is None:
        sel = plan.selections[(H, W)] = (*_selection(W, pl, kw, dw, sw, Wo), *_selection(H, pt, kh, dh, sh, Ho))
    csel, cpad, rsel, rpad = sel
    # [B·C·H, W] @ [W, kw]: every sum at most (max count)·W, exact in float32
    a = (ones.reshape(-1, W).astype(np.float32) @ csel).reshape(B, C, H, kw).sum(axis=0, dtype=np.float64)
    res = np.matmul(rsel.T.astype(np.float64), a)  # [kh, H] @ [C, H, kw] -> [C, kh, kw]
    real = np.outer(Ho - rpad, Wo - cpad)  # [kh, kw] window positions inside the input
    res += float(B * pad_ones) * (Ho * Wo - real)
    return np.rint(res).astype(np.int64).reshape(-1)

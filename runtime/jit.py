"""The simulator's compiled inner loops (numba), for the steps that NumPy can only do as several
whole-array passes: a depthwise layer's multiply-adds with its requantization, and the integer
requantization of a fused layer's sums.

Every kernel here is exact integer arithmetic by construction; the caller proves the bounds
that make it so (``kernels_conv.plan_conv``): the accumulator's type holds every partial sum,
and ``|sum + bias|·mult < 2^63``. Kernels release the GIL, so the runtime's worker threads run
them side by side, and are cached on disk after their first compilation.

Loops read their operands through slices indexed by the loop variable, never ``a[o + k]`` with
a computed offset: only then can LLVM prove the index in range and vectorize the loop.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = dict(cache=True, nogil=True, error_model="numpy")


@njit(**_JIT)
def _requant_line(acc, bias, mult, shift, zp, lo, hi, dst):
    """dst[w] = clamp(rne((acc[w] + bias)·mult / 2^shift) + zp, lo, hi) (isa.md §3.4): the
    quotient rounded down, then up when the remainder is past half, or at half and odd."""
    half = (np.int64(1) << shift) >> 1
    mask = (np.int64(1) << shift) - 1
    odd = np.int64(1) if shift > 0 else np.int64(0)  # (no remainder, no tie, when nothing is shifted out)
    for w in range(dst.size):
        t = (np.int64(acc[w]) + bias) * mult
        q = t >> shift
        r = t & mask
        q += np.int64(r > half) | (np.int64(r == half) & q & odd)
        q += zp
        dst[w] = min(max(q, lo), hi)


@njit(**_JIT)
def requant_rows(acc, bias, mult, shift, zp, lo, hi, dst):
    """The requantization of a fused layer's block: ``acc`` [N, b, h, Wa] exact integer sums
    (any numeric type; columns past ``dst``'s width Wo <= Wa are ignored) into ``dst`` [N, b, h, Wo]."""
    N, nb, nh, Wo = dst.shape
    for n in range(N):
        for b in range(nb):
            for h in range(nh):
                _requant_line(acc[n, b, h, :Wo], bias[n], mult[n], shift[n], zp, lo, hi, dst[n, b, h])


@njit(**_JIT)
def _dw_sums(ph, tp, to, coef, b, c, acc):
    """acc[:L] = Σ_t coef[c, t]·ph[b, c, tp[t], to[t] : to[t] + L]: one channel's depthwise sums
    on the stride-phase grid (L = acc.size)."""
    L = acc.size
    seg = ph[b, c, tp[0], to[0] : to[0] + L]
    w = coef[c, 0]
    for k in range(L):
        acc[k] = w * seg[k]
    for t in range(1, tp.size):
        seg = ph[b, c, tp[t], to[t] : to[t] + L]
        w = coef[c, t]
        for k in range(L):
            acc[k] += w * seg[k]


@njit(**_JIT)
def depthwise(ph, tp, to, coef, bias, mult, shift, zp, lo, hi, Wq, out):
    """A depthwise layer, requantized: out[b, c, ho, wo] from channel c's phases ``ph`` [B, C, S, Lq],
    kernel tap t reading phase tp[t] at flat offset to[t] + ho·Wq + wo (kernels_conv.run_conv).
    The accumulator has coef's type."""
    B, C, Ho, Wo = out.shape
    acc = np.empty((Ho - 1) * Wq + Wo, dtype=coef.dtype)
    for b in range(B):
        for c in range(C):
            _dw_sums(ph, tp, to, coef, b, c, acc)
            for ho in range(Ho):
                _requant_line(acc[ho * Wq : ho * Wq + Wo], bias[c], mult[c], shift[c], zp, lo, hi, out[b, c, ho])


@njit(**_JIT)
def depthwise_sums(ph, tp, to, coef, Wq, sums):
    """As ``depthwise``, the int64 sums only: sums [B, C, Ho, Wo] (for a requantization beyond int64)."""
    B, C, Ho, Wo = sums.shape
    acc = np.empty((Ho - 1) * Wq + Wo, dtype=coef.dtype)
    for b in range(B):
        for c in range(C):
            _dw_sums(ph, tp, to, coef, b, c, acc)
            for ho in range(Ho):
                row = acc[ho * Wq : ho * Wq + Wo]
                dst = sums[b, c, ho]
                for wo in range(Wo):
                    dst[wo] = row[wo]

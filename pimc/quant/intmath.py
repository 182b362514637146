"""The integer arithmetic of ``spec/quantization.md``, shared by the integer reference and the
code generator so that both derive the same constants from the same formulas.

Everything here is exact on int64 arrays (no float rounding once the constants are chosen); the
float-valued inputs (scales) are only used to *choose* integer constants, in IEEE binary64.
"""

from __future__ import annotations

import math

import numpy as np

# The requantization multiplier M of a matrix layer normally has 31 bits: 2^30 <= M < 2^31.
MULT_BITS = 31
# Shifts stay within 0..62 so that 2^shift fits a signed 64-bit integer.
MAX_SHIFT = 62
# Fewer multiplier bits than this would make requantization visibly inaccurate: an error instead.
MIN_MULT_BITS = 16


def rne(x: np.ndarray | float) -> np.ndarray:
    """Round half to even of a float array (numpy's rint is exactly that), as int64."""
    return np.rint(np.asarray(x, dtype=np.float64)).astype(np.int64)


def rne_shift(a: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """Exact ``round_half_even(a / 2^n)`` for int64 ``a`` and 0 <= n <= 62 (broadcasting)."""
    a = np.asarray(a, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    if np.any(n < 0) or np.any(n > MAX_SHIFT):
        raise ValueError(f"rne_shift: shift must be in 0..{MAX_SHIFT}, got {n.min()}..{n.max()}")
    q = a >> n  # floor division by 2^n (arithmetic shift)
    r = a - (q << n)  # remainder in [0, 2^n)
    half = np.where(n > 0, np.left_shift(np.int64(1), np.maximum(n - 1, 0)), np.int64(1))
    # n == 0: r is 0 and half is 1, so nothing is rounded.
    up = (r > half) | ((r == half) & ((q & 1) == 1) & (n > 0))
    return q + up.astype(np.int64)


def rne_div(a: np.ndarray, d: np.ndarray | int) -> np.ndarray:
    """Exact ``round_half_even(a / d)`` for int64 ``a`` and positive integer ``d`` (broadcasting)."""
    a = np.asarray(a, dtype=np.int64)
    d = np.asarray(d, dtype=np.int64)
    if np.any(d <= 0):
        raise ValueError("rne_div: the divisor must be positive")
    q = np.floor_divide(a, d)
    r = a - q * d  # in [0, d)
    twice = 2 * r
    up = (twice > d) | ((twice == d) & ((q & 1) == 1))
    return q + up.astype(np.int64)


def quantize_multiplier(
    real: np.ndarray | float, bits: int = MULT_BITS, max_shift: int = MAX_SHIFT
) -> tuple[np.ndarray, np.ndarray]:
    """``real ≈ M / 2^shift`` with ``2^(bits-1) <= M < 2^bits`` (int64 arrays, same shape as real).

    If that would need ``shift > max_shift`` (a tiny multiplier), ``shift = max_shift`` and
    ``M = rne(real · 2^max_shift)`` (fewer significant bits, possibly 0). A multiplier that would
    need a negative shift (``real`` about ``2^bits`` or more) raises ``ValueError``: no sane scales produce one.
    The relative error is at most ``2^-bits`` in the normal case.
    """
    real = np.asarray(real, dtype=np.float64)
    if np.any(~np.isfinite(real)) or np.any(real < 0):
        raise ValueError(f"quantize_multiplier: multipliers must be finite and >= 0, got {real}")
    frac, exp = np.frexp(real)  # real = frac · 2^exp, 0.5 <= frac < 1 (or 0)
    m = rne(np.ldexp(frac, bits))  # in [2^(bits-1), 2^bits]
    shift = bits - exp.astype(np.int64)
    carry = m == (1 << bits)
    m = np.where(carry, m >> 1, m)
    shift = np.where(carry, shift - 1, shift)
    zero = real == 0
    tiny = (shift > max_shift) & ~zero
    if np.any(tiny):
        m = np.where(tiny, rne(np.ldexp(real, max_shift)), m)
        shift = np.where(tiny, max_shift, shift)
    m = np.where(zero, 0, m)
    shift = np.where(zero, 0, shift)
    if np.any(shift < 0):
        raise ValueError(f"quantize_multiplier: multiplier {real.max()} needs a negative shift")
    return m.astype(np.int64), shift.astype(np.int64)


def layer_multiplier_bits(worst_abs: int) -> int:
    """Multiplier width for a matrix layer whose |acc + bias| is below ``worst_abs``.

    31 bits (2^30 <= M < 2^31) when |acc + bias| <= worst_abs < 2^32, else as many as keep the
    int64 product ``(acc + bias) · M`` below 2^63. Fewer than ``MIN_MULT_BITS`` raises ``ValueError``.
    """
    acc_bits = max(int(worst_abs).bit_length(), 1)
    bits = min(MULT_BITS, 63 - acc_bits)
    if bits < MIN_MULT_BITS:
        raise ValueError(
            f"the accumulator can reach {worst_abs} (2^{acc_bits}), leaving {bits} bits for the "
            f"requantization multiplier (at least {MIN_MULT_BITS} are needed)"
        )
    return bits


def requantize(acc: np.ndarray, bias: np.ndarray, mult: np.ndarray, shift: np.ndarray, zp: int, lo: int, hi: int) -> np.ndarray:
    """Matrix-layer output stage (isa §3.4): ``clamp(rne_shift((acc + bias)·M, shift) + zp, lo, hi)``.

    ``acc`` [..., N]; ``bias``, ``mult``, ``shift`` [N].
    """
    v = (np.asarray(acc, dtype=np.int64) + bias) * mult
    return np.clip(rne_shift(v, shift) + zp, lo, hi)


# ------------------------------------------------------------------ digital-op constants (§5)

ELEMENTWISE_BITS = 31  # multipliers of add/mul/rescale/avgpool: 2^30 <= m < 2^31 when possible


def _common_shift(ratios: list[float], bits: int = ELEMENTWISE_BITS, max_shift: int = MAX_SHIFT) -> int:
    """The shift n for which the largest ratio · 2^n lies in [2^(bits-1), 2^bits), within 0..max_shift."""
    top = max(ratios)
    if top <= 0:
        return 0
    _, exp = math.frexp(top)  # top = f · 2^exp, 0.5 <= f < 1
    n = bits - exp
    if rne(math.ldexp(top, n)) >= (1 << bits):
        n -= 1
    return int(min(max(n, 0), max_shift))


def add_params(s_a: float, s_b: float, s_y: float, subtract: bool = False) -> tuple[int, int, int]:
    """``(ma, mb, shift)`` of isa ``add``: ``ma = rne(s_a/s_y · 2^shift)``, ``mb = ±rne(s_b/s_y · 2^shift)``."""
    ra, rb = float(s_a) / float(s_y), float(s_b) / float(s_y)
    shift = _common_shift([ra, rb])
    ma = int(rne(math.ldexp(ra, shift)))
    mb = int(rne(math.ldexp(rb, shift)))
    return ma, (-mb if subtract else mb), shift


def mul_params(s_a: float, s_b: float, s_y: float) -> tuple[int, int]:
    """``(m, shift)`` of isa ``mul``: ``m = rne(s_a·s_b/s_y · 2^shift)``."""
    r = float(s_a) * float(s_b) / float(s_y)
    shift = _common_shift([r])
    return int(rne(math.ldexp(r, shift))), shift


def rescale_params(s_in: float, s_out: float) -> tuple[int, int]:
    """``(m, shift)`` of isa ``rescale`` (``nn.requantize``): ``m = rne(s_in/s_out · 2^shift)``."""
    r = float(s_in) / float(s_out)
    shift = _common_shift([r])
    return int(rne(math.ldexp(r, shift))), shift


def avgpool_params(s_in: float, s_out: float, max_count: int, in_bits: int) -> tuple[int, int]:
    """``(m, shift)`` of isa ``avgpool``: ``m / 2^shift ≈ s_in / s_out``.

    Bounded so that ``m · Σ(x - zin)`` (|Σ| < count · 2^in_bits) and ``count · 2^shift`` fit int64
    with a bit to spare (below 2^62).
    """
    r = float(s_in) / float(s_out)
    count_bits = int(max_count).bit_length()
    bits = min(ELEMENTWISE_BITS, 62 - count_bits - in_bits)
    max_shift = min(MAX_SHIFT, 62 - count_bits)
    if bits < MIN_MULT_BITS:
        raise ValueError(f"a pooling window of {max_count} elements at {in_bits} bits leaves {bits} multiplier bits")
    shift = _common_shift([r], bits=bits, max_shift=max_shift)
    return int(rne(math.ldexp(r, shift))), shift


# ---------------------------------------------------------------------- float <-> codes (§3, §6)


def quantize_float(x: np.ndarray, scale: float, zp: int, qmin: int, qmax: int) -> np.ndarray:
    """``clamp(rne(x / scale) + zp, qmin, qmax)`` with x / scale in binary64; NaN maps to zp."""
    x = np.asarray(x, dtype=np.float64)
    v = x / float(scale)
    return _round_clamp(v, zp, qmin, qmax)


def quantize_input(x: np.ndarray, scale: float, zp: int, qmin: int, qmax: int) -> np.ndarray:
    """Graph-input quantization (``nn.quantize``), as ONNX QuantizeLinear: ``x / scale`` is the
    correctly rounded binary32 quotient of the binary32 input and scale, then rne, zp, clamp."""
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.asarray(x, dtype=np.float32) / np.float32(scale)
    return _round_clamp(v.astype(np.float64), zp, qmin, qmax)


def _round_clamp(v: np.ndarray, zp: int, qmin: int, qmax: int) -> np.ndarray:
    v = np.where(np.isnan(v), 0.0, v)
    v = np.clip(v, -(2.0**62), 2.0**62)  # ±inf saturate
    return np.clip(rne(v) + zp, qmin, qmax)


def dequantize(q: np.ndarray, scale: float, zp: int) -> np.ndarray:
    """``scale · (q - zp)`` in binary64."""
    return float(scale) * (np.asarray(q, dtype=np.int64) - zp).astype(np.float64)


# ------------------------------------------------------------------------- parameter choice (§3)


def act_params(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """Scale and zero point of an unsigned ``bits``-bit activation whose real range is [lo, hi].

    The range is widened to include 0; the scale is rounded to binary32 (ONNX stores float32) and
    the zero point ``clamp(rne(-lo / scale), 0, qmax)`` makes real 0 exactly representable. A
    degenerate range (``hi - lo`` not above the smallest normal binary32) gets scale 1, zero point 0.
    """
    qmax = (1 << bits) - 1
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"range [{lo}, {hi}] is not finite")
    width = hi - lo
    if width <= float(np.finfo(np.float32).tiny) * qmax:
        return 1.0, 0
    scale = float(np.float32(width / qmax))
    zp = int(np.clip(rne(-lo / scale), 0, qmax))
    return scale, zp


def weight_params(w: np.ndarray, axis: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric narrow-range quantization of ``w`` along ``axis``.

    Returns (codes int64 in [-(2^(b-1)-1), 2^(b-1)-1], scale float32 [N]) with
    ``scale = float32(max|w| / (2^(b-1)-1))`` (1 for an all-zero channel) and
    ``codes = clamp(rne(w / scale))`` evaluated in binary64.
    """
    qmax = (1 << (bits - 1)) - 1
    w = np.asarray(w, dtype=np.float64)
    other = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    amax = np.max(np.abs(w), axis=other) if other else np.abs(w)
    scale = (amax / qmax).astype(np.float32)
    scale = np.where(amax == 0, np.float32(1.0), scale).astype(np.float32)
    # a channel so small that max|w|/qmax underflows binary32 is treated as zero as well
    scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis % w.ndim] = -1
    codes = np.clip(rne(w / scale.astype(np.float64).reshape(shape)), -qmax, qmax)
    return codes, scale

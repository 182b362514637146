"""The runtime's own integer arithmetic (``spec/quantization.md``, ``spec/isa.md`` notation).

Written from the spec, not imported from the compiler, so that the simulator checks the compiler's
constants rather than sharing its bugs. Every function is whole-array NumPy on int64; products that
could overflow int64 are computed exactly with Python integers instead (rare: only for huge
accumulators times large multipliers).
"""

from __future__ import annotations

import numpy as np

_I64_SAFE = 1 << 62


def _as_i64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64)


def rne_shift(a, n) -> np.ndarray:
    """``rne(a / 2^n)``: a divided by 2^n, rounded to nearest, ties to even; ``n <= 0`` multiplies.

    Exact for int64 ``a``; ``n`` broadcasts against ``a``.
    """
    a = _as_i64(a)
    n = _as_i64(n)
    if n.size and int(n.min()) < 0:
        neg = np.maximum(-n, 0)
        a = a << neg  # left shifts for negative n; the rounding below is then a no-op (n -> 0)
        n = np.maximum(n, 0)
    if not n.size or int(n.max()) == 0:
        return np.broadcast_to(a, np.broadcast_shapes(a.shape, n.shape)).copy()
    if int(n.max()) > 62:
        # shifting an int64 by 63+ bits: the quotient is 0 or -1 before rounding; use Python ints
        return _rne_div_exact(a, np.left_shift(np.ones_like(n, dtype=object), n.astype(object)))
    q = a >> n
    r = a - (q << n)  # 0 <= r < 2^n
    half = np.where(n > 0, np.int64(1) << np.maximum(n - 1, 0), 0)
    up = (n > 0) & ((r > half) | ((r == half) & ((q & 1) == 1)))
    return q + up.astype(np.int64)


def rne_shift_inplace(a: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``a <- rne(a / 2^n)`` for int64 ``a`` and 1 <= n <= 62 (broadcasting), when ``a + 2^(n-1)``
    cannot overflow: ``(a + 2^(n-1) - 1 + (floor(a / 2^n) & 1)) >> n``, which rounds up exactly when
    the remainder exceeds half, or equals it and the floor is odd (ties to even)."""
    t = a >> n
    t &= 1
    t += (np.int64(1) << (n - 1)) - 1
    a += t
    a >>= n
    return a


def rne_div(a, d) -> np.ndarray:
    """``rne_div(a, d)``: a / d (d > 0) rounded to nearest, ties to even."""
    a = _as_i64(a)
    d = _as_i64(d)
    if d.size and int(d.min()) <= 0:
        raise ValueError("rne_div: divisor must be positive")
    q = np.floor_divide(a, d)
    r = a - q * d  # 0 <= r < d
    twice = 2 * r
    up = (twice > d) | ((twice == d) & ((q & 1) == 1))
    return q + up.astype(np.int64)


def _rne_div_object(a, d) -> np.ndarray:
    """Exact rne division with Python integers (object arrays in and out); for operands beyond int64."""
    a_o = np.asarray(a).astype(object)
    d_o = np.asarray(d).astype(object)
    q = a_o // d_o
    r = a_o - q * d_o
    twice = 2 * r
    up = (twice > d_o) | ((twice == d_o) & ((q % 2) == 1))
    return q + up.astype(object)


def _rne_div_exact(a, d) -> np.ndarray:
    """``_rne_div_object`` as int64 (an OverflowError where a quotient does not fit)."""
    return _rne_div_object(a, d).astype(np.int64)


def _max_abs(a: np.ndarray) -> int:
    if a.size == 0:
        return 0
    return max(abs(int(a.max())), abs(int(a.min())))


def _mul_rne_shift_object(a: np.ndarray, m: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``rne(a · m / 2^shift)`` in Python integers (an object array), for products past int64."""
    prod = a.astype(object) * m.astype(object)
    neg = np.maximum(-shift, 0).astype(object)
    pos = np.maximum(shift, 0).astype(object)
    prod = prod * (np.ones_like(neg, dtype=object) << neg)
    return _rne_div_object(prod, np.ones_like(pos, dtype=object) << pos)


def _clamp_object(q: np.ndarray, zp: int, lo: int, hi: int) -> np.ndarray:
    """clamp(q + zp, lo, hi) of Python integers (which may pass int64), as int64."""
    return np.minimum(np.maximum(q + int(zp), int(lo)), int(hi)).astype(np.int64)


def mul_rne_shift(a, m, shift) -> np.ndarray:
    """``rne(a · m / 2^shift)`` exactly, even when ``a · m`` does not fit in int64."""
    a = _as_i64(a)
    m = _as_i64(m)
    shift = _as_i64(shift)
    if _max_abs(a) * _max_abs(m) < _I64_SAFE:
        return rne_shift(a * m, shift)
    return _mul_rne_shift_object(a, m, shift).astype(np.int64)


def mul_rne_shift_clamp(a, m, shift, zp: int, lo: int, hi: int) -> np.ndarray:
    """``clamp(rne(a · m / 2^shift) + zp, lo, hi)`` exactly, as int64: where ``a · m`` passes
    int64 the quotient, which may pass it too (a small shift), is clamped as a Python integer."""
    a = _as_i64(a)
    m = _as_i64(m)
    shift = _as_i64(shift)
    if _max_abs(a) * _max_abs(m) < _I64_SAFE:
        return clamp(rne_shift(a * m, shift) + zp, lo, hi)
    return _clamp_object(_mul_rne_shift_object(a, m, shift), zp, lo, hi)


def div_rne_clamp(a, m, count, shift: int, zp: int, lo: int, hi: int) -> np.ndarray:
    """``clamp(rne_div(a · m, count · 2^shift) + zp, lo, hi)`` exactly, as int64 (count >= 1):
    in Python integers where the product or the divisor passes int64 (a large shift)."""
    a = _as_i64(a)
    m = _as_i64(m)
    count = _as_i64(count)
    if _max_abs(a) * _max_abs(m) < _I64_SAFE and _max_abs(count) << int(shift) < _I64_SAFE:
        return clamp(rne_div(a * m, count << np.int64(shift)) + zp, lo, hi)
    q = _rne_div_object(a.astype(object) * m.astype(object), count.astype(object) * (1 << int(shift)))
    return _clamp_object(q, zp, lo, hi)


def rne_float(x) -> np.ndarray:
    """Round float64 to the nearest integer, ties to even (``np.rint`` is exactly that)."""
    return np.rint(np.asarray(x, dtype=np.float64))


def clamp(v, lo, hi) -> np.ndarray:
    return np.minimum(np.maximum(v, lo), hi)

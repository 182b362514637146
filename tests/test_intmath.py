"""Integer arithmetic of spec/quantization.md §2-§5 against exact rational arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pimc.quant import intmath

INT62 = st.integers(-(2**62) + 1, 2**62 - 1)


def _round_half_even(fr: Fraction) -> int:
    return round(fr)  # Python rounds Fractions half to even, exactly


@settings(max_examples=300, deadline=None)
@given(st.lists(INT62, min_size=1, max_size=20), st.integers(0, 62))
def test_rne_shift_is_exact_round_half_even(values, n):
    got = intmath.rne_shift(np.array(values, dtype=np.int64), n)
    want = [_round_half_even(Fraction(v, 2**n)) for v in values]
    assert got.tolist() == want


def test_rne_shift_ties_and_negatives():
    a = np.array([5, 7, -5, -7, 6, -6, 1, -1, 3, -3], dtype=np.int64)
    # /2: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2, -3.5 -> -4, 3, -3, 0.5 -> 0, -0.5 -> 0, 1.5 -> 2, -1.5 -> -2
    assert intmath.rne_shift(a, 1).tolist() == [2, 4, -2, -4, 3, -3, 0, 0, 2, -2]
    assert intmath.rne_shift(a, 0).tolist() == a.tolist()
    # per-element shifts broadcast
    assert intmath.rne_shift(np.array([10, 10, 10]), np.array([0, 1, 2])).tolist() == [10, 5, 2]
    with pytest.raises(ValueError):
        intmath.rne_shift(a, 63)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-(2**50), 2**50), min_size=1, max_size=20), st.integers(1, 2**20))
def test_rne_div_is_exact_round_half_even(values, d):
    got = intmath.rne_div(np.array(values, dtype=np.int64), d)
    assert got.tolist() == [_round_half_even(Fraction(v, d)) for v in values]


def test_rne_div_array_divisor_and_bad_divisor():
    got = intmath.rne_div(np.array([3, 5, -3, 9]), np.array([2, 2, 2, 6]))
    assert got.tolist() == [2, 2, -2, 2]
    with pytest.raises(ValueError):
        intmath.rne_div(np.array([1]), 0)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-12, max_value=1e6, allow_nan=False), st.integers(16, 31))
def test_quantize_multiplier_range_and_error_bound(real, bits):
    try:
        m, shift = intmath.quantize_multiplier(np.array([real]), bits=bits)
    except ValueError:  # only a multiplier of 2^bits or more needs a negative shift
        assert real >= 2**bits - 1
        return
    m, shift = int(m[0]), int(shift[0])
    assert 0 <= shift <= 62
    if shift < 62:
        assert 2 ** (bits - 1) <= m < 2**bits
        # relative error of the fixed-point multiplier is at most 2^-bits
        assert abs(Fraction(m, 2**shift) - Fraction(real)) <= Fraction(real) * Fraction(1, 2**bits)


def test_quantize_multiplier_tiny_and_huge():
    m, shift = intmath.quantize_multiplier(np.array([2.0**-80]))
    assert shift[0] == 62 and m[0] == 0  # too small for 62 bits of shift: rounds to 0
    m, shift = intmath.quantize_multiplier(np.array([2.0**-40]))
    assert shift[0] == 62 and m[0] == 2**22
    with pytest.raises(ValueError):
        intmath.quantize_multiplier(np.array([2.0**40]))
    m, shift = intmath.quantize_multiplier(np.array([1.0]))
    assert (int(m[0]), int(shift[0])) == (2**30, 30)


def test_layer_multiplier_bits():
    assert intmath.layer_multiplier_bits(2**32 - 1) == 31  # the 8-bit case: full 31-bit multipliers
    assert intmath.layer_multiplier_bits(2**32) == 30  # wider: the product stays below 2^63
    assert intmath.layer_multiplier_bits(2**40) == 63 - 41
    with pytest.raises(ValueError):
        intmath.layer_multiplier_bits(2**50)


def test_requantize_matches_rational_definition():
    rng = np.random.default_rng(0)
    acc = rng.integers(-(2**31), 2**31, size=(50, 4), dtype=np.int64)
    bias = rng.integers(-(2**20), 2**20, size=4, dtype=np.int64)
    mult, shift = intmath.quantize_multiplier(rng.uniform(1e-4, 1e-2, size=4))
    got = intmath.requantize(acc, bias, mult, shift, 7, 0, 255)
    for p in range(acc.shape[0]):
        for n in range(4):
            v = _round_half_even(Fraction(int(acc[p, n] + bias[n]) * int(mult[n]), 2 ** int(shift[n]))) + 7
            assert got[p, n] == min(max(v, 0), 255)


@pytest.mark.parametrize("bits", [4, 8, 12, 16])
def test_act_params_zero_exact_and_float32(bits):
    for lo, hi in [(-1.3, 2.7), (0.0, 5.0), (-3.0, 0.0), (0.2, 0.9), (-0.9, -0.2)]:
        s, zp = intmath.act_params(lo, hi, bits)
        assert float(np.float32(s)) == s and s > 0
        assert 0 <= zp <= 2**bits - 1
        q0 = intmath.quantize_float(np.array([0.0]), s, zp, 0, 2**bits - 1)
        assert intmath.dequantize(q0, s, zp)[0] == 0.0  # real zero is exact
        # the range (widened to include 0) is representable to within one step
        qlo, qhi = intmath.quantize_float(np.array([min(lo, 0), max(hi, 0)]), s, zp, 0, 2**bits - 1)
        assert abs(intmath.dequantize(qlo, s, zp) - min(lo, 0)) <= s
        assert abs(intmath.dequantize(qhi, s, zp) - max(hi, 0)) <= s
    assert intmath.act_params(0.0, 0.0, bits) == (1.0, 0)


def test_weight_params_narrow_range_per_channel():
    w = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [0.3, 0.1, -0.05]], dtype=np.float32)
    codes, scale = intmath.weight_params(w, 0, 8)
    assert scale.dtype == np.float32
    assert scale[1] == 1.0 and not codes[1].any()  # all-zero channel: scale 1
    assert codes[0].tolist() == [64, -127, 32]  # 1/(2/127) = 63.5 -> 64 (half to even)
    assert np.abs(codes).max() <= 127 and codes[2].min() >= -127
    assert scale[0] == np.float32(2.0 / 127)


def test_rne_of_floats_is_half_even():
    assert intmath.rne(np.array([0.5, 1.5, 2.5, -0.5, -1.5])).tolist() == [0, 2, 2, 0, -2]


def test_elementwise_params():
    ma, mb, shift = intmath.add_params(0.02, 0.01, 0.04)
    assert abs(ma / 2**shift - 0.5) < 2**-29 and abs(mb / 2**shift - 0.25) < 2**-29
    assert max(ma, mb) < 2**31
    ma2, mb2, shift2 = intmath.add_params(0.02, 0.01, 0.04, subtract=True)
    assert (ma2, mb2, shift2) == (ma, -mb, shift)
    m, shift = intmath.mul_params(0.1, 0.2, 0.05)
    assert 2**30 <= m < 2**31 and abs(m / 2**shift - 0.4) < 1e-8
    m, shift = intmath.avgpool_params(0.1, 0.1, 50176, 16)
    assert m * 50176 * 2**16 < 2**62 and 50176 * 2**shift < 2**62


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=12), st.integers(-(2**31), 2**31), st.integers(0, 62),
       st.integers(-300, 300), st.sampled_from([(0, 255), (-128, 127), (-(2**63), 2**63 - 1), (-(2**31), 2**31 - 1)]))
def test_runtime_mul_rne_shift_clamp_is_exact_beyond_int64(values, m, shift, zp, bounds):
    """The simulator's clamp(rne(a·m / 2^shift) + zp, lo, hi) for products and quotients past
    int64 (a small shift of a large product): clamped exactly, never an overflow."""
    from runtime.intmath import mul_rne_shift_clamp  # noqa: PLC0415

    lo, hi = bounds
    got = mul_rne_shift_clamp(np.array(values, dtype=np.int64), m, shift, zp, lo, hi)
    want = [min(max(_round_half_even(Fraction(v * m, 2**shift)) + zp, lo), hi) for v in values]
    assert got.dtype == np.int64 and got.tolist() == want


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=12), st.integers(-(2**31), 2**31), st.integers(1, 100),
       st.integers(0, 62), st.integers(-300, 300), st.sampled_from([(0, 255), (-128, 127), (-(2**63), 2**63 - 1)]))
def test_runtime_div_rne_clamp_is_exact_for_any_shift(values, m, count, shift, zp, bounds):
    """The simulator's avgpool division clamp(rne_div(a·m, count·2^shift) + zp, lo, hi), for
    products past int64 and divisors past it (count·2^62): exact, never wrapped."""
    from runtime.intmath import div_rne_clamp  # noqa: PLC0415

    lo, hi = bounds
    got = div_rne_clamp(np.array(values, dtype=np.int64), m, count, shift, zp, lo, hi)
    want = [min(max(_round_half_even(Fraction(v * m, count * 2**shift)) + zp, lo), hi) for v in values]
    assert got.dtype == np.int64 and got.tolist() == want

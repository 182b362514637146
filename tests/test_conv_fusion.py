"""The fast path's fused conv layer (``runtime.kernels_conv``) against references written from
spec/isa.md: im2col (§3.1), an exact integer product, requant (§3.4) in Python integers, and
``dac_ones`` (§3.2) as the popcount of the im2col matrix — over random geometry, widths and
requantization constants, including the cases that take the rarer branches (K-chunked float32
products, float64 products, per-block checked requantization and its arbitrary-precision fallback, int32 and int64
depthwise sums).
Whole programs: the fused layers give the outputs and counters of the bit-level path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from isa_refs import ref_im2col

from runtime import jit as JIT
from runtime import kernels as K
from runtime import kernels_conv as KC

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _im2col(src, kernel, stride, pad, dilation, pad_value):
    """isa.md §3.1 on int64 codes: ([B·Ho·Wo, C·kh·kw], (Ho, Wo))."""
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = kernel, stride, pad, dilation
    H, W = src.shape[2:]
    Ho, Wo = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1, (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    return ref_im2col(src.astype(np.int64), kernel, stride, pad, dilation, pad_value), (Ho, Wo)


def _requant_ref(acc, bias, mult, shift, zp, lo, hi):
    """isa.md §3.4 in Python integers: clamp(rne((acc + bias)·mult / 2^shift) + zp, lo, hi)."""
    out = np.empty(acc.shape, dtype=np.int64)
    for (p, n), a in np.ndenumerate(acc):
        v = (int(a) + int(bias[n])) * int(mult[n])
        s = int(shift[n])
        q, r = divmod(v, 1 << s) if s else (v, 0)
        half = (1 << s) >> 1
        if s and (r > half or (r == half and q % 2)):
            q += 1
        out[p, n] = min(max(q + zp, lo), hi)
    return out


@st.composite
def layers(draw):
    B = draw(st.integers(1, 3))
    dw = draw(st.booleans())
    C = draw(st.integers(2, 6))
    N = C if dw else draw(st.integers(1, 6))
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw_ = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
    if H + pad[0] + pad[2] < dh * (kh - 1) + 1 or W + pad[1] + pad[3] < dw_ * (kw - 1) + 1:
        pad = (pad[0] + dh * (kh - 1), pad[1] + dw_ * (kw - 1), pad[2], pad[3])
    bits = draw(st.sampled_from([2, 4, 8]))
    wmax = draw(st.sampled_from([3, 127, 2**15, 2**22]))  # large weights: K-chunks, float64 products
    big_mult = draw(st.booleans())  # mult near 2^31 with large sums: per-block checks, integer fallback
    seed = draw(st.integers(0, 2**31 - 1))
    return B, C, N, H, W, (kh, kw), (sh, sw), pad, (dh, dw_), bits, wmax, big_mult, dw, seed


def _case(case):
    B, C, N, H, W, kernel, stride, pad, dil, bits, wmax, big_mult, dw, seed = case
    rng = np.random.default_rng(seed)
    kk = kernel[0] * kernel[1]
    if dw:  # output channel c reads input channel c only
        Wm = np.zeros((C * kk, C), dtype=np.int64)
        for c in range(C):
            Wm[c * kk : (c + 1) * kk, c] = rng.integers(-wmax, wmax + 1, kk)
    else:
        Wm = rng.integers(-wmax, wmax + 1, (C * kk, N))
    src = rng.integers(0, 1 << bits, (B, C, H, W)).astype(np.uint8 if bits <= 8 else np.uint16)
    pad_value = int(rng.integers(0, 1 << bits))
    bias = rng.integers(-(1 << 20), 1 << 20, N)
    mult = rng.integers(1 << 30, 1 << 31, N) if big_mult else rng.integers(1, 1 << 16, N)
    shift = rng.integers(30, 50, N) if big_mult else rng.integers(8, 24, N)
    zp = int(rng.integers(0, 20))
    return src, Wm, kernel, stride, pad, dil, pad_value, bits, bias, mult, shift, zp


@SETTINGS
@example(case=(1, 4, 4, 1, 3, (3, 3), (1, 1), (2, 2, 0, 0), (1, 1), 8, 2**22, True, False, 0),
         out_type=(np.uint8, 0, 255), no_shift=True, tiny_blocks=False)  # quotients past int64, clamped
@given(layers(), st.sampled_from([(np.uint8, 0, 255), (np.int8, -128, 127), (np.int32, -(2**31), 2**31 - 1)]),
       st.booleans(), st.booleans())
def test_run_conv_equals_im2col_product_and_requant(case, out_type, no_shift, tiny_blocks):
    """(``tiny_blocks``: blocks of a few rows or channels, so that layers split into many.)"""
    src, Wm, kernel, stride, pad, dil, pv, bits, bias, mult, shift, zp = _case(case)
    dtype, lo, hi = out_type
    if no_shift:  # shift 0: nothing rounded away
        shift = np.zeros_like(shift)
    C, N = src.shape[1], Wm.shape[1]
    lm = K.LayerMatrix(Wm, bits)
    plan = KC.plan_conv(lm, bits, kernel, stride, pad, dil, pv, C, bias, mult, shift, zp, lo, hi)
    cols, (Ho, Wo) = _im2col(src.astype(np.int64), kernel, stride, pad, dil, pv)
    acc = cols @ Wm
    ref = _requant_ref(acc, bias, mult, shift, zp, lo, hi)
    if plan is None:  # only when no float product can be exact
        assert ((1 << bits) - 1) * int(np.abs(Wm).sum(axis=0).max()) >= 1 << 53
        return
    with pytest.MonkeyPatch.context() as mp:
        if tiny_blocks:
            mp.setattr(KC, "XT_BLOCK_ELEMS", 64)
            mp.setattr(KC, "SUM_BLOCK_ELEMS", 32)
        got = KC.run_conv(src, plan, dtype)
    assert got.shape == (src.shape[0], N, Ho, Wo)
    np.testing.assert_array_equal(got.transpose(0, 2, 3, 1).reshape(-1, N), ref)


def test_run_conv_covers_each_product_and_requantization_form(monkeypatch):
    """Every branch of plan_conv/run_conv is taken by some layer (and is exact), the
    arbitrary-precision requantization of blocks beyond int64 included."""
    forms = set()
    beyond = []
    monkeypatch.setattr(KC, "requant", lambda *a, **k: beyond.append(1) or K.requant(*a, **k))
    rng = np.random.default_rng(7)
    u8, i32 = (np.uint8, 0, 255), (np.int32, -(2**31), 2**31 - 1)  # (int32's clamp: beyond the binary64 proof)
    for wmax, big_mult, dw, (dtype, lo, hi) in [
            (3, False, False, u8), (127, True, False, u8), (2**15, False, False, u8), (2**22, False, False, u8),
            (2**22, True, False, u8), (2**22, True, False, i32), (127, False, True, u8), (127, False, True, i32),
            (2**22, False, True, u8), (2**22, True, True, i32)]:
        case = (2, 4, 4, 7, 6, (3, 3), (1, 2), (1, 0, 1, 2), (1, 1), 8, wmax, big_mult, dw, int(rng.integers(1 << 30)))
        src, Wm, kernel, stride, pad, dil, pv, bits, bias, mult, shift, zp = _case(case)
        lm = K.LayerMatrix(Wm, bits)
        plan = KC.plan_conv(lm, bits, kernel, stride, pad, dil, pv, src.shape[1], bias, mult, shift, zp, lo, hi)
        forms.add(f"depthwise-{plan.dw.dtype}" if plan.dw is not None else "biased" if plan.biased is not None
                  else "float64" if plan.wt64 is not None else f"{len(plan.chunks)}-chunk")
        forms.add("binary64" if plan.fscale.size else "checked" if plan.check is not None else "proved")
        cols, _ = _im2col(src.astype(np.int64), kernel, stride, pad, dil, pv)
        ref = _requant_ref(cols @ Wm, bias, mult, shift, zp, lo, hi)
        got = KC.run_conv(src, plan, dtype)
        np.testing.assert_array_equal(got.transpose(0, 2, 3, 1).reshape(-1, Wm.shape[1]), ref)
    assert {"depthwise-int32", "depthwise-int64", "biased", "float64", "checked", "proved", "binary64"} <= forms
    assert any(f.endswith("-chunk") and f != "1-chunk" for f in forms)
    assert beyond  # some block's sums times mult passed 2^63


@SETTINGS
@given(layers(), st.sampled_from([1, 2, 3]), st.sampled_from(["window", "plane", "masks", "separable"]))
def test_ones_per_column_equals_im2col_popcount(case, dac, path):
    """Each way of counting: small sources in one compiled call (``jit.window_ones``), stride-1
    windows' set bits by whole planes (``_ones_by_planes``), small maps by one product with the
    taps' window masks, else the separable selection products."""
    src, Wm, kernel, stride, pad, dil, pv, bits, bias, mult, shift, zp = _case(case)
    lm = K.LayerMatrix(Wm, bits)
    plan = KC.plan_conv(lm, bits, kernel, stride, pad, dil, pv, src.shape[1], bias, mult, shift, zp, 0, 255)
    if plan is None:
        return
    T = -(-bits // dac)
    table = None if dac == 1 else K.digit_nonzero_table(bits, dac, T).astype(np.uint8)
    cols, _ = _im2col(src.astype(np.int64), kernel, stride, pad, dil, pv)
    per_code = K.digit_nonzero_table(bits, dac, T)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KC, "WINDOW_ONES_MAX", 1 << 30 if path == "window" else 0)
        mp.setattr(KC, "MASK_PRODUCT_MAX_HW", 1 << 30 if path == "masks" else 0)
        mp.setattr(KC, "PLANE_MAX_EXCLUDED", 1 << 30 if path == "plane" else -1)
        mp.setattr(KC, "PLANE_MIN_HW", 0)
        got = KC.ones_per_column(src, plan, table)
    np.testing.assert_array_equal(got, per_code[cols].sum(axis=0))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 20), st.integers(1, 20), st.integers(1, 5), st.integers(1, 5),
       st.integers(1, 3), st.integers(1, 3), st.tuples(*[st.integers(0, 4)] * 4), st.integers(0, 255), st.integers(0, 2**31 - 1))
def test_ones_by_planes_equals_im2col_popcount(B, C, H, W, kh, kw, dh, dw, pad, pv, seed):
    """``_ones_by_planes`` (a plane's set bits less the rows and columns a tap does not read, plus
    their crossings, plus the pad value's for its window positions in the padding) on stride-1
    windows of any size, dilation and padding, rows shorter and longer than a word."""
    pt, pl, pb, pr = pad
    if H + pt + pb < dh * (kh - 1) + 1 or W + pl + pr < dw * (kw - 1) + 1:
        return
    src = np.random.default_rng(seed).integers(0, 256, (B, C, H, W)).astype(np.uint8)
    Wm = np.ones((C * kh * kw, 1), dtype=np.int64)
    plan = KC.plan_conv(K.LayerMatrix(Wm, 8), 8, (kh, kw), (1, 1), pad, (dh, dw), pv, C, np.zeros(1), np.ones(1), np.zeros(1), 0, 0, 255)
    cols, (Ho, Wo) = _im2col(src.astype(np.int64), (kh, kw), (1, 1), pad, (dh, dw), pv)
    got = KC._ones_by_planes(src, plan, Ho, Wo, int(pv).bit_count())

    def left_out(k: int, d: int, lead: int, n_in: int, n_out: int) -> int:  # positions some offset does not read
        return n_in - len(set.intersection(*({t * d - lead + o for o in range(n_out)} for t in range(k))) & set(range(n_in)))

    if got is None:  # (more rows or columns left out than the path takes)
        assert max(left_out(kh, dh, pt, H, Ho), left_out(kw, dw, pl, W, Wo)) > KC.PLANE_MAX_EXCLUDED
        return
    np.testing.assert_array_equal(got, np.bitwise_count(cols).sum(axis=0))


@SETTINGS
@given(layers(), st.sampled_from([1, 2, 3]), st.sampled_from([(np.uint8, 0, 255), (np.int8, -128, 127), (np.int32, -(2**31), 2**31 - 1)]))
def test_small_layer_counted_with_its_im2col_equals_run_conv_and_its_counts(case, dac, out_type):
    """``run_conv_counting`` (the im2col matrix and its DAC-digit counts in one compiled call, one
    product, one requantization) gives ``run_conv``'s output and ``ones_per_column``'s counts, and
    applies to every small dense layer whose product and bias are exact in one float32 chunk and
    whose requantization needs no checks of the sums."""
    src, Wm, kernel, stride, pad, dil, pv, bits, bias, mult, shift, zp = _case(case)
    dtype, lo, hi = out_type
    plan = KC.plan_conv(K.LayerMatrix(Wm, bits), bits, kernel, stride, pad, dil, pv, src.shape[1], bias, mult, shift, zp, lo, hi)
    if plan is None:
        return
    T = -(-bits // dac)
    table = None if dac == 1 else K.digit_nonzero_table(bits, dac, T).astype(np.uint8)
    both = KC.run_conv_counting(src, plan, dtype, table)
    applies = plan.dw is None and plan.biased is not None and (plan.check is None or plan.fscale.size > 0)
    assert (both is not None) == applies
    if both is not None:
        np.testing.assert_array_equal(both[0], KC.run_conv(src, plan, dtype))
        assert both[0].dtype == dtype
        np.testing.assert_array_equal(both[1], KC.ones_per_column(src, plan, table))
    if both is not None and plan.check is None and plan.fscale.size:  # and the integer requantization
        integer = dataclasses.replace(plan, fscale=np.empty(0), cache={})
        np.testing.assert_array_equal(KC.run_conv_counting(src, integer, dtype, table)[0], both[0])


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 2), st.integers(1, 4), st.sampled_from([8, 16, 24, 14, 7, 1]), st.integers(1, 12), st.integers(1, 3), st.integers(1, 3),
       st.sampled_from([1, 2, 3, 4]), st.integers(1, 2), st.integers(1, 2), st.tuples(*[st.integers(0, 3)] * 4),
       st.integers(0, 255), st.integers(0, 2**31 - 1))
def test_ones_by_word_popcounts_equals_im2col_popcount(B, C, W, H, kh, kw, sw, sh, dil, pad, pv, seed):
    """1-bit digits on rows of whole 8-byte words: the masked word popcounts (a stride class of
    columns at once, less the few it skips) against the im2col matrix's popcounts, for every
    column stride and padding (a stride of 3, or rows of 14, 7 or 1 bytes: the selection products)."""
    if H + pad[0] + pad[2] < dil * (kh - 1) + 1 or W + pad[1] + pad[3] < dil * (kw - 1) + 1:
        return
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, (B, C, H, W)).astype(np.uint8)
    plan = KC.ConvPlan(kernel=(kh, kw), stride=(sh, sw), pad=pad, dilation=(dil, dil), pad_value=pv, C=C, N=C, chunks=None,
                       wt64=None, dw=None, biased=None, ints=(None, None, None), zp=0, lo=0, hi=255, check=None)
    cols, _ = _im2col(src.astype(np.int64), (kh, kw), (sh, sw), pad, (dil, dil), pv)
    want = np.bitwise_count(cols.astype(np.uint8)).sum(axis=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KC, "WINDOW_ONES_MAX", 0)  # (these sizes are otherwise counted by jit.window_ones,
        mp.setattr(KC, "MASK_PRODUCT_MAX_HW", 0)  # or by the window masks' product)
        np.testing.assert_array_equal(KC.ones_per_column(src, plan, None), want)
    words = KC._ones_by_word_popcounts(src, plan, *KC.out_hw(plan, H, W), int(np.bitwise_count(np.uint8(pv))))
    assert (words is None) == (sw == 3 or W % 8 != 0 or plan.cache[("words", H, W)] is False)
    if words is not None:
        np.testing.assert_array_equal(words, want)


def _example_program():
    from pathlib import Path  # noqa: PLC0415

    from pimc.driver import QuantOptions, compile_model  # noqa: PLC0415
    from pimc.hw import load_config  # noqa: PLC0415

    ex = Path(__file__).resolve().parent.parent / "examples" / "mnist_cnn"
    program = compile_model(ex / "model.onnx", load_config("isaac8"), QuantOptions(calibration=str(ex / "calib.npy"))).program
    return program, {program.inputs[0].name: np.load(ex / "test_images.npy")[:6]}


def test_example_runs_its_conv_layers_fused_with_bit_level_outputs_and_counters(monkeypatch):
    """The shipped example on isaac8: its conv and fully connected layers take the fused path, each
    counted with its im2col matrix (``run_conv_counting``), and outputs and every counter equal
    the bit-level run's."""
    from runtime.executor import machine_for, run_program

    program, x = _example_program()
    run_program(program, x)  # (prepared: its warm-up calls are not counted)
    calls = []
    one_call = KC.run_conv_counting
    monkeypatch.setattr(KC, "run_conv_counting", lambda *a: calls.append(one_call(*a) is not None) or one_call(*a))
    fast, rf = run_program(program, x)
    assert calls == [True] * 4
    m = machine_for(program)
    assert len(m.conv_chains) == 4 and all(p is not None for p in m.conv_plans.values())
    slow, rs = run_program(program, x, fast_path=False)
    for k in fast:
        np.testing.assert_array_equal(fast[k], slow[k])
    assert rf["counters"] == rs["counters"]
    assert [lay["counters"] for lay in rf["layers"]] == [lay["counters"] for lay in rs["layers"]]


def _counted(fn, calls: list):
    """``fn``, noting each call's arguments in ``calls``."""
    def wrapped(*a, **k):
        calls.append(a)
        return fn(*a, **k)
    return wrapped


@pytest.mark.parametrize("kernel,pad,dil,wmax", [((3, 3), (1, 1, 1, 1), (1, 1), 127), ((7, 7), (3, 3, 3, 3), (1, 1), 127),
                                                  ((1, 1), (0, 0, 0, 0), (1, 1), 127), ((3, 2), (0, 1, 2, 0), (2, 1), 127),
                                                  ((3, 3), (2, 0, 1, 3), (1, 2), 2**22)])
def test_stride2_dense_layer_read_through_its_stride_phases(kernel, pad, dil, wmax):
    """A dense stride-2 layer of one-byte codes takes its columns from the stride phases, a view
    per tap (``_tap_view``; a 1 x 1 window from the strided view): odd and even map sizes, pads,
    dilation, a float64 product, and two images in blocks of a few rows."""
    rng = np.random.default_rng(kernel[0] * 10 + pad[0])
    case = (2, 3, 4, 37, 30, kernel, (2, 2), pad, dil, 8, wmax, False, False, int(rng.integers(1 << 30)))
    src, Wm, kernel, stride, pad, dil, pv, bits, bias, mult, shift, zp = _case(case)
    plan = KC.plan_conv(K.LayerMatrix(Wm, bits), bits, kernel, stride, pad, dil, pv, src.shape[1], bias, mult, shift, zp, 0, 255)
    assert plan.dw is None and KC._words_split(src)
    cols, _ = _im2col(src.astype(np.int64), kernel, stride, pad, dil, pv)
    ref = _requant_ref(cols @ Wm, bias, mult, shift, zp, 0, 255)
    for blocks in (KC.XT_BLOCK_ELEMS, 200):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(KC, "XT_BLOCK_ELEMS", blocks)
            mp.setattr(KC, "PHASE_VIEWS_MIN_WO", 0)
            mp.setattr(KC, "_tap_view", _counted(KC._tap_view, calls := []))
            got = KC.run_conv(src, plan, np.uint8)
        assert len(calls) == (kernel[0] * kernel[1] if kernel != (1, 1) else 0)
        np.testing.assert_array_equal(got.transpose(0, 2, 3, 1).reshape(-1, Wm.shape[1]), ref)


@pytest.mark.parametrize("stride,dil", [((1, 1), (1, 1)), ((2, 2), (1, 1)), ((2, 2), (2, 2)), ((3, 3), (1, 2)), ((1, 2), (1, 1))])
def test_depthwise_on_large_maps_and_every_stride_phase(stride, dil):
    """Large maps, equal and unequal strides, dilation: every tap's run within its stride phase."""
    rng = np.random.default_rng(sum(stride) + 10 * sum(dil))
    case = (2, 3, 3, 100, 97, (3, 3), stride, (1, 2, 0, 1), dil, 8, 127, False, True, int(rng.integers(1 << 30)))
    src, Wm, kernel, stride, pad, dil, pv, bits, bias, mult, shift, zp = _case(case)
    plan = KC.plan_conv(K.LayerMatrix(Wm, bits), bits, kernel, stride, pad, dil, pv, src.shape[1], bias, mult, shift, zp, 0, 255)
    assert plan.dw is not None
    cols, _ = _im2col(src.astype(np.int64), kernel, stride, pad, dil, pv)
    ref = _requant_ref(cols @ Wm, bias, mult, shift, zp, 0, 255)
    got = KC.run_conv(src, plan, np.uint8)
    np.testing.assert_array_equal(got.transpose(0, 2, 3, 1).reshape(-1, Wm.shape[1]), ref)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 13), st.integers(1, 41), st.tuples(*[st.integers(0, 3)] * 4),
       st.sampled_from([np.uint8, np.int8]), st.integers(0, 2**31 - 1))
def test_stride2_split_by_words_equals_the_strided_copies(B, C, H, W, pad, dtype, seed):
    """``jit.split_stride2`` (rows read 8 bytes at a time, their tails byte by byte) puts every
    element where NumPy's strided copies do, for any pads, row widths and byte types, and writes
    nothing else: the pad value stays wherever no element lands."""
    pt, pl, pb, pr = pad
    rng = np.random.default_rng(seed)
    src = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max + 1, (B, C, H, W)).astype(dtype)
    Hq, Wq = -(-(H + pt + pb) // 2), -(-(W + pl + pr) // 2)
    ref = np.full((B, C, 2, 2, Hq, Wq), 5, dtype=dtype)
    KC._split_phases(src, ref, pt, pl)
    got = np.full((B, C, 4, Hq, Wq), 5, dtype=dtype)
    JIT.split_stride2(src, got, Hq, Wq, pt, pl)
    np.testing.assert_array_equal(got.reshape(ref.shape), ref)
    padded = np.full((B, C, 2 * Hq, 2 * Wq), 5, dtype=dtype)  # and both are the padded input, phase by phase
    padded[:, :, pt : pt + H, pl : pl + W] = src
    np.testing.assert_array_equal(ref, padded.reshape(B, C, Hq, 2, Wq, 2).transpose(0, 1, 3, 5, 2, 4))


def test_deferred_counts_equal_inline_counts_and_raise_their_errors(monkeypatch):
    """Fused conv layers' dac_ones counted on the counting thread (every layer deferred here)
    give the report counted inline; an error in a deferred count reaches the caller."""
    from runtime import executor as E  # noqa: PLC0415

    program, x = _example_program()
    monkeypatch.setattr(K, "WORKERS", 1)  # inline
    out_i, rep_i = E.run_program(program, x)
    monkeypatch.setattr(K, "WORKERS", 2)
    monkeypatch.setattr(E, "DEFER_MIN_ELEMS", 0)
    deferred = []
    orig = E.Machine._defer
    monkeypatch.setattr(E.Machine, "_defer", lambda self, count: deferred.append(1) or orig(self, count))
    out_d, rep_d = E.run_program(program, x)
    assert len(deferred) == 4  # the example's four conv layers
    for k in out_i:
        np.testing.assert_array_equal(out_i[k], out_d[k])
    assert rep_i["counters"] == rep_d["counters"] and rep_i["layers"] == rep_d["layers"]

    def broken(*a):
        raise RuntimeError("count failed")

    monkeypatch.setattr(KC, "ones_per_column", broken)
    with pytest.raises(RuntimeError, match="count failed"):
        E.run_program(program, x)


def test_checked_requantization_of_a_large_block_on_two_threads(monkeypatch):
    """A block whose sums pass int64 takes the arbitrary-precision requantization, itself split in
    blocks: a parallel call inside a parallel call (it runs in sequence there, and is exact)."""
    import threading  # noqa: PLC0415

    monkeypatch.setattr(K, "WORKERS", 2)
    monkeypatch.setattr(K, "PARALLEL_MIN_WORK", 0)
    beyond = []
    monkeypatch.setattr(KC, "requant", lambda *a, **k: beyond.append(1) or K.requant(*a, **k))
    case = (2, 4, 4, 130, 128, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 8, 2**22, True, False, 11)
    src, Wm, kernel, stride, pad, dil, pv, bits, bias, mult, shift, zp = _case(case)
    plan = KC.plan_conv(K.LayerMatrix(Wm, bits), bits, kernel, stride, pad, dil, pv, src.shape[1], bias, mult, shift, zp, 0, 255)
    assert plan.check is not None
    got: list = []
    t = threading.Thread(target=lambda: got.append(KC.run_conv(src, plan, np.uint8)), daemon=True)
    t.start()
    t.join(timeout=120)
    assert got, "the layer did not finish"
    assert beyond
    cols, _ = _im2col(src.astype(np.int64), kernel, stride, pad, dil, pv)
    np.testing.assert_array_equal(got[0].transpose(0, 2, 3, 1).reshape(-1, Wm.shape[1]), _requant_ref(cols @ Wm, bias, mult, shift, zp, 0, 255))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 70), st.sampled_from([0, 0xFF, 0x00FF00FF00FF00FF, 0xFFFFFFFFFFFFFFFF]),
       st.integers(0, 2**31 - 1))
def test_row_popcounts_equal_numpy_bitwise_count(R, L, mask, seed):
    """Rows of any byte length (starting anywhere in a word, ending anywhere in the last), and
    rows of whole words with a byte mask, against NumPy's per-byte popcounts."""
    src = np.random.default_rng(seed).integers(0, 256, R * L).astype(np.uint8)
    rows = src.reshape(R, L)
    if L % 8 == 0:
        kept = rows & np.uint8(0)
        for b in range(8):  # byte b of every word is kept where mask's byte b is set
            kept[:, b::8] = rows[:, b::8] & np.uint8((mask >> (8 * b)) & 0xFF)
        np.testing.assert_array_equal(KC.row_popcounts(src, L, np.uint64(mask)), np.bitwise_count(kept).sum(axis=1))
    np.testing.assert_array_equal(KC.row_popcounts(src, L), np.bitwise_count(rows).sum(axis=1))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 62), st.one_of(st.integers(-300, 300), st.integers(-(1 << 52), 1 << 52)), st.integers(-(1 << 40), 1 << 40),
       st.integers(1, 53),
       st.sampled_from([(0, 0, 255), (128, 0, 255), (0, -128, 127), (-5, -128, 127), (0, -32768, 32767), (7, 3, 9),
                        (3, -(1 << 50), 1 << 50), (-1, -(1 << 51), 1 << 51)]),  # (quotients near 1.5·2^52's limit of 2^51)
       st.integers(0, 2**31 - 1))
@example(shift=1, mult=1, bias=0, bits=20, clamp=(0, 0, 255), seed=0)  # every odd sum a tie at half
@example(shift=44, mult=(1 << 44) + 1, bias=0, bits=52, clamp=(128, 0, 255), seed=1)  # the largest shift proved for u8
@example(shift=46, mult=9, bias=0, bits=52, clamp=(0, 0, 255), seed=2)  # refused: a laxer proof would round products onto ties
def test_binary64_requantization_equals_the_integer_one_where_proved(shift, mult, bias, bits, clamp, seed):
    """Where ``binary64_scales`` proves it, the binary64 line (rint of the product) gives the exact
    result (Python integers; and the integer line's, where its product fits): ties at half,
    products past 2^53 (and past 2^63), and clamping."""
    zp, lo, hi = clamp
    bmax = 1 << bits  # |sum + bias| <= bmax
    lim = bmax - abs(bias)
    m, s = np.array([mult], dtype=np.int64), np.array([shift], dtype=np.int64)
    fscale = KC.binary64_scales(bmax, m, s, zp, lo, hi)
    if lim < 0 or not fscale.size:
        return
    rng = np.random.default_rng(seed)
    acc = rng.integers(-lim, lim + 1, 4000)
    if mult % 2 and shift:  # sums whose product is a tie or next to one: (acc + bias)·mult ≡ 2^(shift − 1) + d mod 2^shift
        inv = pow(mult, -1, 1 << shift)
        near = [((((1 << (shift - 1)) + d) * inv) % (1 << shift)) - bias + (j << shift) for d in (0, 1, -1, 2, -2)
                for j in range(-300, 300)]
        acc[: len(near)] = np.clip(near, -lim, lim)
    b = np.array([bias], dtype=np.int64)

    def exact(v: int) -> int:  # rne((v + bias)·mult / 2^shift) + zp, clamped, in Python integers
        t = (v + bias) * mult
        q, r = t >> shift, t & ((1 << shift) - 1)
        if shift and (r > 1 << (shift - 1) or (r == 1 << (shift - 1) and q & 1)):
            q += 1
        return min(max(q + zp, lo), hi)

    got = np.empty(acc.size, dtype=np.int64)
    n0 = np.uint64(0)
    JIT._requant_run_f64(acc, n0, got, n0, np.uint64(acc.size), float(bias), float(fscale[0]), *JIT._f64_bounds(zp, lo, hi))
    np.testing.assert_array_equal(got, [exact(int(v)) for v in acc])
    forms = [fscale]
    if (lim + abs(bias)) * abs(mult) < (1 << 63):  # and the integer line's, where its product fits int64
        want = np.empty(acc.size, dtype=np.int64)
        JIT._requant_run_int(acc, n0, want, n0, np.uint64(acc.size), bias, mult, shift, zp, lo, hi)
        np.testing.assert_array_equal(got, want)
        forms.append(np.empty(0))
    for f in forms:  # requant_block, in lines of one sum (a fully connected layer's) and in 4 channels' lines of 1,000,
        for shape in ((acc.size, 1, 1, 1), (4, 1, 1, acc.size // 4)):  # into image 1, channels 1.., row 1 of its output
            n = shape[0]
            block = np.full((2, n + 1, 2, shape[3]), -7, dtype=np.int64)
            JIT.requant_block(acc.reshape(shape), *(np.repeat(v, n) for v in (b, m, s, f)), zp, lo, hi, block, 1, 1, 1)
            np.testing.assert_array_equal(block[1, 1:, 1].reshape(-1), got)
            assert np.count_nonzero(block == -7) == block.size - acc.size or -7 in got


def test_one_image_runs_leave_the_products_to_blas_only_where_every_layer_is_fused(monkeypatch):
    """``kernels.serial`` (BLAS's threads split the products) for runs of one image at a time
    through a program whose crossbar layers are all fused; not for larger chunks, nor where some
    layer runs bit-level (its products split into units over the worker threads)."""
    from pathlib import Path  # noqa: PLC0415

    from pimc.driver import QuantOptions, compile_model  # noqa: PLC0415
    from pimc.hw import load_config  # noqa: PLC0415
    from runtime.executor import run_program  # noqa: PLC0415

    entered: list = []
    real = K.serial
    monkeypatch.setattr(K, "serial", lambda: entered.append(1) or real())
    program, x = _example_program()
    feed = {k: v[:2] for k, v in x.items()}
    out2, rep2 = run_program(program, feed)
    assert entered == []
    out1, rep1 = run_program(program, feed, batch_size=1)
    assert entered == [1]
    for k in out2:
        np.testing.assert_array_equal(out1[k], out2[k])
    assert rep1["counters"] == rep2["counters"]
    run_program(program, {k: v[:1] for k, v in x.items()})
    assert entered == [1, 1]
    cfg = load_config("isaac8")
    cfg["adc"] = {**cfg["adc"], "bits": 6}
    ex = Path(__file__).resolve().parent.parent / "examples" / "mnist_cnn"
    p6 = compile_model(ex / "model.onnx", cfg, QuantOptions(calibration=str(ex / "calib.npy"))).program
    run_program(p6, {p6.inputs[0].name: next(iter(x.values()))[:1]})
    assert entered == [1, 1]

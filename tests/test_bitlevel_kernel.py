"""The grouped bit-level mvm kernel (``runtime.kernels.mvm_group``) against a direct transcription
of spec/isa.md §3.2: per bit-step the digits, the column sums, the ADC (saturate / drop-lsb) and
the shift-and-add, plus ``dac_ones``. Covers the kernel's three products (the byte-packed one,
used while one read's column sum stays below 2^8, the general packed-field one, and the sparse
one of ``runtime.kernels_sparse``), mixed ADC resolutions and modes in one group, and inputs for
which some reads saturate and others do not."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from isa_refs import ref_mvm

from runtime import kernels as K
from runtime import kernels_sparse as KS


def _reference(src: np.ndarray, images: list[np.ndarray], table: np.ndarray, adcs: list[tuple[int, str]],
               cell_bits: int, bits: int, dac_bits: int) -> tuple[np.ndarray, int]:
    """Column results [P, ΣC] and dac_ones of the group's crossbars, each straight from isa.md §3.2."""
    refs = [ref_mvm(src, img, table, bits, dac_bits, cell_bits, A, mode, "lsb") for img, (A, mode) in zip(images, adcs)]
    return np.concatenate([r[0] for r in refs], axis=1), refs[0][1]  # dac_ones: the same for all (shared row table)


def _group(images, table, adcs, cell_bits):
    xbs = []
    for i, (img, (A, mode)) in enumerate(zip(images, adcs)):
        decl = SimpleNamespace(id=i, rows=img.shape[0], cols=img.shape[1], image=f"img{i}", row_table=f"t{i}",
                               adc_bits=A, adc_mode=mode, lossless=0)
        xbs.append(K.prepare_xbar(decl, img, table, cell_bits))
    return K.XbarGroup(xbs)


@pytest.fixture
def sparse_always(monkeypatch):
    """Every group the sparse product applies to takes it (its cost estimate: nothing)."""
    monkeypatch.setattr(KS, "SPARSE_NS", (0.0, 0.0, 0.0))


def _check(src, images, table, adcs, cell_bits, bits, dac_bits, workers=None):
    g = _group(images, table, adcs, cell_bits)
    want, want_ones = _reference(src.astype(np.int64), images, table, adcs, cell_bits, bits, dac_bits)
    old = K.WORKERS
    if workers is not None:
        K.WORKERS = workers
    try:
        got, ones = K.mvm_group(src, g, bits, dac_bits)
        out = np.full(want.shape, -7, dtype=np.int64)  # written in place, stale contents overwritten
        got2, ones2 = K.mvm_group(src, g, bits, dac_bits, out=out)
    finally:
        K.WORKERS = old
    assert got2 is out
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(out, want)
    assert ones == want_ones == ones2
    return g


@st.composite
def cases(draw):
    cell_bits = draw(st.integers(1, 3))
    bits = draw(st.integers(1, 8))
    dac_bits = draw(st.integers(1, 3))
    K_in = draw(st.integers(1, 24))
    rows = draw(st.integers(1, 48))
    P = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    table = rng.integers(-1, K_in, size=rows)
    if draw(st.booleans()):
        table[rng.random(rows) < 0.3] = -1
    nx = draw(st.integers(1, 4))
    # sparse or dense cells: small images keep one read's column sum below 2^8 (the byte path)
    density = draw(st.sampled_from([0.05, 0.3, 1.0]))
    images = []
    for _ in range(nx):
        cols = draw(st.integers(1, 9))
        img = rng.integers(0, 1 << cell_bits, size=(rows, cols))
        img[rng.random(img.shape) > density] = 0
        images.append(img)
    adcs = [(draw(st.integers(1, 9)), draw(st.sampled_from(["saturate", "drop-lsb"]))) for _ in range(nx)]
    # inputs: uniform codes, or mostly small codes (ReLU-like: high digits rare, so some reads of a
    # group saturate and others cannot)
    hi = 1 << bits
    if draw(st.booleans()):
        src = rng.integers(0, hi, size=(P, K_in))
    else:
        src = np.minimum(rng.geometric(0.3, size=(P, K_in)) - 1, hi - 1)
        src[rng.random(src.shape) < 0.4] = 0
    dtype = draw(st.sampled_from([np.uint8, np.int64, np.int32]))
    if dtype is not np.uint8 and draw(st.booleans()):  # signed codes: the digits of their two's complement
        src = src - (hi >> 1)
    return src.astype(dtype), images, table, adcs, cell_bits, bits, dac_bits


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.sampled_from([1, 2]))
def test_mvm_group_matches_spec(case, workers):
    _check(*case, workers=workers)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cases(), st.sampled_from([1, 2]), st.sampled_from([8, 4096]))
def test_sparse_product_matches_spec(sparse_always, case, workers, block):
    """The sparse product wherever it applies (8- and 16-bit lanes, 1- to 3-bit digits, one or
    several words, every ADC), in blocks of 8 iterations or one, on one or two threads."""
    old = KS.SPREAD_BLOCK_WORDS, K.SPARSE_SPLIT_NS
    KS.SPREAD_BLOCK_WORDS, K.SPARSE_SPLIT_NS = block, 0
    try:
        g = _check(*case, workers=workers)
    finally:
        KS.SPREAD_BLOCK_WORDS, K.SPARSE_SPLIT_NS = old
    src, _images, _table, _adcs, _cb, bits, dac_bits = case
    T = -(-bits // dac_bits)
    applies = g.rows_used and T * dac_bits <= 8 and ((1 << dac_bits) - 1) * g.max_col_sum < (1 << 16)
    assert (g.sparse_plan(bits, dac_bits) is not None) == bool(applies)


@pytest.mark.parametrize("dac_bits", [1, 2])
@pytest.mark.parametrize("bits", [8, 5])
def test_sparse_product_in_16_bit_lanes(sparse_always, dac_bits, bits):
    """Column sums of one read past 2^8 (3-bit cells on a background of 7): 16-bit lanes, two
    words per iteration for 1-bit digits of 8-bit inputs; both ADC modes, some reads saturating."""
    rng = np.random.default_rng(6)
    rows, K_in = 100, 150
    table = rng.integers(-1, K_in, size=rows)
    images = []
    for c in (9, 5, 3):
        img = np.full((rows, c), 7, dtype=np.int64)
        img[rng.random(img.shape) < 0.1] = rng.integers(0, 7)
        images.append(img)
    adcs = [(9, "saturate"), (7, "drop-lsb"), (12, "saturate")]
    src = _relu_like(rng, 90, K_in, bits)
    g = _check(src, images, table, adcs, 3, bits, dac_bits)
    plan = g.sparse_plan(bits, dac_bits)
    assert plan is not None and plan.lane_bits == 16
    assert plan.spt.shape[1] == -(-(-(-bits // dac_bits)) // 4)


def _depthwise_group(rng, channels=14, taps=9, slices=4):
    """A depthwise layer's crossbar as the compiler maps it under the offset encoding: channel c's
    taps on rows c·taps.., its slices' columns; the top slice holds the offset's digit (2) on every
    other row, the others 0; plus a unit column."""
    rows = channels * taps
    img = np.zeros((rows, channels * slices + 1), dtype=np.int64)
    img[:, slices - 1 :: slices][:, :channels] = 2
    for c in range(channels):
        img[c * taps : (c + 1) * taps, c * slices : (c + 1) * slices] = rng.integers(0, 4, size=(taps, slices))
    img[:, -1] = 1
    return img


@pytest.mark.parametrize("workers", [1, 2])
def test_sparse_product_on_a_depthwise_crossbar(workers):
    """The sparse product is chosen by its cost model for a depthwise crossbar (6-bit saturating
    ADC, so reads saturate), equals the spec (its columns that cannot saturate as exact products,
    the others in lanes), and takes a fused shiftadd exactly as the stored column results would
    be added."""
    rng = np.random.default_rng(5)
    img = _depthwise_group(rng)
    rows, K_in = img.shape[0], 300
    table = rng.permutation(K_in)[:rows]
    src = _relu_like(rng, 700, K_in)
    src[:40] = 255  # every row's every digit: the top slice saturates
    g = _check(src, [img], table, [(6, "saturate")], 2, 8, 1, workers=workers)
    plan = g.sparse_plan(8, 1)
    assert plan is not None
    # the lower slices (at most 9·3 per read) cannot reach 63: their exact products; the top slice's lanes
    np.testing.assert_array_equal(plan.exact, (img.sum(axis=0) <= 63).astype(np.uint8))
    assert 0 < plan.exact.sum() < img.shape[1]
    res, _ = K.mvm_group(src, g, 8, 1)
    assert (res[:40, 3] == 63 * 255).all()  # saturated at every step
    C = img.shape[1]
    tgt = np.where(np.arange(C) < C - 1, np.arange(C) // 4 + 3, -2).astype(np.int64)  # four slices per output; the unit column kept
    cf = (1 << (2 * (np.arange(C) % 4))).astype(np.int64) * np.where(np.arange(C) % 5 == 0, -1, 1)
    sums = np.full((src.shape[0], 20), 7, dtype=np.int64)
    kept = np.zeros((src.shape[0], 1), dtype=np.int64)
    old = K.WORKERS
    K.WORKERS = workers
    try:
        K.mvm_group(src, g, 8, 1, out=kept, shiftadd=(tgt, cf, sums))
    finally:
        K.WORKERS = old
    want = np.full_like(sums, 7)
    for c in range(C - 1):
        want[:, tgt[c]] += cf[c] * res[:, c]
    np.testing.assert_array_equal(sums, want)
    np.testing.assert_array_equal(kept[:, 0], res[:, -1])


def _relu_like(rng, P, K_in, bits=8):
    src = np.minimum(rng.geometric(0.05, size=(P, K_in)) - 1, (1 << bits) - 1)
    src[rng.random(src.shape) < 0.5] = 0
    return src.astype(np.uint8)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("block", [200, 2000])
def test_byte_path_isaac8_adc6_like(workers, block):
    """The benchmark machine's shape: 128 rows, 2-bit cells, 8-bit inputs, 1-bit DAC, 6-bit saturating
    ADC; many blocks of iterations and of words (block sizes forced small), some reads saturating."""
    rng = np.random.default_rng(1)
    rows, K_in = 128, 300
    table = rng.permutation(K_in)[:rows]
    images = [rng.integers(0, 2, size=(rows, 40)) + rng.integers(0, 2, size=(rows, 40)) for _ in range(3)]
    images[1][:, 5] = 1  # a unit column
    adcs = [(6, "saturate")] * 3
    src = _relu_like(rng, 333, K_in)
    g = _group(images, table, adcs, 2)
    assert g.byte_plan(8, 1) is not None
    old = K.BYTE_BLOCK_WORDS, K.BYTE_SPLIT_WORDS, K.PARALLEL_MIN_WORK
    K.BYTE_BLOCK_WORDS, K.BYTE_SPLIT_WORDS, K.PARALLEL_MIN_WORK = block, 1, 0  # (many units, on the threads)
    try:
        _check(src, images, table, adcs, 2, 8, 1, workers=workers)
    finally:
        K.BYTE_BLOCK_WORDS, K.BYTE_SPLIT_WORDS, K.PARALLEL_MIN_WORK = old
    _check(src, images, table, adcs, 2, 8, 1, workers=workers)


def test_byte_path_mixed_modes_and_resolutions():
    rng = np.random.default_rng(2)
    rows, K_in = 60, 80
    table = rng.integers(-1, K_in, size=rows)
    images = [rng.integers(0, 4, size=(rows, c)) for c in (7, 1, 12, 5)]
    adcs = [(6, "saturate"), (3, "drop-lsb"), (4, "saturate"), (9, "drop-lsb")]
    src = _relu_like(rng, 50, K_in)
    g = _check(src, images, table, adcs, 2, 8, 1)
    assert g.byte_plan(8, 1) is not None


def test_general_path_when_a_sum_reaches_a_byte():
    """Column sums of one read ≥ 2^8 (wide DAC, 3-bit cells): the packed-field product."""
    rng = np.random.default_rng(3)
    rows, K_in = 100, 120
    table = rng.integers(0, K_in, size=rows)
    images = [rng.integers(0, 8, size=(rows, c)) for c in (9, 4)]
    adcs = [(6, "saturate"), (7, "drop-lsb")]
    src = _relu_like(rng, 70, K_in)
    g = _check(src, images, table, adcs, 3, 8, 2)
    assert g.byte_plan(8, 2) is None


def test_no_used_rows_and_no_iterations():
    table = np.full(5, -1)
    images = [np.ones((5, 3), dtype=np.int64)]
    _check(np.zeros((4, 2), dtype=np.uint8), images, table, [(6, "saturate")], 1, 8, 1)
    _check(np.zeros((0, 2), dtype=np.uint8), images, np.array([0, 1, -1, 0, 1]), [(6, "saturate")], 1, 8, 1)


@pytest.mark.parametrize("dac_bits", [1, 2])
def test_consecutive_row_table_reads_a_slice(dac_bits):
    """A row block reading consecutive input elements (the compiler's usual layout) takes them as a
    view of the source; both products."""
    rng = np.random.default_rng(4)
    rows, K_in = 40, 100
    table = np.arange(30, 30 + rows)
    images = [rng.integers(0, 4, size=(rows, c)) for c in (8, 3)]
    adcs = [(5, "saturate"), (4, "drop-lsb")]
    src = _relu_like(rng, 45, K_in)
    g = _check(src, images, table, adcs, 2, 8, dac_bits)
    assert isinstance(g.row_sel, slice)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 5), st.integers(0, 6), st.integers(0, 4), st.integers(0, 4), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_byte_adc_takes_columns_by_runs_and_one_by_one(runs, D, lead, part, tail, words_split, seed):
    """The float32 ADC kernel's shift-and-add and its taking of column results
    (``jit.adc_shiftadd_bytes_uniform``) against Python integers: a shiftadd's runs of D columns
    per sum, after a short first run or not, then a partial run, then columns stored, dropped or
    added elsewhere; also a unit of some of the words only."""
    from runtime import jit as JIT  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    t0 = int(rng.integers(0, 5))
    tgt = [t0 + c // D for c in range(lead % D if lead else 0, runs * D)] if D > 1 else [t0 + c for c in range(runs)]
    tgt += [t0 + runs] * (part % D)
    tgt += [int(rng.choice([-1, -2 - k, int(rng.integers(0, 3))])) for k in range(tail)]
    tgt = np.array(tgt, dtype=np.int64)
    C = tgt.size
    N, n_out = int(max(tgt.max(), 0)) + 1, max(2, tail + 2)
    cf = rng.integers(-64, 65, C).astype(np.int64)
    T, v, thr, P = 4, 1, 63, 3
    Wp = -(-C // 3)
    w0, Wq = (1, max(1, Wp - 2)) if words_split and Wp > 2 else (0, Wp)
    S = (rng.integers(0, 256, (T, P, Wq, 3)) * np.array([1, 256, 65536])).sum(axis=3).astype(np.float32)
    out, sums = np.zeros((P, n_out), dtype=np.int64), rng.integers(-9, 9, (P, N)).astype(np.int64)
    want_out, want_sums = out.copy(), sums.copy()
    JIT.adc_shiftadd_bytes_uniform(S, thr, v, Wp, w0, tgt, cf, out, sums)
    for i in range(P):
        for j in range(3):
            for w in range(Wq):
                c = j * Wp + w0 + w
                if c >= C:
                    continue
                r = 0
                for t in range(T):
                    r = r * 2 + min((int(S[t, i, w]) >> (8 * j)) & 255, thr)
                if tgt[c] >= 0:
                    want_sums[i, tgt[c]] += int(cf[c]) * r
                elif tgt[c] <= -2:
                    want_out[i, -2 - tgt[c]] = r
    np.testing.assert_array_equal(sums, want_sums)
    np.testing.assert_array_equal(out, want_out)

"""The simulator's speed paths against plain references written from spec/isa.md.

- ``kernels.mvm_group`` (crossbars sharing a row table, several bit-steps packed per float
  product, per-crossbar ADC) against §3.2 computed one step at a time with int64 arithmetic;
- ``kernels.ShiftaddPlan`` (the prepared gather-and-sum column map) against §3.3 column by column;
- ``kernels.LayerMatrix.apply`` (K-chunked exact float32 SGEMM) against an exact integer product;
- whole runs: a cached Machine gives the same outputs and counters on a second run, chunks
  replayed from a recorded one (``executor.Replay``) give what the interpreter gives, and a
  bit-level layer's groups shared among threads give what one thread gives;
- a global average pool (summed per map) against Python integers.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from isa_refs import ref_im2col, ref_mvm

from runtime import kernels as K

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def groups(draw):
    bits = draw(st.integers(1, 9))
    dac = draw(st.integers(1, 4))
    cell_bits = draw(st.integers(1, 4))
    R = draw(st.integers(1, 40))
    Kin = draw(st.integers(1, 50))
    P = draw(st.integers(1, 30))
    nx = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    table = rng.integers(-1, Kin, R)
    if draw(st.booleans()):
        table[:] = np.arange(R) % Kin  # every row used
    src = rng.integers(0, 1 << bits, (P, Kin)).astype(np.uint8 if bits <= 8 else np.uint16)
    if draw(st.booleans()):
        src[rng.random(src.shape) < 0.5] = 0  # sparse, as after a ReLU
    xbs, images, adcs = [], [], []
    for i in range(nx):
        C = draw(st.integers(1, 12))
        image = rng.integers(0, 1 << cell_bits, (R, C))
        if draw(st.booleans()):
            image[:] = (1 << cell_bits) - 1  # full cells: the largest column sums
        adc_bits = draw(st.integers(1, 14))
        mode = draw(st.sampled_from(["saturate", "drop-lsb"]))
        decl = SimpleNamespace(id=i, rows=R, cols=C, adc_bits=adc_bits, adc_mode=mode, lossless=0, image=f"img{i}", row_table="t")
        xbs.append(K.prepare_xbar(decl, image.astype(np.uint8), table.astype(np.int32), cell_bits))
        images.append(image)
        adcs.append((adc_bits, mode))
    order = draw(st.sampled_from(["lsb", "msb"]))
    return src, table, bits, dac, cell_bits, xbs, images, adcs, order


@SETTINGS
@given(groups())
def test_mvm_group_equals_stepwise_reference(case):
    src, table, bits, dac, cell_bits, xbs, images, adcs, order = case
    g = K.XbarGroup(xbs)
    got, ones = K.mvm_group(src, g, bits, dac)
    refs = [ref_mvm(src, im, table, bits, dac, cell_bits, a, m, order) for im, (a, m) in zip(images, adcs)]
    want = np.concatenate([r[0] for r in refs], axis=1)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    assert all(ones == r[1] for r in refs)
    # and the single-crossbar kernel agrees (bit-level and, when lossless, fast)
    for xb, r in zip(xbs, refs):
        one, ev = K.mvm(src, xb, bits, dac, order, fast=False)
        np.testing.assert_array_equal(one, r[0])
        assert ev["dac_ones"] == r[1]
        if xb.provably_lossless(dac):
            fast, evf = K.mvm(src, xb, bits, dac, order, fast=True)
            np.testing.assert_array_equal(fast, r[0])
            assert evf == ev


@SETTINGS
@given(groups(), st.integers(0, 2**31 - 1))
def test_mvm_group_writes_in_place(case, seed):
    src, table, bits, dac, cell_bits, xbs, images, adcs, order = case
    g = K.XbarGroup(xbs)
    want, _ = K.mvm_group(src, g, bits, dac)
    big = np.random.default_rng(seed).integers(-5, 5, (src.shape[0], int(g.offsets[-1]) + 7))
    view = big[:, 3 : 3 + int(g.offsets[-1])]
    K.mvm_group(src, g, bits, dac, out=view)
    np.testing.assert_array_equal(big[:, 3 : 3 + int(g.offsets[-1])], want)


def test_mvm_group_many_rows_uses_wide_fields():
    """Sums beyond 2^12 (a field wider than 12 bits): one step per float32 product or float64 packs."""
    rng = np.random.default_rng(3)
    R, C, cell_bits = 512, 5, 4
    table = np.arange(R)
    image = np.full((R, C), 15)
    src = rng.integers(0, 256, (7, R)).astype(np.uint8)
    src[0] = 255
    for dac in (1, 2, 4):
        for adc_bits, mode in ((20, "saturate"), (9, "saturate"), (9, "drop-lsb")):
            decl = SimpleNamespace(id=0, rows=R, cols=C, adc_bits=adc_bits, adc_mode=mode, lossless=0, image="i", row_table="t")
            xb = K.prepare_xbar(decl, image.astype(np.uint8), table.astype(np.int32), cell_bits)
            got, ones = K.mvm_group(src, K.XbarGroup([xb, xb]), 8, dac)
            want, wones = ref_mvm(src, image, table, 8, dac, cell_bits, adc_bits, mode, "lsb")
            np.testing.assert_array_equal(got, np.concatenate([want, want], axis=1))
            assert ones == wones


def ref_shiftadd(src: np.ndarray, colmap: np.ndarray, n_out: int) -> np.ndarray:
    """spec/isa.md §3.3, column by column, Python integers."""
    P = src.shape[0]
    dst = [[0] * n_out for _ in range(P)]
    for c, (out, shift, sign, flip, unit) in enumerate(colmap.tolist()):
        if out == -2:
            continue
        for p in range(P):
            v = int(src[p, c]) if flip == 0 else flip * int(src[p, unit]) - int(src[p, c])
            add = sign * (1 << shift) * v
            if out >= 0:
                dst[p][out] += add
            else:
                for o in range(n_out):
                    dst[p][o] += add
    return np.array(dst, dtype=np.int64).reshape(P, n_out)


@SETTINGS
@given(st.integers(1, 8), st.integers(1, 30), st.integers(1, 6), st.integers(0, 2**31 - 1), st.booleans())
def test_shiftadd_plan_equals_columnwise_reference(n_out, ncols, P, seed, init):
    rng = np.random.default_rng(seed)
    out = rng.integers(-2, n_out, ncols)
    shift = rng.integers(0, 12, ncols)
    sign = rng.choice([-1, 1], ncols)
    flipped = rng.random(ncols) < 0.4
    flip = np.where(flipped, rng.integers(1, 16, ncols), 0)
    unit = np.where(flipped, rng.integers(0, ncols, ncols), 0)
    colmap = np.stack([out, shift, sign, flip, unit], axis=1).astype(np.int64)
    src = rng.integers(0, 1 << 14, (P, ncols)).astype(np.int64)
    plan = K.ShiftaddPlan(colmap, n_out, ncols)
    assert plan.exact_for(int(src.max()))
    dst = rng.integers(-100, 100, (P, n_out)).astype(np.int64) if init else None
    want = ref_shiftadd(src, colmap, n_out) + (dst if dst is not None else 0)
    got = plan.apply(src, None if dst is None else dst.copy())
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(K.shiftadd(src, colmap, n_out, None if dst is None else dst.copy()), want)
    plan.E_terms = None  # the unit terms as one product instead of term by term
    np.testing.assert_array_equal(plan.apply(src, None if dst is None else dst.copy()), want)
    np.testing.assert_array_equal(plan.apply(src, None if dst is None else dst.copy(), vmax=int(src.max())), want)



@SETTINGS
@given(st.integers(1, 8), st.integers(1, 4), st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**31 - 1), st.booleans())
def test_shiftadd_plan_on_the_compilers_column_layout(n_out, D, blocks, P, seed, init):
    """Row blocks of N·D columns (output n's D slices side by side) then a unit column, flips
    pointing at their block's unit column: the layout xbar-bit-slice emits, summed from contiguous
    views (ShiftaddPlan.runs) rather than gathered."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(blocks):
        u = b * (n_out * D + 1) + n_out * D  # this block's unit column
        for n in range(n_out):
            for d in range(D):
                f = int(rng.integers(1, 8)) if rng.random() < 0.5 else 0
                rows.append([n, 2 * d, 1, f, u if f else 0])
        rows.append([-1, int(rng.integers(0, 8)), -1, 0, 0])
    colmap = np.array(rows, dtype=np.int64)
    ncols = colmap.shape[0]
    src = rng.integers(0, 1 << 14, (P, ncols)).astype(np.int64)
    plan = K.ShiftaddPlan(colmap, n_out, ncols)
    assert plan.runs is not None and len(plan.runs) == blocks
    dst = rng.integers(-100, 100, (P, n_out)).astype(np.int64) if init else None
    want = ref_shiftadd(src, colmap, n_out) + (dst if dst is not None else 0)
    np.testing.assert_array_equal(plan.apply(src, None if dst is None else dst.copy()), want)

@SETTINGS
@given(st.integers(1, 12), st.integers(1, 700), st.integers(1, 9), st.integers(1, 20), st.integers(0, 2**31 - 1),
       st.sampled_from([0.0, 0.9, 0.99]))
def test_layer_matrix_product_is_exact(bits, Kin, N, P, seed, zeros):
    rng = np.random.default_rng(seed)
    wmax = int(rng.choice([3, 127, 255, 4095, 1 << 20]))
    W = rng.integers(-wmax, wmax + 1, (Kin, N)).astype(np.int64)
    W[rng.random(W.shape) < zeros] = 0  # mostly-zero matrices take the gather-and-sum path
    x = rng.integers(0, 1 << bits, (P, Kin)).astype(np.uint16)
    x[0] = (1 << bits) - 1
    lm = K.LayerMatrix(W, bits)
    got = lm.apply(x, bits)
    want = (x.astype(object) @ W.astype(object))
    if got is None:
        assert ((1 << bits) - 1) * int(np.abs(W).sum(axis=0).max()) >= (1 << 53)
        return
    assert got.dtype == np.int64
    assert (got.astype(object) == want).all()
    chunks = lm.plan(bits)
    if chunks is not None:  # every chunk's worst case stays below 2^24
        for k0, k1 in chunks:
            assert k1 - k0 == 1 or ((1 << bits) - 1) * int(np.abs(W[k0:k1]).sum(axis=0).max()) < (1 << 24)


# ------------------------------------------------------------------------------- whole runs


def _report_key(rep: dict) -> str:
    import json  # noqa: PLC0415

    rep = {k: v for k, v in rep.items() if k not in ("simulation_wall_s", "prepare_wall_s", "simulation_images_per_s", "fast_path")}
    return json.dumps(rep, sort_keys=True)


def test_fused_layer_events_equal_bit_level_chunked_and_repeated(tmp_path):
    """The fused layers' counters (counted per layer from prepared per-crossbar arrays and flushed to
    the mvm records after the run) equal the bit-level path's, whatever the batch chunks, and a second
    run of the same (cached) program gives the same report."""
    from pathlib import Path  # noqa: PLC0415

    from click.testing import CliRunner  # noqa: PLC0415

    from pimc.cli import main  # noqa: PLC0415
    from runtime.container import read_program  # noqa: PLC0415
    from runtime.executor import run_program  # noqa: PLC0415

    ex = Path(__file__).resolve().parent.parent / "examples" / "mnist_cnn"
    prog = tmp_path / "m.pimx"
    res = CliRunner().invoke(main, ["compile", str(ex / "model.onnx"), "--calibration", str(ex / "calib.npy"), "-o", str(prog)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    program = read_program(prog.read_bytes(), str(prog))
    x = np.load(ex / "samples.npy")[:3]
    feed = {program.inputs[0].name: x}
    out_f, rep_f = run_program(program, feed)
    assert {L["path"] for L in rep_f["layers"] if L["crossbars"]} == {"fast"}
    out_f2, rep_f2 = run_program(program, feed)  # cached Machine, prepared plans
    out_c, rep_c = run_program(program, feed, batch_size=1)  # three chunks accumulate
    out_b, rep_b = run_program(program, feed, fast_path=False)
    for out in (out_f2, out_c, out_b):
        for k in out_f:
            assert np.array_equal(out[k], out_f[k])
    assert _report_key(rep_f2) == _report_key(rep_f) == _report_key(rep_c)
    bl = [{k: v for k, v in L.items() if k != "path"} for L in rep_b["layers"]]
    assert [{k: v for k, v in L.items() if k != "path"} for L in rep_f["layers"]] == bl
    assert rep_f["run"]["counters"] == rep_b["run"]["counters"]
    assert rep_f["run"]["adc_conversions_by_bits"] == rep_b["run"]["adc_conversions_by_bits"]


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 40), st.integers(3, 40), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2),
       st.integers(1, 2), st.integers(0, 2**31))
def test_im2col_equals_reference(B, C, H, k, s, p, d, seed):
    """kernels.im2col (a channel-major copy, then blocked transposes on the worker threads), and
    the same matrix stored column by column (``k_major``)."""
    if H + 2 * p < d * (k - 1) + 1:
        return
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, (B, C, H, H + 1)).astype(np.uint8)
    args = ((k, k), (s, s), (p, p + 1, p, p), (d, d), 7)
    old = K.PARALLEL_MIN_ELEMS
    K.PARALLEL_MIN_ELEMS = 0  # (the copies split over the worker threads whatever their size)
    try:
        got = K.im2col(src, *args)
        km = K.im2col(src, *args, k_major=True)
    finally:
        K.PARALLEL_MIN_ELEMS = old
    want = ref_im2col(src, *args)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert km.T.flags.c_contiguous and km.dtype == want.dtype and np.array_equal(km, want)


@SETTINGS
@given(st.integers(1, 300), st.integers(1, 20), st.integers(0, 2**31), st.booleans(), st.sampled_from([None, np.uint8, np.int8, np.int16]))
def test_requant_with_a_proven_bound_equals_requant_without(P, N, seed, cm, out_dtype):
    """kernels.requant given a bound on |src| (float64 without int64 sums) against the scanned path
    and against spec/isa.md §3.4 in Python integers; likewise the compiled requant to NCHW."""
    rng = np.random.default_rng(seed)
    vmax = int(rng.choice([100, 1 << 20, 1 << 40]))
    src = rng.integers(-vmax, vmax + 1, (P, N)).astype(np.int64)
    bias = rng.integers(-1000, 1000, N).astype(np.int64)
    mult = rng.integers(1, 1 << 15, N).astype(np.int64)
    shift = rng.integers(0, 40, N).astype(np.int64)
    lo, hi = (0, 255) if out_dtype in (None, np.uint8) else (-128, 127) if out_dtype is np.int8 else (-30000, 30000)
    zp = int(rng.integers(lo, hi + 1))
    a = K.requant(src, bias, mult, shift, zp, lo, hi, channel_major=cm, out_dtype=out_dtype)
    b = K.requant(src, bias, mult, shift, zp, lo, hi, channel_major=cm, out_dtype=out_dtype, src_bound=vmax)
    assert a.dtype == b.dtype and np.array_equal(a, b)
    v = (src.astype(object) + bias.astype(object)) * mult.astype(object)
    want = np.empty(v.shape, dtype=object)
    for idx in np.ndindex(v.shape):
        q, r = divmod(int(v[idx]), 1 << int(shift[idx[1]]))
        half = 1 << int(shift[idx[1]]) >> 1
        if shift[idx[1]] and (r > half or (r == half and q & 1)):
            q += 1
        want[idx] = min(max(q + zp, lo), hi)
    got = b.T if cm else b
    assert (got.astype(object) == want).all()
    # the compiled requant to NCHW (executor's requant instruction, int64 where proved exact): P = B·HW
    from runtime import jit as JIT  # noqa: PLC0415

    # and in binary64, where binary64_scales proves it the same
    from runtime import kernels_conv as KC  # noqa: PLC0415

    if vmax < (1 << 40):  # (1000 + 2^40)·2^15 passes 2^63: that case takes kernels.requant
        HW = next(d for d in (7, 5, 3, 2, 1) if P % d == 0)
        fscale = KC.binary64_scales(vmax + 1000, mult, shift, zp, lo, hi)
        for f in (np.empty(0), fscale) if fscale.size else (np.empty(0),):
            nchw = np.empty((P // HW, N, HW), dtype=np.dtype(np.int64 if out_dtype is None else out_dtype))
            for bi in range(P // HW):
                JIT.requant_nchw(src, bias, mult, shift, f, zp, lo, hi, nchw, bi, 0, HW)
            assert (nchw.transpose(0, 2, 1).reshape(P, N).astype(object) == want).all()


def test_map_shares_items_between_threads_in_order_and_raises_a_failure(monkeypatch):
    """``kernels._map`` with helpers: every item once, results in the items' order, and an item's
    error raised in the caller once the helpers have stopped taking items."""
    import threading  # noqa: PLC0415

    monkeypatch.setattr(K, "WORKERS", 2)
    seen, lock = [], threading.Lock()

    def square(i):
        with lock:
            seen.append(i)
        return i * i

    assert K._map(square, list(range(200)), work=1 << 40) == [i * i for i in range(200)]
    assert sorted(seen) == list(range(200))
    assert K._map(square, [3], work=0) == [9]  # below the work threshold: in sequence

    def fail_on_7(i):
        if i == 7:
            raise ValueError("item 7")
        return i

    with pytest.raises(ValueError, match="item 7"):
        K._map(fail_on_7, list(range(50)), work=1 << 40)

    # an item's own parallel call (requant inside a conv block) runs in sequence, never waiting
    # for a helper that is busy with the outer call
    def outer(i):
        return sum(K._map(lambda j: i * j, list(range(40)), work=1 << 40))

    done: list = []
    t = threading.Thread(target=lambda: done.append(K._map(outer, list(range(30)), work=1 << 40)), daemon=True)
    t.start()
    t.join(timeout=60)
    assert done == [[i * sum(range(40)) for i in range(30)]], "nested parallel calls did not finish"


def test_serial_mode_runs_every_item_on_the_calling_thread_and_ends_with_its_block(monkeypatch):
    """``kernels.serial()`` (a one-image run through fused layers): parallel calls take no helper
    meanwhile, on the thread that entered it only, and the runtime's worker count is back after."""
    import threading  # noqa: PLC0415

    monkeypatch.setattr(K, "WORKERS", 2)
    me = threading.get_ident()
    slow = lambda i: (threading.Event().wait(0.002), threading.get_ident())[1]  # noqa: E731 - long enough for a helper to take items
    with K.serial():
        assert K._workers() == 1
        assert set(K._map(slow, list(range(40)), work=1 << 40)) == {me}
        other: list = []
        t = threading.Thread(target=lambda: other.append(K._workers()))
        t.start()
        t.join()
        assert other == [2]
    assert K._workers() == 2
    assert len(set(K._map(slow, list(range(40)), work=1 << 40))) == 2


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([np.uint8, np.int8, np.int16, np.int32]), st.sampled_from([np.uint8, np.int8, np.int32]),
    st.sampled_from([np.uint8, np.int8, np.int16]), st.integers(-(1 << 15), 1 << 15), st.integers(-(1 << 15), 1 << 15),
    st.integers(0, 40), st.integers(-300, 300), st.integers(-300, 300), st.integers(-200, 200), st.integers(0, 2**31 - 1),
)
def test_add_in_one_pass_equals_the_int64_add(ta, tb, td, ma, mb, shift, za, zb, zp, seed):
    """The residual add written straight in its buffer's type (one compiled pass) against the
    whole-array int64 add, ties included (small shifts of sums that are multiples of half)."""
    from runtime import kernels_digital as D  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    a = rng.integers(*D.type_range(np.dtype(ta)), (3, 5, 7), endpoint=True).astype(ta)
    b = rng.integers(*D.type_range(np.dtype(tb)), (3, 5, 7), endpoint=True).astype(tb)
    lo, hi = D.type_range(np.dtype(td))
    want = D.add(a, b, ma, mb, shift, za, zb, zp, lo, hi)
    got = D.add(a, b, ma, mb, shift, za, zb, zp, lo, hi, out_dtype=td)
    assert got.dtype == td and np.array_equal(got.astype(np.int64), want)


def test_replayed_chunks_equal_interpreted_ones(tmp_path):
    """A chunk replayed from the record of an earlier one of the same shapes (``executor.Replay``)
    gives the outputs and the report the interpreter gives, on generated networks compiled for
    isaac8 (conv, pools, residual adds, activations' tables, concat, fully connected) run one
    image at a time; and the records hold every kind of step they can replay."""
    import onnx  # noqa: PLC0415
    from qdq_nets import networks  # noqa: PLC0415

    import runtime.executor as E  # noqa: PLC0415
    from pimc.driver import QuantOptions, compile_model  # noqa: PLC0415
    from pimc.hw import load_config  # noqa: PLC0415

    cfg = load_config("isaac8")
    replayed, recorded = set(), [0, 0]
    replay = E.Machine._replay

    def typed_replay(self, key, rp):  # what a replay leaves (the outputs) has its buffers' declared types
        replay(self, key, rp)
        for name, arr in self.env.items():
            assert arr.dtype == E.DTYPES[self.buffers[name].dtype], name

    @settings(max_examples=25, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(networks(), st.integers(0, 2**16))
    def one(net, seed):
        model, shape = net
        rng = np.random.default_rng(seed)
        onnx.save(model, tmp_path / "m.onnx")
        np.save(tmp_path / "cal.npy", rng.standard_normal((8, *shape)).astype(np.float32))
        program = compile_model(tmp_path / "m.onnx", cfg, QuantOptions(calibration=str(tmp_path / "cal.npy"))).program
        feed = {"x": rng.standard_normal((3, *shape)).astype(np.float32)}
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(E, "REPLAY", False)
            want, rep_want = E.run_program(program, feed, batch_size=1)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(E.Machine, "_replay", typed_replay)
            got, rep = E.run_program(program, feed, batch_size=1)  # the first chunk recorded, two replayed
        again, rep_again = E.run_program(program, feed)  # three images at once: recorded
        again2, rep_again2 = E.run_program(program, feed)  # replayed
        for out in (got, again, again2):
            for k in want:
                np.testing.assert_array_equal(out[k], want[k])
        assert _report_key(rep) == _report_key(rep_want) == _report_key(rep_again) == _report_key(rep_again2)
        records = [r for r in program._runtime_machine[1].replays.values() if r is not None]
        recorded[0] += bool(records)
        recorded[1] += 1
        for r in records:
            replayed.update("conv" if kind == "conv" else what[0].__qualname__.split(".")[1] for kind, what, _ in r.steps)

    one()
    assert recorded[0] >= recorded[1] // 2, recorded
    assert {"conv", "op_maxpool", "op_avgpool", "op_add", "op_lut", "op_reshape"} <= replayed, replayed


@SETTINGS
@given(st.sampled_from([np.uint8, np.int8, np.int16, np.int32]), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9),
       st.integers(-200, 200), st.integers(1, 1 << 20), st.integers(0, 40), st.integers(0, 1), st.integers(0, 2**31 - 1))
def test_global_average_pool_equals_python_integers(dtype, B, H, W, zin, m, shift, cip, seed):
    """A pool whose window is the whole map (summed per map, not tap by tap) against exact
    Python integers: clamp(rne(m·Σ(x − zin) / (H·W·2^shift)) + zp, lo, hi)."""
    from runtime import kernels_digital as D  # noqa: PLC0415

    info = np.iinfo(dtype)
    x = np.random.default_rng(seed).integers(info.min, info.max, (B, 3, H, W), endpoint=True).astype(dtype)
    got = D.avgpool(x, [H, W], [1, 1], [0, 0, 0, 0], cip, zin, m, shift, 5, -1000, 1000, [B, 3, 1, 1])
    for (b, c), want in np.ndenumerate(got[:, :, 0, 0]):
        num, den = m * sum(int(v) - zin for v in x[b, c].ravel()), H * W << shift
        q, r = divmod(num, den)
        q += 1 if 2 * r > den or (2 * r == den and q % 2) else 0
        assert want == min(max(q + 5, -1000), 1000)


def test_global_average_pool_of_large_16_bit_maps():
    """Sums past float32's exact range (64 x 64 maps of 16-bit codes) take the float64 product."""
    from runtime import kernels_digital as D  # noqa: PLC0415

    x = np.full((1, 2, 64, 64), 32767, dtype=np.int16)
    x[0, 1] = -32768
    x[0, 0, 0, 0] = 32766  # (a sum that float32 would round: 134,213,631 > 2^24)
    got = D.avgpool(x, [64, 64], [1, 1], [0, 0, 0, 0], 1, 0, 4096, 0, 0, -(1 << 40), 1 << 40, [1, 2, 1, 1])  # (m = H·W: the sums)
    want = [32767 * 4096 - 1, -32768 * 4096]
    assert got[0, :, 0, 0].tolist() == want


def test_bit_level_groups_shared_among_threads_equal_one_thread(monkeypatch):
    """A bit-level layer's crossbar groups (its row blocks, which add into the same outputs) run
    side by side on the worker threads, each thread adding into sums of its own, and its unit
    terms by rows: the example's outputs and every counter equal a run on one thread, and a helper
    thread did run products."""
    import threading  # noqa: PLC0415

    from test_conv_fusion import _example_program  # noqa: PLC0415

    from runtime.executor import run_program  # noqa: PLC0415

    program, x = _example_program()
    monkeypatch.setattr(K, "WORKERS", 1)
    want, rw = run_program(program, x, fast_path=False)
    threads: set[int] = set()
    product = K.mvm_group
    monkeypatch.setattr(K, "mvm_group", lambda *a, **k: threads.add(threading.get_ident()) or product(*a, **k))
    monkeypatch.setattr(K, "WORKERS", 2)
    monkeypatch.setattr(K, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(K, "UNIT_TERMS_SPLIT", 0)  # (and the shiftadds' unit terms shared by rows)
    for _ in range(3):  # (a helper may wake too late to take a product in one run)
        got, rg = run_program(program, x, fast_path=False)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
        assert rg["counters"] == rw["counters"] and rg["energy_j"] == rw["energy_j"]
        assert [la["counters"] for la in rg["layers"]] == [la["counters"] for la in rw["layers"]]
    assert len(threads) == 2

"""The executor on hand-built programs: exact dense layers, fast path == bit-level path, narrow ADCs
computed by hand, input and program errors.

``dense_program`` is a small independent mapper (offset scheme with a unit column, optional
flipped columns, bit slices, row and column tiles): it lets these tests run without the compiler
and checks the runtime against plain integer arithmetic.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import hwconfig
from runtime.errors import ProgramError, RunInputError
from runtime.executor import run_program
from runtime.model import Buffer, Const, Instr, Port, Program, Xbar


def config(**over) -> dict:
    raw: dict = {}
    for key, v in over.items():
        sec, k = key.split("__")
        raw.setdefault(sec, {})[k] = v
    return hwconfig.validate(raw, "test")


def dense_program(
    W: np.ndarray,
    *,
    weight_bits: int = 8,
    act_bits: int = 8,
    cell_bits: int = 2,
    dac_bits: int = 1,
    rows: int = 128,
    cols: int = 128,
    adc_bits: int = 16,
    adc_mode: str = "saturate",
    order: str = "lsb",
    flip_cols: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    mult: np.ndarray | None = None,
    shift: np.ndarray | None = None,
    zp: int = 0,
    lossless: int | None = None,
    tiles_per_xbar: int = 1,
) -> Program:
    """y = clamp(rne((x @ W + bias)·mult / 2^shift) + zp, 0, 2^act_bits−1) for x of act_bits codes."""
    K, N = W.shape
    off = 1 << (weight_bits - 1)
    stored = (W.astype(np.int64) + off)  # offset scheme: unsigned
    S = -(-weight_bits // cell_bits)
    cmask = (1 << cell_bits) - 1
    # logical columns: (n, j) for each output and slice, then the unit column
    logical = [((stored[:, n] >> (j * cell_bits)) & cmask, (n, j * cell_bits)) for n in range(N) for j in range(S)]
    flips = np.zeros(len(logical), dtype=bool) if flip_cols is None else np.resize(flip_cols, len(logical)).astype(bool)
    # the runtime reads only the crossbar geometry and cell width from the config (not precision)
    cfg = config(crossbar__rows=rows, crossbar__cols=cols, crossbar__cell_bits=cell_bits, crossbar__dac_bits=dac_bits)
    n_ct = -(-len(logical) // (cols - 1))  # cols - 1 logical columns + a unit column per column tile
    per_ct = -(-len(logical) // n_ct)
    n_rt = -(-K // rows)
    p = Program(config=cfg)
    p.inputs.append(Port("x", "x", 1.0, 0))
    p.outputs.append(Port("y", "y", 1.0, 0))
    ctot = n_rt * n_ct * cols
    p.buffers += [Buffer("x", "u8" if act_bits <= 8 else "u16", [-1, K]), Buffer("cols", "i64", [-1, ctot]),
                  Buffer("acc", "i64", [-1, N]), Buffer("y", "u8" if act_bits <= 8 else "u16", [-1, N])]
    colmap = np.tile(np.array([-2, 0, 1, 0, 0], dtype=np.int64), (ctot, 1))
    xid = 0
    instrs = []
    for rt in range(n_rt):
        r0, r1 = rt * rows, min(K, (rt + 1) * rows)
        table = np.full(rows, -1, dtype=np.int32)
        table[: r1 - r0] = np.arange(r0, r1)
        p.consts.append(Const(f"rt{rt}", table))
        for ct in range(n_ct):
            img = np.zeros((rows, cols), dtype=np.uint8)
            base = xid * cols
            unit_c = cols - 1
            img[: r1 - r0, unit_c] = 1
            # the unit column: −off · Σx for every output, once per row tile (the unit columns of
            # the other column tiles only serve their flipped columns)
            colmap[base + unit_c] = [-1, weight_bits - 1, -1, 0, 0] if ct == 0 else [-2, 0, 1, 0, 0]
            for c, li in enumerate(range(ct * per_ct, min(len(logical), (ct + 1) * per_ct))):
                cells, (n, sh) = logical[li]
                if flips[li]:
                    img[: r1 - r0, c] = cmask - cells[r0:r1]
                    colmap[base + c] = [n, sh, 1, cmask, base + unit_c]
                else:
                    img[: r1 - r0, c] = cells[r0:r1]
                    colmap[base + c] = [n, sh, 1, 0, 0]
            p.consts.append(Const(f"img{xid}", img))
            A = adc_bits
            ll = lossless if lossless is not None else int(adc_mode == "saturate" and (1 << A) > ((1 << dac_bits) - 1) * int(img.astype(np.int64).sum(0).max()))
            p.xbars.append(Xbar(xid, f"img{xid}", rows, cols, f"rt{rt}", A, adc_mode, chip=0, tile=xid // 96, ima=xid // 8, lossless=ll))
            instrs.append(Instr("mvm", dict(xbar=xid, src="x", dst="cols", col0=base, bits=act_bits, dac_bits=dac_bits, order=order), "fc"))
            xid += 1
    p.consts += [
        Const("cm", colmap),
        Const("bias", (np.zeros(N) if bias is None else bias).astype(np.int64)),
        Const("mult", (np.ones(N) if mult is None else mult).astype(np.int64)),
        Const("shift", (np.zeros(N) if shift is None else shift).astype(np.int64)),
    ]
    instrs.append(Instr("shiftadd", dict(dst="acc", src="cols", colmap="cm", macs=K * N, init=1), "fc"))
    instrs.append(Instr("requant", dict(dst="y", src="acc", bias="bias", mult="mult", shift="shift", zp=zp, lo=0,
                                        hi=(1 << act_bits) - 1, layout="flat", out_hw=[]), "fc"))
    instrs.append(Instr("halt", {}, ""))
    p.instrs = instrs
    return p


def rne_ref(num: int, den: int) -> int:
    """Round half to even of num/den with Python integers (independent of runtime.intmath)."""
    return round(Fraction(num, den))  # Python's round of a Fraction is half-to-even


def dense_ref(x, W, bias, mult, shift, zp, act_bits):
    acc = x.astype(object) @ W.astype(object)
    out = np.empty(acc.shape, dtype=np.int64)
    for p in range(acc.shape[0]):
        for n in range(acc.shape[1]):
            v = rne_ref((int(acc[p, n]) + int(bias[n])) * int(mult[n]), 1 << int(shift[n])) + zp
            out[p, n] = min(max(v, 0), (1 << act_bits) - 1)
    return out


# ------------------------------------------------------------------------------ exactness


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    K=st.integers(1, 300),
    N=st.integers(1, 9),
    P=st.integers(1, 5),
    wb=st.sampled_from([4, 6, 8]),
    ab=st.sampled_from([4, 8]),
    cell=st.integers(1, 4),
    dac=st.integers(1, 4),
    rows=st.sampled_from([16, 64, 128]),
    cols=st.sampled_from([8, 32, 128]),
    order=st.sampled_from(["lsb", "msb"]),
    flip=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_dense_exact_and_fast_equals_bit_level(K, N, P, wb, ab, cell, dac, rows, cols, order, flip, seed):
    rng = np.random.default_rng(seed)
    qw = (1 << (wb - 1)) - 1
    W = rng.integers(-qw, qw + 1, size=(K, N))
    x = rng.integers(0, 1 << ab, size=(P, K))
    bias = rng.integers(-5000, 5000, size=N)
    mult = rng.integers(1 << 20, 1 << 21, size=N)
    shift = rng.integers(18, 30, size=N)
    zp = int(rng.integers(0, 1 << ab))
    prog = dense_program(W, weight_bits=wb, act_bits=ab, cell_bits=cell, dac_bits=dac, rows=rows, cols=cols, order=order,
                         flip_cols=rng.random(N * 8) < 0.5 if flip else None, bias=bias, mult=mult, shift=shift, zp=zp)
    out_fast, rep_fast = run_program(prog, {"x": x.astype(np.float32)})
    out_bit, rep_bit = run_program(prog, {"x": x.astype(np.float32)}, fast_path=False)
    want = dense_ref(x, W, bias, mult, shift, zp, ab)
    np.testing.assert_array_equal(out_fast["y"], (want - 0).astype(np.float32))
    np.testing.assert_array_equal(out_bit["y"], out_fast["y"])
    assert rep_fast["run"]["counters"] == rep_bit["run"]["counters"]
    assert rep_fast["run"]["adc_conversions_by_bits"] == rep_bit["run"]["adc_conversions_by_bits"]
    assert rep_fast["layers"][0]["path"] == "fast" and rep_bit["layers"][0]["path"] == "bit-level"
    assert rep_fast["run"]["counters"]["macs"] == P * K * N


def test_batch_chunks_do_not_change_results_or_counters():
    rng = np.random.default_rng(3)
    W = rng.integers(-127, 128, size=(200, 7))
    x = rng.integers(0, 256, size=(13, 200)).astype(np.float32)
    prog = dense_program(W, rows=64, cols=32, shift=np.full(7, 8))
    a, ra = run_program(prog, {"x": x})
    b, rb = run_program(prog, {"x": x}, batch_size=4)
    np.testing.assert_array_equal(a["y"], b["y"])
    assert ra["run"]["counters"] == rb["run"]["counters"]
    assert ra["batch"] == rb["batch"] == 13


def test_memory_budget_sizes_the_chunks_from_the_first_images_peak(monkeypatch):
    """Without a batch size, a batch larger than the budget runs one image first, measuring the
    live buffers' peak; the next chunks are budget / (3 x peak) images each."""
    import runtime.executor as E  # noqa: PLC0415

    rng = np.random.default_rng(4)
    W = rng.integers(-127, 128, size=(200, 7))
    x = rng.integers(0, 256, size=(13, 200)).astype(np.float32)
    prog = dense_program(W, rows=64, cols=32, shift=np.full(7, 8))
    want, rw = run_program(prog, {"x": x}, batch_size=13)
    m = E.machine_for(prog)
    budget = m.bytes_per_image * 3 * 4  # below the whole batch's: one image first
    monkeypatch.setattr(E, "MEMORY_BUDGET", budget)
    sizes, peaks = [], []
    run_chunk = E.Machine.run_chunk

    def spy(self, feeds, stats, fast_path, *rest):
        run_chunk(self, feeds, stats, fast_path, *rest)
        sizes.append(len(next(iter(feeds.values()))))
        peaks.append(self.peak_bytes)

    monkeypatch.setattr(E.Machine, "run_chunk", spy)
    got, rg = run_program(prog, {"x": x})
    np.testing.assert_array_equal(got["y"], want["y"])
    assert rg["run"]["counters"] == rw["run"]["counters"]
    assert sizes[0] == 1 and peaks[0] > 0 and sum(sizes) == 13
    assert sizes[1] == min(12, budget // (peaks[0] * 3)) and sizes[1] > 1


# --------------------------------------------------------------------------- narrow ADC


def _one_column_program(cells, adc_bits, mode, bits=2, dac_bits=1, cell_bits=2):
    """One crossbar of len(cells) rows and a single column; y = the raw column result."""
    R = len(cells)
    cfg = config(crossbar__rows=R, crossbar__cols=1, crossbar__cell_bits=cell_bits, crossbar__dac_bits=dac_bits)
    p = Program(config=cfg)
    p.inputs.append(Port("x", "x", 1.0, 0))
    p.outputs.append(Port("y", "y", 1.0, 0))
    p.buffers += [Buffer("x", "u8", [-1, R]), Buffer("cols", "i64", [-1, 1]), Buffer("acc", "i64", [-1, 1]), Buffer("y", "u16", [-1, 1])]
    p.consts += [
        Const("img", np.array(cells, dtype=np.uint8).reshape(R, 1)),
        Const("rt", np.arange(R, dtype=np.int32)),
        Const("cm", np.array([[0, 0, 1, 0, 0]], dtype=np.int64)),
        Const("z", np.zeros(1, np.int64)),
        Const("one", np.ones(1, np.int64)),
    ]
    p.xbars.append(Xbar(0, "img", R, 1, "rt", adc_bits, mode, lossless=0))
    p.instrs = [
        Instr("mvm", dict(xbar=0, src="x", dst="cols", col0=0, bits=bits, dac_bits=dac_bits, order="lsb"), "l"),
        Instr("shiftadd", dict(dst="acc", src="cols", colmap="cm", macs=R, init=1), "l"),
        Instr("requant", dict(dst="y", src="acc", bias="z", mult="one", shift="z", zp=0, lo=0, hi=65535, layout="flat", out_hw=[]), "l"),
        Instr("halt", {}, ""),
    ]
    return p


def test_narrow_adc_saturates_as_computed_by_hand():
    # 4 rows of cells 3; inputs x = [3, 3, 3, 3] (2 bits, 1-bit DAC): each of the 2 steps sums
    # 4·1·3 = 12. A 3-bit ADC saturates each read at 7: 7·1 + 7·2 = 21 (exact: 36).
    # x = [1, 2, 3, 0]: step 0 digits [1,0,1,0] -> 6, step 1 digits [0,1,1,0] -> 6: 6 + 2·6 = 18, no clipping.
    # x = [3, 3, 3, 1]: step 0 -> 12 -> 7, step 1 digits [1,1,1,0] -> 9 -> 7: 7 + 14 = 21 (exact 30).
    prog = _one_column_program([3, 3, 3, 3], adc_bits=3, mode="saturate")
    x = np.array([[3, 3, 3, 3], [1, 2, 3, 0], [3, 3, 3, 1]], dtype=np.float32)
    out, rep = run_program(prog, {"x": x})
    assert out["y"].ravel().tolist() == [21.0, 18.0, 21.0]
    wide = _one_column_program([3, 3, 3, 3], adc_bits=4, mode="saturate")
    assert run_program(wide, {"x": x})[0]["y"].ravel().tolist() == [36.0, 18.0, 30.0]
    assert rep["layers"][0]["path"] == "bit-level"  # not provably lossless: the fast path must not run
    assert rep["adc_conversions_by_bits"] == {"3": 2.0}


def test_narrow_adc_drop_lsb_as_computed_by_hand():
    # s_max = 4·1·3 = 12 needs m = 4 bits; a 3-bit ADC drops D = 1 LSB: s -> (s >> 1) << 1.
    # x = [3,3,3,3]: 12, 12 -> 12 + 24 = 36 (even sums survive). x = [3,3,3,1] with cells [3,3,3,3]:
    # step 0 sums 12 -> 12; step 1 digits [1,1,1,0] -> 9 -> 8: 12 + 16 = 28 (exact 30).
    # x = [1,0,0,0]: step 0 -> 3 -> 2; step 1 -> 0: 2 (exact 3).
    prog = _one_column_program([3, 3, 3, 3], adc_bits=3, mode="drop-lsb")
    x = np.array([[3, 3, 3, 3], [3, 3, 3, 1], [1, 0, 0, 0]], dtype=np.float32)
    out, _ = run_program(prog, {"x": x})
    assert out["y"].ravel().tolist() == [36.0, 28.0, 2.0]


def test_lossless_flag_that_is_false_is_a_program_error():
    prog = _one_column_program([3, 3, 3, 3], adc_bits=3, mode="saturate")
    prog.xbars[0].lossless = 1
    with pytest.raises(ProgramError, match="marked lossless"):
        run_program(prog, {"x": np.zeros((1, 4), np.float32)})


# ------------------------------------------------------------------------------ errors


def _small():
    return dense_program(np.array([[1, -2], [3, 4], [-5, 6]]), shift=np.zeros(2))


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(RunInputError, match=r"shape \[2, 4\].*\[N, 3\]"):
        run_program(_small(), {"x": np.zeros((2, 4), np.float32)})
    with pytest.raises(RunInputError, match="add a leading batch axis"):
        run_program(_small(), {"x": np.zeros(3, np.float32)})


def test_wrong_input_dtype_name_and_values_are_clear_errors():
    with pytest.raises(RunInputError, match="dtype"):
        run_program(_small(), {"x": np.array([["a", "b", "c"]])})
    with pytest.raises(RunInputError, match="dtype"):
        run_program(_small(), {"x": np.zeros((1, 3), bool)})
    with pytest.raises(RunInputError, match="missing input"):
        run_program(_small(), {})
    with pytest.raises(RunInputError, match="unknown input"):
        run_program(_small(), {"x": np.zeros((1, 3), np.float32), "z": np.zeros(1)})


def test_nan_and_infinite_inputs_quantize_as_the_spec_says():
    # quantization.md §2/§7: NaN -> zp (real 0), +inf -> qmax, -inf -> qmin
    prog = dense_program(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]]), shift=np.zeros(3))
    out, _ = run_program(prog, {"x": np.array([[np.nan, np.inf, -np.inf]], np.float32)})
    assert out["y"].tolist() == [[0.0, 255.0, 0.0]]


def test_input_quantization_divides_in_binary32():
    # 0.35f / 0.1f is exactly 3.5 in binary32 (a tie -> 4, even) but 3.4999999 in binary64 (-> 3);
    # the spec (quantization.md §7, as ONNX QuantizeLinear) wants the binary32 quotient
    prog = _small()
    prog.inputs[0].scale = float(np.float32(0.1))
    assert np.float32(0.35) / np.float32(0.1) == np.float32(3.5)
    assert round(float(np.float32(0.35)) / float(np.float32(0.1))) == 3
    out, _ = run_program(prog, {"x": np.array([[np.float32(0.35), 0, 0]], np.float32)})
    assert out["y"].tolist() == [[4.0, 0.0]]  # code 4, times W[0] = [1, -2], clamped at 0


def test_integer_inputs_are_accepted_and_quantized_on_the_host():
    prog = _small()
    prog.inputs[0].scale = 0.5  # x / 0.5 -> codes
    out, _ = run_program(prog, {"x": np.array([[1, 2, 3]], dtype=np.int32)})
    # codes [2, 4, 6]; y = [2 + 12 - 30, -4 + 16 + 36] clamped to [0, 255] -> [0, 48]
    assert out["y"].tolist() == [[0.0, 48.0]]


def test_reserved_opcode_is_not_implemented():
    prog = _small()
    prog.instrs.insert(0, Instr("mvm_et", {}, "fc"))
    with pytest.raises(ProgramError, match="not implemented by this runtime"):
        run_program(prog, {"x": np.zeros((1, 3), np.float32)})


def test_other_format_version_is_rejected():
    prog = _small()
    prog.version = (2, 0)
    with pytest.raises(ProgramError, match="version"):
        run_program(prog, {"x": np.zeros((1, 3), np.float32)})


def test_corrupt_program_bytes_are_rejected():
    from runtime.container import read_program, write_program

    data = bytearray(write_program(_small()))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(ProgramError):
        read_program(bytes(data), "corrupt.pimx")
    with pytest.raises(ProgramError):
        read_program(bytes(data[: len(data) // 3]), "truncated.pimx")


def test_program_round_trip_through_container_runs_identically():
    from runtime.container import read_program, write_program

    prog = _small()
    x = np.array([[1, 2, 3], [200, 100, 0]], dtype=np.float32)
    a, ra = run_program(prog, {"x": x})
    b, rb = run_program(read_program(write_program(prog), "mem"), {"x": x})
    np.testing.assert_array_equal(a["y"], b["y"])
    assert ra["run"]["counters"] == rb["run"]["counters"]


def test_input_codes_wider_than_the_mvm_bits_are_a_program_error():
    prog = _small()
    for ins in prog.instrs:
        if ins.opcode == "mvm":
            ins.fields["bits"] = 4  # buffer holds 8-bit codes
    with pytest.raises(ProgramError, match="outside the unsigned 4-bit range"):
        run_program(prog, {"x": np.array([[100, 0, 0]], np.float32)})


@pytest.mark.parametrize("big", [False, True])
def test_shiftadd_kernel_against_its_definition(big):
    """isa.md §3.3 per column, in plain Python, for both the BLAS and the int64 scatter paths
    (large shifts push the sums beyond 2^53 and force the latter)."""
    from runtime.kernels import shiftadd

    rng = np.random.default_rng(5)
    P, Ctot, N = 4, 12, 3
    src = rng.integers(0, 1000, size=(P, Ctot))
    cm = np.zeros((Ctot, 5), dtype=np.int64)
    cm[:, 0] = rng.integers(-2, N, size=Ctot)
    cm[:, 1] = rng.integers(40, 45, size=Ctot) if big else rng.integers(0, 8, size=Ctot)
    cm[:, 2] = rng.choice([-1, 1], size=Ctot)
    flip = rng.random(Ctot) < 0.4
    cm[flip, 3] = 3
    cm[flip, 4] = rng.integers(0, Ctot, size=int(flip.sum()))
    want = np.zeros((P, N), dtype=object)
    for p in range(P):
        for c in range(Ctot):
            out, sh, sg, fl, un = (int(v) for v in cm[c])
            v = int(src[p, c]) if fl == 0 else fl * int(src[p, un]) - int(src[p, c])
            if out >= 0:
                want[p, out] += sg * (1 << sh) * v
            elif out == -1:
                for o in range(N):
                    want[p, o] += sg * (1 << sh) * v
    got = shiftadd(src, cm, N, None)
    assert got.tolist() == want.tolist()


def test_unfused_fast_mvms_next_to_lossy_ones_match_the_bit_level_path():
    """A layer whose crossbars are partly lossy: the lossless ones take the per-crossbar fast path
    (the layer cannot be fused), the others the bit-level path; results and counters equal the
    all-bit-level run, and saturation really changes the result."""
    rng = np.random.default_rng(11)
    W = rng.integers(-127, 128, size=(90, 6))
    x = rng.integers(0, 256, size=(7, 90)).astype(np.float32)
    exact = dense_program(W, rows=32, cols=16, shift=np.full(6, 10), bias=np.full(6, 40000))
    prog = dense_program(W, rows=32, cols=16, shift=np.full(6, 10), bias=np.full(6, 40000))
    for xb in prog.xbars[::3]:
        xb.adc_bits, xb.lossless = 5, 0  # 32 rows of 2-bit cells: sums up to 96 > 31
    a, ra = run_program(prog, {"x": x})
    b, rb = run_program(prog, {"x": x}, fast_path=False)
    np.testing.assert_array_equal(a["y"], b["y"])
    assert ra["run"]["counters"] == rb["run"]["counters"]
    assert ra["run"]["adc_conversions_by_bits"] == rb["run"]["adc_conversions_by_bits"]
    assert set(ra["run"]["adc_conversions_by_bits"]) == {"5", "16"}
    assert ra["layers"][0]["path"] == "mixed" and rb["layers"][0]["path"] == "bit-level"
    assert not np.array_equal(a["y"], run_program(exact, {"x": x})[0]["y"])


def test_bad_embedded_configuration_is_a_program_error():
    prog = _small()
    prog.config = {**prog.config, "adc": {**prog.config["adc"], "rate_gsps": -1.0}}
    with pytest.raises(ProgramError, match="adc.rate_gsps"):
        run_program(prog, {"x": np.zeros((1, 3), np.float32)})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=40), st.floats(float(np.float32(1e-4)), 10.0, width=32),
       st.sampled_from([(np.uint8, 0, 255), (np.int8, -128, 127)]), st.integers(0, 255))
def test_quantize_input_matches_onnx_quantize_linear(values, scale, kind, zp_seed):
    """Host-side input quantization (isa.md §2) is ONNX QuantizeLinear as onnxruntime runs it;
    NaN -> zp and ±inf saturate."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from runtime.executor import quantize_input

    dtype, lo, hi = kind
    zp = lo + zp_seed % (hi - lo + 1)
    x = np.array(values, dtype=np.float32)
    elem = TensorProto.UINT8 if dtype == np.uint8 else TensorProto.INT8
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
    graph = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
                              [helper.make_tensor_value_info("y", elem, [x.size])],
                              [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]), helper.make_tensor("z", elem, [], [zp])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(quantize_input(x, scale, zp, np.dtype(dtype)), ref)
    special = quantize_input(np.array([np.nan, np.inf, -np.inf], np.float32), scale, zp, np.dtype(dtype))
    assert special.tolist() == [zp, hi, lo]


# ------------------------------------------------------------------ fused bit-level shiftadd


def _report_without_timings(rep: dict) -> dict:
    return {k: v for k, v in rep.items() if k not in ("simulation_wall_s", "prepare_wall_s", "simulation_images_per_s")}


def _run_unfused(prog: Program, feed: dict, **kw):
    """The same run with the bit-level layers' shiftadd not fused: every instruction on its own."""
    from unittest import mock  # noqa: PLC0415

    from runtime.executor import Machine  # noqa: PLC0415

    with mock.patch.object(Machine, "_run_bitlevel_layer", lambda *a: None):
        return run_program(prog, feed, **kw)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    K=st.integers(1, 150),
    N=st.integers(1, 12),
    P=st.integers(1, 6),
    rows=st.sampled_from([8, 32, 64]),
    cols=st.sampled_from([8, 32, 128]),
    dac=st.sampled_from([1, 2]),
    adc_bits=st.integers(2, 9),
    adc_mode=st.sampled_from(["saturate", "drop-lsb"]),
    wide_every=st.integers(0, 3),
    flip=st.booleans(),
    fast_path=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_bit_level_layer_with_its_shiftadd_fused_equals_the_instructions(K, N, P, rows, cols, dac, adc_bits, adc_mode, wide_every,
                                                                         flip, fast_path, seed):
    """The shiftadd fused into the grouped bit-level products (column results added into the
    layer's sums as they are made; unit columns kept for the flipped and broadcast terms; lossless
    crossbars of the same run through their exact product) gives the outputs and the whole report
    of the instructions run one by one — with narrow ADCs of either mode, flipped columns, several
    row and column tiles, and some crossbars given a lossless ADC."""
    rng = np.random.default_rng(seed)
    W = rng.integers(-127, 128, size=(K, N))
    x = rng.integers(0, 256, size=(P, K)).astype(np.float32)
    x[rng.random(x.shape) < 0.4] = 0
    prog = dense_program(W, rows=rows, cols=cols, dac_bits=dac, adc_bits=adc_bits, adc_mode=adc_mode,
                         flip_cols=rng.random(N * 4) < 0.5 if flip else None, shift=np.full(N, 12), bias=np.full(N, 1 << 20))
    if wide_every:
        for xb in prog.xbars[::wide_every]:
            xb.adc_bits, xb.adc_mode, xb.lossless = 16, "saturate", 0  # lossless: the fast path's, when it runs
    out, rep = run_program(prog, {"x": x}, fast_path=fast_path)
    out_u, rep_u = _run_unfused(prog, {"x": x}, fast_path=fast_path)
    np.testing.assert_array_equal(out["y"], out_u["y"])
    assert _report_without_timings(rep) == _report_without_timings(rep_u)


def test_bit_level_layer_runs_fused_and_saturates(monkeypatch):
    """The fused layer really runs (with flipped columns and two row tiles), and its narrow ADC
    really changes the result against a lossless one."""
    from runtime.executor import Machine  # noqa: PLC0415

    ran = []
    orig = Machine._run_bitlevel_layer

    def spy(self, first, stats, fast_path):
        end = orig(self, first, stats, fast_path)
        ran.append(end is not None)
        return end

    monkeypatch.setattr(Machine, "_run_bitlevel_layer", spy)
    rng = np.random.default_rng(5)
    W = rng.integers(-127, 128, size=(100, 5))
    x = rng.integers(0, 256, size=(9, 100)).astype(np.float32)
    kw = dict(rows=64, cols=64, flip_cols=rng.random(20) < 0.5, shift=np.full(5, 12), bias=np.full(5, 1 << 20))
    narrow = dense_program(W, adc_bits=5, **kw)
    out, rep = run_program(narrow, {"x": x})
    assert ran == [True] and rep["layers"][0]["path"] == "bit-level"
    out_u, rep_u = _run_unfused(narrow, {"x": x})
    np.testing.assert_array_equal(out["y"], out_u["y"])
    assert _report_without_timings(rep) == _report_without_timings(rep_u)
    exact = run_program(dense_program(W, **kw), {"x": x})[0]
    assert not np.array_equal(out["y"], exact["y"])


def _depthwise_like(rng, N: int, taps: int = 9) -> np.ndarray:
    """[N·taps, N] block-diagonal weights: output n reads its own taps only (a depthwise layer's
    matrix), so under the offset scheme each crossbar column is one value off its block."""
    W = np.zeros((N * taps, N), dtype=np.int64)
    for n in range(N):
        W[n * taps : (n + 1) * taps, n] = rng.integers(-127, 128, size=taps)
    return W


@pytest.mark.parametrize("dac,adc_mode,flip", [(1, "saturate", False), (1, "drop-lsb", True), (2, "saturate", True)])
def test_sparse_product_runs_whole_layers_as_the_byte_product(monkeypatch, dac, adc_mode, flip):
    """A depthwise-like layer on a narrow ADC: its crossbar groups take the sparse product
    (``kernels_sparse``; in 16-bit lanes, as one read's column sum passes 2^8), fused with the
    shiftadd and not, and give the outputs and the whole report of the other products (the
    sparse one switched off)."""
    from runtime import kernels_sparse as KS  # noqa: PLC0415
    from runtime.executor import machine_for  # noqa: PLC0415

    rng = np.random.default_rng(11)
    N = 30
    W = _depthwise_like(rng, N)
    x = rng.integers(0, 256, size=(40, W.shape[0])).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = 0
    kw = dict(adc_bits=6, adc_mode=adc_mode, dac_bits=dac, flip_cols=rng.random(N * 4) < 0.5 if flip else None,
              shift=np.full(N, 12), bias=np.full(N, 1 << 20))
    prog = dense_program(W, **kw)
    out, rep = run_program(prog, {"x": x})
    sparse = [g.sparse_plan(8, dac) is not None for g in machine_for(prog).xbar_groups.values()]
    assert sparse[:2] == [True, True]  # the two full row tiles (the third has 14 rows: bytes are cheaper)
    out_u, rep_u = _run_unfused(prog, {"x": x})
    monkeypatch.setattr(KS, "SPARSE_MARGIN", float("inf"))  # every group: the byte-packed product
    prog_b = dense_program(W, **kw)
    out_b, rep_b = run_program(prog_b, {"x": x})
    assert all(g.sparse_plan(8, dac) is None for g in machine_for(prog_b).xbar_groups.values())
    for o, r in ((out_u, rep_u), (out_b, rep_b)):
        np.testing.assert_array_equal(out["y"], o["y"])
        assert _report_without_timings(rep) == _report_without_timings(r)


@pytest.mark.parametrize("workers,P", [(1, 40), (2, 40), (2, 600)])
def test_sparse_groups_batched_equal_one_by_one(monkeypatch, workers, P):
    """A layer's sparse groups run as a few compiled calls of several groups each
    (``kernels_sparse.SparseBatch``), on one thread or two, in chunks of whole groups or (few
    groups, many iterations) groups split by iterations: the outputs and the whole report equal
    the groups' products one by one."""
    from runtime import kernels as K  # noqa: PLC0415
    from runtime import kernels_sparse as KS  # noqa: PLC0415
    from runtime.executor import Machine  # noqa: PLC0415

    rng = np.random.default_rng(23)
    N = 60  # 540 rows: four full row tiles take the sparse product
    W = _depthwise_like(rng, N)
    x = rng.integers(0, 256, size=(P, W.shape[0])).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = 0
    kw = dict(adc_bits=6, flip_cols=rng.random(N * 4) < 0.5, shift=np.full(N, 12), bias=np.full(N, 1 << 20))
    monkeypatch.setattr(K, "WORKERS", workers)
    monkeypatch.setattr(K, "PARALLEL_MIN_WORK", 0)
    calls, group_ones = [], []
    events = Machine._group_events  # (each group's dac_ones, to its own mvms' records)
    monkeypatch.setattr(Machine, "_group_events", lambda self, members, bits, src, ones: group_ones.append((tuple(members), ones))
                        or events(self, members, bits, src, ones))
    batched = KS.mvm_groups_sparse
    monkeypatch.setattr(KS, "mvm_groups_sparse", lambda xk, b, j0, j1, p0, p1, *a: calls.append((b.rows0.size, j0, j1, p0, p1))
                        or batched(xk, b, j0, j1, p0, p1, *a))
    out, rep = run_program(dense_program(W, **kw), {"x": x})
    G = calls[0][0]
    assert G == 4 and sorted(c[1:] for c in calls) == sorted(set(c[1:] for c in calls))
    if workers == 1:
        assert calls == [(G, 0, G, 0, P)]
    elif P == 40:
        assert {c[1:3] for c in calls} == {(j, j + 1) for j in range(G)} and all(c[3:] == (0, P) for c in calls)
    else:
        assert all(c[2] == c[1] + 1 and 0 < c[4] - c[3] < P for c in calls)
    monkeypatch.setattr(Machine, "_sparse_batch", lambda *a: None)
    n_batched, ones = len(calls), list(group_ones)
    group_ones.clear()
    out_1, rep_1 = run_program(dense_program(W, **kw), {"x": x})
    assert len(calls) == n_batched and group_ones == ones
    np.testing.assert_array_equal(out["y"], out_1["y"])
    assert _report_without_timings(rep) == _report_without_timings(rep_1)

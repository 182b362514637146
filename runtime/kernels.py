"""NumPy implementations of the crossbar instructions (``spec/isa.md`` §3).

Each kernel executes *all* iterations of one instruction at once and returns the events it
counted (a dict of event name -> int, see ``runtime.cost.EVENTS``). No Python loop runs per
position, bit or column: loops are per instruction, per crossbar, or per memory block of
iterations (to bound the size of the bit-plane matrix).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from runtime import kernels_sparse as KS
from runtime.errors import ProgramError
from runtime.intmath import mul_rne_shift_clamp, rne_shift_inplace

#: largest bit-plane matrix (bytes) materialized at once by the bit-level mvm
PLANE_BLOCK_BYTES = 48 << 20


# ------------------------------------------------------------------------------------- im2col


def im2col(src: np.ndarray, kernel, stride, pad, dilation, pad_value: int, k_major: bool = False) -> np.ndarray:
    """[B, C, H, W] -> [B·Ho·Wo, C·kh·kw] (isa.md §3.1), via a strided view of the padded input.
    ``k_major``: the same matrix stored column by column (the transpose of a C-ordered
    [C·kh·kw, B·Ho·Wo] array), for readers that take each column whole (``kernels_sparse``)."""
    if src.ndim != 4:
        raise ProgramError(f"im2col: source must be [B, C, H, W], got shape {list(src.shape)}")
    kh, kw = (int(k) for k in kernel)
    sh, sw = (int(s) for s in stride)
    pt, pl, pb, pr = (int(p) for p in pad)
    dh, dw = (int(d) for d in dilation)
    B, C, H, W = src.shape
    Ho = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if Ho <= 0 or Wo <= 0:
        raise ProgramError(f"im2col: kernel {kh}x{kw} does not fit the padded {H}x{W} input")
    padded = np.pad(src, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=pad_value) if pt or pl or pb or pr else src
    sB, sC, sH, sW = padded.strides
    # per image: first a [C·kh·kw, Ho·Wo] copy (long contiguous runs along the output rows), then its
    # transpose in cache-sized blocks of iterations, both split over the worker threads
    # (the kh·kw-element inner runs of the direct [Ho, Wo, C, kh, kw] copy are slow)
    view = np.lib.stride_tricks.as_strided(
        padded,
        shape=(B, C, kh, kw, Ho, Wo),
        strides=(sB, sC, sH * dh, sW * dw, sH * sh, sW * sw),
        writeable=False,
    )
    CK, HW = C * kh * kw, Ho * Wo
    if k_major:  # no transpose: each image's windows go straight to their columns
        km = np.empty((C, kh, kw, B, Ho, Wo), dtype=src.dtype)
        cstep = -(-C // _workers()) if CK * B * HW >= (1 << 16) else C

        def fill_all(c0: int) -> None:
            km[c0 : c0 + cstep] = view[:, c0 : c0 + cstep].transpose(1, 2, 3, 0, 4, 5)

        _map(fill_all, list(range(0, C, cstep)), work=km.size, min_work=PARALLEL_MIN_ELEMS)
        return km.reshape(CK, B * HW).T
    out = np.empty((B * HW, CK), dtype=src.dtype)
    tmp = np.empty((C, kh, kw, Ho, Wo), dtype=src.dtype)
    flat = tmp.reshape(CK, HW)
    cstep = -(-C // _workers()) if C * kh * kw * HW >= (1 << 16) else C
    pblk = max(16, (1 << 15) // max(CK, 1))
    nparts = _workers() if CK * HW >= (1 << 16) else 1
    pstep = -(-(-(-HW // pblk)) // nparts) * pblk

    for b in range(B):
        def fill(c0: int, b=b) -> None:
            tmp[c0 : c0 + cstep] = view[b, c0 : c0 + cstep]

        def transpose(p0: int, b=b) -> None:
            for q0 in range(p0, min(HW, p0 + pstep), pblk):
                q1 = min(HW, q0 + pblk, p0 + pstep)
                out[b * HW + q0 : b * HW + q1] = flat[:, q0:q1].T

        _map(fill, list(range(0, C, cstep)), work=tmp.size, min_work=PARALLEL_MIN_ELEMS)
        _map(transpose, list(range(0, HW, pstep)), work=tmp.size, min_work=PARALLEL_MIN_ELEMS)
    return out


# ---------------------------------------------------------------------------------------- mvm


@dataclass
class XbarInfo:
    """A crossbar prepared for execution: used rows only (unused rows contribute 0 to every sum)."""

    id: int
    rows: int
    cols: int
    rows_used: int
    row_idx: np.ndarray  # [rows_used] input-vector index per used physical row
    cells: np.ndarray  # [rows_used, cols] int64 cell values of the used rows
    cell_bits: int
    adc_bits: int
    adc_mode: str
    max_col_sum: int  # max over columns of the sum of the used rows' cells (data-aware bound)
    lossless_flag: int

    def s_max(self, dac_bits: int) -> int:
        """The spec's worst-case column sum R·(2^v−1)·(2^c−1) (drives drop-lsb's shift)."""
        return self.rows * ((1 << dac_bits) - 1) * ((1 << self.cell_bits) - 1)

    def drop_bits(self, dac_bits: int) -> int:
        m = self.s_max(dac_bits).bit_length()  # ceil(log2(s_max + 1))
        return max(0, m - self.adc_bits)

    def provably_lossless(self, dac_bits: int) -> bool:
        """No read of this crossbar can be changed by its ADC, whatever the input."""
        if self.adc_mode == "drop-lsb":
            return self.drop_bits(dac_bits) == 0
        return (1 << self.adc_bits) > ((1 << dac_bits) - 1) * self.max_col_sum


def prepare_xbar(xb, image: np.ndarray, table: np.ndarray, cell_bits: int) -> XbarInfo:
    """Check a crossbar declaration against its constants and keep only the rows in use."""
    if image.shape != (xb.rows, xb.cols):
        raise ProgramError(f"crossbar {xb.id}: image {xb.image!r} has shape {list(image.shape)}, declared [{xb.rows}, {xb.cols}]")
    if table.shape != (xb.rows,):
        raise ProgramError(f"crossbar {xb.id}: row table {xb.row_table!r} has shape {list(table.shape)}, expected [{xb.rows}]")
    img = image.astype(np.int64)
    if img.size and (img.min() < 0 or img.max() > (1 << cell_bits) - 1):
        raise ProgramError(f"crossbar {xb.id}: cell values must lie in [0, {(1 << cell_bits) - 1}] for {cell_bits}-bit cells")
    if xb.adc_mode not in ("saturate", "drop-lsb"):
        raise ProgramError(f"crossbar {xb.id}: unknown ADC mode {xb.adc_mode!r} (saturate or drop-lsb)")
    if xb.adc_bits < 1:
        raise ProgramError(f"crossbar {xb.id}: ADC resolution must be at least 1 bit")
    t = table.astype(np.int64)
    if t.size and t.min() < -1:
        raise ProgramError(f"crossbar {xb.id}: row table entries must be >= -1")
    used = t >= 0
    cells = img[used]
    return XbarInfo(
        id=xb.id,
        rows=xb.rows,
        cols=xb.cols,
        rows_used=int(used.sum()),
        row_idx=t[used],
        cells=cells,
        cell_bits=cell_bits,
        adc_bits=int(xb.adc_bits),
        adc_mode=xb.adc_mode,
        max_col_sum=int(cells.sum(axis=0).max()) if cells.size else 0,
        lossless_flag=int(xb.lossless),
    )


def check_codes(src2d: np.ndarray, bits: int, what: str) -> None:
    """mvm inputs must be unsigned ``bits``-wide codes (isa.md §3.2)."""
    if src2d.size:
        lo, hi = int(src2d.min()), int(src2d.max())
        if lo < 0 or hi >= (1 << bits):
            raise ProgramError(f"{what}: input codes span [{lo}, {hi}], outside the unsigned {bits}-bit range")


def _check_row_idx(src2d: np.ndarray, xid: int, row_idx: np.ndarray) -> None:
    """A row table must not refer past the input vector."""
    if row_idx.size and int(row_idx.max()) >= src2d.shape[1]:
        raise ProgramError(f"crossbar {xid}: row table refers to input element {int(row_idx.max())}, but the input vector has {src2d.shape[1]}")


def _gather(src2d: np.ndarray, xb: XbarInfo) -> np.ndarray:
    """The input vectors seen by the crossbar's used rows: [P, rows_used] codes."""
    _check_row_idx(src2d, xb.id, xb.row_idx)
    return src2d[:, xb.row_idx]


def _exact_matmul(a: np.ndarray, b: np.ndarray, bound: int) -> np.ndarray:
    """a @ b for non-negative integers, exactly: float32 BLAS below 2^24, float64 below 2^53."""
    if bound < (1 << 24):
        return (a.astype(np.float32) @ b.astype(np.float32)).astype(np.int64)
    if bound < (1 << 53):
        return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    return a.astype(np.int64) @ b.astype(np.int64)


@functools.lru_cache(maxsize=64)
def digit_nonzero_table(bits: int, dac_bits: int, steps: int) -> np.ndarray:
    """For every code value, how many of its ``steps`` DAC digits are non-zero (``dac_ones``);
    built once per widths (read-only)."""
    v = np.arange(1 << bits, dtype=np.int64)
    mask = (1 << dac_bits) - 1
    count = np.zeros_like(v)
    for k in range(steps):  # per bit-step over the value table, not per position
        count += ((v >> (k * dac_bits)) & mask) != 0
    count.setflags(write=False)
    return count


def _adc_float(s: np.ndarray, xb: XbarInfo, dac_bits: int) -> np.ndarray:
    """ADC_A on exact integer-valued floats (isa.md §3.2): saturate, or keep the top A bits."""
    if xb.adc_mode == "saturate":
        return np.minimum(s, s.dtype.type((1 << xb.adc_bits) - 1), out=s)
    d = xb.drop_bits(dac_bits)
    if not d:
        return s
    scale = s.dtype.type(1 << d)
    return np.floor(s / scale, out=s) * scale  # s >= 0 and 2^d a power of two: exact


def mvm(src2d: np.ndarray, xb: XbarInfo, bits: int, dac_bits: int, order: str, fast: bool,
        dac_ones: int | None = None):
    """Column results [P, cols] of one crossbar over P iterations (isa.md §3.2), and its events.

    ``fast``: compute Σ_k 2^(k·v)·s_k as the single exact product x @ X (valid only when no ADC
    read can clip, checked by the caller), with ``dac_ones`` from a digit-popcount table (or as
    given: the caller counted them for another crossbar of the same row table and inputs).
    Otherwise the bit-level path: digit planes [T·P, R] @ cells [R, C] in one BLAS call per block
    of iterations, the ADC as array operations, then the shift-and-add over steps.
    """
    if order not in ("lsb", "msb"):
        raise ProgramError(f"mvm on crossbar {xb.id}: order must be lsb or msb, got {order!r}")
    if bits < 1 or dac_bits < 1:
        raise ProgramError(f"mvm on crossbar {xb.id}: bits and dac_bits must be positive")
    P = src2d.shape[0]
    T = -(-bits // dac_bits)
    mask = (1 << dac_bits) - 1
    x = _gather(src2d, xb)
    plane_bound = mask * xb.max_col_sum  # largest column sum of one read
    assert plane_bound < (1 << 53)
    if fast:
        out = _exact_matmul(x, xb.cells, ((1 << bits) - 1) * xb.max_col_sum)
        if dac_ones is None and x.size and dac_bits == 1 and x.dtype.kind == "u":  # 1-bit digits: the set bits
            dac_ones = int(np.bitwise_count(x.ravel(order="K")).sum(dtype=np.int64))  # (5x a histogram's time; codes below 2^bits: checked)
        elif dac_ones is None and x.size:
            hist = np.bincount(x.ravel(order="K").astype(np.int64), minlength=1 << bits)
            dac_ones = int(hist @ digit_nonzero_table(bits, dac_bits, T))
        elif dac_ones is None:
            dac_ones = 0
    else:
        # the float32 BLAS call is exact while a read's column sum stays below 2^24 (isa.md §3.2);
        # beyond that (very wide DACs and cells) the same call in float64 is exact below 2^53
        out = np.zeros((P, xb.cols), dtype=np.int64)
        dac_ones = 0
        R = max(xb.rows_used, 1)
        block = max(1, PLANE_BLOCK_BYTES // (T * R * 4))
        small = x.dtype if x.dtype.kind == "u" else np.dtype(np.int64)
        shifts = (np.arange(T) * dac_bits).astype(small)[:, None, None]
        ftype = np.float32 if plane_bound < (1 << 24) else np.float64
        cells_f = xb.cells.astype(ftype)
        # shift-and-add over the steps as one small product [T] @ [T, p·C]: exact while every
        # result stays below 2^24 (float32) or 2^53 (float64)
        sum_bound = (1 << (T * dac_bits)) * max(plane_bound, 1)
        assert sum_bound < (1 << 53)
        atype = np.float32 if (sum_bound < (1 << 24) and ftype == np.float32) else np.float64
        weights = np.ldexp(1.0, np.arange(T) * dac_bits).astype(atype)
        for p0 in range(0, P if xb.rows_used else 0, block):  # no used rows: every sum is 0
            xs = x[p0 : p0 + block].astype(small, copy=False)
            digits = (xs[None, :, :] >> shifts) & small.type(mask)  # [T, p, R]; the order does not change the sum
            dac_ones += int(np.count_nonzero(digits))
            s = digits.reshape(-1, xb.rows_used).astype(ftype) @ cells_f  # one BLAS call: [T·p, R] @ [R, C]
            a = _adc_float(s, xb, dac_bits).reshape(T, -1)
            out[p0 : p0 + block] = (weights @ a.astype(atype, copy=False)).reshape(-1, xb.cols)
    return out, mvm_events(P, T, xb, dac_ones, src2d.dtype.itemsize)


#: elements of one block of a crossbar group's column sums (iterations x columns) processed at once
GROUP_BLOCK_ELEMS = 1 << 17

#: worker threads for independent blocks of a kernel (set to 1 for strictly sequential kernels)
WORKERS = min(2, os.cpu_count() or 1)
_POOL: ThreadPoolExecutor | None = None
#: set while a thread runs kernels in sequence: ``serial()``, or an item of a parallel ``_map``
#: (every thread is taken: a helper waiting on its own queued task would never return)
_SERIAL = threading.local()


def _workers() -> int:
    return 1 if getattr(_SERIAL, "on", False) else max(1, int(WORKERS))


@contextlib.contextmanager
def serial():
    """Kernels called from this thread meanwhile run in sequence, on it alone (the caller leaves
    the other cores to BLAS's own threads; a ``_map`` item's own parallel calls)."""
    old = getattr(_SERIAL, "on", False)
    _SERIAL.on = True
    try:
        yield
    finally:
        _SERIAL.on = old


#: least multiply-adds of a kernel call worth splitting over the worker threads (callers that
#: know them pass them): below it, handing blocks to a thread and waiting for them costs more than
#: it saves (measured: MobileNetV2's fused layers, 5–20 M each, take 35 instead of 54 ms in sequence)
PARALLEL_MIN_WORK = 1 << 25


#: least elements of a copying or element-wise call (im2col, requant) worth splitting likewise
PARALLEL_MIN_ELEMS = 1 << 20
#: least terms (iterations x unit terms) of a shiftadd's unit terms worth splitting likewise (~1 ns
#: each in MobileNetV2's runs of 14 outputs: ~0.25 ms, past a thread's hand-over)
UNIT_TERMS_SPLIT = 1 << 18


def _map(fn, items: list, work: int | None = None, min_work: int | None = None) -> list:
    """fn over items (results in order), shared by the calling thread and the pool's helpers
    when there is more than one item and ``work`` (the call's multiply-adds, if the caller knows
    them) reaches ``min_work`` (PARALLEL_MIN_WORK by default).

    The caller takes items itself rather than waiting: each thread takes the next item not yet
    taken, so a helper that wakes late (waking a sleeping thread costs ~0.2 ms on this virtual
    machine) only takes fewer items, and the call is never slower than in sequence by more than
    the hand-over."""
    global _POOL
    if len(items) <= 1 or _workers() == 1 or (work is not None and work < (PARALLEL_MIN_WORK if min_work is None else min_work)):
        return [fn(it) for it in items]
    if _POOL is None or _POOL._max_workers != _workers() - 1:
        _POOL = ThreadPoolExecutor(max_workers=_workers() - 1, thread_name_prefix="pimc-runtime")
    results: list = [None] * len(items)
    order = itertools.count()  # (its next() is atomic: each item is taken once)
    failed: list[BaseException] = []

    def take() -> None:
        with serial():
            for i in order:
                if i >= len(items) or failed:
                    return
                try:
                    results[i] = fn(items[i])
                except BaseException as e:  # noqa: BLE001 - raised by the caller, after the helpers stop
                    failed.append(e)
                    return

    helpers = [_POOL.submit(take) for _ in range(min(_workers() - 1, len(items) - 1))]
    take()
    for h in helpers:
        h.result()
    if failed:
        raise failed[0]
    return results


#: what has already run once in this process so that numba compiled (or loaded) its kernels
_WARMED: set = set()


def first_time(kind) -> bool:
    """True the first time ``kind`` (a kernel and its operand types) is asked for in this process:
    numba compiles per process and per argument types, so each kind is run once before a timed run."""
    if kind in _WARMED:
        return False
    _WARMED.add(kind)
    return True


class XbarGroup:
    """Crossbars sharing one row table (a layer's row block) prepared for the grouped bit-level
    mvm: their used rows' cells side by side as one float matrix [R, ΣC] (built once)."""

    def __init__(self, xbs: list[XbarInfo]):
        self.xbs = xbs
        self.row_idx = xbs[0].row_idx
        self.rows_used = xbs[0].rows_used
        # the input columns the rows read: a slice (a view, no gather) when they are consecutive
        r = self.row_idx
        consecutive = r.size > 0 and bool((np.diff(r) == 1).all())
        self.row_sel = slice(int(r[0]), int(r[0]) + r.size) if consecutive else r
        self.widths = [xb.cols for xb in xbs]
        self.offsets = np.concatenate(([0], np.cumsum(self.widths))).astype(np.int64)
        self.cells = np.concatenate([xb.cells for xb in xbs], axis=1) if xbs else np.zeros((0, 0), np.int64)
        self.max_col_sum = max(xb.max_col_sum for xb in xbs)
        self._f: dict[str, np.ndarray] = {}
        self._bp: dict[tuple[int, int], _BytePlan | None] = {}
        self._sp: dict[tuple[int, int], KS.SparsePlan | None] = {}

    def prepare(self, bits: int, dac_bits: int) -> None:
        """Build what the grouped product of these widths uses: the sparse plan, or else the
        float cells; and run the sparse or byte-packed product once on a zero input, so that its
        compiled loops are ready before a run."""
        if bits < 1 or dac_bits < 1:
            return
        if self.sparse_plan(bits, dac_bits) is not None:
            for layout in ("C", "A"):  # the two layouts of the column results it writes
                if first_time(("sparse", layout)):
                    x = np.zeros((2, int(self.row_idx.max()) + 1 if self.row_idx.size else 1), dtype=np.uint8)
                    out = np.zeros((2, 2 * int(self.offsets[-1])), dtype=np.int64)
                    mvm_group(x, self, bits, dac_bits, out=out[:, ::2] if layout == "A" else out[:, : int(self.offsets[-1])])
            if isinstance(self.row_sel, slice) and first_time("sparse-batch"):  # (a layer's groups in one call)
                batch = KS.sparse_batch([(self, self.sparse_plan(bits, dac_bits), 0)], *_own_columns(int(self.offsets[-1]), 0)[:2])
                xk = np.zeros((batch.row_end, 2), dtype=np.uint8)
                KS.mvm_groups_sparse(xk, batch, 0, 1, 0, 2, np.zeros((2, int(self.offsets[-1])), dtype=np.int64),
                                     np.zeros((2, 0), dtype=np.int64))
            return
        plan = self.byte_plan(bits, dac_bits)
        kind = "bytes-uniform" if plan is not None and _uniform_adc(plan, bits, dac_bits) else "bytes"
        if plan is None:
            self.cells_as(_pack_params(self.max_col_sum, bits, dac_bits)[2])
        elif first_time(kind):  # (each of the two ADC kernels, once a process)
            x = np.zeros((1, int(self.row_idx.max()) + 1 if self.row_idx.size else 1), dtype=np.uint8)
            _mvm_group_bytes(x, self, plan, bits, dac_bits, np.zeros((1, int(self.offsets[-1])), dtype=np.int64))

    def cells_as(self, dtype) -> np.ndarray:
        key = np.dtype(dtype).str
        if key not in self._f:
            self._f[key] = self.cells.astype(dtype)
        return self._f[key]

    def byte_plan(self, bits: int, dac_bits: int) -> _BytePlan | None:
        """The byte-packed product's plan for these widths (built once), or None when one read's
        column sum can reach 2^8 (see ``_mvm_group_bytes``)."""
        key = (bits, dac_bits)
        if key not in self._bp:
            self._bp[key] = _byte_plan(self, bits, dac_bits)
        return self._bp[key]

    def sparse_plan(self, bits: int, dac_bits: int) -> KS.SparsePlan | None:
        """The sparse product's plan (``kernels_sparse``, built once), or None where it does not
        apply or the byte-packed product is estimated cheaper."""
        key = (bits, dac_bits)
        if key not in self._sp:
            bp = self.byte_plan(bits, dac_bits)
            self._sp[key] = KS.sparse_plan(self, bits, dac_bits, None if bp is None else bp.words)
        return self._sp[key]

    def fusable(self, bits: int, dac_bits: int) -> bool:
        """Whether ``mvm_group`` can take a fused shiftadd (the byte-packed or the sparse product)."""
        return self.byte_plan(bits, dac_bits) is not None or self.sparse_plan(bits, dac_bits) is not None


def _pack_params(max_col_sum: int, bits: int, dac_bits: int):
    """(F, J, float type, int type) of the packed bit-level product: one step's column sum is
    below 2^F; J steps share a float32 product (⌊24/F⌋ ≥ 2) or else a float64 one (⌊53/F⌋)."""
    T = -(-bits // dac_bits)
    plane_bound = ((1 << dac_bits) - 1) * max_col_sum
    assert plane_bound < (1 << 53)
    F = max(1, int(plane_bound).bit_length())  # one step's column sum < 2^F
    if 24 // F >= 2:
        J, ftype = 24 // F, np.float32
    else:
        J, ftype = max(1, 53 // F), np.float64  # float32 would carry at most one step
    J = max(1, min(J, T))
    # packed sums < 2^(F·J), shifted fields and their total < 2^(F + T·v): int32 when both fit
    itype = np.int32 if max(F * J, F + T * dac_bits) <= 31 else np.int64
    return F, J, ftype, itype


#: words (three packed column sums each, all bit-steps) of one block of the byte-packed bit-level mvm
BYTE_BLOCK_WORDS = 1 << 18
#: smallest byte-packed mvm (words, all bit-steps) split over the worker threads
BYTE_SPLIT_WORDS = 1 << 18
#: smallest sparse product (its estimated ns, ``kernels_sparse.SPARSE_NS``) split over the worker threads
SPARSE_SPLIT_NS = 2_000_000


@dataclass
class _BytePlan:
    """A crossbar group's byte-packed bit-level product (``_mvm_group_bytes``), built once."""

    words: int  # Wp = ⌈C/3⌉: word w packs columns w, Wp + w and 2·Wp + w
    cells: np.ndarray  # [R, Wp] float32 Σ_j 2^(8j)·X[r, j·Wp + w]
    thr: np.ndarray  # [3, Wp] int64: byte j of word w saturates at thr[j, w] (255: never)
    keep: np.ndarray  # [3, Wp] int64: byte j of word w keeps the bits keep[j, w] (255: all)
    uniform: int | None  # the one saturation threshold of every column (no drop-lsb), or None


def _byte_plan(g: XbarGroup, bits: int, dac_bits: int) -> _BytePlan | None:
    """Plan of the byte-packed product, or None if one read's column sum can reach 2^8 (it would
    not fit its byte)."""
    if bits < 1 or dac_bits < 1 or not g.rows_used:
        return None
    mask = (1 << dac_bits) - 1
    if mask * g.max_col_sum > 255 or 8 + -(-bits // dac_bits) * dac_bits > 62:  # (column results in int64)
        return None
    C = int(g.offsets[-1])
    Wp = max(1, -(-C // 3))
    thr = np.full((3, Wp), 255, dtype=np.int64)  # byte j of word w: column j·Wp + w
    keep = np.full((3, Wp), 255, dtype=np.int64)
    tcol, kcol = thr.reshape(-1), keep.reshape(-1)
    for xb, o0, w in zip(g.xbs, g.offsets[:-1], g.widths):  # per crossbar
        if xb.adc_mode == "saturate":
            tcol[o0 : o0 + w] = min(255, (1 << xb.adc_bits) - 1)
        else:
            kcol[o0 : o0 + w] = ~((1 << xb.drop_bits(dac_bits)) - 1) & 0xFF
    cp = np.zeros((g.rows_used, 3 * Wp), dtype=np.float32)
    cp[:, :C] = g.cells
    packed = cp[:, :Wp] + 256 * cp[:, Wp : 2 * Wp] + 65536 * cp[:, 2 * Wp :]  # exact: < 2^24
    t, k = tcol[:C], kcol[:C]
    uniform = int(t[0]) if (t == t[0]).all() and (k == 255).all() else None
    return _BytePlan(Wp, np.ascontiguousarray(packed), thr, keep, uniform)


def _uniform_adc(plan: _BytePlan, bits: int, dac_bits: int) -> bool:
    """One saturation threshold for all columns, and column results below 2^24: the float32 ADC
    kernel (``jit.adc_shiftadd_bytes_uniform``) is exact."""
    return plan.uniform is not None and 8 + -(-bits // dac_bits) * dac_bits <= 24


def _own_columns(C: int, P: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mvm_group``'s ``shiftadd`` targets when none is fused: every column stored at its own index."""
    return -2 - np.arange(C, dtype=np.int64), np.zeros(C, dtype=np.int64), np.empty((P, 0), dtype=np.int64)


def _mvm_group_bytes(src2d: np.ndarray, g: XbarGroup, plan: _BytePlan, bits: int, dac_bits: int, out: np.ndarray,
                     shiftadd: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> int:
    """``mvm_group`` when one read's column sum is below 2^8: three columns share a float32 word
    (bytes 0, 1, 2 of the exact integer), so a single float32 product [T·p, R] @ [R, ⌈C/3⌉] yields
    every step's column sums; the bit-planes before it and the byte-wise ADC and shift-and-add
    after it are compiled loops (``jit.bit_planes``, ``jit.adc_shiftadd_bytes``). Returns dac_ones.
    ``shiftadd``: see ``mvm_group``."""
    from runtime import jit as JIT  # noqa: PLC0415 - numba is imported on the first bit-level product

    P = src2d.shape[0]
    T = -(-bits // dac_bits)
    Wp = plan.words
    small = src2d.dtype if src2d.dtype.kind == "u" else np.dtype(np.int64)
    tgt, cf, sums = _own_columns(int(g.offsets[-1]), P) if shiftadd is None else shiftadd
    uniform = _uniform_adc(plan, bits, dac_bits)

    def unit(p0: int, p1: int, w0: int, w1: int) -> int:
        x = src2d[p0:p1, g.row_sel].astype(small, copy=False)  # [p, R]
        planes = np.empty((T, p1 - p0, x.shape[1]), dtype=np.float32)
        ones = JIT.bit_planes(x, T, dac_bits, planes)
        S = planes.reshape(T * (p1 - p0), -1) @ plan.cells[:, w0:w1]  # exact: three sums < 2^8 per word
        S = S.reshape(T, p1 - p0, w1 - w0)
        if uniform:
            JIT.adc_shiftadd_bytes_uniform(S, plan.uniform, dac_bits, Wp, w0, tgt, cf, out[p0:p1], sums[p0:p1])
        else:
            JIT.adc_shiftadd_bytes(S, plan.thr[:, w0:w1], plan.keep[:, w0:w1], dac_bits, Wp, w0, tgt, cf, out[p0:p1], sums[p0:p1])
        return ones if w0 == 0 else 0

    nw = _workers()
    total = T * P * Wp
    n = max(1, -(-total // max(1, BYTE_BLOCK_WORDS)))
    if nw > 1 and total >= BYTE_SPLIT_WORDS:
        n = -(-n // nw) * nw  # whole rounds of the worker threads
    pb = min(n, P)
    # units split the columns too when there are fewer iterations than units, but never when they
    # add into the shiftadd's sums (one thread per row of sums)
    wb = min(Wp, -(-n // pb)) if shiftadd is None else 1
    pstep, wstep = -(-P // pb), -(-Wp // wb)
    units = [(p0, min(P, p0 + pstep), w0, min(Wp, w0 + wstep)) for p0 in range(0, P, pstep) for w0 in range(0, Wp, wstep)]
    return sum(_map(lambda u: unit(*u), units, work=total * g.rows_used))  # (its multiply-adds)


def mvm_group(src2d: np.ndarray, g: XbarGroup, bits: int, dac_bits: int, out: np.ndarray | None = None,
              shiftadd: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, int]:
    """The bit-level mvm (isa.md §3.2) of every crossbar of a group at once: column results
    [P, ΣC] (int64, the crossbars side by side) and the group's ``dac_ones`` per crossbar (the
    same for all: it depends on the inputs and the shared row table only).

    Several bit-steps share one exact float product: one step's column sum is below 2^F
    (F = bit length of (2^v − 1)·max column sum), so the input Σ_j 2^(F·j)·d_(k+j) yields
    Σ_j 2^(F·j)·s_(k+j) with every partial sum an integer below 2^(F·J) — J = ⌊24/F⌋ steps per
    float32 product, or ⌊53/F⌋ per float64 product when float32 holds fewer than two. The fields
    are unpacked with integer shifts and masks, each goes through the crossbar's ADC, then the
    shift-and-add. The crossbars of a group may differ in ADC resolution and mode (per column).

    Groups whose columns are sparse around a background take the sparse product instead
    (``kernels_sparse``), where it is estimated cheaper (``g.sparse_plan``).

    ``shiftadd`` = (tgt [C], cf [C], sums [P, N]), only where ``g.fusable``: the layer's
    shiftadd fused in (the executor proves that nothing else reads the column results). Column c
    with tgt[c] >= 0 is not stored but added as sums[:, tgt[c]] += cf[c]·result; with tgt[c] <= −2
    it is stored in ``out`` [P, ·] at column −2 − tgt[c]; with −1 it is dropped (see
    ``ShiftaddPlan.column_targets``). The caller proves that every sum stays exact in int64."""
    P = src2d.shape[0]
    T = -(-bits // dac_bits)
    mask = (1 << dac_bits) - 1
    C = int(g.offsets[-1])
    if out is None:
        out = np.zeros((P, C), dtype=np.int64)
    if not g.rows_used or not P:
        if shiftadd is None:  # (fused: every result 0 adds nothing, and ``out`` holds zeros already)
            out[...] = 0
        return out, 0
    _check_row_idx(src2d, g.xbs[0].id, g.row_idx)
    sparse = g.sparse_plan(bits, dac_bits)
    if sparse is not None:
        tgt, cf, sums = _own_columns(C, P) if shiftadd is None else shiftadd
        pieces = _workers() if P * sparse.ns >= SPARSE_SPLIT_NS else 1
        return out, KS.mvm_group_sparse(src2d, g, sparse, out, tgt, cf, sums, pieces)
    plan = g.byte_plan(bits, dac_bits)
    if plan is not None:
        return out, _mvm_group_bytes(src2d, g, plan, bits, dac_bits, out, shiftadd)
    if shiftadd is not None:
        raise ValueError("mvm_group: a fused shiftadd needs the byte-packed or the sparse product")
    plane_bound = mask * g.max_col_sum
    F, J, ftype, itype = _pack_params(g.max_col_sum, bits, dac_bits)
    cells = g.cells_as(ftype)
    # per-column ADC: threshold (saturate) or kept-bit mask (drop-lsb), as integers of itype
    sat = np.full(C, np.iinfo(itype).max, dtype=itype)
    keep = np.full(C, -1, dtype=itype)
    any_sat = any_drop = False
    for xb, o0, w in zip(g.xbs, g.offsets[:-1], g.widths):  # per crossbar
        if xb.adc_mode == "saturate":
            if (1 << xb.adc_bits) - 1 < plane_bound:
                sat[o0 : o0 + w] = (1 << xb.adc_bits) - 1
                any_sat = True
        else:
            d = xb.drop_bits(dac_bits)
            if d:
                keep[o0 : o0 + w] = ~((1 << d) - 1)
                any_drop = True
    assert F + T * dac_bits <= 63
    fmask = itype((1 << F) - 1)
    block = max(1, GROUP_BLOCK_ELEMS // max(C, 1))
    small = src2d.dtype if src2d.dtype.kind == "u" else np.dtype(np.int64)
    packs = [list(range(k0, min(T, k0 + J))) for k0 in range(0, T, J)]
    pack_w = [np.array([float(1 << (F * j)) for j in range(len(pk))], dtype=ftype) for pk in packs]
    if any_sat and (sat == sat[0]).all():
        sat = sat.dtype.type(sat[0])  # one resolution for the whole group: a scalar bound
    if any_drop and (keep == keep[0]).all():
        keep = keep.dtype.type(keep[0])
    def unit(p0: int, p1: int, c0: int, c1: int) -> int:
        """out[p0:p1, c0:c1]; returns the block's dac_ones (counted by the c0 == 0 unit only)."""
        x = src2d[p0:p1, g.row_sel].astype(small, copy=False)  # [p, R]
        cl = cells[:, c0:c1]
        st = sat if not isinstance(sat, np.ndarray) else sat[c0:c1]
        kp = keep if not isinstance(keep, np.ndarray) else keep[c0:c1]
        acc = np.zeros((x.shape[0], c1 - c0), dtype=itype)
        ones = 0
        for pk, pw in zip(packs, pack_w):  # per pack of bit-steps
            inp = np.zeros(x.shape, dtype=ftype)
            for j, k in enumerate(pk):
                d = (x >> small.type(k * dac_bits)) & small.type(mask)
                if c0 == 0:
                    ones += int(np.count_nonzero(d))
                if j == 0:
                    inp += d
                else:
                    inp += d.astype(ftype) * pw[j]
            S = (inp @ cl).astype(itype)  # exact integers: J packed column sums
            f = np.empty_like(S)
            last = len(pk) - 1
            for j, k in enumerate(pk):
                if j:
                    np.right_shift(S, F * j, out=f)
                    if j != last:  # the top field needs no mask
                        np.bitwise_and(f, fmask, out=f)
                elif last:
                    np.bitwise_and(S, fmask, out=f)
                else:
                    f = S  # a single field
                if any_sat:
                    np.minimum(f, st, out=f)
                if any_drop:
                    np.bitwise_and(f, kp, out=f)
                if k * dac_bits:
                    np.left_shift(f, k * dac_bits, out=f)
                acc += f
        out[p0:p1, c0:c1] = acc
        return ones

    # work units: blocks of iterations (all columns); a single block is split by columns, so
    # that the units can run on worker threads (NumPy and BLAS release the GIL)
    units = [(p0, min(P, p0 + block), 0, C) for p0 in range(0, P, block)]
    if len(units) == 1 and C >= 256 and _workers() > 1:
        h = C // 2
        units = [(0, P, 0, h), (0, P, h, C)]
    dac_ones = sum(_map(lambda u: unit(*u), units))
    return out, dac_ones


def mvm_events(P: int, T: int, xb: XbarInfo, dac_ones: int, itemsize: int) -> dict[str, int]:
    """The events of one mvm over P iterations of T steps (isa.md §3.2)."""
    steps = P * T
    return {
        "crossbar_reads": steps,
        "dac_activations": steps * xb.rows_used,
        "dac_ones": dac_ones,
        "cell_ops": steps * xb.rows_used * xb.cols,
        "sample_holds": steps * xb.cols,
        "adc_conversions": steps * xb.cols,
        "shift_adds": steps * xb.cols,
        "buffer_read_bytes": P * xb.rows_used * itemsize,
        "bus_bytes": P * xb.rows_used * itemsize,  # tile buffer -> IMA input register
    }


# ----------------------------------------------------------------------------------- shiftadd


def parse_colmap(colmap: np.ndarray, n_out: int, ncols: int):
    """The checked columns (out, shift, sign, flip, unit) of a shiftadd column map (isa.md §3.3)."""
    if colmap.ndim != 2 or colmap.shape[1] != 5:
        raise ProgramError(f"shiftadd: column map must be [Ctot, 5], got {list(colmap.shape)}")
    if colmap.shape[0] != ncols:
        raise ProgramError(f"shiftadd: column map has {colmap.shape[0]} rows but the source has {ncols} columns")
    cm = colmap.astype(np.int64)
    out, shift, sign, flip, unit = cm.T
    if cm.size:
        if out.max() >= n_out or out.min() < -2:
            raise ProgramError(f"shiftadd: column map output index outside [-2, {n_out - 1}]")
        if shift.min() < 0 or shift.max() > 62:
            raise ProgramError("shiftadd: column shifts must lie in [0, 62]")
        if not np.isin(sign, (-1, 1)).all():
            raise ProgramError("shiftadd: column signs must be +1 or -1")
        if flip.min() < 0 or ((flip > 0) & ((unit < 0) | (unit >= ncols))).any():
            raise ProgramError("shiftadd: a flipped column names no valid unit column")
    return out, shift, sign, flip, unit


def shiftadd(src: np.ndarray, colmap: np.ndarray, n_out: int, dst: np.ndarray | None) -> np.ndarray:
    """Accumulate column results into outputs (isa.md §3.3): int64, whole-array, exact."""
    out, shift, sign, flip, unit = parse_colmap(colmap, n_out, src.shape[1])
    flipped = np.nonzero(flip > 0)[0]
    v = src.astype(np.int64, copy=bool(flipped.size))
    if flipped.size:
        v[:, flipped] = flip[flipped] * src[:, unit[flipped]] - src[:, flipped]
    w = sign * (np.int64(1) << shift)
    acc = np.zeros((src.shape[0], n_out), dtype=np.int64) if dst is None else dst
    active = np.nonzero(out != -2)[0]
    if active.size < len(out):
        v, out, w = v[:, active], out[active], w[active]
    vmax = max(abs(int(v.max())), abs(int(v.min()))) if v.size else 0
    if vmax * int(np.abs(w).astype(object).sum()) < (1 << 53) and len(out) * n_out <= (1 << 24):
        # every partial sum is an integer below 2^53: one float64 BLAS product is exact (and the
        # dense [columns, outputs] matrix is small enough; else the int64 scatter below)
        M = np.zeros((len(out), n_out), dtype=np.float64)
        direct = np.nonzero(out >= 0)[0]
        M[direct, out[direct]] = w[direct]
        broadcast = np.nonzero(out == -1)[0]
        M[broadcast, :] = w[broadcast, None]
        acc += (v.astype(np.float64) @ M).astype(np.int64)
        return acc
    direct = np.nonzero(out >= 0)[0]
    if direct.size:
        order = direct[np.argsort(out[direct], kind="stable")]
        outs = out[order]
        starts = np.concatenate(([0], np.nonzero(np.diff(outs))[0] + 1))
        sums = np.add.reduceat(v[:, order] * w[order], starts, axis=1)
        acc[:, outs[starts]] += sums
    broadcast = np.nonzero(out == -1)[0]
    if broadcast.size:
        acc += (v[:, broadcast] * w[broadcast]).sum(axis=1, keepdims=True)
    return acc


def _direct_runs(out: np.ndarray, coef: np.ndarray, n_out: int) -> list[tuple[int, int, np.ndarray]] | None:
    """[(first column, D, coefficients [N, D])] when the direct columns (out >= 0) are runs of
    N·D consecutive columns in which column a + n·D + d adds to output n; else None."""
    direct = out >= 0
    if not direct.any() or n_out < 1:
        return None
    edges = np.flatnonzero(np.diff(np.concatenate(([0], direct.astype(np.int8), [0]))))
    runs = []
    for a, b in zip(edges[::2], edges[1::2]):  # per maximal segment of direct columns
        if (b - a) % n_out:
            return None
        D = (b - a) // n_out
        if not np.array_equal(out[a:b], np.repeat(np.arange(n_out), D)):
            return None
        runs.append((int(a), int(D), np.ascontiguousarray(coef[a:b].reshape(n_out, D))))
    return runs


class ShiftaddPlan:
    """A column map (isa.md §3.3) prepared once as a gather-and-sum: for every output n, the
    columns that add to it with their integer coefficient (±2^shift, negated for a flipped
    column) padded to a common length L, plus the flipped columns' unit-column terms as a small
    dense [units, N] matrix and the broadcast (``out = −1``) columns as one vector. Integer
    (int64) arithmetic, exact while the bound checked by ``exact_for`` holds."""

    def __init__(self, colmap: np.ndarray, n_out: int, ncols: int):
        out, shift, sign, flip, unit = parse_colmap(colmap, n_out, ncols)
        w = sign * (np.int64(1) << shift)
        flipped = flip > 0
        coef = np.where(flipped, -w, w)
        self.col_out, self.col_coef = out, coef  # per source column (column_targets)
        direct = np.nonzero(out >= 0)[0]
        order = direct[np.argsort(out[direct], kind="stable")]
        counts = np.bincount(out[order], minlength=n_out)
        L = int(counts.max()) if counts.size and order.size else 0
        self.L = L
        self.idx = np.zeros((n_out, max(L, 1)), dtype=np.intp)
        self.cf = np.zeros((n_out, max(L, 1)), dtype=np.int64)
        if order.size:
            starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
            pos = np.arange(order.size) - np.repeat(starts, counts)
            self.idx[out[order], pos] = order
            self.cf[out[order], pos] = coef[order]
        # broadcast columns: their own terms and their unit terms, one vector over source columns
        bvec = np.zeros(ncols, dtype=np.int64)
        bc = np.nonzero(out == -1)[0]
        np.add.at(bvec, bc, coef[bc])
        bf = bc[flipped[bc]]
        np.add.at(bvec, unit[bf], flip[bf] * w[bf])
        self.bcols = np.nonzero(bvec)[0]
        self.bvec = bvec[self.bcols]
        # flipped direct columns: flip·2^shift·sign·src[unit] into their output
        fd = direct[flipped[direct]]
        self.units, uidx = np.unique(unit[fd], return_inverse=True)
        self.E = np.zeros((self.units.size, n_out), dtype=np.int64)
        np.add.at(self.E, (uidx, out[fd]), flip[fd] * w[fd])
        self.n_out = n_out
        # the compiler's layout: per row block, outputs 0..N-1 each with D consecutive columns.
        # Such runs are summed per row of the source (jit.shiftadd_run), without the gather
        self.runs = _direct_runs(out, coef, n_out)
        # Σ |coefficients| reaching one output: the exactness bound per unit of |src|
        per_out = np.abs(self.cf).sum(axis=1) + np.abs(self.E).sum(axis=0)
        self.coef_bound = (int(per_out.max()) if per_out.size else 0) + int(np.abs(self.bvec).sum())
        # the unit-column terms as one float64 BLAS product, exact while vmax·e_bound < 2^53
        self.E_f = self.E.astype(np.float64)
        self.e_bound = int(np.abs(self.E).sum(axis=0).max()) if self.E.size else 0
        # ... or, where few unit columns reach each output (a depthwise layer: one), term by term in
        # runs of consecutive outputs of one unit column (jit.unit_terms): no [P, N] temporaries
        ui, ni = np.nonzero(self.E)  # (by unit column, then output)
        self.E_terms = None
        if ui.size <= 4 * max(n_out, 1):
            new_run = np.ones(ui.size, dtype=bool)
            new_run[1:] = (ui[1:] != ui[:-1]) | (ni[1:] != ni[:-1] + 1)
            starts = np.nonzero(new_run)[0]
            self.E_terms = (np.append(starts, ui.size).astype(np.int64), ui[starts].astype(np.int64),
                            ni[starts].astype(np.int64), self.E[ui, ni])  # (rs, ru, rn, val)
        if self.E_terms is not None and ui.size and first_time("unit_terms"):  # compile (or load) before a run
            from runtime import jit as JIT  # noqa: PLC0415

            one, two = np.zeros(1, dtype=np.int64), np.array([0, 1], dtype=np.int64)
            JIT.unit_terms(np.zeros((1, 1), dtype=np.int64), one, two, one, one, one, np.zeros((1, 1), dtype=np.int64))
        if self.runs and first_time("shiftadd"):  # compile (or load) the run's loop before a run
            self.apply(np.zeros((1, ncols), dtype=np.int64), None)

    def exact_for(self, vmax: int, dst_max: int = 0) -> bool:
        return vmax * self.coef_bound + dst_max < (1 << 62)

    def apply(self, src: np.ndarray, dst: np.ndarray | None, vmax: int | None = None) -> np.ndarray:
        """dst (or zeros) + the column map applied to ``src`` [P, columns] (int64); ``vmax``, a
        bound on |src| if the caller has one, lets the unit-column terms use float BLAS."""
        P = src.shape[0]
        acc = np.zeros((P, self.n_out), dtype=np.int64) if dst is None else dst
        if self.runs is not None:
            from runtime import jit as JIT  # noqa: PLC0415 - numba is imported on first use

            for a, _D, cf in self.runs:  # one contiguous run of N·D columns per row block
                JIT.shiftadd_run(src, a, cf, acc)
        elif self.L:
            block = max(1, (1 << 18) // max(self.n_out * self.L, 1))
            flat_idx = self.idx.ravel()

            def rows(p0: int) -> None:  # one memory block of iterations
                g = src[p0 : p0 + block][:, flat_idx].reshape(-1, self.n_out, self.L)
                g *= self.cf
                acc[p0 : p0 + block] += g.sum(axis=2)

            _map(rows, list(range(0, P, block)))
        return self.apply_unit_terms(src, acc, vmax)

    def column_targets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """How a fused shiftadd takes each source column (``mvm_group``'s ``shiftadd``): (tgt, cf)
        [columns] int64 and the stored columns [S]. A direct column c adds cf[c]·src[:, c] to
        output tgt[c] >= 0 (cf: ±2^shift, negated if flipped); stored column k (a unit or
        broadcast column, which ``apply_unit_terms`` reads) has tgt = −2 − k, kept compact; any
        other column, −1: nothing reads it. None when a direct column is also read by the unit
        terms (it would have to be both added and stored)."""
        direct = self.col_out >= 0
        tgt = np.where(direct, self.col_out, -1).astype(np.int64)
        cf = np.where(direct, self.col_coef, 0).astype(np.int64)
        stored = np.union1d(self.units, self.bcols).astype(np.int64)
        if direct[stored].any():
            return None
        tgt[stored] = -2 - np.arange(stored.size, dtype=np.int64)
        # where the unit terms find their columns among the stored ones (apply_unit_terms, compact)
        self.compact_cols = np.searchsorted(stored, self.units), np.searchsorted(stored, self.bcols)
        return tgt, cf, stored

    def apply_unit_terms(self, src: np.ndarray, acc: np.ndarray, vmax: int | None = None,
                         compact: bool = False) -> np.ndarray:
        """acc += what the flipped columns' unit columns and the broadcast columns add (the terms
        besides the direct columns' own); reads only those columns of ``src``, or, ``compact``,
        ``src`` holds just the columns ``column_targets`` stores, in that order."""
        units, bcols = self.compact_cols if compact else (self.units, self.bcols)
        if (units.size and self.E_terms is not None and src.dtype == np.int64 and acc.flags.c_contiguous
                and src.flags.c_contiguous):
            from runtime import jit as JIT  # noqa: PLC0415 - numba is imported on first use

            u = units.astype(np.int64, copy=False)
            P = src.shape[0]
            step = -(-P // _workers())  # (rows apart: the worker threads share them)
            _map(lambda p0: JIT.unit_terms(src[p0 : p0 + step], u, *self.E_terms, acc[p0 : p0 + step]),  # exact: the caller's exact_for
                 list(range(0, P, step)), work=P * self.E_terms[3].size, min_work=UNIT_TERMS_SPLIT)
        elif units.size:
            u = src[:, units]
            if vmax is not None and vmax * self.e_bound < (1 << 53):  # every partial sum exact in float64
                acc += (u.astype(np.float64) @ self.E_f).astype(np.int64)
            else:  # (NumPy's integer product: no BLAS)
                acc += u.astype(np.int64) @ self.E
        if bcols.size:
            acc += (src[:, bcols].astype(np.int64) @ self.bvec)[:, None]
        return acc


# ------------------------------------------------------------------------ fused fast layers


def layer_matrix(parts: list[tuple[XbarInfo, int]], k_in: int, ncols: int, colmap, n_out: int) -> np.ndarray | None:
    """The integer matrix [K, N] that a layer's lossless mvms followed by its shiftadd apply to the
    input vector (isa.md §6: "a layer's mvms as one exact integer matrix product").

    Column results are linear in the input (no ADC can clip on a lossless crossbar), and so is the
    shift-and-add with its flipped columns: column c contributes ``coef_c · cells[r, c]`` to
    ``W_eff[t(r), out_c]`` (every output for a unit column), with ``coef_c = ±sign·2^shift``, and a
    flipped column adds ``flip_c · sign·2^shift`` through its unit column. Built crossbar by
    crossbar with sparse scatter-adds (a layer's column space can be far wider than its outputs).
    ``None`` when a sum could leave the exact range (the caller then runs the instructions).
    """
    out, shift, sign, flip, unit = parse_colmap(colmap, n_out, ncols)
    w = sign * (np.int64(1) << shift)
    flipped = flip > 0
    coef = np.where(out == -2, 0, np.where(flipped, -w, w))  # weight of the column's own result
    # what flipped columns add through their unit columns: a dense row over outputs per unit column
    fl = np.nonzero(flipped & (out != -2))[0]
    units, uidx = np.unique(unit[fl], return_inverse=True)
    E = np.zeros((units.size, n_out), dtype=np.float64)
    val = (flip[fl] * w[fl]).astype(np.float64)
    one = out[fl] >= 0
    np.add.at(E, (uidx[one], out[fl][one]), val[one])
    np.add.at(E, uidx[~one], val[~one][:, None])
    erow = np.full(ncols, -1, dtype=np.int64)  # column -> its row of E (-1: none)
    erow[units] = np.arange(units.size)
    eabs = np.zeros(ncols, dtype=np.float64)
    eabs[units] = np.abs(E).sum(axis=1)
    # exactness: every partial sum below 2^53
    total = 0
    for xb, col0 in parts:
        if xb.rows_used and int(xb.row_idx.max()) >= k_in:
            return None  # the unfused path reports the error
        colsum = xb.cells.sum(axis=0)
        total += int((colsum * np.abs(coef[col0 : col0 + xb.cols])).sum())
        total += int(colsum.astype(np.float64) @ eabs[col0 : col0 + xb.cols])
    if total >= (1 << 53):
        return None
    W = np.zeros(k_in * n_out, dtype=np.float64)
    bcast = np.zeros(k_in, dtype=np.float64)
    idx_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    pending = 0

    def flush():
        nonlocal pending
        if idx_parts:
            W[:] += np.bincount(np.concatenate(idx_parts), weights=np.concatenate(val_parts), minlength=k_in * n_out)
            idx_parts.clear()
            val_parts.clear()
        pending = 0

    for xb, col0 in parts:
        if not xb.rows_used:
            continue
        cols = np.arange(col0, col0 + xb.cols)
        cells = xb.cells.astype(np.float64)
        direct = np.nonzero(out[cols] >= 0)[0]
        if direct.size:
            vals = cells[:, direct] * coef[cols[direct]].astype(np.float64)  # [R, d]
            idx = xb.row_idx[:, None] * n_out + out[cols[direct]][None, :]
            keep = vals != 0
            idx_parts.append(idx[keep])
            val_parts.append(vals[keep])
            pending += int(keep.sum())
        units = np.nonzero(out[cols] == -1)[0]
        if units.size:
            np.add.at(bcast, xb.row_idx, cells[:, units] @ coef[cols[units]].astype(np.float64))
        here = np.nonzero(erow[cols] >= 0)[0]
        if here.size:
            contrib = cells[:, here] @ E[erow[cols[here]]]  # [R, N]
            np.add.at(W.reshape(k_in, n_out), xb.row_idx, contrib)
        if pending > (1 << 22):
            flush()
    flush()
    Wm = W.reshape(k_in, n_out) + bcast[:, None]
    return Wm.astype(np.int64)


class LayerMatrix:
    """W_eff with its exactness plan and float copies, prepared once per program.

    The product x @ W_eff (x: unsigned ``bits``-wide codes) is computed with float32 BLAS in
    chunks of the K axis whose worst-case partial sums, ``(2^bits − 1) · Σ_k∈chunk |W[k, n]|``,
    stay below 2^24 (every partial sum of the SGEMM is then an exact integer, in any summation
    order), the chunk results added in float64 (exact below 2^53); a row alone too large for
    float32 makes the whole product one float64 DGEMM (exact below 2^53); beyond that, None."""

    def __init__(self, Wm: np.ndarray, bits: int | None = None):
        self.Wm = Wm
        absw = np.abs(Wm).astype(np.float64)
        self.colsum = int(absw.sum(axis=0).max()) if Wm.size else 0
        self._absw = absw
        self.plans: dict[int, list[tuple[int, int]] | None] = {}
        self.f32: np.ndarray | None = None
        self.f64: np.ndarray | None = None
        # a mostly-zero W_eff (grouped and depthwise convs: block diagonal) is applied as a
        # gather-and-sum over each output's non-zero rows (padded to L), not as a dense product
        self.ell: tuple[np.ndarray, np.ndarray] | None = None
        K_ = Wm.shape[0]
        if Wm.size:
            nz = Wm != 0
            L = int(nz.sum(axis=0).max())
            if 0 < L and 4 * L <= K_:
                order = np.argsort(~nz, axis=0, kind="stable")[:L]  # [L, N] non-zero rows first
                idx = order.T.copy()  # [N, L]
                cf = np.take_along_axis(Wm, order, axis=0).T.copy()  # zeros where padded
                self.ell = (idx, cf)
        if bits is not None:
            self.plan(bits)
        self._absw = None

    def plan(self, bits: int):
        """K-chunks [(k0, k1)] for float32, or None when float64 is needed."""
        if bits in self.plans:
            return self.plans[bits]
        xmax = (1 << bits) - 1
        K = self.Wm.shape[0]
        absw = self._absw if self._absw is not None else np.abs(self.Wm).astype(np.float64)
        limit = float(1 << 24)
        chunks: list[tuple[int, int]] | None = []
        if K and xmax * float(absw.max(initial=0)) >= limit:
            chunks = None
        else:
            cum = np.zeros((K + 1, absw.shape[1]), dtype=np.float64)
            np.cumsum(absw, axis=0, out=cum[1:])
            k0 = 0
            while k0 < K:  # per chunk (a few per layer)
                grow = (cum[k0 + 1 :] - cum[k0]).max(axis=1, initial=0) * xmax  # non-decreasing in k1
                n_ok = int(np.searchsorted(grow, limit, side="left"))  # chunks [k0, k0 + n_ok) fit
                k1 = k0 + max(1, n_ok)
                chunks.append((k0, k1))
                k0 = k1
        if chunks is not None and self.f32 is None:
            self.f32 = self.Wm.astype(np.float32)
        if chunks is None and self.f64 is None:
            self.f64 = self.Wm.astype(np.float64)
        self.plans[bits] = chunks
        return chunks

    def apply(self, x: np.ndarray, bits: int) -> np.ndarray | None:
        """x @ W_eff exactly (chunked float32 BLAS, float64 below 2^53), or None beyond."""
        bound = ((1 << bits) - 1) * self.colsum
        if bound >= (1 << 53):
            return None
        P = x.shape[0]
        out = np.empty((P, self.Wm.shape[1]), dtype=np.int64)
        if self.ell is not None:
            idx, cf = self.ell
            N_, L = idx.shape
            f32 = bound < (1 << 24)  # every partial sum an exact float32 integer
            cfx = cf.astype(np.float32) if f32 else cf
            flat = idx.ravel()
            block = max(1, (1 << 18) // max(N_ * L, 1))

            def ell_rows(p0: int) -> None:
                g = x[p0 : p0 + block][:, flat].reshape(-1, N_, L)
                if f32:
                    out[p0 : p0 + block] = np.einsum("pnl,nl->pn", g.astype(np.float32), cfx)
                else:
                    out[p0 : p0 + block] = (g.astype(np.int64) * cfx).sum(axis=2)

            _map(ell_rows, list(range(0, P, block)))
            return out
        chunks = self.plan(bits)

        def rows(r: tuple[int, int]) -> None:  # one block of iterations
            xs = x[r[0] : r[1]]
            if chunks is None:
                out[r[0] : r[1]] = xs.astype(np.float64) @ self.f64
                return
            xf = xs.astype(np.float32)
            if len(chunks) == 1:
                out[r[0] : r[1]] = xf @ self.f32
                return
            acc = None
            for k0, k1 in chunks:
                part = xf[:, k0:k1] @ self.f32[k0:k1]
                if acc is None:
                    acc = part.astype(np.float64)
                else:
                    acc += part
            out[r[0] : r[1]] = acc

        n = _workers() if P >= 64 else 1
        step = -(-P // n) if P else 1
        _map(rows, [(p0, min(P, p0 + step)) for p0 in range(0, P, step)])
        return out


# ------------------------------------------------------------------------------------ requant


def _requant_float_tail(y: np.ndarray, scale, zp: int, lo: int, hi: int, out: np.ndarray | None) -> np.ndarray:
    """The float64 paths' end: y·scale rounded half to even (``rint``), plus zp, clamped to
    [lo, hi], into ``out`` (integers in [lo, hi], within out's type: the cast is exact) or int64."""
    y *= scale
    np.rint(y, out=y)
    y += zp
    np.clip(y, lo, hi, out=y)
    if out is not None:
        np.copyto(out, y, casting="unsafe")
        return out
    return y.astype(np.int64)


def _requant_block(src: np.ndarray, bias, mult, shift, zp: int, lo: int, hi: int, channel_major: bool = False,
                   src_bound: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """clamp(rne((src + bias)·mult / 2^shift) + zp, lo, hi) per column n (isa.md §3.4).

    ``channel_major``: return the result as [N, P] (C order), computed that way, so the
    per-channel constants broadcast along long rows (much faster when N is small).
    ``src_bound``: a proven bound on |src| (skips scanning the sums when it suffices).
    ``out``: written there (the float64 path casts straight to its type) and returned."""
    bias = np.asarray(bias, dtype=np.int64)
    mult = np.asarray(mult, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if src_bound is not None and src.size and shift.size and int(shift.max()) <= 62 and int(shift.min()) >= 0 \
            and lo >= -(1 << 53) and hi < (1 << 53):
        bmax = int(src_bound) + (int(np.abs(bias).max()) if bias.size else 0)  # >= |src + bias|
        mmax = int(np.abs(mult).max()) if mult.size else 0
        if bmax < (1 << 53) and bmax * mmax < (1 << 53):
            # as the float64 path below, without the int64 sums: src and bias are integers whose
            # sum lies below 2^53, so the float64 addition is exact
            if channel_major:
                y = np.empty(src.shape[::-1], dtype=np.float64)
                np.copyto(y, src.T)
                y += bias.reshape(-1, 1).astype(np.float64)
                scale = np.ldexp(mult.reshape(-1, 1).astype(np.float64), -shift.reshape(-1, 1))
            else:
                y = src.astype(np.float64)
                y += bias.astype(np.float64)
                scale = np.ldexp(mult.astype(np.float64), -shift)
            return _requant_float_tail(y, scale, zp, lo, hi, out)
    if channel_major:
        acc = np.add(src.T, bias.reshape(-1, 1), dtype=np.int64, order="C")
        mult, shift = mult.reshape(-1, 1), shift.reshape(-1, 1)
    else:
        acc = np.add(src, bias, dtype=np.int64)
    mmax = int(np.abs(mult).max()) if mult.size else 0
    amax = None
    if src_bound is not None and acc.size:  # |src + bias| <= src_bound + max |bias|
        amax = int(src_bound) + (int(np.abs(bias).max()) if bias.size else 0)
        if not amax * mmax < (1 << 53):
            amax = None
    if amax is None:
        amax = max(abs(int(acc.max())), abs(int(acc.min()))) if acc.size else 0
    if shift.size and int(shift.max()) <= 62 and int(shift.min()) >= 0 and amax * mmax < (1 << 53) and lo >= -(1 << 53) and hi < (1 << 53):
        # float64, exactly: (src + bias)·mult is an integer below 2^53, so multiplying by the
        # exact constant mult·2^-shift gives (src + bias)·mult / 2^shift without rounding, and
        # rint rounds half to even, as rne
        scale = np.ldexp(mult.astype(np.float64), -shift)
        y = acc.astype(np.float64)
        return _requant_float_tail(y, scale, zp, lo, hi, out)
    if shift.size and int(shift.min()) >= 1 and amax * mmax + (1 << int(shift.max())) < (1 << 62):
        acc *= mult  # in place: the common case, every product and rounding offset within int64
        rne_shift_inplace(acc, shift)
        acc += zp
        return np.clip(acc, lo, hi, out=acc)
    return mul_rne_shift_clamp(acc, mult, shift, zp, lo, hi)


def requant(src: np.ndarray, bias, mult, shift, zp: int, lo: int, hi: int, channel_major: bool = False,
            out_dtype=None, src_bound: int | None = None) -> np.ndarray:
    """clamp(rne((src + bias)·mult / 2^shift) + zp, lo, hi) per column n (isa.md §3.4).

    ``channel_major``: return the result as [N, P] (C order), computed that way, so the
    per-channel constants broadcast along long rows (much faster when N is small).
    ``out_dtype``: the result's type (its range must hold [lo, hi]); int64 by default.
    Elementwise, so computed in blocks of iterations (on the worker threads)."""
    P = src.shape[0]
    N = src.shape[1] if src.ndim == 2 else 1
    dt = np.dtype(np.int64 if out_dtype is None else out_dtype)
    out = np.empty((N, P) if channel_major else src.shape, dtype=dt)
    block = max(1, (1 << 16) // max(N, 1))
    if P <= block:
        r = _requant_block(src, bias, mult, shift, zp, lo, hi, channel_major, src_bound, out)
        if r is not out:
            out[...] = r
        return out

    def rows(p0: int) -> None:
        o = out[:, p0 : p0 + block] if channel_major else out[p0 : p0 + block]
        r = _requant_block(src[p0 : p0 + block], bias, mult, shift, zp, lo, hi, channel_major, src_bound, o)
        if r is not o:
            o[...] = r

    _map(rows, list(range(0, P, block)))
    return out

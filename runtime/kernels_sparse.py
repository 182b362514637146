"""The bit-level product of a crossbar group whose columns are sparse around a background value
(isa.md §3.2, exactly; used by ``kernels.mvm_group`` where it is the cheaper product).

A depthwise layer's crossbar holds each channel's few taps on its own rows; under the offset
encoding every other cell of its top slice holds the offset's digit. So each column c is one
value b[c] on most rows, with a few exceptions E_c, and one read's column sum at step t is

    s_t(c) = b[c]·pop_t + Σ_{e ∈ E_c} (cell_e − b[c])·d_t(r_e),   pop_t = Σ_r d_t(r)

(d_t(r): the DAC digit of row r's input at step t): one shared sum over the rows, then a few
terms per column, instead of every row of every column. The steps ride side by side in the
lanes of a uint64 word (8-bit lanes while (2^dac − 1)·max column sum < 2^8, else 16-bit), so one
multiply-add serves all of them; arithmetic modulo 2^64 is exact because each lane's true sum
is below 2^Lb. The ADC saturates every lane at once (thresholds 2^A − 1), drop-lsb masks them,
and pairs of lanes merge into fields until each word is one shift-and-added value
(``jit.sparse_group``). A column that no read can saturate (nor lose a bit to drop-lsb) skips the
lanes: its result is the exact b[c]·Σ_r x_r + Σ_e (cell_e − b[c])·x_(r_e) (x the codes' low T·v
bits), which is what its steps shift-add to — the lower weight slices of a depthwise layer,
about three quarters of its columns on MobileNetV2 under a 6-bit ADC. Measured on MobileNetV2's
depthwise groups (126 rows, 57 columns, ~6 exceptions per column): 3x faster than the
byte-packed BLAS product; on dense groups it is slower, so ``sparse_plan`` returns a plan only
where its cost model says it is cheaper. A fused layer's groups run as one batch
(``SparseBatch``), a few compiled calls in all, with the unsaturable columns of one sum folded
into one product (``combined_exact``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

#: the estimated cost of one iteration, in ns, of the sparse product (per row spread, per column
#: word, per exception word) and of the byte-packed product (per multiply-add of its float32
#: product, per bit-plane element), fitted on MobileNetV2's and ResNet-18's groups (one thread)
SPARSE_NS = (0.4, 3.6, 0.2)
BYTES_NS = (0.035, 0.3)
#: how much cheaper the estimate must be before the sparse product is chosen
SPARSE_MARGIN = 1.25
#: lanes' words of one block of iterations (sp [words, R, block] uint64 stays in L2)
SPREAD_BLOCK_WORDS = 1 << 16


@dataclass
class SparsePlan:
    """A crossbar group's sparse product (``jit.sparse_group``), built once."""

    ns: float  # estimated cost of one iteration (SPARSE_NS)
    T: int  # bit-steps
    v: int  # DAC bits
    lane_bits: int
    spt: np.ndarray  # [256, words] uint64 lanes of every code (empty: 1-bit digits spread by multiplication)
    nzc: np.ndarray  # [256] int64 non-zero digits of every code
    bg: np.ndarray  # [C] uint64 background cell of each column
    ptr: np.ndarray  # [C + 1] column c's exceptions are ptr[c]:ptr[c + 1]
    erow: np.ndarray  # their rows (among the used rows)
    ev: np.ndarray  # cell − background, as uint64 (two's complement)
    HM: np.ndarray  # [C] uint64: the lane bits at or above the ADC threshold
    TH: np.ndarray  # [C] uint64: the threshold in every lane
    KP: np.ndarray  # [C] uint64: the kept bits in every lane (drop-lsb)
    smask: np.ndarray  # lower field of each pair of fields, per merge stage
    #: [C] uint8: 1 where no read of the column can reach its ADC's threshold nor lose a bit to it,
    #: so that its exact product (no lanes) is its result
    exact: np.ndarray
    block: int  # iterations per block


def _lanes(bits: int, dac_bits: int, bound: int) -> tuple[int, int, int] | None:
    """(T, lane bits, words) for sums below ``bound`` + 1, or None when 16-bit lanes do not hold them."""
    T = -(-bits // dac_bits)
    Lb = 8 if bound < (1 << 8) else 16 if bound < (1 << 16) else 0
    if not Lb or T * dac_bits > 8:  # (the digits come from the low byte of any integer input)
        return None
    return T, Lb, -(-T // (64 // Lb))


def _merge_masks(Lb: int) -> np.ndarray:
    masks, f = [], Lb
    while f < 64:
        masks.append(sum(((1 << f) - 1) << j for j in range(0, 64, 2 * f)))
        f *= 2
    return np.array(masks, dtype=np.uint64)


def _lane_table(bits: int, dac_bits: int, T: int, Lb: int, NW: int) -> tuple[np.ndarray, np.ndarray]:
    """The lanes of every 8-bit code: step t (most significant first) in global lane NW·nl − T + t,
    so that the last word ends with the last step; and its non-zero digits."""
    nl, mask = 64 // Lb, (1 << dac_bits) - 1
    codes = np.arange(256, dtype=np.uint64)
    spt = np.zeros((256, NW), dtype=np.uint64)
    nzc = np.zeros(256, dtype=np.int64)
    for t in range(T):
        d = (codes >> np.uint64((T - 1 - t) * dac_bits)) & np.uint64(mask)
        nzc += d != 0
        k, lane = divmod(NW * nl - T + t, nl)
        spt[:, k] += d << np.uint64(Lb * lane)
    return spt, nzc


def sparse_plan(g, bits: int, dac_bits: int, byte_words: int | None) -> SparsePlan | None:
    """The sparse product's plan for group ``g`` (a ``kernels.XbarGroup``), or None where it does
    not apply or is not estimated cheaper than the byte-packed product of ``byte_words`` words
    (None: no byte plan; the general product is slower still, so it is compared as if it had one)."""
    if bits < 1 or dac_bits < 1 or not g.rows_used:
        return None
    mask = (1 << dac_bits) - 1
    lanes = _lanes(bits, dac_bits, mask * g.max_col_sum)
    cells = np.asarray(g.cells, dtype=np.int64)  # [R, C]
    R, C = cells.shape
    if lanes is None or not C:
        return None
    T, Lb, NW = lanes
    # background: each column's most frequent cell (ties: the smallest)
    lo, hi = int(cells.min()), int(cells.max())  # (cells are a few bits wide)
    counts = np.stack([(cells == u).sum(axis=0) for u in range(lo, hi + 1)])
    bg = counts.argmax(axis=0) + lo
    exc = cells != bg  # [R, C]
    ne = int(exc.sum())
    sparse_ns = SPARSE_NS[0] * R * NW + SPARSE_NS[1] * C * NW + SPARSE_NS[2] * ne * NW
    wp = byte_words if byte_words is not None else -(-C // 3)
    bytes_ns = BYTES_NS[0] * T * R * wp + BYTES_NS[1] * T * R
    if sparse_ns * SPARSE_MARGIN >= bytes_ns:
        return None
    ecol, erow = np.nonzero(exc.T)  # column by column
    ptr = np.concatenate(([0], np.cumsum(exc.sum(axis=0)))).astype(np.int64)
    ev = (cells[erow, ecol] - bg[ecol]).astype(np.int64).view(np.uint64)
    lmask, nl = (1 << Lb) - 1, 64 // Lb
    rep = sum(1 << (Lb * lane) for lane in range(nl))
    HM, TH, KP = (np.zeros(C, dtype=np.uint64) for _ in range(3))
    exact = np.zeros(C, dtype=np.uint8)
    top = mask * cells.sum(axis=0)  # each column's largest sum of one read
    for xb, o0, w in zip(g.xbs, g.offsets[:-1], g.widths):  # per crossbar: its ADC
        if xb.adc_mode == "saturate":
            th, kp = min(lmask, (1 << xb.adc_bits) - 1), lmask
            exact[o0 : o0 + w] = top[o0 : o0 + w] <= (1 << xb.adc_bits) - 1
        else:
            th, kp = lmask, ~((1 << xb.drop_bits(dac_bits)) - 1) & lmask
            exact[o0 : o0 + w] = kp == lmask
        HM[o0 : o0 + w], TH[o0 : o0 + w], KP[o0 : o0 + w] = ((lmask & ~th) * rep), th * rep, kp * rep
    spt, nzc = _lane_table(bits, dac_bits, T, Lb, NW)
    if dac_bits == 1 and Lb == 8:
        spt = np.zeros((0, NW), dtype=np.uint64)  # spread by multiplication
    block = max(8, min(512, SPREAD_BLOCK_WORDS // (NW * R)) // 8 * 8)
    return SparsePlan(sparse_ns, T, dac_bits, Lb, spt, nzc, bg.astype(np.uint64), ptr, erow.astype(np.int64), ev,
                      HM, TH, KP, _merge_masks(Lb), exact, block)


_SCRATCH = threading.local()
#: ``jit.sparse_group``'s combined exact columns when there are none (xptr, xrow, xval, xtgt, xbg)
_NO_COMBINED = (np.zeros(1, dtype=np.int64),) + tuple(np.zeros(0, dtype=np.int64) for _ in range(4))


def combined_exact(plan: SparsePlan, tgt: np.ndarray, cf: np.ndarray) -> tuple:
    """The exact columns of ``plan`` that a fused shiftadd adds into the same sum, as one product
    per sum (``jit.sparse_group``): (exact [C] uint8, 2 where a column is in a combined product;
    xptr, xrow, xval, xtgt, xbg). Sum t gains Σ_c cf[c]·(bg[c]·Σ_r x_r + Σ_e ev[e]·x[erow[e]]) over
    its exact columns c: one background xbg = Σ_c cf[c]·bg[c] and one term per row whose folded
    cell differs from it. A depthwise layer's lower slices (three exact columns of ~6 exceptions
    each per channel) become one product of its ≤ 9 taps."""
    C = plan.bg.size
    exact = plan.exact.copy()
    sel = np.nonzero((plan.exact == 1) & (tgt[:C] >= 0))[0]
    if not sel.size:
        return (exact, *_NO_COMBINED)
    exact[sel] = 2
    targets = np.unique(tgt[sel])
    xptr, xrow, xval, xbg = [0], [], [], []
    ev = plan.ev.view(np.int64)
    for t in targets.tolist():
        cols = sel[tgt[sel] == t]
        xbg.append(int((cf[cols] * plan.bg[cols].astype(np.int64)).sum()))
        rows: dict[int, int] = {}
        for c in cols.tolist():
            for e in range(int(plan.ptr[c]), int(plan.ptr[c + 1])):
                r = int(plan.erow[e])
                rows[r] = rows.get(r, 0) + int(cf[c]) * int(ev[e])
        for r in sorted(rows):
            if rows[r]:
                xrow.append(r)
                xval.append(rows[r])
        xptr.append(len(xrow))
    as64 = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
    return exact, as64(xptr), as64(xrow), as64(xval), targets.astype(np.int64), as64(xbg)


def _scratch(nu: int, ni: int) -> tuple[np.ndarray, np.ndarray]:
    """This thread's scratch arrays of ``jit.sparse_group`` (uint64, int64), grown as needed."""
    wu, wi = getattr(_SCRATCH, "wu", None), getattr(_SCRATCH, "wi", None)
    if wu is None or wu.size < nu:
        wu = _SCRATCH.wu = np.empty(nu, dtype=np.uint64)
    if wi is None or wi.size < ni:
        wi = _SCRATCH.wi = np.empty(ni, dtype=np.int64)
    return wu, wi


def mvm_group_sparse(src2d: np.ndarray, g, plan: SparsePlan, out: np.ndarray, tgt: np.ndarray, cf: np.ndarray,
                     sums: np.ndarray, pieces: int) -> int:
    """``kernels.mvm_group`` by the sparse product, in ``pieces`` blocks of iterations (on the
    worker threads). Returns dac_ones."""
    from runtime import jit as JIT  # noqa: PLC0415 - numba is imported on the first bit-level product
    from runtime.kernels import _map  # noqa: PLC0415 - (kernels imports this module)

    P = src2d.shape[0]
    xt = src2d[:, g.row_sel].T  # [R, P]: a view of a column-major source (``kernels.im2col(k_major=True)``)
    if xt.dtype != np.uint8:  # every digit lies in the low byte (T·v <= 8), two's complement for negatives
        xt = (xt & 0xFF).astype(np.uint8)
    xt = np.ascontiguousarray(xt)
    step = -(-P // max(1, pieces))
    NW, R, C, PB = plan.spt.shape[1], xt.shape[0], plan.bg.size, plan.block

    def unit(p0: int) -> int:
        wu, wi = _scratch((NW * (R + 1) + 1) * PB, (2 * C + 18) * PB)
        return JIT.sparse_group(xt, p0, min(P, p0 + step), plan.T, plan.v, plan.lane_bits, plan.spt, plan.nzc, plan.bg,
                                plan.ptr, plan.erow, plan.ev, plan.HM, plan.TH, plan.KP, plan.smask, plan.exact, *_NO_COMBINED,
                                tgt, cf, out, sums, PB, wu, wi)

    return sum(_map(unit, list(range(0, P, step))))


@dataclass
class SparseBatch:
    """The sparse products of a layer's crossbar groups as one compiled call per work item
    (``jit.sparse_groups``): their plans' arrays side by side, and the fused shiftadd's column
    targets and coefficients in the same order. Built once per layer (``sparse_batch``)."""

    T: int
    v: int
    lane_bits: int
    spt: np.ndarray
    nzc: np.ndarray
    smask: np.ndarray
    rows0: np.ndarray  # [G] each group's first row of the k-major source
    nrows: np.ndarray  # [G]
    row_end: int  # rows the source must have
    coff: np.ndarray  # [G + 1] each group's columns in the arrays below
    bg: np.ndarray
    ptr: np.ndarray  # [ΣC + 1] global exception indices
    erow: np.ndarray
    ev: np.ndarray
    HM: np.ndarray
    TH: np.ndarray
    KP: np.ndarray
    exact: np.ndarray  # (2: in a combined product, ``combined_exact``)
    xoff: np.ndarray  # [G + 1] each group's combined products in the arrays below
    xptr: np.ndarray  # global term indices
    xrow: np.ndarray
    xval: np.ndarray
    xtgt: np.ndarray
    xbg: np.ndarray
    tgt: np.ndarray
    cf: np.ndarray
    block: np.ndarray  # [G] iterations per block
    nu: int  # scratch elements (uint64, int64) the largest group needs
    ni: int


def sparse_batch(parts: list, tgt: np.ndarray, cf: np.ndarray) -> SparseBatch | None:
    """The batch of ``parts`` [(group, its sparse plan, its first column in ``tgt``/``cf``)], or
    None where one call cannot take them all: a group without a plan or whose rows are not
    consecutive, or plans of different steps or lanes."""
    if not parts:
        return None
    p0 = parts[0][1]
    for g, plan, _c0 in parts:
        if plan is None or not isinstance(g.row_sel, slice) or (plan.T, plan.v, plan.lane_bits) != (p0.T, p0.v, p0.lane_bits):
            return None
    plans = [plan for _g, plan, _c in parts]
    Cs = [plan.bg.size for plan in plans]
    coff = np.concatenate(([0], np.cumsum(Cs))).astype(np.int64)
    eoff = np.concatenate(([0], np.cumsum([plan.erow.size for plan in plans]))).astype(np.int64)
    ptr = np.concatenate([plan.ptr[:-1] + e for plan, e in zip(plans, eoff)] + [eoff[-1:]]).astype(np.int64)
    rows0 = np.array([g.row_sel.start for g, _p, _c in parts], dtype=np.int64)
    nrows = np.array([g.row_sel.stop - g.row_sel.start for g, _p, _c in parts], dtype=np.int64)
    NW = p0.spt.shape[1]
    nu = max((NW * (int(r) + 1) + 1) * plan.block for r, plan in zip(nrows, plans))
    ni = max((2 * plan.bg.size + 18) * plan.block for plan in plans)
    cat = lambda name: np.concatenate([getattr(plan, name) for plan in plans])  # noqa: E731
    gtgt = [tgt[c : c + n] for (_g, _p, c), n in zip(parts, Cs)]
    gcf = [cf[c : c + n] for (_g, _p, c), n in zip(parts, Cs)]
    comb = [combined_exact(plan, t, f) for plan, t, f in zip(plans, gtgt, gcf)]
    xoff = np.concatenate(([0], np.cumsum([x[4].size for x in comb]))).astype(np.int64)
    toff = np.concatenate(([0], np.cumsum([x[2].size for x in comb]))).astype(np.int64)
    xptr = np.concatenate([x[1][:-1] + o for x, o in zip(comb, toff)] + [toff[-1:]]).astype(np.int64)
    return SparseBatch(p0.T, p0.v, p0.lane_bits, p0.spt, p0.nzc, p0.smask, rows0, nrows, int((rows0 + nrows).max()), coff,
                       cat("bg"), ptr, cat("erow"), cat("ev"), cat("HM"), cat("TH"), cat("KP"),
                       np.concatenate([x[0] for x in comb]), xoff, xptr,
                       *(np.concatenate([x[k] for x in comb]) for k in (2, 3, 4, 5)),
                       np.concatenate(gtgt), np.concatenate(gcf),
                       np.array([plan.block for plan in plans], dtype=np.int64), nu, ni)


def mvm_groups_sparse(xk: np.ndarray, b: SparseBatch, j0: int, j1: int, p0: int, p1: int, out: np.ndarray,
                      sums: np.ndarray) -> np.ndarray:
    """Groups j0..j1 of batch ``b`` on iterations p0..p1 of ``xk`` [rows, P] (uint8, C-ordered: the
    k-major source's transpose), on this thread: their column results into ``out`` and ``sums``
    as ``mvm_group_sparse`` takes them. Returns each group's non-zero digits [G]."""
    from runtime import jit as JIT  # noqa: PLC0415 - numba is imported on the first bit-level product

    ones = np.zeros(b.rows0.size, dtype=np.int64)
    wu, wi = _scratch(b.nu, b.ni)
    JIT.sparse_groups(xk, j0, j1, p0, p1, b.rows0, b.nrows, b.coff, b.T, b.v, b.lane_bits, b.spt, b.nzc, b.bg, b.ptr,
                      b.erow, b.ev, b.HM, b.TH, b.KP, b.smask, b.exact, b.xoff, b.xptr, b.xrow, b.xval, b.xtgt, b.xbg,
                      b.tgt, b.cf, out, sums, b.block, wu, wi, ones)
    return ones

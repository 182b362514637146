"""The instruction-set simulator: runs a program on a batch of inputs (``spec/isa.md``).

``run_program`` checks the user's inputs against the program's ``.input`` ports, quantizes them on
the host, and executes every instruction over all its iterations at once (``runtime.kernels``),
in batch chunks of at most ``batch_size`` images. It returns dequantized float32 outputs and the
report (``runtime.report``, schema in ``spec/report.md``) built from the events each instruction
counted (``runtime.cost``).
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime import kernels as K
from runtime import kernels_conv as KC
from runtime import kernels_digital as D
from runtime import kernels_sparse as KS
from runtime import hwconfig
from runtime import jit as JIT
from runtime.cost import copy_shares
from runtime.errors import ConfigError, ProgramError, RunInputError
from runtime.model import DTYPES, FORMAT_VERSION, Buffer, Instr, Program
from runtime.opcodes import OPCODES, canonical_fields, validate_program
from runtime.report import build_report

#: bytes of live buffers a batch chunk may take when no batch size is given (temporaries of the
#: kernels come on top: the measured per-image peak is tripled to leave room for them)
MEMORY_BUDGET = 1 << 30

#: opcodes reserved by spec/isa.md §4 that this runtime does not implement
RESERVED = ("mvm_et", "mvm_dq", "adc_cfg")


@dataclass
class InstrStats:
    """What one instruction did over the whole run (summed over batch chunks)."""

    index: int
    opcode: str
    layer: str
    events: dict[str, int] = field(default_factory=dict)
    adc_by_bits: dict[int, int] = field(default_factory=dict)
    path: str | None = None  # mvm only: "fast" | "bit-level"
    xbar: int | None = None

    def add(self, events: dict[str, int]) -> None:
        for k, v in events.items():
            self.events[k] = self.events.get(k, 0) + int(v)


#: the events a fused mvm counts, in the column order of FusedEventsPlan's event arrays
_FUSED_KEYS = ("crossbar_reads", "dac_activations", "dac_ones", "cell_ops", "sample_holds", "adc_conversions",
               "shift_adds", "buffer_read_bytes", "bus_bytes", "router_flits", "chip_flits")


@dataclass
class FusedEventsPlan:
    """Per crossbar of a fused group, what its mvm's events need besides the data (isa.md §3.2)."""

    ks: list  # mvm instruction indices
    xbar_ids: list
    adc_bits: list
    T: np.ndarray  # steps per iteration
    rows_used: np.ndarray
    cols: np.ndarray
    block: np.ndarray  # row block (DAC width, row table) of each crossbar
    n_blocks: int
    block_gathers: list  # per DAC width: (dac, blocks, their rows concatenated, segment starts)
    dacs: list  # distinct (dac, T)
    #: per number of copies n: (the crossbars with n copies, their copies' chips [., n], tiles [., n])
    copy_sets: list
    place0: tuple
    colhomes: dict
    path: str = "fast"  # what the report says ran: the fused fast path, or a bit-level crossbar group


@dataclass
class ConvStep:
    """A fused conv chain (``Machine._run_conv``) on sources of one shape, type and home, in chunks
    of one size: what its runs share, checked once. ``events`` and ``homes`` are filled by its
    first run (its im2col's, shiftadd's and requant's events; the buffer homes it sets)."""

    plan: KC.ConvPlan
    bits: int
    has_im2col: bool
    out_dtype: np.dtype
    out_shape: tuple | None  # a fully connected layer's output shape, else None ([B, N, Ho, Wo])
    codes: tuple[int, int]  # the source codes the columns take
    r: int  # the requant's index
    cols_name: str
    colres_name: str
    out_name: str
    P: int  # iterations
    xsize: int  # bytes per column element
    tables: dict  # DAC width -> non-zero digits per code (None: a popcount)
    events: list | None = None  # (instruction, events)
    homes: dict = field(default_factory=dict)


@dataclass
class Replay:
    """A chunk's run on the fast path, recorded so that chunks of the same shapes, types and
    proven bounds run again without the interpreter (``Machine.run_chunk``). Valid because every
    step it holds was decided by what the key fixes, never by the data: fused conv layers whose
    codes' bounds were proved (not scanned), and digital ops whose checks are of shapes only.

    ``steps``: (kind, what it runs, buffers to free after it); ``events``: what every
    instruction counted besides the fused layers' data-dependent dac_ones (counted again each
    replay), added to the records per replay at ``flush_events``."""

    steps: list
    events: list  # (instruction, {event: count})


def _need(instr: Instr, name: str, index: int) -> Any:
    try:
        return instr.fields[name]
    except KeyError:
        raise ProgramError(f"instruction {index} ({instr.opcode}) has no field {name!r}") from None


#: the fields the mvms of one run (``Machine.mvm_runs``) share
_RUN_KEYS = ("src", "dst", "bits", "dac_bits")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _psum_bytes(bits: int, xb) -> int:
    """Width of one column result of crossbar ``xb`` at input width ``bits``: what a partial sum
    needs, for the router (shiftadd)."""
    return _ceil_div(max(((1 << bits) - 1) * xb.max_col_sum, 1).bit_length(), 8)


class Machine:
    """A program prepared for execution: declarations indexed and checked once, then run per chunk."""

    def __init__(self, program: Program):
        if program.version[0] != FORMAT_VERSION[0] or program.version[1] > FORMAT_VERSION[1]:  # older minors run
            raise ProgramError(
                f"program format version {program.version[0]}.{program.version[1]} is not supported by this runtime "
                f"(it runs version {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]})"
            )
        validate_program(program, "the program")
        self.program = program
        # defaults filled in, so hand-built programs may omit fields that have one
        self.instrs = [
            Instr(i.opcode, canonical_fields(i.opcode, i.fields) if not OPCODES[i.opcode].reserved else i.fields, i.layer)
            for i in program.instrs
        ]
        try:  # the embedded machine description, checked and completed like any configuration
            self.cfg = hwconfig.validate(program.config if isinstance(program.config, dict) else {}, "the program's embedded configuration")
        except ConfigError as err:
            raise ProgramError(str(err)) from None
        self.buffers: dict[str, Buffer] = {}
        for b in program.buffers:
            if b.dtype not in DTYPES or b.dtype == "f64":
                raise ProgramError(f"buffer {b.name!r} has element type {b.dtype!r}; buffers are u8 u16 i8 i16 i32 i64")
            if not b.shape or any(d < 1 for d in b.shape[1:]) or b.shape[0] < -1 or b.shape[0] == 0:
                raise ProgramError(f"buffer {b.name!r} has an invalid shape {b.shape}")
            self.buffers[b.name] = b
        self.consts = {c.name: c.array for c in program.consts}
        try:
            cell_bits = int(self.cfg["crossbar"]["cell_bits"])
        except (KeyError, TypeError, ValueError):
            raise ProgramError("the program's hardware configuration has no crossbar.cell_bits") from None
        self.xbars: dict[int, K.XbarInfo] = {}
        self.place: dict[int, tuple[int, int]] = {}
        self.copy_places: dict[int, list[tuple[int, int]]] = {}
        self.batch = 1  # images in the chunk being run (how replicated layers share iterations)
        for xb in program.xbars:
            if xb.id in self.xbars:
                raise ProgramError(f"crossbar {xb.id} is declared twice")
            image = self._const(xb.image, f"crossbar {xb.id} image")
            table = self._const(xb.row_table, f"crossbar {xb.id} row table")
            self.xbars[xb.id] = K.prepare_xbar(xb, image, table, cell_bits)
            self.place[xb.id] = (int(xb.chip), int(xb.tile))
            # the tiles of all its copies (a replicated layer's: replication of them, isa.md §1)
            self.copy_places[xb.id] = [self.place[xb.id], *((int(c[0]), int(c[1])) for c in xb.copies)]
        for p in [*program.inputs, *program.outputs]:
            if p.buf not in self.buffers:
                raise ProgramError(f"port {p.name!r} names an undeclared buffer {p.buf!r}")
            if not (math.isfinite(p.scale) and p.scale > 0):
                raise ProgramError(f"port {p.name!r} has an invalid scale {p.scale!r}")
        for i, ins in enumerate(program.instrs):
            if ins.opcode in RESERVED:
                raise ProgramError(f"instruction {i}: instruction {ins.opcode} is not implemented by this runtime (format {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]})")
            if ins.opcode not in _DISPATCH:
                raise ProgramError(f"instruction {i}: unknown opcode {ins.opcode!r}")
        self.flit_bits = int(self.cfg.get("router", {}).get("flit_bits", 32))
        # last instruction touching each buffer: its array is freed after it (outputs are kept)
        keep = {p.buf for p in program.outputs}
        self.free_after: dict[int, list[str]] = {}
        self.free_spans: dict[tuple[int, int], list[str]] = {}  # (i, last) -> free_after of i..last
        last: dict[str, int] = {}
        for i, ins in enumerate(self.instrs):
            op = OPCODES[ins.opcode]
            if op.reserved:
                continue
            for f in op.fields:
                v = ins.fields.get(f.name)
                if f.kind in ("buf", "src") and v in self.buffers:
                    last[v] = i
                elif f.kind == "bufs":
                    for b in v:
                        last[b] = i
        for name, i in last.items():
            if name not in keep:
                self.free_after.setdefault(i, []).append(name)
        self.peak_bytes = 0
        self.track_peak = False  # peak_bytes is measured on the chunk that sizes the others only
        # what all buffers of one image take together: a bound on an image's live memory
        self.bytes_per_image = sum(int(np.prod(b.shape[1:])) * DTYPES[b.dtype].itemsize for b in self.buffers.values() if b.shape[0] == -1)
        self.groups = self._fusable_groups(last)
        self.conv_chains = self._conv_chains(last, keep)
        self.conv_plans: dict[tuple[int, int, int], KC.ConvPlan | None] = {}
        self.conv_steps: dict[tuple, ConvStep | None] = {}
        self.table_bounds: dict[str, tuple[int, int]] = {}  # a lut's table constant -> its least and greatest entry
        self.mvm_runs = self._mvm_runs()
        self.mvm_run_end = dict(self._mvm_spans(_RUN_KEYS))  # first mvm of a run -> the index after it
        self.run_shiftadds = self._run_shiftadds(last, keep)
        self.run_fusions: dict[tuple[int, bool], tuple | None] = {}
        #: per fused bit-level layer (first mvm, fast path, bits): its groups' event keys, plans and
        #: sources, and their column homes by destination
        self.layer_group_plans: dict[tuple[int, bool, int], tuple[list, dict]] = {}
        #: per fused bit-level layer (first mvm, fast path): its sparse groups' batch and their indices
        self.sparse_batches: dict[tuple[int, bool], tuple] = {}
        self.xbar_groups: dict[tuple[int, ...], K.XbarGroup] = {}
        self.layer_mats: dict[tuple[int, int], K.LayerMatrix | None] = {}
        self.sa_plans: dict[tuple[str, int, int], K.ShiftaddPlan] = {}
        self.sa_active: dict[str, int] = {}
        #: a requant instruction's (bias, mult, shift) as given and as whole int64 vectors, per (index, channels)
        self.rq_consts: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}
        self.rq_scales: dict[int, tuple] = {}  # _requant_nchw_int64's last binary64 scales and their bound, per vectors
        #: a fused bit-level layer's shiftadd events and its sums' home, per (shiftadd, P, batch, bytes)
        self.sa_events: dict[tuple, tuple[dict[str, int], tuple[int, int]]] = {}
        self.fused_static: dict[int, tuple | None] = {}
        #: (first mvm, bits) of a fused layer, or ("group", mvms, bits) of a bit-level crossbar group
        self.fused_events_plans: dict[tuple, FusedEventsPlan] = {}
        #: the same keys -> executions so far: (P, itemsize, home, dac_ones per row block, images)
        self.fused_pending: dict[tuple, list] = {}
        #: recorded chunk runs by key (``run_chunk``); replays since the last flush_events, per key
        self.replays: dict[tuple, Replay | None] = {}
        self.replayed: dict[tuple, int] = {}
        self.rec: list | None = None  # the steps of the chunk being recorded, or None
        self.prepared: set[bool] = set()
        self.deferred: list[Future] = []  # counts running on the counting thread (``_defer``)
        #: per path: the im2col results stored column by column (sparse products read most of them)
        self.k_major: dict[bool, set] = {}
        self.nz_tables: dict[tuple[int, int], np.ndarray] = {}

    def _conv_chains(self, last: dict[str, int], keep: set[str]) -> dict[int, tuple[int, int, int]]:
        """``[im2col ->] fused mvm group -> shiftadd -> requant`` chains whose intermediate buffers
        nothing else reads: on the fast path each runs as one channel-major layer (``kernels_conv``;
        without im2col, a fully connected layer is a 1x1 conv of a 1x1 map). First index (the
        im2col's, else the first mvm's) -> (first mvm, shiftadd, requant)."""
        chains: dict[int, tuple[int, int, int]] = {}
        ins, n = self.instrs, len(self.instrs)
        for first, (idx, sa) in self.groups.items():
            r = sa + 1
            if r >= n or ins[r].opcode != "requant":
                continue
            sums, colres = ins[sa].fields.get("dst"), ins[first].fields.get("dst")
            if ins[r].fields.get("src") != sums or last.get(sums) != r or sums in keep or colres in keep:
                continue
            i = first - 1
            if i >= 0 and ins[i].opcode == "im2col" and ins[i].fields.get("dst") == ins[first].fields.get("src"):
                cols = ins[i].fields["dst"]
                if last.get(cols) == idx[-1] and cols not in keep and ins[r].fields.get("layout") == "nchw":
                    chains[i] = (first, sa, r)
            elif ins[r].fields.get("layout") == "flat":
                chains[first] = (first, sa, r)
        return chains

    def _mvm_runs(self) -> dict[int, list[list[int]]]:
        """Runs of consecutive mvms (same source, destination, width and DAC width) split into the
        sets of crossbars that share a row table (a layer's row block): on the bit-level path
        each set runs as one grouped product (``kernels.mvm_group``)."""
        runs: dict[int, list[list[int]]] = {}
        ins = self.instrs
        for i, j in self._mvm_spans(_RUN_KEYS):
            sets: dict[bytes, list[int]] = {}
            for k in range(i, j):
                xid = ins[k].fields.get("xbar")
                xb = self.xbars.get(int(xid)) if isinstance(xid, int) else None
                if xb is None:
                    continue
                sets.setdefault(xb.row_idx.tobytes(), []).append(k)
            runs[i] = list(sets.values())
        return runs

    def _run_shiftadds(self, last: dict[str, int], keep: set[str]) -> dict[int, int]:
        """Runs of mvms whose column results only the shiftadd right after them reads (and it
        starts from zeros): first mvm -> that shiftadd. On the bit-level path the shiftadd can
        then be fused into the grouped products (``_run_bitlevel_layer``)."""
        found: dict[int, int] = {}
        ins = self.instrs
        for first, end in self.mvm_run_end.items():
            cols = ins[first].fields.get("dst")
            if end < len(ins) and ins[end].opcode == "shiftadd" and ins[end].fields.get("src") == cols \
                    and last.get(cols) == end and cols not in keep and ins[end].fields.get("init", 1) == 1:
                found[first] = end
        return found

    def _mvm_spans(self, keys: tuple[str, ...]) -> list[tuple[int, int]]:
        """``(start, end)`` of each maximal run of consecutive mvms whose fields ``keys`` agree."""
        spans: list[tuple[int, int]] = []
        ins, n, i = self.instrs, len(self.instrs), 0
        while i < n:
            if ins[i].opcode != "mvm":
                i += 1
                continue
            f0 = ins[i].fields
            j = i
            while j < n and ins[j].opcode == "mvm" and all(ins[j].fields.get(k) == f0.get(k) for k in keys):
                j += 1
            spans.append((i, j))
            i = j
        return spans

    def _group_of(self, members: list[int]) -> K.XbarGroup:
        key = tuple(members)
        g = self.xbar_groups.get(key)
        if g is None:
            g = self.xbar_groups[key] = K.XbarGroup([self.xbars[int(self.instrs[k].fields["xbar"])] for k in members])
        return g

    def _fusable_groups(self, last: dict[str, int]) -> dict[int, tuple[list[int], int]]:
        """Runs of mvms (same source, destination and width) whose column results only the next
        shiftadd reads: on the fast path they run as one exact product (isa.md §6)."""
        groups: dict[int, tuple[list[int], int]] = {}
        ins, n = self.instrs, len(self.instrs)
        for i, j in self._mvm_spans(("src", "dst", "bits")):
            f0 = ins[i].fields
            if j < n and ins[j].opcode == "shiftadd" and ins[j].fields["src"] == f0["dst"] and last.get(f0["dst"]) == j:
                spans = sorted((int(ins[k].fields["col0"]), self.xbars[int(ins[k].fields["xbar"])].cols) for k in range(i, j)
                               if int(ins[k].fields["xbar"]) in self.xbars)
                disjoint = len(spans) == j - i and all(a0 + w <= b0 for (a0, w), (b0, _) in zip(spans, spans[1:]))
                if disjoint:
                    groups[i] = (list(range(i, j)), j)
        return groups

    # ------------------------------------------------------------------------------ storage

    def _const(self, name: str, what: str) -> np.ndarray:
        try:
            return self.consts[name]
        except KeyError:
            raise ProgramError(f"{what}: no constant named {name!r}") from None

    def read(self, name: str) -> np.ndarray:
        """A buffer (already written in this chunk) or a constant."""
        if name in self.env:
            return self.env[name]
        if name in self.consts:
            return self.consts[name]
        if name in self.buffers:
            raise ProgramError(f"instruction {self.pc} ({self.instr.opcode}) reads buffer {name!r} before anything wrote it")
        raise ProgramError(f"instruction {self.pc} ({self.instr.opcode}) names an unknown buffer or constant {name!r}")

    def decl(self, name: str) -> Buffer:
        try:
            return self.buffers[name]
        except KeyError:
            raise ProgramError(f"instruction {self.pc} ({self.instr.opcode}) writes {name!r}, which is not a declared buffer") from None

    def write(self, name: str, arr: np.ndarray, bounds: tuple[int, int] | None = None) -> np.ndarray:
        """Store a result in its declared buffer: shape and value range checked, declared type kept.

        ``bounds``: the result is known to lie in [lo, hi] (a clamp); only that is checked against
        the buffer type, not every element."""
        b = self.decl(name)
        arr = np.asarray(arr)
        fixed = b.shape[1:] if b.shape[0] == -1 else b.shape
        got = list(arr.shape[1:]) if b.shape[0] == -1 else list(arr.shape)
        if arr.ndim != len(b.shape) or got != list(fixed):
            raise ProgramError(
                f"instruction {self.pc} ({self.instr.opcode}) produces shape {list(arr.shape)} for buffer {name!r} declared {b.shape}"
            )
        dt = DTYPES[b.dtype]
        if arr.dtype != dt:
            lo, hi = D.type_range(dt)
            if bounds is not None:
                if bounds[0] < lo or bounds[1] > hi:
                    raise ProgramError(
                        f"instruction {self.pc} ({self.instr.opcode}) clamps to [{bounds[0]}, {bounds[1]}], "
                        f"beyond the range of buffer {name!r} ({b.dtype})"
                    )
            elif arr.size and (arr.min() < lo or arr.max() > hi):
                raise ProgramError(
                    f"instruction {self.pc} ({self.instr.opcode}) writes values in [{arr.min()}, {arr.max()}] "
                    f"to buffer {name!r} of type {b.dtype}"
                )
            arr = arr.astype(dt)
        self.env[name] = arr
        return arr

    def _bounds(self, name: str, arr: np.ndarray) -> tuple[int, int] | None:
        """Proven value bounds of buffer ``name`` when it still holds ``arr``."""
        vb = self.vbounds.get(name)
        if vb is not None and vb[0] is arr and self.env.get(name) is arr:
            return vb[1], vb[2]
        return None

    def _check_codes(self, name: str, src: np.ndarray, src2d: np.ndarray, bits: int, what: str) -> None:
        """K.check_codes, skipped when the buffer's proven bounds already lie in the range."""
        b = self._bounds(name, src)
        if b is not None and b[0] >= 0 and b[1] < (1 << bits):
            return
        K.check_codes(src2d, bits, what)

    # ------------------------------------------------------------------------------ routing

    def _copy_flits(self, xid: int, P: int, bytes_per_iter: int, home: tuple[int, int]) -> dict[str, int]:
        """Router traffic between place ``home`` and the copies of crossbar ``xid`` on other tiles
        (``bytes_per_iter`` for each iteration such a copy serves): its inputs there, or its column
        results back."""
        places = self.copy_places[xid]
        if len(places) == 1 and places[0] == home:
            return {}
        away = chip = 0
        for place, iters in zip(places, copy_shares(P, self.batch, len(places))):
            if place != home:
                away += iters
                chip += iters if place[0] != home[0] else 0
        ev = {}
        if away and bytes_per_iter > 0:
            ev["router_flits"] = _ceil_div(away * bytes_per_iter * 8, self.flit_bits)
            if chip:
                ev["chip_flits"] = _ceil_div(chip * bytes_per_iter * 8, self.flit_bits)
        return ev

    def _move(self, name: str, nbytes: int, to: tuple[int, int] | None) -> dict[str, int]:
        """Router traffic of ``nbytes`` of buffer ``name`` consumed at place ``to``."""
        src = self.homes.get(name)
        if to is None or src is None or src == to or nbytes <= 0:
            return {}
        flits = _ceil_div(nbytes * 8, self.flit_bits)
        ev = {"router_flits": flits}
        if src[0] != to[0]:
            ev["chip_flits"] = flits
        return ev

    # ------------------------------------------------------------------------------ execution

    def run_chunk(self, feeds: dict[str, np.ndarray], stats: list[InstrStats], fast_path: bool,
                  feed_bounds: dict[str, tuple[int, int]] | None = None) -> None:
        """Run the program on one chunk of inputs (buffer -> codes; ``feed_bounds``: the range the
        host's quantization clamped each to).

        On the fast path, the first chunk of given input shapes, types and bounds is recorded as it
        is interpreted; later such chunks replay the record (``Replay``): the same kernels on the
        data, without the interpreter's checks and bookkeeping, whose outcome the key fixes."""
        self.env: dict[str, np.ndarray] = {}
        self.checked: dict[tuple[str, int], np.ndarray] = {}
        self.homes: dict[str, tuple[int, int]] = {}
        # name -> (array, lo, hi): value bounds an instruction proved for the array it wrote
        # (requant's clamp, im2col of bounded codes, a fused product's |x|·Σ|W| bound), so later
        # instructions skip scanning it; valid only while the buffer still holds that array
        self.vbounds: dict[str, tuple[np.ndarray, int, int]] = {}
        self.colhomes: dict[str, dict[int, tuple[int, int, int]]] = {}  # dst -> col0 -> (place.., xbar)
        for name, arr in feeds.items():
            self.env[name] = arr
            self.batch = max(1, int(arr.shape[0]) if arr.ndim else 1)
            if feed_bounds and name in feed_bounds:
                self.vbounds[name] = (arr, *feed_bounds[name])
        key = None
        if fast_path and REPLAY and not self.track_peak:
            key = (tuple((n, a.shape, a.dtype.str) for n, a in feeds.items()), tuple(sorted((feed_bounds or {}).items())))
            rp = self.replays.get(key)
            if rp is not None:
                self._replay(key, rp)
                return
        before = None
        if key is not None and key not in self.replays:  # (a key whose recording failed is not tried again)
            self.rec = []
            before = [(dict(st.events), dict(st.adc_by_bits), st.path, st.xbar) for st in stats]
        try:
            self._interpret(stats, fast_path)
        finally:
            rec, self.rec = self.rec, None
        if before is not None:
            events = None if rec is None else _stats_delta(before, stats)
            self.replays[key] = None if events is None else Replay(rec, events)

    def _interpret(self, stats: list[InstrStats], fast_path: bool) -> None:
        """Execute the instructions on the chunk in ``env`` (recording into ``rec`` when it is a list)."""
        i, n = 0, len(self.instrs)
        while i < n:
            ins = self.instrs[i]
            self.pc, self.instr = i, ins
            if ins.opcode == "halt":
                break
            mark = -1 if self.rec is None else len(self.rec)
            if fast_path and i in self.conv_chains and self._run_conv(i, stats):
                last = self.conv_chains[i][2]
                self._step_done(i, last, mark)
                i = last + 1
                continue
            if fast_path and i in self.groups and self._run_fused(i, stats):
                last = self.groups[i][1]
                self._step_done(i, last, -1)
                i = last + 1
                continue
            if i in self.run_shiftadds:
                end = self._run_bitlevel_layer(i, stats, fast_path)
                if end is not None:
                    self._step_done(i, end - 1, -1)
                    i = end
                    continue
            if i in self.mvm_runs and self.mvm_runs[i]:
                end = self._run_mvm_run(i, stats, fast_path)
                self._step_done(i, end - 1, -1)
                i = end
                continue
            out = _DISPATCH[ins.opcode](self, ins, fast_path)
            st = stats[i]
            if isinstance(out, tuple):
                events, extra = out
                st.add(events)
                for k, v in extra.get("adc", {}).items():
                    st.adc_by_bits[k] = st.adc_by_bits.get(k, 0) + v
                if "path" in extra:
                    st.path = extra["path"] if st.path in (None, extra["path"]) else "mixed"
                st.xbar = extra.get("xbar", st.xbar)
            else:
                st.add(out)
            self._step_done(i, None, mark)
            i += 1

    def _step_done(self, i: int, last: int | None, mark: int) -> None:
        """After instructions i..last ran: free what they used last; when recording, the step they
        recorded (one, appended after ``mark`` entries; -1: they cannot be replayed) gets that list."""
        names = self._after(i, last)
        rec = self.rec
        if rec is not None:
            if mark >= 0 and len(rec) == mark + 1:
                rec[-1][2] = names
            else:
                self.rec = None

    def _replay(self, key: tuple, rp: Replay) -> None:
        """Run a recorded chunk (``run_chunk``) on the data in ``env``."""
        env, consts = self.env, self.consts
        for kind, what, drops in rp.steps:
            if kind == "conv":
                step, src_name, evkey, ev_plan, home = what
                _out, per_dac = self._conv_compute(step, env[src_name])
                self._pend(evkey, step.P, step.xsize, home, self._dac_ones(ev_plan, per_dac))
            else:
                fn, srcs, dst, cast = what
                res = fn(*[env[s] if s in env else consts[s] for s in srcs])
                env[dst] = res if cast is None else res.astype(cast)
            for name in drops:
                env.pop(name, None)
        self.replayed[key] = self.replayed.get(key, 0) + 1

    def _after(self, i: int, last: int | None = None) -> list[str]:
        """Track peak memory (on the chunk that measures it) and free the buffers whose last use
        was instruction i (or any of i..last, for instructions that ran together); returns their names."""
        if self.track_peak:
            self.peak_bytes = max(self.peak_bytes, sum(a.nbytes for a in self.env.values()))
        names = self.free_after.get(i, []) if last is None else self.free_spans.get((i, last))
        if names is None:
            names = self.free_spans[(i, last)] = [n for k in range(i, last + 1) for n in self.free_after.get(k, ())]
        for name in names:
            self.env.pop(name, None)
            self.vbounds.pop(name, None)
        if self.checked and names:
            for key in [c for c in self.checked if c[0] in names]:
                del self.checked[key]
        return names

    def _fused_static(self, first: int):
        """What a fused group needs that does not depend on the data: (mvm instrs, crossbars, bits,
        shiftadd instr, cols decl, out decl), or None when the group cannot run fused (cached)."""
        if first not in self.fused_static:
            self.fused_static[first] = self._fused_static_uncached(first)
        return self.fused_static[first]

    def _fused_static_uncached(self, first: int):
        idx, sa = self.groups[first]
        mv = [self.instrs[k] for k in idx]
        f0 = mv[0].fields
        bits = int(f0["bits"])
        xbs = [self.xbars[int(ins.fields["xbar"])] for ins in mv]
        for ins, xb in zip(mv, xbs):
            dac = int(ins.fields["dac_bits"])
            if dac < 1 or not xb.provably_lossless(dac) or ins.fields["order"] not in ("lsb", "msb"):
                return None
        sa_ins = self.instrs[sa]
        cdecl, odecl = self.buffers.get(f0["dst"]), self.buffers.get(sa_ins.fields["dst"])
        if cdecl is None or odecl is None or len(cdecl.shape) != 2 or len(odecl.shape) != 2 or int(sa_ins.fields["init"]) != 1:
            return None
        return mv, xbs, bits, sa_ins, cdecl, odecl

    def _fused_events_plan(self, first: int, bits: int) -> FusedEventsPlan:
        """What the events of fused group ``first`` need besides the data (built once per program
        and width, at preparation when the width is declared)."""
        key = (first, bits)
        if key not in self.fused_events_plans:
            self.fused_events_plans[key] = self._events_plan(self.groups[first][0], bits, "fast")
        return self.fused_events_plans[key]

    def _events_plan(self, ks: list[int], bits: int, path: str) -> FusedEventsPlan:
        """Per crossbar of mvms ``ks``, as arrays, what their events need besides the data."""
        mv = [self.instrs[k] for k in ks]
        xbs = [self.xbars[int(ins.fields["xbar"])] for ins in mv]
        dacs = [int(ins.fields["dac_bits"]) for ins in mv]
        blocks: dict[tuple[int, bytes], int] = {}  # (dac, row table) -> block: crossbars of a row block share dac_ones
        block_rows: list[np.ndarray] = []
        block_dac: list[int] = []
        block = []
        for xb, dac in zip(xbs, dacs):
            bk = (dac, xb.row_idx.tobytes())
            if bk not in blocks:
                blocks[bk] = len(block_rows)
                block_rows.append(np.asarray(xb.row_idx, dtype=np.intp))
                block_dac.append(dac)
            block.append(blocks[bk])
        gathers = []
        for dac in dict.fromkeys(block_dac):
            sel = [b for b, d in enumerate(block_dac) if d == dac and block_rows[b].size]
            if sel:
                sizes = [block_rows[b].size for b in sel]
                starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.intp)
                gathers.append((dac, np.asarray(sel, dtype=np.intp), np.concatenate([block_rows[b] for b in sel]), starts))
        colhomes = {}
        for ins, xb in zip(mv, xbs):
            colhomes[int(ins.fields["col0"])] = (self.place[xb.id], xb.cols, _psum_bytes(bits, xb), xb.id)
        return FusedEventsPlan(
            ks=list(ks),
            xbar_ids=[xb.id for xb in xbs],
            adc_bits=[xb.adc_bits for xb in xbs],
            T=np.array([_ceil_div(bits, d) for d in dacs], dtype=np.int64),
            rows_used=np.array([xb.rows_used for xb in xbs], dtype=np.int64),
            cols=np.array([xb.cols for xb in xbs], dtype=np.int64),
            block=np.array(block, dtype=np.intp),
            n_blocks=len(block_rows),
            block_gathers=gathers,
            dacs=[(d, _ceil_div(bits, d)) for d in dict.fromkeys(dacs)],
            copy_sets=self._copy_sets([xb.id for xb in xbs]),
            place0=self.place[xbs[0].id],
            colhomes=colhomes,
            path=path,
        )

    def _copy_sets(self, xids: list[int]) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Crossbars ``xids`` (by position) grouped by their number of copies n: (n, positions,
        the copies' chips [., n], tiles [., n]), for the router traffic of their inputs."""
        sets = []
        for n in sorted({len(self.copy_places[x]) for x in xids}):
            sel = [i for i, x in enumerate(xids) if len(self.copy_places[x]) == n]
            places = np.array([self.copy_places[xids[i]] for i in sel], dtype=np.int64).reshape(len(sel), n, 2)
            sets.append((n, np.array(sel, dtype=np.intp), places[:, :, 0], places[:, :, 1]))
        return sets

    def _pend_events(self, key: tuple, plan: FusedEventsPlan, P: int, itemsize: int, src_name: str, ones) -> tuple[int, int]:
        """Note one execution of a planned set of mvms (P iterations, dac_ones per row block) whose
        inputs come from buffer ``src_name``; returns that buffer's home."""
        home = self.homes.get(src_name)
        if home is None:  # the host loads model inputs where they are first used
            home = self.homes[src_name] = plan.place0
        self._pend(key, P, itemsize, home, ones)
        return home

    def _pend(self, key: tuple, P: int, itemsize: int, home: tuple[int, int], ones) -> None:
        """Note one execution of a planned set of mvms, its inputs at ``home``; the arithmetic on
        the plan's arrays is done once per run, in flush_events."""
        self.fused_pending.setdefault(key, []).append((P, itemsize, home, ones, self.batch))

    def flush_events(self, stats: list[InstrStats]) -> None:
        """Hand the fused groups' accumulated events to their mvm instructions' records (once per
        run, after execution: the data-dependent counting, dac_ones, happened during the run)."""
        for key, calls in self.fused_pending.items():
            plan = self.fused_events_plans[key]
            ev = sum(self._fused_event_rows(plan, *call) for call in calls)
            rows = ev.tolist()
            for k, xid, adc, row in zip(plan.ks, plan.xbar_ids, plan.adc_bits, rows):
                st = stats[k]
                e = st.events
                for name, v in zip(_FUSED_KEYS[:9], row):
                    e[name] = e.get(name, 0) + v
                if row[9]:
                    e["router_flits"] = e.get("router_flits", 0) + row[9]
                if row[10]:
                    e["chip_flits"] = e.get("chip_flits", 0) + row[10]
                st.adc_by_bits[adc] = st.adc_by_bits.get(adc, 0) + row[5]
                st.path = plan.path if st.path in (None, plan.path) else "mixed"
                st.xbar = xid
        self.fused_pending = {}
        for key, times in self.replayed.items():
            for k, ev in self.replays[key].events:
                stats[k].add({name: v * times for name, v in ev.items()})
        self.replayed = {}

    def _layer_matrix(self, first: int, k_in: int):
        """The fused layer matrix W_eff of group ``first`` for inputs of width ``k_in`` (built once
        per program and input width, cached on the machine)."""
        key = (first, k_in)
        if key not in self.layer_mats:
            lm = None
            st = self._fused_static(first)
            if st is not None:
                mv, xbs, bits, sa_ins, cdecl, odecl = st
                colmap = self.consts.get(sa_ins.fields["colmap"])
                parts = [(xb, int(ins.fields["col0"])) for ins, xb in zip(mv, xbs)]
                if colmap is not None and not any(c0 < 0 or c0 + xb.cols > cdecl.shape[1] for xb, c0 in parts):
                    try:
                        Wm = K.layer_matrix(parts, k_in, cdecl.shape[1], colmap, odecl.shape[1])
                    except ProgramError:
                        Wm = None  # the unfused path reports the error
                    lm = None if Wm is None else K.LayerMatrix(Wm, bits)
            self.layer_mats[key] = lm
        return self.layer_mats[key]

    def all_fused(self) -> bool:
        """Whether every crossbar layer is lossless, so runs fused on the fast path (by its
        crossbars and widths; known once prepared)."""
        return bool(self.groups) and all(self.fused_static.get(first) is not None for first in self.groups)

    def prepare(self, fast_path: bool) -> None:
        """Build, once per program, what execution multiplies by: the fast path's per-layer
        matrices (from the declared input widths), the bit-level crossbar groups (cells side by
        side, as floats) and the shiftadd plans. Done before execution is timed (reported as
        ``prepare_wall_s``); anything not prepared here is built on first use."""
        if fast_path in self.prepared:
            return
        if fast_path:
            for first in self.groups:
                sdecl = self.buffers.get(self.instrs[first].fields["src"])
                if sdecl is not None and sdecl.shape:
                    self._layer_matrix(first, int(sdecl.shape[-1]))
                try:
                    st = self._fused_static(first)
                    if st is not None:
                        self._fused_events_plan(first, st[2])
                except (KeyError, TypeError, ValueError, ProgramError):
                    pass  # execution reports what is wrong
            for i in self.conv_chains:
                sdecl = self.buffers.get(self.instrs[i].fields["src"])
                if sdecl is not None and len(sdecl.shape) == 4:
                    try:
                        plan = self._conv_plan(i, int(sdecl.shape[1]))
                        odecl = self.buffers.get(self.instrs[self.conv_chains[i][2]].fields["dst"])
                        if plan is not None and odecl is not None and DTYPES[sdecl.dtype].kind == "u":
                            KC.warm_up(plan, DTYPES[sdecl.dtype], DTYPES[odecl.dtype])
                    except (KeyError, TypeError, ValueError, ProgramError):
                        pass  # execution reports what is wrong
        # an im2col's columns -> the rows its mvm sets read by the sparse product, and by others
        column_readers: dict[str, list[int]] = {}
        for first, sets in self.mvm_runs.items():
            for members in sets:
                sparse, rows = False, 0
                try:
                    slow = []
                    for k in members:
                        f = self.instrs[k].fields
                        dac = int(f["dac_bits"])
                        xb = self.xbars[int(f["xbar"])]
                        if dac >= 1 and not (fast_path and xb.provably_lossless(dac)):
                            slow.append(k)
                    if slow:
                        f = self.instrs[slow[0]].fields
                        g = self._group_of(slow)
                        g.prepare(int(f["bits"]), int(f["dac_bits"]))
                        sparse = len(slow) == len(members) and g.sparse_plan(int(f["bits"]), int(f["dac_bits"])) is not None
                        rows = g.rows_used
                except (KeyError, TypeError, ValueError, ProgramError):
                    pass  # execution reports what is wrong
                counts = column_readers.setdefault(self.instrs[first].fields.get("src"), [0, 0])
                counts[0 if sparse else 1] += rows
        # stored column by column where the sparse products read most of them (any layout reads right)
        self.k_major[fast_path] = {name for name, (by_sparse, by_others) in column_readers.items() if by_sparse > by_others}
        for ins in self.instrs:
            if ins.opcode != "shiftadd":
                continue
            try:
                sdecl, ddecl = self.buffers.get(ins.fields["src"]), self.buffers.get(ins.fields["dst"])
                colmap = self.consts.get(ins.fields["colmap"])
                if sdecl is None or ddecl is None or colmap is None or len(sdecl.shape) != 2 or len(ddecl.shape) != 2:
                    continue
                self._shiftadd_plan(ins.fields["colmap"], colmap, ddecl.shape[1], sdecl.shape[1])
            except (KeyError, TypeError, ValueError, ProgramError):
                continue
        for first in self.run_shiftadds:  # the folded shiftadds (their plans, and the kernels they call)
            fusion = self._run_fusion(first, fast_path)
            if fusion is not None:  # (and what its groups' products and events keep per layer)
                groups, _fast, _plan, (tgt, cf, _stored), _vmax, bits, dac = fusion
                try:
                    self._sparse_batch_of((first, fast_path), groups, tgt, cf, bits, dac)
                    self._layer_group_plans((first, fast_path), groups, bits)
                except (KeyError, TypeError, ValueError, ProgramError):
                    pass  # execution reports what is wrong
            if fusion is not None and fusion[1]:
                _warm("columns", JIT.columns_into_sums, np.zeros((1, 1), dtype=np.int64), np.full(1, -1, dtype=np.int64),
                      np.zeros(1, dtype=np.int64), np.zeros((1, 0), dtype=np.int64), np.zeros((1, 0), dtype=np.int64))
        for ins in self.instrs:  # requant instructions to NCHW, per source and destination type
            if ins.opcode != "requant" or ins.fields.get("layout") != "nchw":
                continue
            sdecl, ddecl = (self.buffers.get(v) if isinstance(v, str) else None for v in (ins.fields.get("src"), ins.fields.get("dst")))
            if sdecl is not None and ddecl is not None:
                st, dt = DTYPES[sdecl.dtype], DTYPES[ddecl.dtype]
                one = np.ones(1, dtype=np.int64)
                for fscale in (np.empty(0), np.ones(1)):
                    _warm(("requant", st.str, dt.str, fscale.size), JIT.requant_nchw, np.zeros((1, 1), dtype=st), one, one, one,
                          fscale, 0, 0, 0, np.zeros((1, 1, 1), dtype=dt), 0, 0, 1)
        _warm("block_sums", JIT.block_sums, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.intp), np.zeros(1, dtype=np.intp),
              np.zeros(1, dtype=np.intp), np.zeros(1, dtype=np.int64))  # (the fused layers' dac_ones per row block)
        for p in self.program.inputs:  # the host's input quantization, per input type
            decl = self.buffers.get(p.buf)
            if decl is not None:
                dt = DTYPES[decl.dtype]
                _warm(("quantize", dt.str), JIT.quantize_f32, np.zeros(1, dtype=np.float32), np.float32(1), np.float32(0),
                      np.float32(0), np.float32(0), np.zeros(1, dtype=dt))
        for ins in self.instrs:  # adds, per operand and destination types
            decls = [self.buffers.get(v) if isinstance(v, str) else None for v in (ins.fields.get(k) for k in ("a", "b", "dst"))]
            if ins.opcode == "add" and None not in decls:
                ta, tb, td = (DTYPES[d.dtype] for d in decls)
                _warm(("add", ta.str, tb.str, td.str), JIT.add_exact, np.zeros(1, dtype=ta), np.zeros(1, dtype=tb),
                      0.0, 0.0, 1.0, 1.0, 1.0, 0, 0, 0, np.zeros(1, dtype=td))
        self.prepared.add(fast_path)

    def _shiftadd_plan(self, name: str, colmap: np.ndarray, n_out: int, ncols: int) -> K.ShiftaddPlan:
        """The prepared plan of column map ``name`` for n_out outputs from ncols columns (built once)."""
        key = (name, n_out, ncols)
        plan = self.sa_plans.get(key)
        if plan is None:
            plan = self.sa_plans[key] = K.ShiftaddPlan(colmap, n_out, ncols)
        return plan

    def _nz_table(self, bits: int, dac: int, dtype: np.dtype) -> np.ndarray | None:
        """Non-zero DAC digits per code value (uint8), or None where a popcount gives them (1-bit digits)."""
        if dac == 1 and dtype.kind == "u":
            return None
        key = (bits, dac)
        tab = self.nz_tables.get(key)
        if tab is None:
            tab = self.nz_tables[key] = K.digit_nonzero_table(bits, dac, _ceil_div(bits, dac)).astype(np.uint8)
        return tab

    def _fused_mvm_events(self, first: int, bits: int, P: int, per_dac, itemsize: int,
                          src_name: str, cols_name: str) -> tuple[int, int]:
        """The events of fused group ``first``'s mvms over P iterations, exactly as the instructions
        count them: from per-crossbar arrays prepared once (rows in use, columns, steps, row blocks),
        scaled by P, and ``per_dac`` (DAC width -> non-zero digits per input element, summed over
        the iterations; or a function that counts them, run on the counting thread: ``_defer``).
        Accumulated per group; flush_events hands them to the instructions. Returns the home of
        the mvms' inputs."""
        plan = self._fused_events_plan(first, bits)
        self.colhomes[cols_name] = dict(plan.colhomes)
        return self._pend_events((first, bits), plan, P, itemsize, src_name, self._dac_ones(plan, per_dac))

    def _dac_ones(self, plan: FusedEventsPlan, per_dac):
        """dac_ones per row block of ``plan`` from ``per_dac`` (as ``_fused_mvm_events`` takes it);
        a Future when it is counted on the counting thread."""

        def block_ones(per_dac: dict[int, np.ndarray]) -> np.ndarray:
            # one compiled segmented sum per DAC width
            ones = np.zeros(plan.n_blocks, dtype=np.int64)  # (a block of no used rows: 0)
            for dac, sel, rows_cat, starts in plan.block_gathers:
                JIT.block_sums(per_dac[dac], rows_cat, starts, sel, ones)
            return ones

        return self._defer(lambda: block_ones(per_dac())) if callable(per_dac) else block_ones(per_dac)

    def _defer(self, count):
        """``count()`` (a data-dependent event count that nothing in the run waits for) on the
        counting thread, beside the main thread's next layers; a Future that ``settle`` waits for
        before the run ends. Inline when the runtime has one worker."""
        if K._workers() <= 1:
            return count()
        if not _COUNTER:
            _COUNTER.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="pimc-count"))
        fut = _COUNTER[0].submit(count)
        self.deferred.append(fut)
        return fut

    def settle(self, quiet: bool = False) -> None:
        """Wait for the deferred counts (part of the run: before its time is taken) and put their
        results where the events wait for them; a count's error is raised here (``quiet``: not)."""
        pending, self.deferred = self.deferred, []
        errors = [e for e in (fut.exception() for fut in pending) if e is not None]  # (waits for each)
        if errors:
            if quiet:
                return
            raise errors[0]
        for calls in self.fused_pending.values():
            for j, call in enumerate(calls):
                if isinstance(call[3], Future):
                    calls[j] = (*call[:3], call[3].result(), *call[4:])

    def _fused_event_rows(self, plan: FusedEventsPlan, P: int, itemsize: int, home: tuple, ones: np.ndarray,
                          batch: int) -> np.ndarray:
        """[crossbars, _FUSED_KEYS] events of one execution of a fused group (isa.md §3.2)."""
        steps = P * plan.T
        ev = np.empty((len(plan.ks), len(_FUSED_KEYS)), dtype=np.int64)
        ev[:, 0] = steps
        ev[:, 1] = steps * plan.rows_used
        ev[:, 2] = ones[plan.block]
        ev[:, 3] = ev[:, 1] * plan.cols
        ev[:, 4] = ev[:, 5] = ev[:, 6] = steps * plan.cols
        ev[:, 7] = ev[:, 8] = P * itemsize * plan.rows_used
        # inputs to the copies on other tiles than the source's (one copy unless replicated)
        away, chip = np.zeros(len(plan.ks), dtype=np.int64), np.zeros(len(plan.ks), dtype=np.int64)
        for n, sel, chips, tiles in plan.copy_sets:
            iters = np.array(copy_shares(P, batch, n), dtype=np.int64)
            away[sel] = (((chips != home[0]) | (tiles != home[1])).astype(np.int64) @ iters)
            chip[sel] = (chips != home[0]).astype(np.int64) @ iters
        per_iter = itemsize * plan.rows_used * 8
        ev[:, 9] = -(-(away * per_iter) // self.flit_bits)
        ev[:, 10] = -(-(chip * per_iter) // self.flit_bits)
        return ev

    def _conv_geometry(self, i: int) -> tuple:
        """(kernel, stride, pad, dilation, pad value) of chain ``i``: its im2col's, or a 1x1 conv's."""
        f = self.instrs[i].fields
        if i == self.conv_chains[i][0]:  # no im2col: a fully connected layer
            return (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 0
        return f["kernel"], f["stride"], f["pad"], f["dilation"], int(f["pad_value"])

    def _conv_plan(self, i: int, C: int) -> KC.ConvPlan | None:
        """The exact plan of conv chain ``i`` for inputs of C channels (built once, cached), or None."""
        first, _sa, r = self.conv_chains[i]
        st = self._fused_static(first)
        bits = None if st is None else st[2]
        key = (i, C, bits)
        if key in self.conv_plans:
            return self.conv_plans[key]
        plan = None
        rq = self.instrs[r].fields
        geometry = self._conv_geometry(i)
        kh, kw = (int(k) for k in geometry[0])
        lm = None if st is None else self._layer_matrix(first, C * kh * kw)
        consts = [self.consts.get(rq[k]) for k in ("bias", "mult", "shift")]
        N = st[5].shape[1] if st is not None else 0
        if lm is not None and lm.Wm.shape == (C * kh * kw, N) and all(
                c is not None and np.asarray(c).size in (1, N) for c in consts):
            plan = KC.plan_conv(lm, bits, *geometry, C, *consts, int(rq["zp"]), int(rq["lo"]), int(rq["hi"]))
        self.conv_plans[key] = plan
        return plan

    def _run_conv(self, i: int, stats: list[InstrStats]) -> bool:
        """A lossless layer's [im2col,] mvms, shiftadd and requant as one channel-major exact
        computation (``kernels_conv``), with the events the instructions would count. False
        (nothing done) when it does not apply; then they run as usual (and report any error).

        What does not depend on the data is checked and counted once per source shape, type and
        home and chunk size (a ``ConvStep``); each run checks the codes' bounds, computes, counts
        the DAC digits and adds the step's events."""
        src_name = self.instrs[i].fields["src"]
        src = self.env.get(src_name)
        if src is None:
            return False
        key = (i, src.shape, src.dtype, self.batch, self.homes.get(src_name))
        step = self.conv_steps.get(key, False)
        if step is False:
            step = self.conv_steps[key] = self._conv_step(i, src)
        if step is None or step.colres_name in self.env:
            return False
        # every code the crossbars see (the source's and the pad value) must be a valid input of
        # the columns' type and width
        b = self._bounds(src_name, src)
        if b is None:
            self.rec = None  # (a check of the data: not a step to replay)
        lo, hi = b if b is not None else ((int(src.min()), int(src.max())) if src.size else (0, 0))
        if lo < step.codes[0] or hi > step.codes[1]:
            return False
        self.pc, self.instr = step.r, self.instrs[step.r]
        out, per_dac = self._conv_compute(step, src)
        self.vbounds[step.out_name] = (out, step.plan.lo, step.plan.hi)  # (its shape and type, and the clamp's range, checked with the step)
        first, sa, _r = self.conv_chains[i]
        again = step.events is not None
        if again:  # where the step's first run left its buffers (a function of the source's home, in the key)
            self.homes.update(step.homes)
        elif step.has_im2col and src_name in self.homes:
            self.homes[step.cols_name] = self.homes[src_name]
        home = self._fused_mvm_events(first, step.bits, step.P, per_dac, step.xsize, step.cols_name, step.colres_name)
        if self.rec is not None:
            evkey = (first, step.bits)
            self.rec.append(["conv", (step, src_name, evkey, self.fused_events_plans[evkey], home), []])
        if not again:  # the step's first run: its other events, as the instructions count them
            step.events = self._conv_static_events(i, step)
            names = (src_name, step.cols_name, self.instrs[sa].fields["dst"], step.out_name)
            step.homes = {n: self.homes[n] for n in names if n in self.homes}
        for k, ev in step.events:
            stats[k].add(ev)
        return True

    def _conv_compute(self, step: ConvStep, src: np.ndarray):
        """A checked fused conv step on ``src``: its output (stored in ``env``), and its DAC digits
        per column and DAC width (as ``_fused_mvm_events`` takes them)."""
        src4 = src if step.has_im2col else src.reshape(*src.shape, 1, 1)
        plan, tables = step.plan, step.tables

        def count() -> dict[int, np.ndarray]:
            return {dac: KC.ones_per_column(src4, plan, tab) for dac, tab in tables.items()}

        # large sources are counted on the counting thread; small ones inline, as handing them over
        # costs more (the threads would take turns holding the interpreter lock)
        deferred = src4.size >= DEFER_MIN_ELEMS
        both = None
        if not deferred and len(tables) == 1:  # a small layer: its output and its one DAC width's counts together
            (dac, table), = tables.items()
            both = KC.run_conv_counting(src4, plan, step.out_dtype, table)
        if both is not None:
            out, per_dac = both[0], {dac: both[1]}
        else:
            out = KC.run_conv(src4, plan, step.out_dtype)
            per_dac = count if deferred else count()
        if step.out_shape is not None:
            out = out.reshape(step.out_shape)
        self.env[step.out_name] = out
        return out, per_dac

    def _conv_step(self, i: int, src: np.ndarray) -> ConvStep | None:
        """What conv chain ``i`` needs to run fused on sources of ``src``'s shape and type, checked:
        None when it does not apply (then the instructions run as usual and report any error)."""
        first, _sa, r = self.conv_chains[i]
        im, rq = self.instrs[i], self.instrs[r]
        has_im2col = i != first
        src_name = im.fields["src"]
        cols_name = im.fields["dst"] if has_im2col else src_name  # what the mvms read
        colres_name, out_name = self.instrs[first].fields["dst"], rq.fields["dst"]
        if src.ndim != (4 if has_im2col else 2) or src.dtype.kind != "u":
            return None
        st = self._fused_static(first)
        if st is None:
            return None
        bits = st[2]
        C = src.shape[1]
        plan = self._conv_plan(i, C)
        xdecl, odecl = self.buffers.get(cols_name), self.buffers.get(out_name)
        if plan is None or xdecl is None or odecl is None or len(xdecl.shape) != 2:
            return None
        B, H, W = (src.shape[0], *src.shape[2:]) if has_im2col else (src.shape[0], 1, 1)
        Ho, Wo = KC.out_hw(plan, H, W)
        if Ho <= 0 or Wo <= 0 or xdecl.shape[1] != C * plan.kernel[0] * plan.kernel[1]:
            return None
        if has_im2col and [int(v) for v in rq.fields["out_hw"]] != [Ho, Wo]:
            return None
        if not has_im2col and math.prod(odecl.shape[1:]) != plan.N:
            return None
        out_shape = None if has_im2col else (B, *odecl.shape[1:])
        if odecl.shape[0] != -1 and list(out_shape or (B, plan.N, Ho, Wo)) != list(odecl.shape):
            return None
        if has_im2col and list(odecl.shape[1:]) != [plan.N, Ho, Wo]:
            return None
        # the codes the columns take (their type's and the width's), which must hold the pad value;
        # requant's clamp must fit its destination
        xlo, xhi = D.type_range(DTYPES[xdecl.dtype])
        olo, ohi = D.type_range(DTYPES[odecl.dtype])
        codes = (max(0, xlo), min(xhi, (1 << bits) - 1))
        if not codes[0] <= plan.pad_value <= codes[1] or plan.lo < olo or plan.hi > ohi:
            return None
        return ConvStep(
            plan=plan, bits=bits, has_im2col=has_im2col, out_dtype=DTYPES[odecl.dtype], out_shape=out_shape, codes=codes,
            r=r, cols_name=cols_name, colres_name=colres_name, out_name=out_name, P=B * Ho * Wo,
            xsize=DTYPES[xdecl.dtype].itemsize,
            tables={dac: self._nz_table(bits, dac, src.dtype) for dac, _T in self._fused_events_plan(first, bits).dacs},
        )

    def _conv_static_events(self, i: int, step: ConvStep) -> list[tuple[int, dict[str, int]]]:
        """The events of conv chain ``i``'s im2col, shiftadd and requant (all but its mvms'), as
        each instruction counts them (they depend on the step only); the sums' and the output's
        homes set as the instructions set them."""
        first, sa, r = self.conv_chains[i]
        sa_ins = self.instrs[sa]
        sums_name = sa_ins.fields["dst"]
        cdecl, sdecl = self.buffers[self.instrs[first].fields["dst"]], self.buffers[sums_name]
        P, Kc = step.P, self.buffers[step.cols_name].shape[1]
        events = []
        if step.has_im2col:
            events.append((i, {"buffer_read_bytes": P * Kc * step.xsize, "buffer_write_bytes": P * Kc * step.xsize}))
        sbytes = P * sdecl.shape[1] * DTYPES[sdecl.dtype].itemsize
        events.append((sa, self._shiftadd_events(sa_ins, step.colres_name, P, DTYPES[cdecl.dtype].itemsize, sbytes)))
        out_size = P * step.plan.N
        events.append((r, {"digital_ops": out_size, "buffer_read_bytes": sbytes,
                           "buffer_write_bytes": out_size * step.out_dtype.itemsize}))
        self._inherit(step.out_name, [sums_name])
        return events

    def _run_fused(self, first: int, stats: list[InstrStats]) -> bool:
        """A lossless layer's mvms and shiftadd as one exact product x @ W_eff, with the events the
        instructions would count. False (nothing done) when it does not apply; then they run one by one."""
        sa = self.groups[first][1]
        f0 = self.instrs[first].fields
        src_name, cols_name = f0["src"], f0["dst"]
        if cols_name in self.env or src_name not in self.env:
            return False  # stale columns from an earlier use would survive the unfused path; errors go there too
        st = self._fused_static(first)
        if st is None:
            return False
        bits, sa_ins, cdecl = st[2], st[3], st[4]
        src = self.env[src_name]
        src2d = src.reshape(-1, src.shape[-1]) if src.ndim != 2 else src
        lm = self._layer_matrix(first, src2d.shape[1])
        if lm is None or lm.Wm.shape[0] != src2d.shape[1]:
            return False
        self.pc = first
        self._check_codes(src_name, src, src2d, bits, f"mvm (instruction {first})")
        acc = lm.apply(src2d, bits)
        if acc is None:
            return False
        P = src2d.shape[0]
        per_dac: dict[int, np.ndarray] = {}
        for dac, _T in self._fused_events_plan(first, bits).dacs:  # non-zero DAC digits per input element, summed over iterations
            tab = self._nz_table(bits, dac, src2d.dtype)
            per_dac[dac] = (np.bitwise_count(src2d) if tab is None else np.take(tab, src2d)).sum(axis=0, dtype=np.int64)
        self._fused_mvm_events(first, bits, P, per_dac, src2d.dtype.itemsize, src_name, cols_name)
        self.pc, self.instr = sa, sa_ins
        out = self.write(sa_ins.fields["dst"], acc)
        if out is acc:  # |x @ W_eff| <= (2^bits - 1) · max_n Σ_k |W[k, n]|
            vmax = ((1 << bits) - 1) * lm.colsum
            self.vbounds[sa_ins.fields["dst"]] = (out, -vmax, vmax)
        stats[sa].add(self._shiftadd_events(sa_ins, cols_name, P, DTYPES[cdecl.dtype].itemsize, out.nbytes))
        return True

    # ------------------------------------------------------------------ crossbar instructions

    def op_im2col(self, ins: Instr, fast: bool):
        f = ins.fields
        src = self.read(_need(ins, "src", self.pc))
        dst_name = _need(ins, "dst", self.pc)
        pv = int(_need(ins, "pad_value", self.pc))
        out = K.im2col(src, _need(ins, "kernel", self.pc), _need(ins, "stride", self.pc), _need(ins, "pad", self.pc),
                       _need(ins, "dilation", self.pc), pv, k_major=dst_name in self.k_major.get(fast, ()))
        out = self.write(dst_name, out)
        b = self._bounds(f["src"], src)
        if b is not None:  # the source's codes and the pad value
            self.vbounds[dst_name] = (out, min(b[0], pv), max(b[1], pv))
        if f["src"] in self.homes:
            self.homes[dst_name] = self.homes[f["src"]]
        return {"buffer_read_bytes": out.nbytes, "buffer_write_bytes": out.nbytes}

    def _mvm_pre(self, ins: Instr, fast_path: bool):
        xid = int(_need(ins, "xbar", self.pc))
        if xid not in self.xbars:
            raise ProgramError(f"instruction {self.pc} (mvm) names undeclared crossbar {xid}")
        xb = self.xbars[xid]
        src_name = _need(ins, "src", self.pc)
        src = self.read(src_name)
        src2d = src.reshape(-1, src.shape[-1]) if src.ndim != 2 else src
        bits, dac_bits = int(_need(ins, "bits", self.pc)), int(_need(ins, "dac_bits", self.pc))
        lossless = xb.provably_lossless(dac_bits) if dac_bits >= 1 else False
        if xb.lossless_flag and not lossless:
            raise ProgramError(
                f"crossbar {xid} is marked lossless, but with {dac_bits}-bit DAC steps its ADC "
                f"({xb.adc_bits} bits, {xb.adc_mode}) can change a column sum"
            )
        use_fast = fast_path and lossless
        key = (src_name, bits)
        if self.checked.get(key) is not src:  # once per source array and width, not per crossbar
            self._check_codes(src_name, src, src2d, bits, f"mvm on crossbar {xid} (instruction {self.pc})")
            self.checked[key] = src
        return xb, src2d, bits, dac_bits, use_fast

    def op_mvm(self, ins: Instr, fast_path: bool):
        xb, src2d, bits, dac_bits, use_fast = self._mvm_pre(ins, fast_path)
        res, events = K.mvm(src2d, xb, bits, dac_bits, _need(ins, "order", self.pc), use_fast)
        return self._mvm_post(ins, xb, src2d, bits, dac_bits, use_fast, res, events)

    def _mvm_post(self, ins: Instr, xb, src2d, bits: int, dac_bits: int, use_fast: bool, res, events, store: bool = True):
        """Store one mvm's column results (unless a fused shiftadd took them: ``store`` False) and
        complete its events."""
        xid = xb.id
        src_name, dst_name = ins.fields["src"], _need(ins, "dst", self.pc)
        col0 = int(_need(ins, "col0", self.pc))
        decl = self.decl(dst_name)
        if len(decl.shape) != 2:
            raise ProgramError(f"mvm destination {dst_name!r} must be a 2-d [P, columns] buffer")
        P, ccol = src2d.shape[0], decl.shape[1]
        if col0 < 0 or col0 + xb.cols > ccol:
            raise ProgramError(f"instruction {self.pc} (mvm): columns {col0}..{col0 + xb.cols - 1} of crossbar {xid} fall outside {dst_name!r} ({ccol} columns)")
        lo, hi = D.type_range(DTYPES[decl.dtype])
        if res.size and (res.min() < lo or res.max() > hi):
            raise ProgramError(f"mvm on crossbar {xid}: column results overflow buffer {dst_name!r} ({decl.dtype})")
        if store:
            dst = self.env.get(dst_name)
            if dst is None or dst.shape[0] != P:
                dst = np.zeros((P, ccol), dtype=DTYPES[decl.dtype])
                self.env[dst_name] = dst
                self.colhomes[dst_name] = {}
            self.vbounds.pop(dst_name, None)  # written in place
            dst[:, col0 : col0 + xb.cols] = res
        place = self.place[xid]
        if src_name not in self.homes:
            self.homes[src_name] = place  # the host loads model inputs where they are first used
        events.update(self._copy_flits(xid, P, xb.rows_used * src2d.dtype.itemsize, self.homes[src_name]))
        self.colhomes[dst_name][col0] = (place, xb.cols, _psum_bytes(bits, xb), xid)
        T = _ceil_div(bits, dac_bits)
        return events, {"adc": {xb.adc_bits: events["adc_conversions"]}, "path": "fast" if use_fast else "bit-level", "xbar": xid, "steps": T}

    def _record(self, k: int, out, stats: list[InstrStats]) -> None:
        st = stats[k]
        events, extra = out
        st.add(events)
        for b, v in extra.get("adc", {}).items():
            st.adc_by_bits[b] = st.adc_by_bits.get(b, 0) + v
        st.path = extra["path"] if st.path in (None, extra["path"]) else "mixed"
        st.xbar = extra.get("xbar", st.xbar)

    def _group_events(self, ks: list[int], bits: int, src2d: np.ndarray, dac_ones: int) -> None:
        """A bit-level crossbar group's mvm events, as _mvm_post would count them one by one (one
        row block: one dac_ones), pending until flush_events."""
        key, plan = self._group_plan(ks, bits)
        f = self.instrs[ks[0]].fields
        self._pend_events(key, plan, src2d.shape[0], src2d.dtype.itemsize, f["src"], np.array([dac_ones], dtype=np.int64))
        self.colhomes.setdefault(f["dst"], {}).update(plan.colhomes)

    def _group_plan(self, ks: list[int], bits: int) -> tuple[tuple, FusedEventsPlan]:
        """A bit-level crossbar group's events key and plan (built once)."""
        key = ("group", tuple(ks), bits)
        if key not in self.fused_events_plans:
            self.fused_events_plans[key] = self._events_plan(ks, bits, "bit-level")
        return key, self.fused_events_plans[key]

    def _layer_group_events(self, layer: tuple, groups, bits: int, src2d: np.ndarray, group_ones: list[int]) -> None:
        """``_group_events`` of a fused bit-level layer's groups, with what does not depend on the
        data (each group's key and plan, their column homes merged) kept per layer (first mvm, fast
        path): one by one, ~6 µs a group (MobileNetV2: ~600 groups a run)."""
        keyed, merged = self._layer_group_plans(layer, groups, bits)
        P, itemsize = src2d.shape[0], src2d.dtype.itemsize
        for (key, plan, src_name), ones in zip(keyed, group_ones):
            self._pend_events(key, plan, P, itemsize, src_name, np.array([ones], dtype=np.int64))
        for dst, homes in merged.items():
            self.colhomes.setdefault(dst, {}).update(homes)

    def _layer_group_plans(self, layer: tuple, groups, bits: int) -> tuple[list, dict]:
        """What ``_layer_group_events`` keeps per layer (built once)."""
        cached = self.layer_group_plans.get((*layer, bits))
        if cached is None:
            keyed, merged = [], {}
            for members, _g, _c in groups:
                key, plan = self._group_plan(members, bits)
                f = self.instrs[members[0]].fields
                keyed.append((key, plan, f["src"]))
                merged.setdefault(f["dst"], {}).update(plan.colhomes)
            cached = self.layer_group_plans[(*layer, bits)] = (keyed, merged)
        return cached

    def _run_mvm_run(self, first: int, stats: list[InstrStats], fast_path: bool) -> int:
        """A run of mvms: the crossbars sharing a row table that take the bit-level path run as one
        grouped product; the others one by one. Returns the index after the run."""
        sets = self.mvm_runs[first]
        grouped = {k: s for s in sets for k in s}
        end = self.mvm_run_end[first]
        done: set[int] = set()
        dst_name = self.instrs[first].fields.get("dst")
        fresh = dst_name not in self.env  # the run's destination starts from zeros
        for k in range(first, end):
            if k in done:
                continue
            self.pc, self.instr = k, self.instrs[k]
            members = grouped.get(k)
            if members is None:
                self._record(k, _DISPATCH["mvm"](self, self.instrs[k], fast_path), stats)
                continue
            pre = {}
            for m in members:
                self.pc, self.instr = m, self.instrs[m]
                pre[m] = self._mvm_pre(self.instrs[m], fast_path)
            slow = [m for m in members if not pre[m][4]]
            ones = None  # (the set shares its row table and inputs: dac_ones counted once)
            for m in members:
                if pre[m][4]:  # fast crossbars: one by one
                    self.pc, self.instr = m, self.instrs[m]
                    xb, src2d, bits, dac_bits, use_fast = pre[m]
                    res, events = K.mvm(src2d, xb, bits, dac_bits, _need(self.instrs[m], "order", m), use_fast, ones)
                    ones = events["dac_ones"]
                    self._record(m, self._mvm_post(self.instrs[m], xb, src2d, bits, dac_bits, use_fast, res, events), stats)
            if slow:
                for m in slow:
                    if self.instrs[m].fields.get("order") not in ("lsb", "msb"):
                        raise ProgramError(f"mvm on crossbar {pre[m][0].id}: order must be lsb or msb, got {self.instrs[m].fields.get('order')!r}")
                xb0, src2d, bits, dac_bits, _ = pre[slow[0]]
                if bits < 1 or dac_bits < 1:
                    raise ProgramError(f"mvm on crossbar {xb0.id}: bits and dac_bits must be positive")
                g = self._group_of(slow)
                self.pc, self.instr = slow[0], self.instrs[slow[0]]
                # the crossbars' columns side by side in the destination: written there in place
                dst_name = self.instrs[slow[0]].fields["dst"]
                decl = self.buffers.get(dst_name)
                c0 = int(self.instrs[slow[0]].fields["col0"])
                view = None
                if (decl is not None and len(decl.shape) == 2 and decl.dtype == "i64" and c0 >= 0
                        and c0 + int(g.offsets[-1]) <= decl.shape[1]
                        and all(int(self.instrs[m].fields["col0"]) == c0 + int(o) for m, o in zip(slow, g.offsets[:-1]))):
                    dst = self.env.get(dst_name)
                    if dst is None or dst.shape[0] != src2d.shape[0]:
                        dst = np.zeros((src2d.shape[0], decl.shape[1]), dtype=np.int64)
                        self.env[dst_name] = dst
                        self.colhomes[dst_name] = {}
                    self.vbounds.pop(dst_name, None)  # written in place
                    view = dst[:, c0 : c0 + int(g.offsets[-1])]
                res, dac_ones = K.mvm_group(src2d, g, bits, dac_bits, out=view)
                if view is not None:  # written in place: the group's events as one array (flush_events)
                    self._group_events(slow, bits, src2d, dac_ones)
                else:  # each crossbar's columns stored and counted by _mvm_post
                    T = _ceil_div(bits, dac_bits)
                    for m, o0, w in zip(slow, g.offsets[:-1], g.widths):
                        self.pc, self.instr = m, self.instrs[m]
                        xb = pre[m][0]
                        events = K.mvm_events(src2d.shape[0], T, xb, dac_ones, src2d.dtype.itemsize)
                        self._record(m, self._mvm_post(self.instrs[m], xb, src2d, bits, dac_bits, False, res[:, o0 : o0 + w], events), stats)
            done.update(members)
        out = self.env.get(dst_name)
        if fresh and out is not None and out.dtype == np.int64:
            # every column result is a sum of ADC outputs, each at most its read's sum:
            # 0 <= result <= (2^bits - 1)·(largest column sum); shiftadd need not scan for it
            bound = 0
            for k in range(first, end):
                f = self.instrs[k].fields
                xb = self.xbars.get(int(f["xbar"])) if isinstance(f.get("xbar"), int) else None
                if xb is None:
                    break
                bound = max(bound, ((1 << int(f["bits"])) - 1) * xb.max_col_sum)
            else:
                self.vbounds[dst_name] = (out, 0, bound)
        return end

    def _run_fusion(self, first: int, fast_path: bool):
        """What ``_run_bitlevel_layer`` needs besides the data, or None where it does not apply
        (built once per run and path): every mvm of the run is either on a provably lossless
        crossbar (fast path only) or in a bit-level group with a byte-packed or sparse plan (and no
        crossbar claims a lossless ADC it does not have: that error is the unfused path's), their columns
        lie apart in the i64 column buffer (a group's side by side), and every sum stays exact in
        int64."""
        key = (first, fast_path)
        if key in self.run_fusions:
            return self.run_fusions[key]
        fusion = None
        try:
            fusion = self._run_fusion_uncached(first, fast_path)
        except (KeyError, TypeError, ValueError, ProgramError):
            fusion = None  # the instructions, run one by one, report what is wrong
        self.run_fusions[key] = fusion
        return fusion

    def _run_fusion_uncached(self, first: int, fast_path: bool):
        sa, end = self.run_shiftadds[first], self.mvm_run_end[first]
        f0, sa_ins = self.instrs[first].fields, self.instrs[sa]
        bits, dac = int(f0["bits"]), int(f0["dac_bits"])
        cdecl, sdecl = self.buffers.get(f0["dst"]), self.buffers.get(sa_ins.fields["dst"])
        sets = self.mvm_runs.get(first) or []
        if (bits < 1 or dac < 1 or cdecl is None or sdecl is None or cdecl.dtype != "i64" or len(cdecl.shape) != 2
                or len(sdecl.shape) != 2 or sum(len(m) for m in sets) != end - first):
            return None
        groups, fast, spans, vmax = [], [], [], 0
        for members in sets:
            if any(self.instrs[m].fields["order"] not in ("lsb", "msb") for m in members):
                return None
            slow = []
            for m in members:
                xb = self.xbars[int(self.instrs[m].fields["xbar"])]
                c0 = int(self.instrs[m].fields["col0"])
                if c0 < 0 or c0 + xb.cols > cdecl.shape[1] or (xb.lossless_flag and not xb.provably_lossless(dac)):
                    return None
                vmax = max(vmax, ((1 << bits) - 1) * xb.max_col_sum)  # a column result's bound
                if fast_path and xb.provably_lossless(dac):
                    fast.append((m, xb, c0))  # its exact product, as on the unfused path
                    spans.append((c0, xb.cols))
                else:
                    slow.append(m)
            if slow:
                g = self._group_of(slow)
                c0 = int(self.instrs[slow[0]].fields["col0"])
                if not g.fusable(bits, dac) or any(
                        int(self.instrs[m].fields["col0"]) != c0 + int(o) for m, o in zip(slow, g.offsets[:-1])):
                    return None
                groups.append((slow, g, c0))
                spans.append((c0, int(g.offsets[-1])))
        spans.sort()
        if any(a0 + w > b0 for (a0, w), (b0, _) in zip(spans, spans[1:])):
            return None  # overlapping columns: the later mvm overwrites, a fused sum would not
        colmap = self.consts.get(sa_ins.fields["colmap"])
        if colmap is None:
            return None
        plan = self._shiftadd_plan(sa_ins.fields["colmap"], colmap, sdecl.shape[1], cdecl.shape[1])
        targets = plan.column_targets()
        if targets is None or not plan.exact_for(vmax):
            return None
        return groups, fast, plan, targets, vmax, bits, dac

    def _run_bitlevel_layer(self, first: int, stats: list[InstrStats], fast_path: bool) -> int | None:
        """A run of bit-level mvms and the shiftadd that alone reads their column results, with
        the shiftadd fused into the grouped products: each column result is added into the
        layer's sums as soon as its ADC and shift-and-add over the steps are done, so the column
        results (int64, often the largest array of a layer) are never written nor read back; only
        the few columns the shiftadd's unit terms read are kept. Same results and events as the
        instructions one by one. Returns the index after the shiftadd, or None (nothing done)."""
        fusion = self._run_fusion(first, fast_path)
        if fusion is None:
            return None
        groups, fast, plan, (tgt, cf, stored), vmax, bits, dac = fusion
        f0 = self.instrs[first].fields
        cols_name, sa = f0["dst"], self.run_shiftadds[first]
        if cols_name in self.env or f0["src"] not in self.env:
            return None  # stale columns from an earlier use would survive the unfused path; errors go there too
        # the source, checked once: every mvm of the run reads it with the same widths, and what
        # _mvm_pre checks per crossbar (declared, lossless flag honest) the plan checked already
        self.pc, self.instr = first, self.instrs[first]
        src2d = self._mvm_pre(self.instrs[first], fast_path)[1]
        P = src2d.shape[0]
        cdecl = self.buffers[cols_name]
        kept = np.zeros((P, stored.size), dtype=np.int64)  # the columns the unit terms read, side by side
        self.colhomes[cols_name] = {}
        sums = np.zeros((P, plan.n_out), dtype=np.int64)
        group_ones, fast_events = self._layer_products(src2d, groups, fast, tgt, cf, kept, sums, bits, dac,
                                                        (first, fast_path))
        for (m, xb, _c0), events in zip(fast, fast_events):  # (their results are in the sums already, and
            self.pc, self.instr = m, self.instrs[m]  # the i64 column buffer holds any: _run_fusion)
            self._record(m, self._mvm_post(self.instrs[m], xb, src2d, bits, dac, True, _NO_RESULTS, events, store=False), stats)
        self._layer_group_events((first, fast_path), groups, bits, src2d, group_ones)
        sa_ins = self.instrs[sa]
        self.pc, self.instr = sa, sa_ins
        plan.apply_unit_terms(kept, sums, vmax, compact=True)
        out = self.write(sa_ins.fields["dst"], sums)
        if out is sums:  # |sum| <= (largest column result)·Σ|coefficients of an output| (exact_for)
            self.vbounds[sa_ins.fields["dst"]] = (out, -vmax * plan.coef_bound, vmax * plan.coef_bound)
        key = (sa, P, self.batch, out.nbytes)
        cached = self.sa_events.get(key)
        if cached is None:
            events = self._shiftadd_events(sa_ins, cols_name, P, DTYPES[cdecl.dtype].itemsize, out.nbytes)
            if self.colhomes.get(cols_name):  # then its events and the sums' home follow from this layer's plan alone
                self.sa_events[key] = (events, self.homes[sa_ins.fields["dst"]])
        else:
            events, self.homes[sa_ins.fields["dst"]] = cached
        stats[sa].add(events)
        return sa + 1

    def _layer_products(self, src2d, groups, fast, tgt, cf, kept, sums, bits: int, dac: int,
                        key: tuple) -> tuple[list[int], list[dict]]:
        """A fused bit-level layer's products into its ``sums`` (and the columns it keeps, into
        ``kept``): the lossless crossbars' exact products (by row table: dac_ones once for each
        table) and the groups' bit-level products, side by side on the worker threads, each thread
        adding into sums of its own (row blocks add into the same outputs; the stored columns of
        different crossbars are different columns of ``kept``). Returns each group's dac_ones and
        each lossless crossbar's events, in their orders.

        One image's products are too small to split one by one (MobileNetV2, one image, 6-bit
        ADC: 160 ms on two threads against 156 on one); side by side, 150–160 against 164–168 ms.
        A layer of few groups splits each one's iterations too (its rows of sums apart), so that
        the threads end together. The groups of sparse products run as a few compiled calls of
        many groups each (``kernels_sparse.SparseBatch``): called one by one from Python, the
        960-channel 7x7 depthwise layers took longer on two threads than on one."""
        P = src2d.shape[0]
        W = K._workers()
        by_rows: dict[bytes, list] = {}
        for m, xb, c0 in fast:
            by_rows.setdefault(xb.row_idx.tobytes(), []).append((m, xb, c0))
        sb = self._sparse_batch(key, groups, tgt, cf, bits, dac, src2d)
        batched = set(sb[1]) if sb is not None else set()
        rest = [j for j in range(len(groups)) if j not in batched]
        n = max(1, min(-(-GROUP_ITEMS_PER_WORKER * W // max(len(groups), 1)), P // GROUP_PIECE_MIN))
        step = -(-P // n)
        items = [(None, v) for v in by_rows.values()] + [(j, (groups[j][1], p0, min(P, p0 + step)))
                                                          for j in rest for p0 in range(0, P, step)]
        if sb is not None:  # chunks of whole groups, or, where they are few, groups split by iterations
            G = len(sb[1])
            if n > 1:
                items += [(-1, (j, j + 1, p0, min(P, p0 + step))) for j in range(G) for p0 in range(0, P, step)]
            else:
                nc = min(G, GROUP_ITEMS_PER_WORKER * W) if W > 1 else 1
                cuts = [G * k // nc for k in range(nc + 1)]
                items += [(-1, (a, b, 0, P)) for a, b in zip(cuts, cuts[1:]) if b > a]
            xk = src2d.T if src2d.dtype == np.uint8 else (src2d.T & 0xFF).astype(np.uint8)
            xk = np.ascontiguousarray(xk)  # (a view of a k-major im2col source)
        gc0 = [c0 for _m, _g, c0 in groups]
        partial: dict[int, np.ndarray] = {}
        main = threading.get_ident()

        def product(item):
            j, what = item
            me = threading.get_ident()
            own = sums if me == main else partial.get(me)
            if own is None:
                own = partial[me] = np.zeros_like(sums)
            if j == -1:  # batched sparse groups j0..j1 on iterations p0..p1
                return KS.mvm_groups_sparse(xk, sb[0], *what, kept, own)
            if j is not None:  # a group's iterations p0..p1
                g, p0, p1 = what
                c0, C = gc0[j], int(g.offsets[-1])
                return K.mvm_group(src2d[p0:p1], g, bits, dac, out=kept[p0:p1],
                                   shiftadd=(tgt[c0 : c0 + C], cf[c0 : c0 + C], own[p0:p1]))[1]
            done, ones = {}, None
            for m, xb, c0 in what:  # lossless crossbars of one row table
                res, events = K.mvm(src2d, xb, bits, dac, self.instrs[m].fields["order"], True, ones)
                ones = events["dac_ones"]
                JIT.columns_into_sums(res, tgt[c0 : c0 + xb.cols], cf[c0 : c0 + xb.cols], kept, own)
                done[m] = events
            return done

        work = P * -(-bits // dac) * (sum(g.rows_used * int(g.offsets[-1]) for _m, g, _c in groups)
                                       + sum(xb.rows_used * xb.cols for _m, xb, _c in fast))
        group_ones, events = [0] * len(groups), {}
        for (j, _what), done in zip(items, K._map(product, items, work=work)):
            if j is None:
                events.update(done)
            elif j == -1:
                for jj, o in zip(sb[1], done.tolist()):
                    group_ones[jj] += o
            else:
                group_ones[j] += done
        for extra in partial.values():
            sums += extra
        return group_ones, [events[m] for m, _xb, _c in fast]

    def _sparse_batch(self, key: tuple, groups, tgt, cf, bits: int, dac: int, src2d) -> tuple | None:
        """(batch, the groups' indices) of a layer's groups that take the sparse product
        (``kernels_sparse.sparse_batch``, built once per layer), or None where fewer than two do
        or one call cannot take them. Their rows must lie within the source (else each group's
        own product reports it)."""
        sb = self._sparse_batch_of(key, groups, tgt, cf, bits, dac)
        return sb if sb is not None and sb[0].row_end <= src2d.shape[1] else None

    def _sparse_batch_of(self, key: tuple, groups, tgt, cf, bits: int, dac: int) -> tuple | None:
        """``_sparse_batch`` before the source's check (built once per layer)."""
        if key not in self.sparse_batches:
            idx = [j for j, (_m, g, _c) in enumerate(groups) if g.sparse_plan(bits, dac) is not None]
            b = KS.sparse_batch([(groups[j][1], groups[j][1].sparse_plan(bits, dac), groups[j][2]) for j in idx], tgt, cf) \
                if len(idx) >= 2 else None
            self.sparse_batches[key] = None if b is None else (b, idx)
        return self.sparse_batches[key]

    def op_shiftadd(self, ins: Instr, fast: bool):
        src_name, dst_name = _need(ins, "src", self.pc), _need(ins, "dst", self.pc)
        src = self.read(src_name)
        colmap = self._const(_need(ins, "colmap", self.pc), f"instruction {self.pc} (shiftadd) column map")
        decl = self.decl(dst_name)
        if len(decl.shape) != 2:
            raise ProgramError(f"shiftadd destination {dst_name!r} must be a 2-d [P, N] buffer")
        init = int(ins.fields.get("init", 1))
        dst = None
        if not init:
            prev = self.env.get(dst_name)
            if prev is None or prev.shape[0] != src.shape[0]:
                raise ProgramError(f"instruction {self.pc} (shiftadd, init = 0) accumulates into {dst_name!r}, which holds nothing yet")
            dst = prev.astype(np.int64, copy=True)
        acc = None
        if src.ndim == 2 and src.dtype == np.int64:
            plan = self._shiftadd_plan(ins.fields["colmap"], colmap, decl.shape[1], src.shape[1])
            b = self._bounds(src_name, src)
            vmax = max(-b[0], b[1]) if b is not None else (max(abs(int(src.max())), abs(int(src.min()))) if src.size else 0)
            dmax = max(abs(int(dst.max())), abs(int(dst.min()))) if dst is not None and dst.size else 0
            if plan.exact_for(vmax, dmax):
                acc = plan.apply(src, dst, vmax)
        if acc is None:
            acc = K.shiftadd(src, colmap, decl.shape[1], dst)
        acc = self.write(dst_name, acc)
        return self._shiftadd_events(ins, src_name, src.shape[0], src.dtype.itemsize, acc.nbytes)

    def _shiftadd_events(self, ins: Instr, src_name: str, P: int, itemsize: int, out_nbytes: int) -> dict[str, int]:
        dst_name = ins.fields["dst"]
        active = self.sa_active.get(ins.fields["colmap"])
        if active is None:  # columns the column map uses (once per map)
            cm = np.asarray(self.consts[ins.fields["colmap"]])
            active = self.sa_active[ins.fields["colmap"]] = int((cm[:, 0] != -2).sum()) if cm.size else 0
        events = {
            "shift_adds": P * active,
            "macs": P * int(_need(ins, "macs", self.pc)),
            "buffer_read_bytes": P * active * itemsize,
            "buffer_write_bytes": out_nbytes,
        }
        # column results computed on other tiles (by any copy of a crossbar) travel to the tile of
        # the layer's first crossbar
        parts = self.colhomes.get(src_name)
        if parts:
            home = parts[min(parts)][0]
            flits = chip = 0
            for _place, ncols, pbytes, xid in parts.values():
                ev = self._copy_flits(xid, P, ncols * pbytes, home)
                flits += ev.get("router_flits", 0)
                chip += ev.get("chip_flits", 0)
            if flits:
                events["router_flits"] = flits
            if chip:
                events["chip_flits"] = chip
            self.homes[dst_name] = home
        elif src_name in self.homes:
            self.homes[dst_name] = self.homes[src_name]
        return events

    def op_requant(self, ins: Instr, fast: bool):
        n = self.pc
        src = self.read(_need(ins, "src", n))
        dst_name = _need(ins, "dst", n)
        if src.ndim != 2:
            raise ProgramError(f"instruction {n} (requant): source must be [P, N], got {list(src.shape)}")
        N = src.shape[1]
        consts = self.rq_consts.get((n, N))
        if consts is None:  # (checked once per instruction and width)
            vecs = []
            for key in ("bias", "mult", "shift"):
                v = np.asarray(self._const(_need(ins, key, n), f"instruction {n} (requant) {key}"), dtype=np.int64).reshape(-1)
                if v.size not in (1, N):
                    raise ProgramError(f"instruction {n} (requant): {key} has {v.size} entries for {N} channels")
                vecs.append(v)
            if vecs[2].min() < 0 or vecs[2].max() > 62:
                raise ProgramError(f"instruction {n} (requant): shifts must lie in [0, 62]")
            # (whole per-channel vectors, writable: one kernel type for jit.requant_nchw)
            consts = self.rq_consts[(n, N)] = (*vecs, *(np.array(np.broadcast_to(v, (N,)), dtype=np.int64) for v in vecs))
        bias, mult, shift = consts[:3]
        layout = _need(ins, "layout", n)
        cm = layout == "nchw" and src.shape[0] > N  # channel-major arithmetic, then the NCHW layout directly
        decl = self.decl(dst_name)
        lo, hi = int(_need(ins, "lo", n)), int(_need(ins, "hi", n))
        tlo, thi = D.type_range(DTYPES[decl.dtype])
        if lo < tlo or hi > thi:
            raise ProgramError(f"instruction {n} (requant) clamps to [{lo}, {hi}], beyond the range of buffer {dst_name!r} ({decl.dtype})")
        # results lie in [lo, hi], within the buffer type: written narrow (less to move)
        sb = self._bounds(ins.fields["src"], src)
        zp, odt = int(_need(ins, "zp", n)), DTYPES[decl.dtype]
        if layout == "nchw":
            Ho, Wo = (int(v) for v in _need(ins, "out_hw", n))
            if Ho * Wo <= 0 or src.shape[0] % (Ho * Wo):
                raise ProgramError(f"instruction {n} (requant): {src.shape[0]} rows are not a whole number of {Ho}x{Wo} maps")
            y = self._requant_nchw_int64(src, *consts[3:], zp, lo, hi, sb, Ho * Wo, odt)
            if y is not None:
                y = y.reshape(-1, N, Ho, Wo)
            else:
                y = K.requant(src, bias, mult, shift, zp, lo, hi, channel_major=cm, out_dtype=odt,
                              src_bound=None if sb is None else max(-sb[0], sb[1]))
                y = y.reshape(N, -1, Ho, Wo).transpose(1, 0, 2, 3) if cm else y.reshape(-1, Ho, Wo, N).transpose(0, 3, 1, 2)
        elif layout == "flat":
            y = K.requant(src, bias, mult, shift, zp, lo, hi, out_dtype=odt, src_bound=None if sb is None else max(-sb[0], sb[1]))
            fixed = decl.shape[1:]
            if int(np.prod(fixed)) == 0 or y.size % int(np.prod(fixed)):
                raise ProgramError(f"instruction {n} (requant): {y.size} results do not fill buffer {dst_name!r} {decl.shape}")
            y = y.reshape(-1, *fixed)
        else:
            raise ProgramError(f"instruction {n} (requant): layout must be nchw or flat, got {layout!r}")
        out = self.write(dst_name, np.ascontiguousarray(y), bounds=(int(ins.fields["lo"]), int(ins.fields["hi"])))
        self.vbounds[dst_name] = (out, lo, hi)  # clamped
        self._inherit(dst_name, [ins.fields["src"]])
        return {"digital_ops": out.size, "buffer_read_bytes": src.nbytes, "buffer_write_bytes": out.nbytes}

    def _requant_nchw_int64(self, src, bias, mult, shift, zp, lo, hi, sb, HW, out_dtype) -> np.ndarray | None:
        """requant to NCHW as one compiled pass (``jit.requant_nchw``) where every (src + bias)·mult
        is proved below 2^63 (from the source's known bound, else a scan), in binary64 where that
        is proved the same (``kernels_conv.binary64_scales``); [B, N, HW], or None (then the
        general path)."""
        if src.dtype.kind not in "iu" or not src.flags.c_contiguous or not src.size:
            return None
        if sb is None:
            sb = (int(src.min()), int(src.max()))
        N = src.shape[1]
        amax = max(-sb[0], sb[1]) + int(np.abs(bias).max())
        if amax * int(np.abs(mult).max()) >= (1 << 63):
            return None
        B = src.shape[0] // HW
        out = np.empty((B, N, HW), dtype=out_dtype)
        step = max(1, (1 << 16) // max(N, 1))
        items = [(b, q0, min(HW, q0 + step)) for b in range(B) for q0 in range(0, HW, step)]
        # the last scales of these vectors (rq_consts' own, kept as long as the Machine), while the bound holds
        last = self.rq_scales.get(id(mult))
        if last is None or last[0] != (amax, zp, lo, hi):
            last = self.rq_scales[id(mult)] = ((amax, zp, lo, hi), KC.binary64_scales(amax, mult, shift, zp, lo, hi))
        fscale = last[1]
        K._map(lambda it: JIT.requant_nchw(src, bias, mult, shift, fscale, zp, lo, hi, out, *it), items, work=out.size,
               min_work=K.PARALLEL_MIN_ELEMS)
        return out

    # ------------------------------------------------------------------- digital instructions

    def _inherit(self, dst: str, srcs: list[str]) -> dict[str, int]:
        """dst lives where its first placed source lives; other sources travel there."""
        placed = [s for s in srcs if s in self.homes]
        if not placed:
            return {}
        home = self.homes[placed[0]]
        self.homes[dst] = home
        ev: dict[str, int] = {}
        for s in placed[1:]:
            arr = self.env.get(s)
            if arr is not None:
                for k, v in self._move(s, arr.nbytes, home).items():
                    ev[k] = ev.get(k, 0) + v
        return ev

    def _digital(self, ins: Instr, dst_name: str, result: np.ndarray, srcs: list[str], fn=None,
                 bounds: tuple[int, int] | None = None) -> dict[str, int]:
        """Store a digital op's result and count its events. ``bounds``: what the result is proved
        to lie in (else an op's clamp, its ``lo`` and ``hi``); kept for later instructions.
        ``fn``: the op as a function of its sources' arrays (buffers or constants, in ``srcs``'
        order) whose checks are of their shapes and types only, so that a recorded chunk
        replays it (``run_chunk``)."""
        if bounds is None and "lo" in ins.fields and "hi" in ins.fields:
            bounds = (int(ins.fields["lo"]), int(ins.fields["hi"]))
        out = self.write(dst_name, result, bounds=bounds)
        if bounds is not None:
            self.vbounds[dst_name] = (out, *bounds)
        if self.rec is not None and fn is not None and (out is result or bounds is not None):
            # (a type conversion checked by the clamp's bounds, not the data)
            self.rec.append(["op", (fn, list(srcs), dst_name, None if out is result else out.dtype), []])
        read = sum(self.read(s).nbytes for s in srcs if s in self.env)
        ev = {"digital_ops": out.size, "buffer_read_bytes": read, "buffer_write_bytes": out.nbytes}
        for k, v in self._inherit(dst_name, [s for s in srcs if s in self.env]).items():
            ev[k] = ev.get(k, 0) + v
        return ev

    def op_lut(self, ins: Instr, fast: bool):
        n = self.pc
        src_name = _need(ins, "src", n)
        src = self.read(src_name)
        table_name = _need(ins, "table", n)
        table = self._const(table_name, f"instruction {n} (lut) table")
        qmin, _ = D.type_range(src.dtype)
        axis = int(_need(ins, "axis", n))

        def fn(a):
            return D.lut(a, table, axis, qmin)

        res = fn(src)
        dst = _need(ins, "dst", n)
        tb = self.table_bounds.get(table_name)  # (every result is a table entry)
        if tb is None:
            tb = self.table_bounds[table_name] = (int(table.min()), int(table.max())) if table.size else (0, 0)
        tlo, thi = D.type_range(DTYPES[self.decl(dst).dtype])
        # (entries beyond the destination's type: the values written are checked instead)
        ev = self._digital(ins, dst, res, [src_name], fn, bounds=tb if tlo <= tb[0] and tb[1] <= thi else None)
        ev["buffer_read_bytes"] += res.size * table.dtype.itemsize  # one table entry per element
        return ev

    def _ints(self, ins: Instr, *names: str) -> list[int]:
        return [int(_need(ins, k, self.pc)) for k in names]

    def op_add(self, ins: Instr, fast: bool):
        a, b, dst = _need(ins, "a", self.pc), _need(ins, "b", self.pc), _need(ins, "dst", self.pc)
        consts = self._ints(ins, "ma", "mb", "shift", "za", "zb", "zp", "lo", "hi")
        dt = DTYPES[self.decl(dst).dtype]
        tlo, thi = D.type_range(dt)  # the result straight in the buffer's type where the clamp fits it
        out_dtype = dt if tlo <= consts[6] <= consts[7] <= thi else None

        def fn(x, y):
            return D.add(x, y, *consts, out_dtype=out_dtype)

        return self._digital(ins, dst, fn(self.read(a), self.read(b)), [a, b], fn)

    def op_mul(self, ins: Instr, fast: bool):
        a, b = _need(ins, "a", self.pc), _need(ins, "b", self.pc)
        res = D.mul(self.read(a), self.read(b), *self._ints(ins, "m", "shift", "za", "zb", "zp", "lo", "hi"))
        return self._digital(ins, _need(ins, "dst", self.pc), res, [a, b])

    def op_rescale(self, ins: Instr, fast: bool):
        s = _need(ins, "src", self.pc)
        res = D.rescale(self.read(s), *self._ints(ins, "m", "shift", "zin", "zp", "lo", "hi"))
        return self._digital(ins, _need(ins, "dst", self.pc), res, [s])

    def op_maxpool(self, ins: Instr, fast: bool):
        n = self.pc
        s, dst = _need(ins, "src", n), _need(ins, "dst", n)
        src = self.read(s)
        geometry = D.pool_geometry(src, _need(ins, "kernel", n), _need(ins, "stride", n), _need(ins, "pad", n),
                                   _need(ins, "dilation", n), self._out_shape(dst))  # (a replay runs sources of this shape only)

        def fn(a):
            return D.maxpool(a, geometry)

        ev = self._digital(ins, dst, fn(src), [s], fn)
        # the source's bounds hold for the maxima; a window in the padding only (its type's least
        # value) is not ruled out where there is padding
        self._keep_bounds(s, src, dst, D.type_range(src.dtype)[0] if any(geometry[3]) else None)
        return ev

    def _keep_bounds(self, src_name: str, src: np.ndarray, dst_name: str, floor: int | None = None) -> None:
        """dst holds some of src's values only (a max, a reshape), or else ``floor``: src's proven
        bounds (lowered to ``floor``) hold for it."""
        b = self._bounds(src_name, src)
        if b is not None:
            self.vbounds[dst_name] = (self.env[dst_name], b[0] if floor is None else min(b[0], floor), b[1])

    def op_avgpool(self, ins: Instr, fast: bool):
        n = self.pc
        s, dst = _need(ins, "src", n), _need(ins, "dst", n)
        cip, zin, m, shift, zp, lo, hi = self._ints(ins, "count_include_pad", "zin", "m", "shift", "zp", "lo", "hi")
        geometry = (_need(ins, "kernel", n), _need(ins, "stride", n), _need(ins, "pad", n))
        out_shape = self._out_shape(dst)

        def fn(a):
            return D.avgpool(a, *geometry, cip, zin, m, shift, zp, lo, hi, out_shape)

        return self._digital(ins, dst, fn(self.read(s)), [s], fn)

    def _out_shape(self, dst: str) -> list[int]:
        b = self.decl(dst)
        if len(b.shape) != 4:
            raise ProgramError(f"instruction {self.pc} ({self.instr.opcode}): destination {dst!r} must be [B, C, H, W]")
        return b.shape

    def op_concat(self, ins: Instr, fast: bool):
        srcs = list(_need(ins, "srcs", self.pc))
        arrs = [self.read(s) for s in srcs]
        try:
            res = np.concatenate(arrs, axis=int(_need(ins, "axis", self.pc)))
        except (ValueError, np.exceptions.AxisError) as e:
            raise ProgramError(f"instruction {self.pc} (concat): {e}") from None
        return self._digital(ins, _need(ins, "dst", self.pc), res, srcs)

    def op_reshape(self, ins: Instr, fast: bool):
        s, dst = _need(ins, "src", self.pc), _need(ins, "dst", self.pc)
        src = self.read(s)
        b = self.decl(dst)
        fixed = b.shape[1:] if b.shape[0] == -1 else b.shape
        per = int(np.prod(fixed)) if fixed else 1
        batch = src.shape[0] if src.ndim else 1
        if b.shape[0] == -1 and src.size != batch * per:
            raise ProgramError(f"instruction {self.pc} (reshape): {list(src.shape)} cannot become {b.shape} with the batch kept")

        def fn(a):
            return a.reshape(-1, *fixed) if b.shape[0] == -1 else a.reshape(fixed)

        ev = self._digital(ins, dst, fn(src), [s], fn)
        self._keep_bounds(s, src, dst)
        return ev

    def op_transpose(self, ins: Instr, fast: bool):
        s, dst = _need(ins, "src", self.pc), _need(ins, "dst", self.pc)
        perm = [int(p) for p in _need(ins, "perm", self.pc)]
        src = self.read(s)
        if sorted(perm) != list(range(src.ndim)) or perm[0] != 0:
            raise ProgramError(f"instruction {self.pc} (transpose): perm {perm} is not a permutation keeping axis 0 first")
        return self._digital(ins, dst, np.ascontiguousarray(src.transpose(perm)), [s])

    def op_pad(self, ins: Instr, fast: bool):
        s, dst = _need(ins, "src", self.pc), _need(ins, "dst", self.pc)
        res = D.pad(self.read(s), [int(p) for p in _need(ins, "pads", self.pc)], int(_need(ins, "value", self.pc)))
        return self._digital(ins, dst, res, [s])

    def op_softmax(self, ins: Instr, fast: bool):
        n = self.pc
        s, dst = _need(ins, "src", n), _need(ins, "dst", n)
        res = D.softmax(self.read(s), int(_need(ins, "axis", n)), float(_need(ins, "in_scale", n)), int(_need(ins, "in_zp", n)),
                        float(_need(ins, "out_scale", n)), int(_need(ins, "out_zp", n)), DTYPES[self.decl(dst).dtype])
        return self._digital(ins, dst, res, [s])

    def op_lrn(self, ins: Instr, fast: bool):
        n = self.pc
        s, dst = _need(ins, "src", n), _need(ins, "dst", n)
        res = D.lrn(self.read(s), int(_need(ins, "size", n)), float(_need(ins, "alpha", n)), float(_need(ins, "beta", n)),
                    float(_need(ins, "bias", n)), float(_need(ins, "in_scale", n)), int(_need(ins, "in_zp", n)),
                    float(_need(ins, "out_scale", n)), int(_need(ins, "out_zp", n)), DTYPES[self.decl(dst).dtype])
        return self._digital(ins, dst, res, [s])

    def op_div(self, ins: Instr, fast: bool):
        n = self.pc
        a, b, dst = _need(ins, "a", n), _need(ins, "b", n), _need(ins, "dst", n)
        res = D.div(self.read(a), self.read(b), float(_need(ins, "a_scale", n)), int(_need(ins, "a_zp", n)),
                    float(_need(ins, "b_scale", n)), int(_need(ins, "b_zp", n)), float(_need(ins, "out_scale", n)),
                    int(_need(ins, "out_zp", n)), DTYPES[self.decl(dst).dtype])
        return self._digital(ins, dst, res, [a, b])


_DISPATCH = {
    "im2col": Machine.op_im2col,
    "mvm": Machine.op_mvm,
    "shiftadd": Machine.op_shiftadd,
    "requant": Machine.op_requant,
    "lut": Machine.op_lut,
    "add": Machine.op_add,
    "mul": Machine.op_mul,
    "rescale": Machine.op_rescale,
    "maxpool": Machine.op_maxpool,
    "avgpool": Machine.op_avgpool,
    "concat": Machine.op_concat,
    "reshape": Machine.op_reshape,
    "transpose": Machine.op_transpose,
    "pad": Machine.op_pad,
    "softmax": Machine.op_softmax,
    "lrn": Machine.op_lrn,
    "div": Machine.op_div,
    "halt": None,
}


# ------------------------------------------------------------------------------------- inputs


def check_inputs(program: Program, inputs: dict[str, np.ndarray], bufs: dict[str, Buffer]) -> int:
    """Validate the user's arrays against the ``.input`` ports; returns the batch size."""
    if not isinstance(inputs, dict):
        raise RunInputError("inputs must be a dict of input name -> array")
    names = [p.name for p in program.inputs]
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise RunInputError(f"unknown input(s) {', '.join(unknown)}; the program's inputs are {', '.join(names)}")
    missing = [n for n in names if n not in inputs]
    if missing:
        raise RunInputError(f"missing input(s) {', '.join(missing)}; the program's inputs are {', '.join(names)}")
    batch = None
    for p in program.inputs:
        x = inputs[p.name]
        if not isinstance(x, np.ndarray):
            raise RunInputError(f"input {p.name!r} must be a NumPy array, got {type(x).__name__}")
        if x.dtype.kind not in "fiu":
            raise RunInputError(f"input {p.name!r} has dtype {x.dtype}; expected a numeric array (float32 preferred)")
        shape = bufs[p.buf].shape
        want = ["N"] + [str(d) for d in shape[1:]]
        if x.ndim != len(shape) or list(x.shape[1:]) != list(shape[1:]):
            hint = " (add a leading batch axis)" if list(x.shape) == list(shape[1:]) else ""
            raise RunInputError(
                f"input {p.name!r} has shape {list(x.shape)}; the program expects [{', '.join(want)}] (any batch N){hint}"
            )
        if shape[0] != -1 and x.shape[0] != shape[0]:
            raise RunInputError(f"input {p.name!r} has batch {x.shape[0]}; this program is fixed to batch {shape[0]}")
        if x.shape[0] == 0:
            raise RunInputError(f"input {p.name!r} has an empty batch")
        if batch is not None and x.shape[0] != batch:
            raise RunInputError(f"inputs disagree on the batch size ({batch} vs {x.shape[0]} for {p.name!r})")
        batch = x.shape[0]
    if batch is None:
        raise RunInputError("the program has no inputs")
    return batch


def input_range(dtype: np.dtype, act_bits: int | None) -> tuple[int, int]:
    """[qmin, qmax] of a model input: ``act_bits`` wide (isa.md §2), within the buffer type."""
    lo, hi = D.type_range(dtype)
    if act_bits:
        if lo < 0:
            lo, hi = max(lo, -(1 << (act_bits - 1))), min(hi, (1 << (act_bits - 1)) - 1)
        else:
            hi = min(hi, (1 << act_bits) - 1)
    return lo, hi


def quantize_input(x: np.ndarray, scale: float, zp: int, dtype: np.dtype, act_bits: int | None = None) -> np.ndarray:
    """Host-side quantization of ``.input`` (isa.md §2, quantization.md §7): the correctly rounded
    binary32 quotient of the binary32 input by the binary32 scale, as ONNX QuantizeLinear, then
    clamp(rne(·) + zp, qmin, qmax); NaN becomes zp (real 0), ±inf saturate."""
    lo, hi = input_range(dtype, act_bits)
    if max(abs(lo - zp), abs(hi - zp), abs(lo), abs(hi)) < (1 << 24):  # every bound exact in binary32
        # clamp(q + zp, lo, hi) = clamp(q, lo - zp, hi - zp) + zp, q the rne of the binary32 quotient
        v = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty(v.shape, dtype=dtype)
        JIT.quantize_f32(v.reshape(-1), np.float32(scale), np.float32(lo - zp), np.float32(hi - zp), np.float32(zp), out.reshape(-1))
        return out
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        v = np.asarray(x, dtype=np.float32) / np.float32(scale)
    np.copyto(v, 0.0, where=np.isnan(v))  # (±inf: clamped below)
    v = np.rint(np.clip(v.astype(np.float64), lo - zp - 1, hi - zp + 1))  # also keeps the int64 cast in range
    return np.clip(v.astype(np.int64) + zp, lo, hi).astype(dtype)


# ---------------------------------------------------------------------------------------- run


def run_program(
    program: Program,
    inputs: dict[str, np.ndarray],
    batch_size: int | None = None,
    progress: bool = False,
    fast_path: bool = True,
):
    """Run ``program`` on ``inputs`` (name -> [N, ...] arrays); returns (outputs, report).

    Outputs are float32 ``scale·(q − zp)`` in the model's layout. ``batch_size`` bounds how many
    images are simulated at once (memory), not what the program accepts; without it, chunks are
    sized from the memory the first image needed (``MEMORY_BUDGET``). ``fast_path=False``
    forces the bit-level mvm everywhere (results and counters are identical, only slower).
    """
    m = machine_for(program)
    B = check_inputs(program, inputs, m.buffers)
    tp = time.perf_counter()
    m.prepare(fast_path)
    _blas_controller()  # (finding the BLAS libraries takes milliseconds: not in the timed run)
    _keep_freed_memory()
    prepare_wall = time.perf_counter() - tp
    if batch_size is not None and int(batch_size) < 1:
        raise RunInputError("batch size must be at least 1")
    stats = [InstrStats(i, ins.opcode, ins.layer) for i, ins in enumerate(program.instrs)]
    outs: dict[str, list[np.ndarray]] = {p.name: [] for p in program.outputs}
    act_bits = m.cfg["precision"]["act_bits"]
    # without a batch size, one image runs first to measure the memory an image needs, then
    # chunks are sized to stay within MEMORY_BUDGET bytes
    if batch_size is not None:
        chunk = min(B, int(batch_size))
    else:  # the whole batch at once when even every buffer live together fits the budget
        chunk = B if B * m.bytes_per_image * 3 <= MEMORY_BUDGET else 1
    bar = _progress(B) if progress and B > 1 else None
    # one image at a time through fused layers: each layer is one block, which the worker threads
    # cannot share, so BLAS's own threads split its product instead (measured at batch 1:
    # MobileNetV2 ~10 %, ResNet-18 ~15 % faster); larger chunks, and bit-level layers (whose
    # products split into units), share blocks over the worker threads, BLAS on one thread each
    solo = fast_path and (B == 1 or (batch_size is not None and chunk == 1)) and m.all_fused()
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if solo:
            stack.enter_context(K.serial())
        else:
            limits = _blas_single_thread()
            if limits is not None:
                stack.callback(limits.restore_original_limits)
        if bar is not None:
            bar[0].start()
            stack.callback(bar[0].stop)
        s = 0
        m.fused_pending, m.replayed = {}, {}
        while s < B:
            n = min(chunk, B - s)
            feeds, bounds = {}, {}
            for p in program.inputs:
                dt = DTYPES[m.buffers[p.buf].dtype]
                feeds[p.buf] = quantize_input(inputs[p.name][s : s + n], p.scale, p.zp, dt, act_bits)
                bounds[p.buf] = input_range(dt, act_bits)
            m.peak_bytes = 0
            m.track_peak = batch_size is None and s == 0 and chunk < B
            try:
                m.run_chunk(feeds, stats, fast_path, bounds)
            except BaseException:
                m.settle(quiet=True)  # (the run's own error is the one to report)
                raise
            m.settle()
            for p in program.outputs:
                if p.buf not in m.env:
                    raise ProgramError(f"output {p.name!r}: buffer {p.buf!r} was never written")
                q = m.env[p.buf]
                outs[p.name].append((float(p.scale) * (q.astype(np.float64) - p.zp)).astype(np.float32))
            m.env = {}
            if batch_size is None and s == 0 and chunk < B:
                chunk = int(max(1, min(B, MEMORY_BUDGET // max(m.peak_bytes * 3, 1))))
            s += n
            if bar is not None:
                bar[0].advance(bar[1], n)
    wall = time.perf_counter() - t0
    m.flush_events(stats)  # the fused layers' counters, counted per layer during the run, to their mvms' records
    outputs = {k: np.concatenate(v, axis=0) for k, v in outs.items()}
    report = build_report(program, stats, B, wall, m, fast_path=fast_path)
    report["prepare_wall_s"] = prepare_wall
    return outputs, report


_NO_RESULTS = np.empty((0, 0), dtype=np.int64)  # (``_mvm_post`` of results a fused shiftadd took)
#: a fused bit-level layer's work items per worker thread (``Machine._run_bitlevel_layer``): groups
#: split by iterations, pieces of at least GROUP_PIECE_MIN, until there are this many
GROUP_ITEMS_PER_WORKER = 4
GROUP_PIECE_MIN = 256
_BLAS_CONTROLLER: list = []  # the threadpoolctl controller, found once (finding the libraries is slow)
_COUNTER: list = []  # the counting thread's executor (``Machine._defer``), started once
#: whether chunks on the fast path replay the record of an earlier chunk of the same shapes
#: (``Machine.run_chunk``); off, every chunk is interpreted (the same results and counters)
REPLAY = True
#: least source elements of a fused conv layer whose dac_ones are counted on the counting thread
#: (measured, MobileNetV2 at batch 1: 16.6 ms at 2^16 against 17.5 at 2^19, the second core being
#: idle while the main thread runs the compiled depthwise and requantization loops)
DEFER_MIN_ELEMS = 1 << 16


def _stats_delta(before: list[tuple], stats: list[InstrStats]) -> list[tuple[int, dict[str, int]]] | None:
    """What each instruction's record gained since ``before`` (its events, ADC conversions by
    width, path and crossbar): (instruction, events) for those that counted any; None when
    anything but events changed (not a chunk to replay: only events are added per replay)."""
    delta = []
    for st, (ev0, adc0, path0, xbar0) in zip(stats, before):
        if st.adc_by_bits != adc0 or st.path != path0 or st.xbar != xbar0:
            return None
        d = {k: v - ev0.get(k, 0) for k, v in st.events.items() if v != ev0.get(k, 0)}
        if d:
            delta.append((st.index, d))
    return delta


def _warm(kind, kernel, *args) -> None:
    """Run a compiled kernel the executor calls itself once a process (``kernels.first_time``)."""
    if K.first_time(kind):
        kernel(*args)


def _blas_single_thread():
    """Limit BLAS to one thread for the run (restored after it), when threadpoolctl is installed:
    the kernels' BLAS calls are many and small, and a multi-threaded BLAS sharing cores with
    other work spins; the kernels run independent blocks on their own worker threads instead."""
    if K.WORKERS <= 1:
        return None
    ctl = _blas_controller()
    try:
        return None if ctl is None else ctl.limit(limits=1, user_api="blas")
    except Exception:  # noqa: BLE001 - an unusual BLAS setup: run as is
        return None


#: glibc's allocator, tuned once a process (``_keep_freed_memory``): large blocks from the heap up
#: to MMAP_MAX_BYTES, and freed heap memory kept up to KEEP_FREED_BYTES
MMAP_MAX_BYTES = 32 << 20
KEEP_FREED_BYTES = 1 << 30
_ALLOCATOR_TUNED: list = []


def _keep_freed_memory() -> None:
    """Have glibc's malloc keep freed memory for the next run's arrays instead of returning it to
    the kernel (Linux with glibc; elsewhere nothing). By default every block past 128 KiB is a
    fresh mapping and a freed heap top is trimmed, so each run's temporaries came back as new
    pages, zeroed by the kernel on first touch: ~4,500 page faults a MobileNetV2 bit-level run at
    batch 1 (0 after), and measured 115–124 against 120–139 ms (fastest of 10 runs, four pairs of
    processes). A process-wide setting, made once: the simulator's own process is what it tunes."""
    if _ALLOCATOR_TUNED:
        return
    _ALLOCATOR_TUNED.append(True)
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes  # noqa: PLC0415

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, KEEP_FREED_BYTES)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, MMAP_MAX_BYTES)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): its defaults
        pass


def _blas_controller():
    """threadpoolctl's controller of this process's BLAS libraries (found once), or None."""
    if not _BLAS_CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController  # noqa: PLC0415

            _BLAS_CONTROLLER.append(ThreadpoolController())
        except Exception:  # noqa: BLE001 - no threadpoolctl, or an unusual BLAS setup
            _BLAS_CONTROLLER.append(None)
    return _BLAS_CONTROLLER[0]


def _fingerprint(program: Program) -> tuple:
    """What a prepared Machine depends on: the program's declarations and instructions (by value)
    and its constant arrays (by identity, shape and type)."""
    import dataclasses  # noqa: PLC0415

    names = [f.name for f in dataclasses.fields(program)] if dataclasses.is_dataclass(program) else [
        "version", "config", "instrs", "xbars", "buffers", "inputs", "outputs"]
    return (
        tuple(repr(getattr(program, n, None)) for n in names if n != "consts"),
        tuple((c.name, id(c.array), c.array.shape, c.array.dtype.str) for c in program.consts),
    )


def machine_for(program: Program) -> Machine:
    """The prepared Machine of ``program``: built once and kept on the program object (with what it
    was built from), so repeated runs do not check, index and prepare the program again."""
    fp = _fingerprint(program)
    cached = getattr(program, "_runtime_machine", None)
    if cached is not None and cached[0] == fp:
        return cached[1]
    m = Machine(program)
    try:
        object.__setattr__(program, "_runtime_machine", (fp, m))
    except (AttributeError, TypeError):
        pass  # a program object that takes no attributes: prepared per run
    return m


def _progress(total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415

    prog = Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TextColumn("images"), TimeElapsedColumn(),
                    transient=True, console=Console(stderr=True))
    task = prog.add_task("images", total=total)
    return prog, task

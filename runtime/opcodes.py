"""The machine-readable instruction schema of ``spec/isa.md`` and the structural check of a Program.

One table (``OPCODES``) says, for every opcode, its binary id (``spec/program-format.md`` §6), its
fields in ``isa.md`` order, each field's kind and, for the few that have one, its default. The
container reader, the assembler and the executor all use it, so a program that passes
``validate_program`` is well formed for all of them: every field known and of the right kind, every
name declared, every crossbar image and row table of the declared shape and type.

Field kinds (the names match ``pimc.dialects.isa.KINDS`` so the backend maps one-to-one):

``buf``    a buffer name             ``const``  a constant name       ``src``   a buffer or constant name
``bufs``   a list of buffer names    ``xbar``   a declared crossbar id
``int``    a 64-bit signed integer   ``f64``    a finite float         ``ints``  a list of integers
``enum``   one of a fixed set of words
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from runtime.errors import ProgramError
from runtime.model import DTYPES, Program

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: marks a field without a default
REQUIRED: Any = _Required()

#: element types allowed for buffers (constants may also be f64)
BUFFER_DTYPES = ("u8", "u16", "i8", "i16", "i32", "i64")
ADC_MODES = ("saturate", "drop-lsb")


@dataclass(frozen=True)
class Field:
    """One field of an instruction: its kind and the constraints the reader can check alone."""

    name: str
    kind: str
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()  # enum
    dtypes: tuple[str, ...] = ()  # buf/const/src: allowed element types (empty: any)
    ndim: int | None = None  # const: required rank
    last_dim: int | None = None  # const: required size of the last axis
    min: int | None = None  # int / ints elements / xbar
    max: int | None = None
    length: int | None = None  # ints: required length
    min_length: int = 0  # ints / bufs
    positive: bool = False  # f64: must be > 0

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> str:
        """A short human description of what the field accepts (used in error messages and docs)."""
        kind = {
            "buf": "a buffer name",
            "bufs": "a list of buffer names",
            "const": "a constant name",
            "src": "a buffer or constant name",
            "xbar": "a crossbar id",
            "int": "an integer",
            "f64": "a finite float",
            "ints": "a list of integers",
            "enum": "one of " + ", ".join(self.choices),
        }[self.kind]
        extra = []
        if self.length is not None:
            extra.append(f"{self.length} elements")
        if self.min is not None and self.kind in ("int", "ints"):
            extra.append(f">= {self.min}")
        if self.max is not None and self.kind in ("int", "ints"):
            extra.append(f"<= {self.max}")
        if self.positive:
            extra.append("> 0")
        if self.dtypes:
            extra.append("type " + "/".join(self.dtypes))
        if self.ndim is not None:
            extra.append(f"rank {self.ndim}")
        if self.last_dim is not None:
            extra.append(f"last axis {self.last_dim}")
        return kind + (f" ({', '.join(extra)})" if extra else "")


@dataclass(frozen=True)
class Opcode:
    """An instruction: binary id, fields in canonical order, and cross-field checks."""

    name: str
    id: int
    fields: tuple[Field, ...]
    summary: str
    #: reserved by spec/isa.md §4: accepted in files (fields free-form), rejected by a 1.x executor
    reserved: bool = False
    #: checks over the whole field dict; each returns (field, message) or None
    checks: tuple[Callable[[dict], tuple[str, str] | None], ...] = ()
    _index: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({f.name: f for f in self.fields})

    def field(self, name: str) -> Field | None:
        return self._index.get(name)


# ------------------------------------------------------------------------------------ the table


def _lo_le_hi(f: dict) -> tuple[str, str] | None:
    if f["lo"] > f["hi"]:
        return "hi", f"clamp bounds are empty: lo = {f['lo']} > hi = {f['hi']}"
    return None


def _requant_layout(f: dict) -> tuple[str, str] | None:
    if f["layout"] == "nchw" and len(f["out_hw"]) != 2:
        return "out_hw", f"layout nchw needs out_hw = [Ho, Wo], got {f['out_hw']}"
    return None


_B = lambda name, **kw: Field(name, "buf", **kw)  # noqa: E731
_I = lambda name, **kw: Field(name, "int", **kw)  # noqa: E731
_POS = lambda name: Field(name, "f64", positive=True)  # noqa: E731
_CLAMP = (_I("zp"), _I("lo"), _I("hi"))


def _window(kernel_len: int = 2, *, dilation: bool = True) -> tuple[Field, ...]:
    out = [
        Field("kernel", "ints", length=kernel_len, min=1),
        Field("stride", "ints", default=[1] * kernel_len, length=kernel_len, min=1),
        Field("pad", "ints", default=[0] * (2 * kernel_len), length=2 * kernel_len, min=0),
    ]
    if dilation:
        out.append(Field("dilation", "ints", default=[1] * kernel_len, length=kernel_len, min=1))
    return tuple(out)


_TABLE: list[Opcode] = [
    # §3 crossbar instructions
    Opcode(
        "im2col",
        1,
        (_B("dst"), _B("src"), *_window(), _I("pad_value", default=0)),
        "gather the input vectors of a convolution: [B,C,H,W] -> [B*Ho*Wo, C*kh*kw]",
    ),
    Opcode(
        "mvm",
        2,
        (
            Field("xbar", "xbar"),
            _B("src"),
            _B("dst", dtypes=("i64",)),
            _I("col0", default=0, min=0),
            _I("bits", min=1, max=32),
            _I("dac_bits", default=1, min=1, max=32),
            Field("order", "enum", default="lsb", choices=("lsb", "msb")),
        ),
        "one crossbar's bit-serial matrix-vector products; column results at col0 of dst",
    ),
    Opcode(
        "shiftadd",
        3,
        (
            _B("dst", dtypes=("i64",)),
            _B("src", dtypes=("i64",)),
            Field("colmap", "const", dtypes=("i64",), ndim=2, last_dim=5),
            _I("macs", min=0),
            _I("init", min=0, max=1),
        ),
        "combine column results into output accumulators through a column map",
    ),
    Opcode(
        "requant",
        4,
        (
            _B("dst"),
            _B("src", dtypes=("i64",)),
            Field("bias", "const", dtypes=("i64",), ndim=1),
            Field("mult", "const", dtypes=("i64",), ndim=1),
            Field("shift", "const", dtypes=("i64",), ndim=1),
            *_CLAMP,
            Field("layout", "enum", choices=("nchw", "flat")),
            Field("out_hw", "ints", default=[], min=1),
        ),
        "output stage of a matrix layer: bias, per-channel requantization, clamp, layout",
        checks=(_lo_le_hi, _requant_layout),
    ),
    # §4 runtime-decision instructions (reserved in 1.0)
    Opcode("mvm_et", 5, (), "MSB-first mvm with early termination (reserved)", reserved=True),
    Opcode("mvm_dq", 6, (), "mvm with per-group dynamic precision (reserved)", reserved=True),
    Opcode("adc_cfg", 7, (), "change a crossbar's ADC resolution or mode at run time (reserved)", reserved=True),
    # §5 digital instructions
    Opcode(
        "lut",
        16,
        (_B("dst"), _B("src"), Field("table", "const", ndim=2), _I("axis", default=1)),
        "table activation",
    ),
    Opcode(
        "add",
        17,
        (_B("dst"), Field("a", "src"), Field("b", "src"), _I("ma"), _I("mb"), _I("shift", min=0), _I("za"), _I("zb"), *_CLAMP),
        "elementwise (broadcast) rescaled sum",
        checks=(_lo_le_hi,),
    ),
    Opcode(
        "mul",
        18,
        (_B("dst"), Field("a", "src"), Field("b", "src"), _I("m"), _I("shift", min=0), _I("za"), _I("zb"), *_CLAMP),
        "elementwise (broadcast) rescaled product",
        checks=(_lo_le_hi,),
    ),
    Opcode(
        "rescale",
        19,
        (_B("dst"), _B("src"), _I("m"), _I("shift", min=0), _I("zin"), *_CLAMP),
        "requantize codes to other parameters",
        checks=(_lo_le_hi,),
    ),
    Opcode("maxpool", 20, (_B("dst"), _B("src"), *_window()), "max pooling on codes"),
    Opcode(
        "avgpool",
        21,
        (
            _B("dst"),
            _B("src"),
            *_window(dilation=False),
            _I("count_include_pad", default=0, min=0, max=1),
            _I("zin"),
            _I("m"),
            _I("shift", min=0),
            *_CLAMP,
        ),
        "average pooling with requantization",
        checks=(_lo_le_hi,),
    ),
    Opcode("concat", 22, (_B("dst"), Field("srcs", "bufs", min_length=1), _I("axis")), "concatenation"),
    Opcode("reshape", 23, (_B("dst"), _B("src")), "same elements, new shape"),
    Opcode("transpose", 24, (_B("dst"), _B("src"), Field("perm", "ints", min=0)), "axis permutation"),
    Opcode("pad", 25, (_B("dst"), _B("src"), Field("pads", "ints", min=0), _I("value", default=0)), "constant padding"),
    Opcode(
        "softmax",
        26,
        (_B("dst"), _B("src"), _I("axis"), _POS("in_scale"), _I("in_zp"), _POS("out_scale"), _I("out_zp")),
        "float unit: softmax along axis",
    ),
    Opcode(
        "lrn",
        27,
        (
            _B("dst"),
            _B("src"),
            _I("size", min=1),
            Field("alpha", "f64"),
            Field("beta", "f64"),
            Field("bias", "f64"),
            _POS("in_scale"),
            _I("in_zp"),
            _POS("out_scale"),
            _I("out_zp"),
        ),
        "float unit: local response normalization across channels",
    ),
    Opcode(
        "div",
        28,
        (
            _B("dst"),
            Field("a", "src"),
            Field("b", "src"),
            _POS("a_scale"),
            _I("a_zp"),
            _POS("b_scale"),
            _I("b_zp"),
            _POS("out_scale"),
            _I("out_zp"),
        ),
        "float unit: elementwise (broadcast) division",
    ),
    Opcode("halt", 63, (), "end of program"),
]

#: opcode name -> Opcode
OPCODES: dict[str, Opcode] = {op.name: op for op in _TABLE}
#: binary id -> Opcode
BY_ID: dict[int, Opcode] = {op.id: op for op in _TABLE}
assert len(BY_ID) == len(OPCODES)


# ---------------------------------------------------------------------------- value predicates


def is_int(v: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    t = type(v)
    return t is int or (t is not bool and t is not float and isinstance(v, numbers.Integral))


def is_real(v: Any) -> bool:
    t = type(v)
    return t is float or t is int or (t is not bool and isinstance(v, numbers.Real))


_DTYPE_NAME_CACHE: dict[np.dtype, str | None] = {}


def dtype_name(arr: np.ndarray) -> str | None:
    """The program name of an array's element type (any byte order), or None."""
    dt = arr.dtype
    try:
        return _DTYPE_NAME_CACHE[dt]
    except KeyError:
        pass
    nat = dt.newbyteorder("=") if dt.byteorder not in ("=", "|") else dt
    name = next((n for n, d in DTYPES.items() if d == nat), None)
    _DTYPE_NAME_CACHE[dt] = name
    return name


def valid_name(v: Any) -> bool:
    """Names are non-empty strings encodable as UTF-8 (they live in the string table)."""
    if not isinstance(v, str) or not v:
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def valid_text(v: Any) -> bool:
    """Like ``valid_name`` but may be empty (layer names: "" is the layer before any ``.layer``)."""
    return isinstance(v, str) and (v == "" or valid_name(v))


def canonical_fields(opcode: str, fields: dict) -> dict:
    """The fields of an instruction in canonical form: schema order, defaults filled, ints as
    ``int``, floats as ``float``, lists as lists. Assumes ``validate_program`` accepted them.

    The writer stores this form (so omitting a default or giving it gives the same bytes) and the
    reader and the assembler produce it.
    """
    op = OPCODES[opcode]
    if op.reserved:
        return {k: _plain(v) for k, v in fields.items()}
    out = {}
    for f in op.fields:
        v = fields[f.name] if f.name in fields else f.default
        if f.kind in ("int", "xbar"):
            v = int(v)
        elif f.kind == "f64":
            v = float(v)
        elif f.kind == "ints":
            v = [int(x) for x in v]
        elif f.kind == "bufs":
            v = [str(x) for x in v]
        else:
            v = str(v)
        out[f.name] = v
    return out


def _plain(v: Any) -> Any:
    if is_int(v):
        return int(v)
    if is_real(v):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def free_value_ok(v: Any) -> bool:
    """A value allowed in a reserved instruction (no schema): int, finite float, name, or a list
    of ints or of names."""
    if is_int(v):
        return INT64_MIN <= v <= INT64_MAX
    if is_real(v):
        return math.isfinite(v)
    if isinstance(v, str):
        return valid_name(v)
    if isinstance(v, (list, tuple)):
        return all(is_int(x) and INT64_MIN <= x <= INT64_MAX for x in v) or all(valid_name(x) for x in v)
    return False


def canonical_config_json(config: Any) -> str:
    """The configuration as canonical JSON: sorted keys, no spaces, exact floats, ASCII only."""

    def default(o: Any) -> Any:
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON data")

    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=default)


# ------------------------------------------------------------------------------------ validation

#: where an item came from in a text program: key -> (line, column); keys are
#: ("instr", i), ("instr", i, field), ("xbar", i), ("xbar", i, field), ("buffer", i), ("const", i),
#: ("input", i), ("input", i, field), ("output", i), ("output", i, field), ("config",),
#: ("layer", name), ("layer", name, "replication")
Locations = dict[tuple, tuple[int, int]]


class _Checker:
    def __init__(self, program: Program, source: str, where: Locations | None):
        self.p = program
        self.source = source
        self.where = where or {}

    def fail(self, keys: tuple[tuple, ...], what: str) -> None:
        for k in keys:
            if k in self.where:
                line, col = self.where[k]
                raise ProgramError(f"{self.source}:{line}:{col}: {what}")
        raise ProgramError(f"{self.source}: {what}")

    # ---------------------------------------------------------------------------------------
    def run(self) -> None:
        p = self.p
        if not isinstance(p.config, dict):
            self.fail((("config",),), f"the hardware configuration must be a JSON object, got {type(p.config).__name__}")
        try:
            canonical_config_json(p.config)
        except (TypeError, ValueError) as e:
            self.fail((("config",),), f"the hardware configuration is not JSON data without NaN/inf: {e}")
        self.names: dict[str, tuple[str, Any]] = {}
        for i, b in enumerate(p.buffers):
            self.buffer(i, b)
        for i, c in enumerate(p.consts):
            self.const(i, c)
        for kind, ports in (("input", p.inputs), ("output", p.outputs)):
            seen = set()
            for i, port in enumerate(ports):
                self.port(kind, i, port)
                if port.name in seen:
                    self.fail(((kind, i),), f"{kind} {port.name!r} is declared twice")
                seen.add(port.name)
        for i, x in enumerate(p.xbars):
            self.xbar(i, x)
        for i, ins in enumerate(p.instrs):
            self.instr(i, ins)
        self.layers()

    def declare(self, key: tuple, name: Any, what: str, obj: Any) -> None:
        if not valid_name(name):
            self.fail((key,), f"{what} name {name!r} is not a non-empty UTF-8 string")
        if name in self.names:
            self.fail((key,), f"name {name!r} is declared twice (as {self.names[name][0]} and as {what})")
        self.names[name] = (what, obj)

    def buffer(self, i: int, b: Any) -> None:
        key = ("buffer", i)
        self.declare(key, b.name, "buffer", b)
        if b.dtype not in BUFFER_DTYPES:
            self.fail((key,), f"buffer {b.name!r}: element type {b.dtype!r} is not one of {', '.join(BUFFER_DTYPES)}")
        shape = list(b.shape)
        if not shape or not all(is_int(d) for d in shape) or shape[0] != -1 or any(d < 0 for d in shape[1:]):
            self.fail((key,), f"buffer {b.name!r}: shape {shape} must be [?, d1, ...] (batch first, then sizes >= 0)")
        if any(d > INT64_MAX for d in shape[1:]):
            self.fail((key,), f"buffer {b.name!r}: shape {shape} has a dimension beyond 64 bits")

    def const(self, i: int, c: Any) -> None:
        key = ("const", i)
        self.declare(key, c.name, "constant", c)
        if not isinstance(c.array, np.ndarray) or dtype_name(c.array) is None:
            t = c.array.dtype if isinstance(c.array, np.ndarray) else type(c.array).__name__
            self.fail((key,), f"constant {c.name!r}: element type {t} is not one of {', '.join(DTYPES)}")

    def port(self, kind: str, i: int, port: Any) -> None:
        key = (kind, i)
        if not valid_name(port.name):
            self.fail((key,), f"{kind} name {port.name!r} is not a non-empty UTF-8 string")
        ent = self.names.get(port.buf) if isinstance(port.buf, str) else None
        if ent is None or ent[0] != "buffer":
            self.fail(((kind, i, "buf"), key), f"{kind} {port.name!r}: buf {port.buf!r} is not a declared buffer")
        if not is_real(port.scale) or not math.isfinite(port.scale) or port.scale <= 0:
            self.fail(((kind, i, "scale"), key), f"{kind} {port.name!r}: scale {port.scale!r} must be a finite float > 0")
        info = np.iinfo(DTYPES[ent[1].dtype])
        if not is_int(port.zp) or not info.min <= port.zp <= info.max:
            self.fail(
                ((kind, i, "zp"), key),
                f"{kind} {port.name!r}: zp {port.zp!r} must be an integer in [{info.min}, {info.max}] ({ent[1].dtype} buffer)",
            )

    def xbar(self, i: int, x: Any) -> None:
        key = ("xbar", i)
        lab = f"crossbar {i}"

        def fk(f: str) -> tuple[tuple, ...]:
            return (("xbar", i, f), key)

        if not is_int(x.id) or x.id != i:
            self.fail(fk("id"), f"{lab}: id {x.id!r} out of order (crossbars are numbered 0, 1, 2, ... in order)")
        for f in ("rows", "cols", "adc_bits"):
            v = getattr(x, f)
            if not is_int(v) or not 1 <= v <= (64 if f == "adc_bits" else 2**31 - 1):
                self.fail(fk(f), f"{lab}: {f} = {v!r} must be a positive integer" + (" <= 64" if f == "adc_bits" else ""))
        for f in ("chip", "tile", "ima"):
            v = getattr(x, f)
            if not is_int(v) or not 0 <= v <= 2**32 - 1:
                self.fail(fk(f), f"{lab}: {f} = {v!r} must be an integer >= 0")
        copies = x.copies
        if not isinstance(copies, (list, tuple)) or not all(
            isinstance(c, (list, tuple)) and len(c) == 3 and all(is_int(v) and 0 <= v <= 2**32 - 1 for v in c) for c in copies
        ):
            self.fail(fk("copies"), f"{lab}: copies = {copies!r} must be a list of places [chip, tile, ima] (integers >= 0)")
        if not is_int(x.lossless) or x.lossless not in (0, 1):
            self.fail(fk("lossless"), f"{lab}: lossless = {x.lossless!r} must be 0 or 1")
        if x.adc_mode not in ADC_MODES:
            self.fail(fk("adc_mode"), f"{lab}: adc_mode {x.adc_mode!r} must be one of {', '.join(ADC_MODES)}")
        image = self._const_of(x.image, fk("image"), f"{lab}: image")
        if dtype_name(image) != "u8" or image.shape != (x.rows, x.cols):
            self.fail(
                fk("image"),
                f"{lab}: image {x.image!r} is {dtype_name(image)} {list(image.shape)}; expected u8 [{x.rows}, {x.cols}] (rows, cols)",
            )
        table = self._const_of(x.row_table, fk("row_table"), f"{lab}: row_table")
        if dtype_name(table) != "i32" or table.shape != (x.rows,):
            self.fail(
                fk("row_table"),
                f"{lab}: row_table {x.row_table!r} is {dtype_name(table)} {list(table.shape)}; expected i32 [{x.rows}]",
            )
        if table.size and int(table.min()) < -1:
            self.fail(fk("row_table"), f"{lab}: row_table {x.row_table!r} has entry {int(table.min())} (allowed: -1 or an index >= 0)")
        xb = self.p.config.get("crossbar") if isinstance(self.p.config, dict) else None
        if isinstance(xb, dict):
            cell_bits = xb.get("cell_bits")
            if is_int(cell_bits) and image.size:
                top = int(image.max())
                if top > 2**cell_bits - 1:
                    self.fail(
                        fk("image"),
                        f"{lab}: image {x.image!r} holds cell value {top}, beyond {2**cell_bits - 1} "
                        f"(crossbar.cell_bits = {cell_bits} in the embedded configuration)",
                    )
            for f in ("rows", "cols"):
                lim = xb.get(f)
                if is_int(lim) and getattr(x, f) > lim:
                    self.fail(fk(f), f"{lab}: {f} = {getattr(x, f)} exceeds crossbar.{f} = {lim} of the embedded configuration")

    def layers(self) -> None:
        """Layer declarations (format 1.1): replication >= 1, for layers that have instructions,
        and every crossbar an ``mvm`` of a layer names has replication - 1 copies."""
        p = self.p
        if not isinstance(p.layers, dict):
            self.fail((), f"the layer table must be a dict of layer name -> Layer, got {type(p.layers).__name__}")
        used = {ins.layer for ins in p.instrs}
        for name, info in p.layers.items():
            key = ("layer", name)
            rep = getattr(info, "replication", None)
            if not valid_name(name):
                self.fail((key,), f"layer name {name!r} is not a non-empty UTF-8 string")
            if not is_int(rep) or not 1 <= rep <= 2**32 - 1:
                self.fail(((*key, "replication"), key), f"layer {name!r}: replication = {rep!r} must be an integer >= 1")
            if name not in used:
                self.fail((key,), f"layer {name!r} is declared but no instruction belongs to it")
        for i, ins in enumerate(p.instrs):
            if ins.opcode != "mvm":
                continue
            xid = ins.fields["xbar"]
            rep = p.replication(ins.layer)
            copies = len(p.xbars[xid].copies)
            if copies != rep - 1:
                self.fail(
                    (("instr", i, "xbar"), ("instr", i)),
                    f"instruction {i} (mvm): crossbar {xid} has {copies} copies, but its layer {ins.layer!r} "
                    f"has replication {rep} (each crossbar of a replicated layer declares replication - 1 copies)",
                )

    def _const_of(self, name: Any, keys: tuple[tuple, ...], what: str) -> np.ndarray:
        ent = self.names.get(name) if isinstance(name, str) else None
        if ent is None or ent[0] != "constant":
            self.fail(keys, f"{what} {name!r} is not a declared constant")
        return ent[1].array

    def instr(self, i: int, ins: Any) -> None:
        key = ("instr", i)
        op = OPCODES.get(ins.opcode)
        if op is None:
            self.fail((key,), f"instruction {i}: unknown opcode {ins.opcode!r}")
        lab = f"instruction {i} ({ins.opcode})"
        if not valid_text(ins.layer):
            self.fail((key,), f"{lab}: layer {ins.layer!r} is not a UTF-8 string")
        fields = ins.fields
        if not isinstance(fields, dict):
            self.fail((key,), f"{lab}: fields must be a dict")
        if op.reserved:
            for name, v in fields.items():
                if not valid_name(name) or not free_value_ok(v):
                    self.fail(((*key, name), key), f"{lab}: field {name!r} = {v!r} is not an integer, finite float, name or list of them")
            return
        for name in fields:
            if op.field(name) is None:
                allowed = ", ".join(f.name for f in op.fields) or "none"
                self.fail(((*key, name), key), f"{lab}: unknown field {name!r} (fields of {op.name}: {allowed})")
        for f in op.fields:
            if f.name not in fields:
                if f.required:
                    self.fail((key,), f"{lab}: missing field {f.name!r} ({f.describe()})")
                continue
            msg = self.value(f, fields[f.name])
            if msg:
                self.fail(((*key, f.name), key), f"{lab}: field {f.name!r}: {msg}")
        if op.checks:
            full = canonical_fields(op.name, fields)
            for check in op.checks:
                bad = check(full)
                if bad:
                    self.fail(((*key, bad[0]), key), f"{lab}: field {bad[0]!r}: {bad[1]}")

    def value(self, f: Field, v: Any) -> str | None:
        """An error message if v is not a value of field f, else None."""
        expect = f.describe()
        if f.kind in ("buf", "const", "src"):
            if not isinstance(v, str):
                return f"expected {expect}, got {v!r}"
            ent = self.names.get(v)
            want = {"buf": ("buffer",), "const": ("constant",), "src": ("buffer", "constant")}[f.kind]
            if ent is None or ent[0] not in want:
                what = " or ".join(want)
                got = f" (it is a {ent[0]})" if ent else ""
                return f"{v!r} is not a declared {what}{got}"
            obj = ent[1]
            dt = obj.dtype if ent[0] == "buffer" else dtype_name(obj.array)
            if f.dtypes and dt not in f.dtypes:
                return f"{ent[0]} {v!r} has element type {dt}; expected {'/'.join(f.dtypes)}"
            if ent[0] == "constant":
                shape = obj.array.shape
                if f.ndim is not None and len(shape) != f.ndim:
                    return f"constant {v!r} has shape {list(shape)}; expected rank {f.ndim}"
                if f.last_dim is not None and (not shape or shape[-1] != f.last_dim):
                    return f"constant {v!r} has shape {list(shape)}; expected last axis {f.last_dim}"
            return None
        if f.kind == "bufs":
            if not isinstance(v, (list, tuple)) or len(v) < f.min_length:
                return f"expected {expect} (at least {f.min_length}), got {v!r}"
            for x in v:
                ent = self.names.get(x) if isinstance(x, str) else None
                if ent is None or ent[0] != "buffer":
                    return f"{x!r} is not a declared buffer"
            return None
        if f.kind == "xbar":
            if not is_int(v) or not 0 <= v < len(self.p.xbars):
                return f"{v!r} is not a declared crossbar (ids 0..{len(self.p.xbars) - 1})" if self.p.xbars else f"{v!r}: the program declares no crossbars"
            return None
        if f.kind == "int":
            return _int_msg(f, v, expect)
        if f.kind == "f64":
            if not is_real(v) or not math.isfinite(v) or (f.positive and not v > 0):
                return f"expected {expect}, got {v!r}"
            return None
        if f.kind == "ints":
            if not isinstance(v, (list, tuple)):
                return f"expected {expect}, got {v!r}"
            if f.length is not None and len(v) != f.length:
                return f"expected {expect}, got {len(v)} elements {list(v)!r}"
            for x in v:
                m = _int_msg(f, x, expect)
                if m:
                    return m
            return None
        if f.kind == "enum":
            if v not in f.choices:
                return f"expected {expect}, got {v!r}"
            return None
        raise AssertionError(f.kind)


def _int_msg(f: Field, v: Any, expect: str) -> str | None:
    if not is_int(v) or not INT64_MIN <= v <= INT64_MAX:
        return f"expected {expect}, got {v!r}"
    if (f.min is not None and v < f.min) or (f.max is not None and v > f.max):
        return f"expected {expect}, got {v!r}"
    return None


def validate_program(program: Program, source: str, where: Locations | None = None) -> None:
    """Raise ``ProgramError`` naming the first ill-formed item of ``program``.

    Checks what a reader can check without running the program: declarations (unique names,
    element types, buffer shapes ``[?, ...]``), ports, crossbars (ids in order, image u8
    [rows, cols] with cells that fit ``crossbar.cell_bits`` of the embedded configuration, row
    table i32 [rows], copies' places), every instruction's fields against ``OPCODES``, and the
    layer declarations (replication an integer >= 1, only for layers that have instructions, each
    crossbar an ``mvm`` of the layer names with replication - 1 copies). ``where`` (from the
    assembler) turns items into ``line:column`` positions; otherwise messages name the index.
    """
    _Checker(program, source, where).run()


def schema_markdown() -> str:
    """The opcode table of ``spec/program-format.md`` §7, generated from ``OPCODES`` (a test keeps
    the document and this table identical)."""
    rows = ["| id | opcode | fields in canonical order: kind (constraints), default |", "|---|---|---|"]
    for op in sorted(OPCODES.values(), key=lambda o: o.id):
        if op.reserved:
            text = "*reserved* (isa.md §4): any fields; a 1.x executor rejects the instruction"
        elif not op.fields:
            text = "–"
        else:
            text = "; ".join(
                f"`{f.name}` {f.describe()}" + ("" if f.required else f", default `{f.default}`") for f in op.fields
            )
        rows.append(f"| {op.id} | `{op.name}` | {text} |")
    return "\n".join(rows)

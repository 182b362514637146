"""The text (assembly) form of a program: ``disassemble`` and ``assemble`` (``spec/isa.lark``).

The grammar is read from the shipped spec (``runtime.spec/isa.lark``) so that the runtime and the
compiler parse exactly the normative text. The disassembler prints every field (defaults filled),
floats with ``repr`` (which round-trips bit-exactly) and constants as number lists or base64 of
their little-endian bytes, so ``assemble(disassemble(p))`` writes the same bytes as ``p``.
Errors name ``source:line:column``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import lark
import numpy as np

from runtime.errors import ProgramError
from runtime.model import DTYPES, FORMAT_VERSION, Buffer, Const, Instr, Layer, Port, Program, Xbar
from runtime.opcodes import (
    BUFFER_DTYPES,
    OPCODES,
    Locations,
    canonical_config_json,
    canonical_fields,
    dtype_name,
    validate_program,
)

#: constants with at most this many elements are printed as a number list, larger ones as base64
LIST_MAX = 256

_BARE = re.compile(r"[A-Za-z_/][A-Za-z0-9_.\-/:@$]*\Z")


def grammar_text() -> str:
    """``isa.lark`` from the installed package data, or from the repository's ``spec/``."""
    try:
        return (resources.files("runtime.spec") / "isa.lark").read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError, NotADirectoryError):
        return (Path(__file__).resolve().parent.parent / "spec" / "isa.lark").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------- disassemble


def _name(s: str) -> str:
    return s if _BARE.match(s) else json.dumps(s, ensure_ascii=False)


def _value(v: Any) -> str:
    if isinstance(v, str):
        return _name(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(v)


def _const_data(arr: np.ndarray) -> str:
    name = dtype_name(arr)
    if arr.size <= LIST_MAX and (name != "f64" or bool(np.isfinite(arr).all())):
        flat = arr.reshape(-1).tolist()
        return "[" + ", ".join(repr(float(x)) if name == "f64" else str(int(x)) for x in flat) + "]"
    raw = np.ascontiguousarray(arr, dtype=DTYPES[name].newbyteorder("<")).tobytes()
    return 'b64"' + base64.b64encode(raw).decode("ascii") + '"'


def disassemble(program: Program) -> str:
    """The text form of ``program`` (validated first), one statement a line."""
    validate_program(program, "<program being disassembled>")
    out = [f"pimx {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}"]
    config = json.loads(canonical_config_json(program.config))
    out.append(".config " + json.dumps(config, indent=2, sort_keys=True, ensure_ascii=True))
    for kw, ports in ((".input", program.inputs), (".output", program.outputs)):
        for p in ports:
            out.append(f"{kw} {_name(p.name)} buf={_name(p.buf)} scale={float(p.scale)!r} zp={int(p.zp)}")
    for b in program.buffers:
        dims = ", ".join("?" if i == 0 else str(int(d)) for i, d in enumerate(b.shape))
        out.append(f".buffer {_name(b.name)} {b.dtype} [{dims}]")
    for c in program.consts:
        dims = ", ".join(str(d) for d in c.array.shape)
        out.append(f".const {_name(c.name)} {dtype_name(c.array)} [{dims}] = {_const_data(c.array)}")
    for x in program.xbars:
        copies = f" copies={_value([[int(v) for v in c] for c in x.copies])}" if x.copies else ""
        out.append(
            f".xbar {int(x.id)} image={_name(x.image)} rows={int(x.rows)} cols={int(x.cols)} "
            f"row_table={_name(x.row_table)} adc_bits={int(x.adc_bits)} adc_mode={x.adc_mode} "
            f"chip={int(x.chip)} tile={int(x.tile)} ima={int(x.ima)} lossless={int(x.lossless)}{copies}"
        )
    layer = ""
    declared: set[str] = set()
    for ins in program.instrs:
        if ins.layer != layer:
            layer = ins.layer
            rep = program.replication(layer)
            fields = f" replication={rep}" if rep != 1 and layer not in declared else ""
            declared.add(layer)
            out.append(f".layer {_name(layer) if layer else chr(34) * 2}{fields}")
        fields = canonical_fields(ins.opcode, ins.fields)
        args = ", ".join(f"{k}={_value(v)}" for k, v in fields.items())
        out.append(f"{ins.opcode} {args}" if args else ins.opcode)
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------- assemble


@dataclass
class V:
    """A parsed value with the position of its first character."""

    value: Any
    kind: str  # "int" | "float" | "name" | "list"
    line: int
    col: int

    def plain(self) -> Any:
        return [x.plain() for x in self.value] if self.kind == "list" else self.value

    def show(self) -> str:
        return _value(self.plain()) if self.kind != "float" else repr(self.value)


class _ToValues(lark.Transformer):
    """Inline (tree-less) callbacks of the LALR parser: tokens to positioned values."""

    def int(self, c):
        return V(int(c[0]), "int", c[0].line, c[0].column)

    def float(self, c):
        return V(float(c[0]), "float", c[0].line, c[0].column)

    def name(self, c):
        t = c[0]
        s = json.loads(t) if t.type == "STRING" else str(t)
        return V(s, "name", t.line, t.column)

    def list(self, c):
        return V(list(c[1:]), "list", c[0].line, c[0].column)

    def field(self, c):
        key = c[0]
        return (str(key)[:-1], key.line, key.column, c[1])

    def fields(self, c):
        return list(c)

    def shape(self, c):
        return (c[0], list(c[1:]))

    def dim(self, c):
        return c[0]

    def numlist(self, c):
        return ("numlist", c[0])

    def b64(self, c):
        return ("b64", c[0])

    def hex(self, c):
        return ("hex", c[0])

    # JSON
    def object(self, c):
        return ("object", c[0], list(c[1:]))

    def member(self, c):
        return (c[0], c[1])

    def array(self, c):
        return [_json(x) for x in c[1:]]

    def jstring(self, c):
        return json.loads(c[0])

    def jint(self, c):
        return int(c[0])

    def jfloat(self, c):
        return float(c[0])

    def jlit(self, c):
        return {"true": True, "false": False, "null": None}[str(c[0])]

    # statements: (kind, (line, column) of the statement, children)
    def header(self, c):
        return ("header", _pos(c[0]), c)

    def config(self, c):
        return ("config", _pos(c[0][1]), c)

    def port(self, c):
        return ("port", _pos(c[0]), c)

    def buffer(self, c):
        return ("buffer", _pos(c[0]), c)

    def const(self, c):
        return ("const", _pos(c[0]), c)

    def xbar(self, c):
        return ("xbar", _pos(c[0]), c)

    def layer(self, c):
        return ("layer", _pos(c[0]), c)

    def instr(self, c):
        return ("instr", _pos(c[0]), c)


def _pos(x: Any) -> tuple[int, int]:
    return (x.line, x.col) if isinstance(x, V) else (x.line, x.column)


class _JsonDup(Exception):
    def __init__(self, key: lark.Token):
        self.key = key


def _json(x: Any) -> Any:
    """A JSON value from the transformer's output (objects keep their key tokens until here)."""
    if isinstance(x, tuple) and x and x[0] == "object":
        out: dict = {}
        for key_tok, val in x[2]:
            key = json.loads(key_tok)
            if key in out:
                raise _JsonDup(key_tok)
            out[key] = _json(val)
        return out
    return x


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        transformer=_ToValues(),
        maybe_placeholders=False,
        propagate_positions=False,
    )


_PORT_FIELDS = {"buf": "name", "scale": "f64", "zp": "int"}
_XBAR_FIELDS = {
    "image": "name",
    "rows": "int",
    "cols": "int",
    "row_table": "name",
    "adc_bits": "int",
    "adc_mode": "name",
    "chip": "int",
    "tile": "int",
    "ima": "int",
    "lossless": "int",
    "copies": "places",
}
_XBAR_DEFAULTS = {"chip": 0, "tile": 0, "ima": 0, "lossless": 0, "copies": []}
_LAYER_FIELDS = {"replication": "int"}
#: statement fields that format 1.1 added: a text whose header says 1.0 may not use them
_NEW_IN_1_1 = {("xbar", "copies"), ("layer", "replication")}


class _Builder:
    def __init__(self, source: str):
        self.source = source
        self.where: Locations = {}

    def fail(self, line: int, col: int, what: str) -> None:
        raise ProgramError(f"{self.source}:{line}:{col}: {what}")

    def coerce(self, kind: str, v: V, what: str) -> Any:
        """A field value of the given kind ('name', 'names', 'int', 'f64', 'ints', 'any')."""
        if kind == "any":
            return v.plain()
        if kind == "name":
            if v.kind == "name":
                return v.value
            self.fail(v.line, v.col, f"{what}: expected a name, got {v.show()}")
        if kind == "int":
            if v.kind == "int":
                return v.value
            self.fail(v.line, v.col, f"{what}: expected an integer, got {v.show()}")
        if kind == "f64":
            if v.kind in ("int", "float"):
                return float(v.value)
            self.fail(v.line, v.col, f"{what}: expected a number, got {v.show()}")
        if kind == "places":
            if v.kind != "list":
                self.fail(v.line, v.col, f"{what}: expected a list of places [chip, tile, ima], got {v.show()}")
            out = []
            for place in v.value:
                if place.kind != "list" or len(place.value) != 3:
                    self.fail(place.line, place.col, f"{what}: expected a place [chip, tile, ima], got {place.show()}")
                out.append(tuple(self.coerce("int", x, what) for x in place.value))
            return out
        if kind in ("ints", "names"):
            if v.kind != "list":
                self.fail(v.line, v.col, f"{what}: expected a [...] list, got {v.show()}")
            return [self.coerce(kind[:-1], x, what) for x in v.value]
        raise AssertionError(kind)

    def take_fields(self, fields: list, schema: dict[str, str], what: str, key: tuple, line: int, col: int) -> dict:
        out: dict[str, Any] = {}
        for name, fl, fc, v in fields:
            if name in out:
                self.fail(fl, fc, f"{what}: field {name!r} given twice")
            if (key[0], name) in _NEW_IN_1_1 and self.version < (1, 1):
                self.fail(fl, fc, f"{what}: field {name!r} needs format 1.1 (the header says pimx {self.version[0]}.{self.version[1]})")
            kind = schema.get(name) if schema is not None else "any"
            if kind is None:
                self.fail(fl, fc, f"{what}: unknown field {name!r} (fields: {', '.join(schema)})")
            out[name] = self.coerce(kind, v, f"{what}: field {name!r}")
            self.where[(*key, name)] = (v.line, v.col)
        return out

    def build(self, header: tuple, statements: list) -> Program:
        _, _, (word, version) = header
        if str(word) != "pimx":
            self.fail(word.line, word.column, f"expected the header 'pimx {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}', got {str(word)!r}")
        major, _, minor = str(version).partition(".")
        if int(major) != FORMAT_VERSION[0]:
            self.fail(
                version.line,
                version.column,
                f"program text is format version {version}; this assembler reads {FORMAT_VERSION[0]}.x",
            )
        self.version = (int(major), int(minor))
        p = Program(config={}, version=self.version)
        have_config = False
        layer = ""
        for kind, (line, col), c in statements:
            if kind == "config":
                if have_config:
                    self.fail(line, col, "a second .config (a program has one hardware configuration)")
                have_config = True
                try:
                    p.config = _json(c[0])
                except _JsonDup as e:
                    self.fail(e.key.line, e.key.column, f".config: key {json.loads(e.key)!r} given twice")
                self.where[("config",)] = (line, col)
            elif kind == "port":
                is_in = str(c[0]) == ".input"
                what = f"{c[0]} {c[1].value!r}"
                lst = p.inputs if is_in else p.outputs
                key = ("input" if is_in else "output", len(lst))
                f = self.take_fields(c[2] if len(c) > 2 else [], _PORT_FIELDS, what, key, line, col)
                missing = [k for k in _PORT_FIELDS if k not in f]
                if missing:
                    self.fail(line, col, f"{what}: missing field(s) {', '.join(missing)}")
                self.where[key] = (line, col)
                lst.append(Port(c[1].value, f["buf"], f["scale"], f["zp"]))
            elif kind == "buffer":
                name, dt, (lsq, dims) = c
                if dt.value not in BUFFER_DTYPES:
                    self.fail(dt.line, dt.col, f"buffer {name.value!r}: element type {dt.value!r}; expected one of {', '.join(BUFFER_DTYPES)}")
                shape = []
                for i, d in enumerate(dims):
                    if (i == 0) != (d.type == "QMARK"):
                        self.fail(d.line, d.column, f"buffer {name.value!r}: the first dimension (and only it) is the batch '?'")
                    shape.append(-1 if d.type == "QMARK" else int(d))
                if not dims:
                    self.fail(lsq.line, lsq.column, f"buffer {name.value!r}: shape must start with the batch '?'")
                self.where[("buffer", len(p.buffers))] = (line, col)
                p.buffers.append(Buffer(name.value, dt.value, shape))
            elif kind == "const":
                self.where[("const", len(p.consts))] = (line, col)
                p.consts.append(Const(c[0].value, self.const_array(*c)))
            elif kind == "xbar":
                xid = c[0]
                what = f".xbar {xid}"
                key = ("xbar", len(p.xbars))
                f = self.take_fields(c[1] if len(c) > 1 else [], _XBAR_FIELDS, what, key, line, col)
                missing = [k for k in _XBAR_FIELDS if k not in f and k not in _XBAR_DEFAULTS]
                if missing:
                    self.fail(line, col, f"{what}: missing field(s) {', '.join(missing)}")
                f = {**_XBAR_DEFAULTS, **f}
                f["copies"] = list(f["copies"])
                self.where[key] = (line, col)
                self.where[(*key, "id")] = (xid.line, xid.column)
                p.xbars.append(Xbar(int(xid), **f))
            elif kind == "layer":
                layer = c[0].value
                key = ("layer", layer)
                f = self.take_fields(c[1] if len(c) > 1 else [], _LAYER_FIELDS, f".layer {layer!r}", key, line, col)
                if "replication" in f:
                    if not layer:
                        self.fail(line, col, 'the unnamed layer "" cannot be replicated')
                    known = p.layers.get(layer)
                    if known is not None and known.replication != f["replication"]:
                        self.fail(
                            *self.where[(*key, "replication")],
                            f".layer {layer!r}: replication {f['replication']} differs from {known.replication} given before",
                        )
                    p.layers[layer] = Layer(f["replication"])
                self.where.setdefault(key, (line, col))
            elif kind == "instr":
                opname = str(c[0])
                op = OPCODES.get(opname)
                if op is None:
                    self.fail(line, col, f"unknown opcode {opname!r} (opcodes: {', '.join(sorted(OPCODES))})")
                key = ("instr", len(p.instrs))
                if op.reserved:
                    schema = None
                else:
                    kinds = {"buf": "name", "const": "name", "src": "name", "enum": "name", "bufs": "names", "xbar": "int"}
                    schema = {f.name: kinds.get(f.kind, f.kind) for f in op.fields}
                f = self.take_fields(c[1] if len(c) > 1 else [], schema, f"{opname}", key, line, col)
                self.where[key] = (line, col)
                p.instrs.append(Instr(opname, f, layer))
        validate_program(p, self.source, self.where)
        for ins in p.instrs:
            ins.fields = canonical_fields(ins.opcode, ins.fields)
        return p

    def const_array(self, name: V, dt: V, shape: tuple, data: Any) -> np.ndarray:
        what = f"constant {name.value!r}"
        if dt.value not in DTYPES:
            self.fail(dt.line, dt.col, f"{what}: element type {dt.value!r}; expected one of {', '.join(DTYPES)}")
        dtype = DTYPES[dt.value].newbyteorder("<")
        dims = []
        for d in shape[1]:
            if d.type == "QMARK":
                self.fail(d.line, d.column, f"{what}: a constant has no batch dimension '?'")
            if int(d) < 0:
                self.fail(d.line, d.column, f"{what}: negative dimension {d}")
            dims.append(int(d))
        size = math.prod(dims)
        if isinstance(data, V):  # a number list
            vals = data.value
            if len(vals) != size:
                self.fail(data.line, data.col, f"{what}: {len(vals)} values for shape {dims} ({size} elements)")
            if dt.value == "f64":
                bad = next((v for v in vals if v.kind not in ("int", "float")), None)
                if bad:
                    self.fail(bad.line, bad.col, f"{what}: expected a number, got {bad.show()}")
                arr = np.array([float(v.value) for v in vals], dtype=dtype)
            else:
                info = np.iinfo(dtype)
                bad = next((v for v in vals if v.kind != "int" or not info.min <= v.value <= info.max), None)
                if bad:
                    self.fail(bad.line, bad.col, f"{what}: expected an integer in [{info.min}, {info.max}] ({dt.value}), got {bad.show()}")
                arr = np.array([v.value for v in vals], dtype=dtype)
            return arr.reshape(dims)
        enc, tok = data
        if enc == "numlist":
            return self.numlist(what, dt.value, dtype, dims, size, tok)
        body = str(tok)[4:-1]
        try:
            raw = base64.b64decode(body, validate=True) if enc == "b64" else bytes.fromhex(body)
        except (binascii.Error, ValueError) as e:
            self.fail(tok.line, tok.column, f"{what}: bad {enc} data: {e}")
        if enc == "b64" and base64.b64encode(raw).decode("ascii") != body:
            self.fail(tok.line, tok.column, f"{what}: b64 data is not in canonical form (padding or trailing bits)")
        if len(raw) != size * dtype.itemsize:
            self.fail(
                tok.line, tok.column, f"{what}: {len(raw)} data bytes; shape {dims} of {dt.value} needs {size * dtype.itemsize}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(dims)


    def numlist(self, what: str, dtname: str, dtype: np.dtype, dims: list[int], size: int, tok: lark.Token) -> np.ndarray:
        """A NUMLIST token (``[1, -2, 3]`` as one token): split, check each literal, convert at once."""
        body = str(tok)[1:-1]
        parts = body.split(",") if body.strip() else []

        def at(k: int) -> tuple[int, int]:
            """line, column of part k inside the token."""
            off = 1 + sum(len(p) + 1 for p in parts[:k])
            off += len(parts[k]) - len(parts[k].lstrip()) if k < len(parts) else 0
            before = str(tok)[:off]
            nl = before.count("\n")
            return tok.line + nl, (off - before.rfind("\n") if nl else tok.column + off)

        is_float = dtname == "f64"
        for k, part in enumerate(parts):
            lit = part.strip()
            if not (_INT.fullmatch(lit) or (is_float and _FLOAT.fullmatch(lit))):
                expect = "a number" if is_float else "an integer"
                self.fail(*at(k), f"{what}: expected {expect}, got {lit!r}" if lit else f"{what}: missing value in the list")
        if len(parts) != size:
            self.fail(tok.line, tok.column, f"{what}: {len(parts)} values for shape {dims} ({size} elements)")
        if is_float:
            return np.array([float(x) for x in parts], dtype=dtype).reshape(dims)
        vals = [int(x) for x in parts]
        info = np.iinfo(dtype)
        if vals and (min(vals) < info.min or max(vals) > info.max):
            k = next(k for k, v in enumerate(vals) if not info.min <= v <= info.max)
            self.fail(*at(k), f"{what}: expected an integer in [{info.min}, {info.max}] ({dtname}), got {vals[k]}")
        return np.array(vals, dtype=dtype).reshape(dims)


_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+)")


def assemble(text: str, source: str = "<text>") -> Program:
    """Parse the text form into a validated Program with canonical fields.

    Syntax errors and schema errors raise ``ProgramError`` naming ``source:line:column``.
    """
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedCharacters as e:
        raise ProgramError(f"{source}:{e.line}:{e.column}: unexpected character {text[e.pos_in_stream]!r}{_expected(e)}") from None
    except lark.exceptions.UnexpectedToken as e:
        got = "end of text" if e.token.type == "$END" else repr(str(e.token))
        line, col = _end(text) if e.token.type == "$END" or e.line == -1 else (e.line, e.column)
        raise ProgramError(f"{source}:{line}:{col}: unexpected {got}{_expected(e)}") from None
    except lark.exceptions.UnexpectedEOF as e:
        line, col = _end(text)
        raise ProgramError(f"{source}:{line}:{col}: unexpected end of text{_expected(e)}") from None
    header, *statements = tree.children
    return _Builder(source).build(header, statements)


_TERMINALS = {
    "NAME": "a name",
    "STRING": "a quoted string",
    "INT": "an integer",
    "FLOAT": "a float",
    "FIELD_KEY": "field=",
    "LSQB": "'['",
    "RSQB": "']'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "COMMA": "','",
    "EQUAL": "'='",
    "COLON": "':'",
    "QMARK": "'?'",
    "B64": 'b64"..."',
    "NUMLIST": "'['",
    "HEX": 'hex"..."',
    "JLIT": "true/false/null",
    "PORT_KW": ".input/.output",
}


def _expected(e: lark.exceptions.UnexpectedInput) -> str:
    exp = getattr(e, "expected", None) or getattr(e, "allowed", None) or ()
    names = sorted({_TERMINALS.get(t, _literal(t)) for t in exp if t != "$END"})
    if not names:
        return ""
    return "; expected " + ", ".join(names)


@functools.lru_cache(maxsize=None)
def _literal(term: str) -> str:
    for t in _parser().terminals:
        if t.name == term:
            return repr(t.pattern.value) if t.pattern.type == "str" else term
    return term


def _end(text: str) -> tuple[int, int]:
    """Line and column just after the last non-blank character."""
    lines = text.rstrip().split("\n")
    return len(lines), len(lines[-1]) + 1

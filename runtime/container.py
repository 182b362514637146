"""The binary program container ``.pimx`` (normative description: ``spec/program-format.md``).

Layout: a 32-byte header (magic, version, flags, section count, file length), a section table,
8-byte-aligned sections (strings, config, ports, buffers, constants, crossbar images, crossbars,
instructions, and since format 1.1 layers and crossbar copies) and a SHA-256 of everything before
it. Files of format 1.0 (no layer and copy sections: every layer has replication 1) are read too.
Writing is canonical -- the same Program always gives the same bytes -- so ``disasm`` -> ``asm``
round trips can be checked byte for byte.
Constants are stored raw little-endian and read back with ``np.frombuffer`` (no per-element
Python), as read-only views of the file's bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from runtime.errors import ProgramError
from runtime.model import DTYPES, FORMAT_VERSION, Buffer, Const, Instr, Layer, Port, Program, Xbar
from runtime.opcodes import BY_ID, OPCODES, canonical_config_json, canonical_fields, dtype_name, validate_program

MAGIC = b"PIMX"
HEADER = struct.Struct("<4sHHIIQ8x")  # magic, major, minor, flags, section count, file length
SECTION = struct.Struct("<IIQQ")  # kind, reserved, offset, length
CHECKSUM_BYTES = 32
ALIGN = 8

# section kinds (spec/program-format.md §3)
STRINGS, CONFIG, PORTS, BUFFERS, CONSTS, XBAR_IMAGES, XBARS, INSTRS, LAYERS, XBAR_COPIES = range(1, 11)
SECTION_NAMES = {
    STRINGS: "strings",
    CONFIG: "config",
    PORTS: "ports",
    BUFFERS: "buffers",
    CONSTS: "constants",
    XBAR_IMAGES: "crossbar images",
    XBARS: "crossbars",
    INSTRS: "instructions",
    LAYERS: "layers",
    XBAR_COPIES: "crossbar copies",
}
#: the sections of a file of format 1.0; 1.1 added LAYERS and XBAR_COPIES
SECTIONS_1_0 = tuple(range(STRINGS, INSTRS + 1))
OPTIONAL_SECTION = 0x8000  # kinds at or above: a reader that does not know them skips them

DTYPE_CODES = {"u8": 1, "u16": 2, "i8": 3, "i16": 4, "i32": 5, "i64": 6, "f64": 7}
DTYPE_BY_CODE = {v: k for k, v in DTYPE_CODES.items()}
ADC_MODE_CODES = {"saturate": 1, "drop-lsb": 2}
ADC_MODE_BY_CODE = {v: k for k, v in ADC_MODE_CODES.items()}

# instruction field value tags (§6)
TAG_INT, TAG_F64, TAG_STR, TAG_INTS, TAG_STRS = 1, 2, 3, 4, 5

PORT = struct.Struct("<IIdq")  # name, buf, scale, zp
BUFFER = struct.Struct("<IBBH")  # name, dtype, ndim, reserved (+ ndim x i64)
CONST = struct.Struct("<IIBBHIQQ")  # index, name, dtype, ndim, reserved, reserved, data offset, nbytes (+ ndim x u64)
XBAR = struct.Struct("<IIIIIBBBBIIII")  # id, image, rows, cols, row_table, adc_bits, adc_mode, lossless, 0, chip, tile, ima, 0
LAYER = struct.Struct("<II")  # name, replication
XBAR_COPY = struct.Struct("<IIII")  # crossbar id, chip, tile, ima
U32 = struct.Struct("<I")
F64 = struct.Struct("<d")


def _pad(n: int) -> int:
    return -n % ALIGN


# ------------------------------------------------------------------------------------- writing


class _Strings:
    """The string table: every name once, in order of first use (deterministic)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __call__(self, s: str) -> int:
        i = self.index.get(s)
        if i is None:
            i = self.index[s] = len(self.index)
        return i

    def encode(self) -> bytes:
        out = [U32.pack(len(self.index))]
        for s in self.index:
            b = s.encode("utf-8")
            out += [U32.pack(len(b)), b]
        return b"".join(out)


def _uvarint(n: int, out: bytearray) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _svarint(n: int, out: bytearray) -> None:
    _uvarint((n << 1) if n >= 0 else ((-n) << 1) - 1, out)  # zigzag


def _encode_value(v: Any, strings: _Strings, out: bytearray) -> None:
    if isinstance(v, str):
        out.append(TAG_STR)
        _uvarint(strings(v), out)
    elif isinstance(v, float):
        out.append(TAG_F64)
        out += F64.pack(v)
    elif isinstance(v, int):
        out.append(TAG_INT)
        _svarint(v, out)
    elif isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        out.append(TAG_STRS)
        _uvarint(len(v), out)
        for x in v:
            _uvarint(strings(x), out)
    elif isinstance(v, list):
        out.append(TAG_INTS)
        _uvarint(len(v), out)
        for x in v:
            _svarint(x, out)
    else:  # validate_program rules this out
        raise ProgramError(f"cannot encode field value {v!r}")


def _encode_instrs(instrs: Iterable[Instr], strings: _Strings) -> bytes:
    out = bytearray()
    instrs = list(instrs)
    out += U32.pack(len(instrs))
    for ins in instrs:
        op = OPCODES[ins.opcode]
        fields = canonical_fields(ins.opcode, ins.fields)
        _uvarint(op.id, out)
        _uvarint(strings(ins.layer), out)
        _uvarint(len(fields), out)
        for name, v in fields.items():
            _uvarint(strings(name), out)
            _encode_value(v, strings, out)
    return bytes(out)


def _image_names(program: Program) -> set[str]:
    return {x.image for x in program.xbars}


def _le(arr: np.ndarray) -> np.ndarray:
    """The array as contiguous little-endian data of its program type (no copy when it already is)."""
    dt = DTYPES[dtype_name(arr)].newbyteorder("<")
    return arr.astype(dt, order="C", copy=False)  # (not ascontiguousarray: it turns 0-d into 1-d)


def _const_section(entries: list[tuple[int, Const]], strings: _Strings) -> list[Any]:
    """Directory then 8-aligned raw data; returns a list of chunks (data chunks are not copied)."""
    head = bytearray(U32.pack(len(entries)) + b"\0\0\0\0")
    datas = []
    dir_size = 8 + sum(CONST.size + 8 * c.array.ndim for _, c in entries)
    offset = dir_size + _pad(dir_size)
    for index, c in entries:
        arr = _le(c.array)
        nbytes = arr.nbytes
        head += CONST.pack(index, strings(c.name), DTYPE_CODES[dtype_name(arr)], arr.ndim, 0, 0, offset, nbytes)
        head += struct.pack(f"<{arr.ndim}Q", *arr.shape)
        datas.append((offset, arr))
        offset += nbytes + _pad(nbytes)
    chunks: list[Any] = [bytes(head), b"\0" * _pad(len(head))]
    for _, arr in datas:
        chunks.append(memoryview(arr).cast("B") if arr.nbytes else b"")
        chunks.append(b"\0" * _pad(arr.nbytes))
    return chunks


def _sections(program: Program) -> list[tuple[int, list[Any]]]:
    """Every section as (kind, chunks), in canonical order."""
    s = _Strings()
    ports = bytearray(struct.pack("<II", len(program.inputs), len(program.outputs)))
    for p in (*program.inputs, *program.outputs):
        ports += PORT.pack(s(p.name), s(p.buf), float(p.scale), int(p.zp))
    bufs = bytearray(U32.pack(len(program.buffers)))
    for b in program.buffers:
        bufs += BUFFER.pack(s(b.name), DTYPE_CODES[b.dtype], len(b.shape), 0)
        bufs += struct.pack(f"<{len(b.shape)}q", *[int(d) for d in b.shape])
    images = _image_names(program)
    other = [(i, c) for i, c in enumerate(program.consts) if c.name not in images]
    imgs = [(i, c) for i, c in enumerate(program.consts) if c.name in images]
    consts = _const_section(other, s)
    img_sec = _const_section(imgs, s)
    xbars = bytearray(U32.pack(len(program.xbars)))
    for x in program.xbars:
        xbars += XBAR.pack(
            int(x.id), s(x.image), int(x.rows), int(x.cols), s(x.row_table), int(x.adc_bits),
            ADC_MODE_CODES[x.adc_mode], int(x.lossless), 0, int(x.chip), int(x.tile), int(x.ima), 0,
        )  # fmt: skip
    instrs = _encode_instrs(program.instrs, s)
    layers = bytearray()
    replicated = [name for name in dict.fromkeys(i.layer for i in program.instrs) if program.replication(name) != 1]
    layers += U32.pack(len(replicated))
    for name in replicated:
        layers += LAYER.pack(s(name), program.replication(name))
    copies = bytearray(U32.pack(sum(len(x.copies) for x in program.xbars)))
    for x in program.xbars:
        for chip, tile, ima in x.copies:
            copies += XBAR_COPY.pack(int(x.id), int(chip), int(tile), int(ima))
    config = canonical_config_json(program.config).encode("ascii")
    return [
        (STRINGS, [s.encode()]),
        (CONFIG, [config]),
        (PORTS, [bytes(ports)]),
        (BUFFERS, [bytes(bufs)]),
        (CONSTS, consts),
        (XBAR_IMAGES, img_sec),
        (XBARS, [bytes(xbars)]),
        (INSTRS, [instrs]),
        (LAYERS, [bytes(layers)]),
        (XBAR_COPIES, [bytes(copies)]),
    ]


def write_program(program: Program) -> bytes:
    """The canonical ``.pimx`` bytes of ``program`` (validated first: ``ProgramError`` if ill formed)."""
    validate_program(program, "<program being written>")
    return _file(_sections(program), FORMAT_VERSION)


def _file(sections: list[tuple[int, list[Any]]], version: tuple[int, int]) -> bytes:
    """Header, section table, the sections (8-aligned) and the checksum."""
    n = len(sections)
    table_end = HEADER.size + n * SECTION.size
    offset = table_end + _pad(table_end)
    entries = []
    for kind, chunks in sections:
        length = sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)
        entries.append((kind, offset, length))
        offset += length + _pad(length)
    file_len = offset + CHECKSUM_BYTES
    parts: list[Any] = [HEADER.pack(MAGIC, *version, 0, n, file_len)]
    parts += [SECTION.pack(kind, 0, off, length) for kind, off, length in entries]
    parts.append(b"\0" * _pad(table_end))
    for (kind, chunks), (_, _, length) in zip(sections, entries):
        parts += chunks
        parts.append(b"\0" * _pad(length))
    body = b"".join(parts)
    assert len(body) == file_len - CHECKSUM_BYTES
    return body + hashlib.sha256(body).digest()


def save_program(program: Program, path: str | Path) -> None:
    Path(path).write_bytes(write_program(program))


def program_stats(program: Program) -> dict:
    """Sizes a report or ``--stats`` prints: instructions and crossbar images apart.

    ``crossbars`` counts the declared crossbars, ``crossbar_copies`` the copies of replicated
    layers' crossbars (they share the images: no extra image bytes). ``instruction_bytes`` is the
    encoded instruction section; the constant figures are raw array bytes (without directory or
    alignment); ``file_bytes`` is what ``write_program`` would write.
    """
    sections = _sections(program)
    images = _image_names(program)
    img = sum(c.array.nbytes for c in program.consts if c.name in images)
    other = sum(c.array.nbytes for c in program.consts if c.name not in images)
    size = HEADER.size + len(sections) * SECTION.size
    size += _pad(size)
    section_bytes = {}
    for kind, chunks in sections:
        length = sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)
        section_bytes[SECTION_NAMES[kind]] = length
        size += length + _pad(length)
    return {
        "instructions": len(program.instrs),
        "instruction_bytes": section_bytes["instructions"],
        "crossbars": len(program.xbars),
        "crossbar_copies": sum(len(x.copies) for x in program.xbars),
        "xbar_image_bytes": img,
        "other_const_bytes": other,
        "constants": len(program.consts),
        "file_bytes": size + CHECKSUM_BYTES,
        "section_bytes": section_bytes,
    }


# ------------------------------------------------------------------------------------- reading


class _Cursor:
    """Bounds-checked reading of one section; errors name the section and the file offset."""

    def __init__(self, data: memoryview, start: int, length: int, name: str, source: str):
        self.data, self.start, self.end, self.pos = data, start, start + length, start
        self.name, self.source = name, source

    def fail(self, what: str, at: int | None = None) -> None:
        at = self.pos if at is None else at
        raise ProgramError(f"{self.source}: {self.name} section, offset {at}: {what}")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > self.end:
            self.fail(f"needs {n} more bytes but the section ends at offset {self.end}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, st: struct.Struct) -> tuple:
        return st.unpack(self.take(st.size))

    def u32(self) -> int:
        return U32.unpack(self.take(4))[0]

    def uvarint(self) -> int:
        data, pos, end = self.data, self.pos, self.end
        result = shift = 0
        while True:
            if pos >= end:
                self.fail("varint runs past the end of the section")
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 63:
                self.fail("varint longer than 10 bytes")
        self.pos = pos
        return result

    def svarint(self) -> int:
        u = self.uvarint()
        return (u >> 1) if not u & 1 else -((u + 1) >> 1)

    def done(self) -> None:
        if self.pos != self.end:
            self.fail(f"{self.end - self.pos} unexpected trailing bytes")


def _header(data: bytes, source: str) -> tuple[int, int, int, int]:
    """Checks magic, version, length and checksum; returns (major, minor, section count, table end)."""
    n = len(data)
    if n < 4 or data[:4] != MAGIC:
        if n < 4 and MAGIC.startswith(bytes(data)):
            raise ProgramError(f"{source}: file is truncated ({n} bytes; a program file starts with the magic 'PIMX')")
        raise ProgramError(f"{source}: not a pimc program file (starts with {bytes(data[:4])!r}, expected the magic b'PIMX')")
    if n < 8:
        raise ProgramError(f"{source}: file is truncated ({n} bytes, within the header)")
    major, minor = struct.unpack_from("<HH", data, 4)
    if major != FORMAT_VERSION[0]:
        raise ProgramError(
            f"{source}: program format version {major}.{minor}; this runtime reads version "
            f"{FORMAT_VERSION[0]}.x (up to {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}): "
            f"{'recompile the program' if major < FORMAT_VERSION[0] else 'update pimc'}"
        )
    if n < HEADER.size + CHECKSUM_BYTES:
        raise ProgramError(f"{source}: file is truncated ({n} bytes, shorter than header and checksum)")
    _, _, _, flags, count, file_len = HEADER.unpack_from(data, 0)
    if file_len > n:
        raise ProgramError(f"{source}: file is truncated: the header says {file_len} bytes, the file has {n}")
    if file_len < n:
        raise ProgramError(f"{source}: {n - file_len} unexpected bytes after the checksum (the header says {file_len} bytes)")
    body = memoryview(data)[: n - CHECKSUM_BYTES]
    digest = hashlib.sha256(body).digest()
    stored = bytes(data[n - CHECKSUM_BYTES :])
    if digest != stored:
        raise ProgramError(
            f"{source}: checksum mismatch, the file is corrupt (stored SHA-256 {stored.hex()[:16]}..., "
            f"contents hash to {digest.hex()[:16]}...)"
        )
    if flags != 0:
        raise ProgramError(f"{source}: header flags 0x{flags:08x} are not defined in format version {major}.{minor}")
    table_end = HEADER.size + count * SECTION.size
    if table_end > n - CHECKSUM_BYTES:
        raise ProgramError(f"{source}: section table ({count} entries) runs past the end of the file")
    return major, minor, count, table_end


def read_program(data: bytes, source: str) -> Program:
    """Parse ``.pimx`` bytes; any defect raises ``ProgramError`` naming ``source`` and the place."""
    major, minor, count, table_end = _header(data, source)
    mv = memoryview(data)
    body_end = len(data) - CHECKSUM_BYTES
    found: dict[int, tuple[int, int]] = {}
    spans = []
    for i in range(count):
        kind, _res, off, length = SECTION.unpack_from(data, HEADER.size + i * SECTION.size)
        name = SECTION_NAMES.get(kind, f"kind {kind}")
        if off < table_end or off + length > body_end or off % ALIGN:
            raise ProgramError(
                f"{source}: {name} section (table entry {i}) at offset {off}, length {length} lies outside "
                f"the file body [{table_end}, {body_end}) or is not 8-byte aligned"
            )
        spans.append((off, off + length, name))
        if kind in found:
            raise ProgramError(f"{source}: section {name} appears twice in the section table")
        if kind not in SECTION_NAMES:
            if kind >= OPTIONAL_SECTION:
                continue
            raise ProgramError(f"{source}: unknown section kind {kind} (format {major}.{minor}); this runtime reads {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}")
        found[kind] = (off, length)
    spans.sort()
    for a, b in zip(spans, spans[1:]):
        if b[0] < a[1]:
            raise ProgramError(f"{source}: sections {a[2]} and {b[2]} overlap")
    if (major, minor) == (1, 0):
        extra = [SECTION_NAMES[k] for k in found if k not in SECTIONS_1_0]
        if extra:
            raise ProgramError(f"{source}: section(s) {', '.join(extra)} are not defined in format 1.0 (the file says 1.0)")
    required = SECTIONS_1_0 if (major, minor) == (1, 0) else tuple(SECTION_NAMES)
    missing = [SECTION_NAMES[k] for k in required if k not in found]
    if missing:
        raise ProgramError(f"{source}: missing section(s): {', '.join(missing)}")

    def cur(kind: int) -> _Cursor:
        off, length = found[kind]
        return _Cursor(mv, off, length, SECTION_NAMES[kind], source)

    # strings
    c = cur(STRINGS)
    strings = []
    for _ in range(c.u32()):
        at = c.pos
        raw = c.take(c.u32())
        try:
            strings.append(str(raw, "utf-8"))
        except UnicodeDecodeError:
            c.fail("string is not valid UTF-8", at)
    c.done()

    def sref(c: _Cursor, i: int, at: int | None = None) -> str:
        if i >= len(strings):
            c.fail(f"string index {i} out of range (the table has {len(strings)})", at)
        return strings[i]

    # config
    c = cur(CONFIG)
    try:
        config = json.loads(str(c.take(c.end - c.start), "utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        c.fail(f"configuration is not valid JSON: {e}", c.start)
    if not isinstance(config, dict):
        c.fail("configuration is not a JSON object", c.start)

    # ports
    c = cur(PORTS)
    n_in, n_out = c.unpack(struct.Struct("<II"))
    ports = []
    for _ in range(n_in + n_out):
        at = c.pos
        name, buf, scale, zp = c.unpack(PORT)
        ports.append(Port(sref(c, name, at), sref(c, buf, at), scale, zp))
    c.done()

    # buffers
    c = cur(BUFFERS)
    buffers = []
    for _ in range(c.u32()):
        at = c.pos
        name, code, ndim, _r = c.unpack(BUFFER)
        if code not in DTYPE_BY_CODE:
            c.fail(f"unknown element type code {code}", at)
        shape = list(struct.unpack(f"<{ndim}q", c.take(8 * ndim)))
        buffers.append(Buffer(sref(c, name, at), DTYPE_BY_CODE[code], shape))
    c.done()

    # constants (both sections), put back in program order
    placed: dict[int, Const] = {}
    for kind in (CONSTS, XBAR_IMAGES):
        c = cur(kind)
        n, _r = c.unpack(struct.Struct("<II"))
        for _ in range(n):
            at = c.pos
            index, name, code, ndim, _a, _b, doff, nbytes = c.unpack(CONST)
            shape = struct.unpack(f"<{ndim}Q", c.take(8 * ndim))
            if code not in DTYPE_BY_CODE:
                c.fail(f"unknown element type code {code}", at)
            dt = DTYPES[DTYPE_BY_CODE[code]].newbyteorder("<")
            size = 1
            for d in shape:
                size *= d
            if size * dt.itemsize != nbytes:
                c.fail(f"constant {sref(c, name, at)!r}: {nbytes} data bytes for shape {list(shape)} of {DTYPE_BY_CODE[code]}", at)
            if doff % ALIGN or doff + nbytes > c.end - c.start:
                c.fail(f"constant {sref(c, name, at)!r}: data at section offset {doff} (+{nbytes}) lies outside the section or is unaligned", at)
            if index in placed:
                c.fail(f"constant index {index} used twice", at)
            arr = np.frombuffer(data, dtype=dt, count=size, offset=c.start + doff).reshape(shape)
            placed[index] = Const(sref(c, name, at), arr)
    if sorted(placed) != list(range(len(placed))):
        raise ProgramError(f"{source}: constant indices {sorted(placed)[:10]}... are not 0..{len(placed) - 1}")
    consts = [placed[i] for i in range(len(placed))]

    # crossbars
    c = cur(XBARS)
    xbars = []
    for _ in range(c.u32()):
        at = c.pos
        xid, image, rows, cols, table, adc_bits, mode, lossless, _r, chip, tile, ima, _r2 = c.unpack(XBAR)
        if mode not in ADC_MODE_BY_CODE:
            c.fail(f"crossbar {xid}: unknown ADC mode code {mode}", at)
        xbars.append(Xbar(xid, sref(c, image, at), rows, cols, sref(c, table, at), adc_bits, ADC_MODE_BY_CODE[mode], chip, tile, ima, lossless))
    c.done()

    # layers and crossbar copies (format 1.1; a 1.0 file has neither: replication 1 everywhere)
    layers: dict[str, Layer] = {}
    if LAYERS in found:
        c = cur(LAYERS)
        for _ in range(c.u32()):
            at = c.pos
            name, rep = c.unpack(LAYER)
            lname = sref(c, name, at)
            if lname in layers:
                c.fail(f"layer {lname!r} appears twice", at)
            layers[lname] = Layer(rep)
        c.done()
    if XBAR_COPIES in found:
        c = cur(XBAR_COPIES)
        last = -1
        for _ in range(c.u32()):
            at = c.pos
            xid, chip, tile, ima = c.unpack(XBAR_COPY)
            if xid >= len(xbars) or xid < last:
                c.fail(f"copy of crossbar {xid}: not a declared crossbar, or out of crossbar order", at)
            last = xid
            xbars[xid].copies.append((chip, tile, ima))
        c.done()

    # instructions
    c = cur(INSTRS)
    instrs = []
    for i in range(c.u32()):
        at = c.pos
        op_id = c.uvarint()
        op = BY_ID.get(op_id)
        if op is None:
            c.fail(
                f"instruction {i}: unknown opcode id {op_id} (file format {major}.{minor}; this runtime "
                f"reads {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]})",
                at,
            )
        layer = sref(c, c.uvarint(), at)
        fields: dict[str, Any] = {}
        for _ in range(c.uvarint()):
            fname = sref(c, c.uvarint(), at)
            tag = c.take(1)[0]
            if tag == TAG_INT:
                v: Any = c.svarint()
            elif tag == TAG_F64:
                v = F64.unpack(c.take(8))[0]
            elif tag == TAG_STR:
                v = sref(c, c.uvarint(), at)
            elif tag == TAG_INTS:
                v = [c.svarint() for _ in range(c.uvarint())]
            elif tag == TAG_STRS:
                v = [sref(c, c.uvarint(), at) for _ in range(c.uvarint())]
            else:
                c.fail(f"instruction {i} ({op.name}): field {fname!r} has unknown value tag {tag}", c.pos - 1)
            if fname in fields:
                c.fail(f"instruction {i} ({op.name}): field {fname!r} appears twice", at)
            fields[fname] = v
        instrs.append(Instr(op.name, fields, layer))
    c.done()

    program = Program(config, ports[:n_in], ports[n_in:], buffers, consts, xbars, instrs, layers=layers, version=(major, minor))
    validate_program(program, source)
    for ins in program.instrs:
        ins.fields = canonical_fields(ins.opcode, ins.fields)
    return program


def load_program(path: str | Path) -> Program:
    """Read and check a ``.pimx`` file (``ProgramError`` if it is missing, unreadable or corrupt)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ProgramError(f"{p}: no such program file") from None
    except IsADirectoryError:
        raise ProgramError(f"{p}: is a directory, expected a program file") from None
    except OSError as e:
        raise ProgramError(f"{p}: cannot read: {e.strerror}") from None
    return read_program(data, str(p))

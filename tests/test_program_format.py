"""The binary container (spec/program-format.md): exact round trips, canonical bytes, and a clear
ProgramError for every kind of damage, also through the CLI (exit status 3, one line, no traceback)."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pimc.cli import main as cli
from runtime.container import (
    HEADER,
    INSTRS,
    SECTION,
    load_program,
    program_stats,
    read_program,
    save_program,
    write_program,
)
from runtime.errors import ProgramError
from runtime.model import Buffer, Const, Instr, Port, Program, Xbar
from runtime.opcodes import BY_ID, OPCODES, canonical_fields, validate_program
from tests.program_strategies import programs

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def small_program() -> Program:
    rng = np.random.default_rng(0)
    return Program(
        config={"crossbar": {"cell_bits": 2, "rows": 16, "cols": 8}},
        inputs=[Port("input", "in0", 1 / 255, 0)],
        outputs=[Port("logits", "out", 0.125, 3)],
        buffers=[
            Buffer("in0", "u8", [-1, 1, 4, 4]),
            Buffer("cols", "u8", [-1, 9]),
            Buffer("acc", "i64", [-1, 8]),
            Buffer("y", "i64", [-1, 2]),
            Buffer("out", "u8", [-1, 2]),
        ],
        consts=[
            Const("xb0", rng.integers(0, 4, (16, 8)).astype(np.uint8)),
            Const("rt0", np.r_[np.arange(9), -np.ones(7)].astype(np.int32)),
            Const("cm", np.tile(np.array([[0, 0, 1, 0, 0]], np.int64), (8, 1))),
            Const("bias", np.array([5, -7], np.int64)),
            Const("mult", np.array([1 << 30, 3 << 28], np.int64)),
            Const("shift", np.array([31, 31], np.int64)),
        ],
        xbars=[Xbar(0, "xb0", 16, 8, "rt0", 8, "saturate", lossless=1)],
        instrs=[
            Instr("im2col", dict(dst="cols", src="in0", kernel=[3, 3], pad=[1, 1, 1, 1]), "conv1"),
            Instr("mvm", dict(xbar=0, src="cols", dst="acc", bits=8), "conv1"),
            Instr("shiftadd", dict(dst="y", src="acc", colmap="cm", macs=18, init=1), "conv1"),
            Instr("requant", dict(dst="out", src="y", bias="bias", mult="mult", shift="shift", zp=3, lo=0, hi=255, layout="flat"), "conv1"),
            Instr("halt", {}, "conv1"),
        ],
    )


def reseal(data: bytes | bytearray) -> bytes:
    """Recompute the checksum after a deliberate edit (to reach the checks behind it)."""
    body = bytes(data[:-32])
    return body + hashlib.sha256(body).digest()


def section(data: bytes, kind: int) -> tuple[int, int, int]:
    """(table entry offset, section offset, length) of a section kind."""
    count = struct.unpack_from("<I", data, 12)[0]
    for i in range(count):
        at = HEADER.size + i * SECTION.size
        k, _, off, length = SECTION.unpack_from(data, at)
        if k == kind:
            return at, off, length
    raise KeyError(kind)


def assert_same_program(a: Program, b: Program) -> None:
    """Equal as the container sees them: canonical fields, constant types, shapes and bytes."""
    assert a.config == b.config
    assert [(p.name, p.buf, float(p.scale), p.zp) for p in a.inputs] == [(p.name, p.buf, float(p.scale), p.zp) for p in b.inputs]
    assert [(p.name, p.buf, float(p.scale), p.zp) for p in a.outputs] == [(p.name, p.buf, float(p.scale), p.zp) for p in b.outputs]
    assert [(x.name, x.dtype, list(x.shape)) for x in a.buffers] == [(x.name, x.dtype, list(x.shape)) for x in b.buffers]
    assert len(a.consts) == len(b.consts)
    for ca, cb in zip(a.consts, b.consts):
        assert ca.name == cb.name and ca.array.dtype == cb.array.dtype and ca.array.shape == cb.array.shape
        assert ca.array.tobytes() == cb.array.tobytes()
    assert [vars(x) for x in a.xbars] == [vars(x) for x in b.xbars]
    assert {n: a.replication(n) for n in {*a.layers, *b.layers}} == {n: b.replication(n) for n in {*a.layers, *b.layers}}
    assert [(i.opcode, i.layer, canonical_fields(i.opcode, i.fields)) for i in a.instrs] == [
        (i.opcode, i.layer, canonical_fields(i.opcode, i.fields)) for i in b.instrs
    ]
    # floats bit-exact, not just ==
    for ia, ib in zip(a.instrs, b.instrs):
        for k, v in canonical_fields(ia.opcode, ia.fields).items():
            if isinstance(v, float):
                assert struct.pack("<d", v) == struct.pack("<d", ib.fields[k])


# ----------------------------------------------------------------------------------- round trips


@SETTINGS
@given(programs())
def test_binary_round_trip_is_exact_and_canonical(p):
    data = write_program(p)
    q = read_program(data, "t.pimx")
    assert_same_program(p, q)
    assert write_program(q) == data  # canonical: re-writing what was read gives the same bytes
    assert write_program(p) == data  # deterministic


def test_small_program_round_trip_and_defaults(tmp_path):
    p = small_program()
    path = tmp_path / "p.pimx"
    save_program(p, path)
    q = load_program(path)
    assert_same_program(p, q)
    assert q.instrs[0].fields["stride"] == [1, 1] and q.instrs[1].fields["order"] == "lsb"  # defaults filled
    # giving a default explicitly or leaving it out is the same program, the same bytes
    p2 = small_program()
    p2.instrs[1].fields.update(col0=0, dac_bits=1, order="lsb")
    assert write_program(p2) == path.read_bytes()
    assert q.version == (1, 1)
    assert not q.consts[0].array.flags.writeable  # views of the file, not copies


def test_stats_separate_images_from_other_constants():
    p = small_program()
    s = program_stats(p)
    assert s["instructions"] == 5
    assert s["xbar_image_bytes"] == 16 * 8
    assert s["other_const_bytes"] == 16 * 4 + 8 * 5 * 8 + 3 * 2 * 8
    assert s["file_bytes"] == len(write_program(p))
    data = write_program(p)
    _, _, length = section(data, INSTRS)
    assert s["instruction_bytes"] == length


def test_every_opcode_has_a_unique_id_and_reserved_ones_are_marked():
    assert {op.name for op in OPCODES.values() if op.reserved} == {"mvm_et", "mvm_dq", "adc_cfg"}
    assert len(BY_ID) == len(OPCODES)


def test_large_constants_round_trip_fast():
    """10 MB of constants: read is zero-copy np.frombuffer (checked loosely: it must not be per-element)."""
    import time

    p = small_program()
    big = np.arange(10 * 2**20 // 8, dtype=np.int64)
    p.consts.append(Const("big", big))
    t = time.perf_counter()
    data = write_program(p)
    t_write = time.perf_counter() - t
    t = time.perf_counter()
    q = read_program(data, "big.pimx")
    t_read = time.perf_counter() - t
    assert np.array_equal(q.const("big"), big)
    assert t_write < 2.0 and t_read < 2.0, (t_write, t_read)


# ------------------------------------------------------------------------------------ corruption


@pytest.mark.parametrize("cut", [0, 3, 7, 20, 60, 200, -33, -1])
def test_truncated_file(cut):
    data = write_program(small_program())
    with pytest.raises(ProgramError, match=r"t\.pimx: file is truncated"):
        read_program(data[:cut], "t.pimx")


@pytest.mark.parametrize("where", [9, 100, 400, -40, -1])
def test_flipped_byte_fails_the_checksum(where):
    data = bytearray(write_program(small_program()))
    data[where] ^= 0x01
    with pytest.raises(ProgramError, match="checksum mismatch"):
        read_program(bytes(data), "t.pimx")


def test_wrong_magic():
    data = b"PK\x03\x04" + write_program(small_program())[4:]
    with pytest.raises(ProgramError, match=r"not a pimc program file .*PK.*expected the magic b'PIMX'"):
        read_program(data, "t.pimx")


def test_future_major_version_names_both_versions():
    data = bytearray(write_program(small_program()))
    struct.pack_into("<HH", data, 4, 2, 3)
    with pytest.raises(ProgramError, match=r"format version 2\.3; this runtime reads version 1\.x"):
        read_program(reseal(data), "t.pimx")


def test_newer_minor_version_is_read():
    data = bytearray(write_program(small_program()))
    struct.pack_into("<H", data, 6, 7)
    assert read_program(reseal(data), "t.pimx").version == (1, 7)


def test_unknown_opcode_id():
    p = small_program()
    p.instrs = [Instr("halt", {})]
    data = bytearray(write_program(p))
    _, off, _ = section(bytes(data), INSTRS)
    assert data[off + 4] == OPCODES["halt"].id  # count (u32), then the opcode varint
    data[off + 4] = 99
    with pytest.raises(ProgramError, match=r"instructions section, offset \d+: instruction 0: unknown opcode id 99"):
        read_program(reseal(data), "t.pimx")


def test_section_out_of_bounds():
    data = bytearray(write_program(small_program()))
    at, off, length = section(bytes(data), INSTRS)
    struct.pack_into("<Q", data, at + 16, length + 10_000)
    with pytest.raises(ProgramError, match="instructions section .* lies outside the file body"):
        read_program(reseal(data), "t.pimx")


def test_unknown_flags_and_trailing_bytes():
    data = bytearray(write_program(small_program()))
    struct.pack_into("<I", data, 8, 4)
    with pytest.raises(ProgramError, match="flags 0x00000004"):
        read_program(reseal(data), "t.pimx")
    with pytest.raises(ProgramError, match="unexpected bytes after the checksum"):
        read_program(write_program(small_program()) + b"\0", "t.pimx")


def test_semantic_damage_behind_a_valid_checksum_is_caught():
    """A file whose checksum is right but whose contents break the schema (e.g. written by another
    tool): the reader validates, naming the instruction and the field."""
    bad = small_program()
    bad.xbars.append(Xbar(1, "xb0", 16, 8, "rt0", 8, "saturate"))
    bad.instrs[1].fields["xbar"] = 1
    raw = bytearray(write_program(bad))
    at, off, length = section(bytes(raw), 7)  # crossbars section: drop the second crossbar
    struct.pack_into("<I", raw, off, 1)
    struct.pack_into("<Q", raw, at + 16, length - 40)
    with pytest.raises(ProgramError, match=r"t\.pimx: instruction 1 \(mvm\): field 'xbar': 1 is not a declared crossbar"):
        read_program(reseal(raw), "t.pimx")


# ---------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p.instrs[1].fields.update(src="nope"), r"instruction 1 \(mvm\): field 'src': 'nope' is not a declared buffer"),
        (lambda p: p.instrs[1].fields.update(bits=1.5), r"field 'bits': expected an integer"),
        (lambda p: p.instrs[1].fields.update(order="middle"), r"field 'order': expected one of lsb, msb, got 'middle'"),
        (lambda p: p.instrs[1].fields.update(speed=3), r"unknown field 'speed'"),
        (lambda p: p.instrs[1].fields.pop("bits"), r"missing field 'bits'"),
        (lambda p: p.instrs[2].fields.update(dst="out"), r"field 'dst': buffer 'out' has element type u8; expected i64"),
        (lambda p: p.instrs[2].fields.update(colmap="bias"), r"field 'colmap': constant 'bias' has shape \[2\]; expected rank 2"),
        (lambda p: p.instrs.append(Instr("jump", {})), r"instruction 5: unknown opcode 'jump'"),
        (lambda p: p.instrs[3].fields.update(lo=9, hi=2), r"clamp bounds are empty"),
        (lambda p: p.consts[0].array.__setitem__((0, 0), 4), r"crossbar 0: image 'xb0' holds cell value 4, beyond 3 \(crossbar.cell_bits = 2"),
        (lambda p: p.config["crossbar"].update(rows=8), r"crossbar 0: rows = 16 exceeds crossbar.rows = 8"),
        (lambda p: setattr(p.xbars[0], "cols", 4), r"image 'xb0' is u8 \[16, 8\]; expected u8 \[16, 4\]"),
        (lambda p: setattr(p.xbars[0], "id", 3), r"crossbar 0: id 3 out of order"),
        (lambda p: p.buffers.append(Buffer("xb0", "u8", [-1])), r"name 'xb0' is declared twice"),
        (lambda p: p.buffers.append(Buffer("b", "u8", [3])), r"buffer 'b': shape \[3\] must be \[\?, d1, ...\]"),
        (lambda p: setattr(p.inputs[0], "scale", float("nan")), r"input 'input': scale nan must be a finite float > 0"),
        (lambda p: setattr(p.inputs[0], "zp", 256), r"zp 256 must be an integer in \[0, 255\]"),
        (lambda p: p.instrs[1].fields.update(bits=10**30), r"field 'bits': expected an integer"),
    ],
)
def test_validation_names_item_and_field(edit, message):
    p = small_program()
    edit(p)
    with pytest.raises(ProgramError, match=message):
        validate_program(p, "prog")
    with pytest.raises(ProgramError, match=message):
        write_program(p)


def test_reserved_opcodes_are_accepted_in_files():
    p = small_program()
    p.instrs.insert(4, Instr("mvm_et", {"xbar": 0, "mode": "negative", "theta": 0.25, "bounds": [1, -2]}, "conv1"))
    q = read_program(write_program(p), "t")
    assert q.instrs[4].opcode == "mvm_et" and q.instrs[4].fields == {"xbar": 0, "mode": "negative", "theta": 0.25, "bounds": [1, -2]}


# ------------------------------------------------------------------------------------------- CLI


def _cli(args):
    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d[:50], "file is truncated"),
        (lambda d: d[:100] + bytes([d[100] ^ 0xFF]) + d[101:], "checksum mismatch"),
        (lambda d: b"XXXX" + d[4:], "not a pimc program file"),
        (lambda d: reseal(d[:4] + struct.pack("<H", 9) + d[6:]), "format version 9.1; this runtime reads version 1.x"),
    ],
)
def test_cli_disasm_reports_damage_in_one_line(tmp_path, damage, message):
    path = tmp_path / "bad.pimx"
    path.write_bytes(damage(write_program(small_program())))
    r = _cli(["disasm", str(path)])
    assert r.exit_code == 3
    assert "Traceback" not in r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and message in lines[0]


def test_cli_missing_file(tmp_path):
    r = _cli(["disasm", str(tmp_path / "none.pimx")])
    assert r.exit_code == 3 and "no such program file" in r.output and "Traceback" not in r.output


def test_spec_opcode_table_matches_the_schema():
    """spec/program-format.md §7 is generated from runtime.opcodes; they must not drift apart."""
    from pathlib import Path

    from runtime.opcodes import schema_markdown

    doc = (Path(__file__).resolve().parent.parent / "spec" / "program-format.md").read_text(encoding="utf-8")
    table = doc.split("<!-- opcodes:begin -->\n", 1)[1].split("\n<!-- opcodes:end -->", 1)[0]
    assert table == schema_markdown()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4))
def test_damage_behind_a_valid_checksum_is_a_program_error_or_a_valid_program(edits):
    """Any byte edit that keeps the checksum right (another tool's bug, not bit rot) either still
    reads as a valid program or raises ProgramError -- never another exception."""
    p = small_program()
    p.instrs.insert(4, Instr("mvm_et", {"theta": 0.5, "bounds": [1, 2], "srcs": ["acc"]}, "x"))
    data = bytearray(write_program(p))
    for pos, byte in edits:
        data[pos % (len(data) - 32)] = byte
    try:
        q = read_program(reseal(data), "f.pimx")
    except ProgramError as e:
        assert str(e).startswith("f.pimx")
    else:
        validate_program(q, "again")

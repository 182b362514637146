"""Layer replication (format 1.1): a layer with replication N has N copies of each crossbar, each
serving 1/N of an inference's iterations (spec/isa.md §1, §7). Time divides, events do not."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pimc.cli import main
from runtime import cost as C
from runtime.asm import assemble, disassemble
from runtime.container import SECTIONS_1_0, _file, _sections, read_program, write_program
from runtime.errors import ProgramError
from runtime.executor import machine_for, run_program
from runtime.model import Buffer, Instr, Layer
from test_executor import dense_program

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mnist_cnn"
REPLICATE = "convert-nn-to-xbar,xbar-bit-slice,xbar-tile,xbar-place{replicate=true},convert-xbar-to-isa"

# A 3x3 conv, 1 -> 2 channels, pad 1, on a 4x4 image: P = 16 iterations per inference, one crossbar
# (9 used rows of 16, 2 weight columns + the unit column), 8-bit inputs through a 1-bit DAC: T = 8.
W = np.array([[1, -2], [-1, 0], [0, 1], [1, 1], [-2, 1], [0, 0], [1, -1], [-1, -2], [1, 0]])
X = np.arange(2 * 16, dtype=np.float32).reshape(2, 1, 4, 4) * 7 % 251
P, T, N = 16, 8, 3


def conv_program(replication: int = 1):
    p = dense_program(W, weight_bits=2, act_bits=8, cell_bits=2, dac_bits=1, rows=16, cols=3, adc_bits=8)
    p.buffers = [b for b in p.buffers if b.name not in ("x", "y")]
    p.buffers += [Buffer("x", "u8", [-1, 1, 4, 4]), Buffer("xc", "u8", [-1, 9]), Buffer("y", "u8", [-1, 2, 4, 4])]
    p.instrs.insert(0, Instr("im2col", dict(dst="xc", src="x", kernel=[3, 3], pad=[1, 1, 1, 1]), "fc"))
    for ins in p.instrs:
        if ins.opcode == "mvm":
            ins.fields["src"] = "xc"
        if ins.opcode == "requant":
            ins.fields.update(layout="nchw", out_hw=[4, 4])
    assert len(p.xbars) == 1 and (p.xbars[0].chip, p.xbars[0].tile, p.xbars[0].ima) == (0, 0, 0)
    if replication > 1:
        p.layers["fc"] = Layer(replication)
        # copies on another IMA of the same tile and on a second tile
        p.xbars[0].copies = [(0, 0, 1), (0, 1, 0), (0, 1, 1), (0, 2, 0)][: replication - 1]
    return p


def _step(cfg: dict, cols: int = 3) -> float:
    return max(cfg["crossbar"]["read_ns"] * 1e-9, cols / (cfg["adc"]["per_crossbar"] * cfg["adc"]["rate_gsps"] * 1e9))


def test_hand_computed_time_of_a_replicated_layer():
    base, rep = conv_program(1), conv_program(N)
    out1, r1 = run_program(base, {"x": X})
    outN, rN = run_program(rep, {"x": X})
    assert np.array_equal(out1["y"], outN["y"])
    cfg = base.config
    step = _step(cfg)
    assert step == pytest.approx(100e-9)
    digital = P * 2 / (cfg["digital"]["lanes"] * cfg["digital"]["clock_ghz"] * 1e9)  # requant, per inference
    L1, LN = r1["layers"][0], rN["layers"][0]
    assert L1["crossbar_time_s"] == pytest.approx(P * T * step, rel=1e-12)  # 12.8 us
    assert LN["crossbar_time_s"] == pytest.approx(math.ceil(P / N) * T * step, rel=1e-12)  # 6 x 8 x 100 ns = 4.8 us
    assert LN["crossbar_cycles"] == math.ceil(P / N) * T == 48 and L1["crossbar_cycles"] == P * T
    assert LN["digital_time_s"] == pytest.approx(digital) == L1["digital_time_s"]
    assert rN["latency_s"] == pytest.approx(6 * T * step + digital, rel=1e-12)
    assert rN["run"]["time_s"] == pytest.approx(2 * (6 * T * step + digital), rel=1e-12)  # latency + 1 x slowest
    # throughput improves by the ratio of the layer times
    want = (P * T * step + digital) / (math.ceil(P / N) * T * step + digital)
    assert rN["throughput_inferences_per_s"] / r1["throughput_inferences_per_s"] == pytest.approx(want, rel=1e-12)
    assert want > 2.5
    # events are those of every iteration, whatever copy serves it: all counters equal but the
    # router's, which carries the copy on tile 1 its inputs and brings back its column results
    c1, cN = r1["run"]["counters"], rN["run"]["counters"]
    assert {k: v for k, v in cN.items() if k != "router_flits"} == {k: v for k, v in c1.items() if k != "router_flits"}
    assert cN["crossbar_reads"] == 2 * P * T
    away = 2 * (P - 2 * math.ceil(P / N))  # copy 2 of 3 (tile 1): 4 of each image's 16 iterations
    image, table = rep.const(rep.xbars[0].image), rep.const(rep.xbars[0].row_table)
    psum_bytes = math.ceil((255 * int(image[table >= 0].sum(axis=0).max())).bit_length() / 8)
    flit = cfg["router"]["flit_bits"]
    want_flits = math.ceil(away * 9 * 8 / flit) + math.ceil(away * 3 * psum_bytes * 8 / flit)  # 9 u8 inputs, 3 columns
    assert (c1["router_flits"], cN["router_flits"], cN["chip_flits"]) == (0, want_flits, 0)
    assert want_flits == 18 + 12
    assert rN["adc_conversions_by_bits"] == r1["adc_conversions_by_bits"]
    for comp in ("crossbar", "dac", "sample_hold", "adc", "shift_add", "buffer", "digital"):
        assert rN["energy_breakdown_j"][comp] == r1["energy_breakdown_j"][comp]
    assert rN["energy_breakdown_j"]["interconnect"] - r1["energy_breakdown_j"]["interconnect"] == pytest.approx(
        want_flits * cfg["energy"]["router_flit"] * 1e-12 / 2, rel=1e-12)  # per inference
    # the bit-level path counts the same
    _, rB = run_program(rep, {"x": X}, fast_path=False)
    assert rB["run"]["counters"] == cN
    # the copies exist: 3 physical crossbars on 3 IMAs of 2 tiles, and they leak
    assert (rN["crossbars"], rN["crossbars_unique"], rN["imas"], rN["tiles"], rN["chips"]) == (3, 1, 3, 2, 1)
    assert (r1["crossbars"], r1["crossbars_unique"], r1["imas"], r1["tiles"]) == (1, 1, 1, 1)
    assert (LN["crossbars"], LN["crossbars_unique"], LN["replication"]) == (3, 1, 3)
    assert (L1["crossbars"], L1["crossbars_unique"], L1["replication"]) == (1, 1, 1)
    s1, sN = r1["static_power_w"], rN["static_power_w"]
    assert sN["imas"] == pytest.approx(3 * s1["imas"]) and sN["tiles"] == pytest.approx(2 * s1["tiles"])
    assert sN["crossbars"] == pytest.approx(3 * s1["crossbars"])
    assert rN["energy_breakdown_j"]["leakage"] == pytest.approx(sum(sN.values()) * rN["latency_s"], rel=1e-12)


def test_copy_steps():
    # P = 16 per inference, T = 8, batch 2: each copy serves ceil(16 / N) iterations of each inference
    assert C.copy_steps(2 * 16 * 8, 8, 2, 1) == 256
    assert C.copy_steps(2 * 16 * 8, 8, 2, 3) == 2 * 6 * 8
    assert C.copy_steps(2 * 16 * 8, 8, 2, 16) == 2 * 8
    assert C.copy_steps(2 * 16 * 8, 8, 2, 40) == 2 * 8  # more copies than iterations: one each
    assert C.copy_steps(0, 8, 2, 3) == 0


def test_text_and_binary_round_trip_with_replication():
    p = conv_program(N)
    data = write_program(p)
    q = read_program(data, "r.pimx")
    assert q.version == (1, 1) and q.replication("fc") == N and q.xbars[0].copies == [(0, 0, 1), (0, 1, 0)]
    text = disassemble(q)
    assert ".layer fc replication=3\n" in text
    assert "lossless=1 copies=[[0, 0, 1], [0, 1, 0]]\n" in text
    assert write_program(assemble(text, "r.s")) == data
    assert disassemble(assemble(text, "r.s")) == text
    # replication 1 written explicitly, or not at all: the same program, the same bytes
    plain = write_program(conv_program(1))
    explicit = conv_program(1)
    explicit.layers["fc"] = Layer(1)
    assert write_program(explicit) == plain
    assert "replication" not in disassemble(conv_program(1)) and "copies" not in disassemble(conv_program(1))
    # repeating the replication on a later .layer line of the same layer is allowed if equal
    again = text.replace("shiftadd", ".layer fc replication=3\nshiftadd", 1)
    assert write_program(assemble(again, "r.s")) == data


def _v10(program) -> bytes:
    """``program`` as a format 1.0 file: sections 1-8 only, version 1.0 in the header."""
    return _file([s for s in _sections(program) if s[0] in SECTIONS_1_0], (1, 0))


def test_a_1_0_file_still_loads_and_runs():
    base = conv_program(1)
    data = _v10(base)
    assert struct.unpack_from("<HH", data, 4) == (1, 0)
    old = read_program(data, "old.pimx")
    assert old.version == (1, 0) and old.layers == {} and all(not x.copies for x in old.xbars)
    out_old, rep_old = run_program(old, {"x": X})
    out_new, rep_new = run_program(conv_program(1), {"x": X})
    assert np.array_equal(out_old["y"], out_new["y"])
    assert rep_old["latency_s"] == rep_new["latency_s"] and rep_old["run"]["counters"] == rep_new["run"]["counters"]
    # rewriting it gives the current version, with the same content
    assert write_program(old) == write_program(base)
    # the text form of 1.0 also still assembles, without the 1.1 fields
    text = disassemble(base).replace("pimx 1.1", "pimx 1.0", 1)
    assert assemble(text, "old.s").version == (1, 0)


def test_version_errors():
    # replication cannot be said in 1.0: without sections 9 and 10 the layer is unreplicated
    assert read_program(_v10(conv_program(N)), "old.pimx").replication("fc") == 1
    # a file that says 1.0 but holds the 1.1 sections
    sections = _sections(conv_program(N))
    with pytest.raises(ProgramError, match=r"section\(s\) layers, crossbar copies are not defined in format 1.0"):
        read_program(_file(sections, (1, 0)), "bad.pimx")
    # a 1.1 file without them
    with pytest.raises(ProgramError, match=r"missing section\(s\): layers, crossbar copies"):
        read_program(_file(sections[:8], (1, 1)), "bad.pimx")
    text = disassemble(conv_program(N)).replace("pimx 1.1", "pimx 1.0", 1)
    with pytest.raises(ProgramError, match=r"old.s:\d+:\d+: .*field 'copies' needs format 1.1"):
        assemble(text, "old.s")


def test_validation_of_replication():
    p = conv_program(N)
    p.layers["fc"] = Layer(0)
    with pytest.raises(ProgramError, match=r"layer 'fc': replication = 0 must be an integer >= 1"):
        write_program(p)
    p = conv_program(N)
    p.xbars[0].copies = p.xbars[0].copies[:1]
    with pytest.raises(ProgramError, match=r"instruction 1 \(mvm\): crossbar 0 has 1 copies, but its layer 'fc' has replication 3"):
        write_program(p)
    p = conv_program(1)
    p.xbars[0].copies = [(0, 0, 1)]
    with pytest.raises(ProgramError, match=r"crossbar 0 has 1 copies, but its layer 'fc' has replication 1"):
        write_program(p)
    p = conv_program(N)
    p.xbars[0].copies = [(0, 0), (0, 1, 0)]
    with pytest.raises(ProgramError, match=r"crossbar 0: copies = .* must be a list of places \[chip, tile, ima\]"):
        write_program(p)
    p = conv_program(1)
    p.layers["nowhere"] = Layer(2)
    with pytest.raises(ProgramError, match=r"layer 'nowhere' is declared but no instruction belongs to it"):
        write_program(p)
    text = disassemble(conv_program(N))
    bad = text.replace("shiftadd", ".layer fc replication=2\nshiftadd", 1)
    with pytest.raises(ProgramError, match=r"r.s:\d+:\d+: .layer 'fc': replication 2 differs from 3 given before"):
        assemble(bad, "r.s")
    bad = text.replace(".layer fc replication=3", ".layer fc replication=2", 1)
    with pytest.raises(ProgramError, match=r"r.s:\d+:\d+: instruction 1 \(mvm\): crossbar 0 has 2 copies, but its layer 'fc' has replication 2"):
        assemble(bad, "r.s")


# ------------------------------------------------------------------------------ the MNIST example


def _pimc(*args):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """The example compiled without and with replication, and both run on the samples."""
    d = tmp_path_factory.mktemp("replication")
    out = {}
    for name, extra in (("base", ()), ("rep", ("-p", REPLICATE))):
        prog = d / f"{name}.pimx"
        res = _pimc("compile", EXAMPLE / "model.onnx", "--calibration", EXAMPLE / "calib.npy", "-o", prog, *extra)
        assert "warning" not in res.output
        _pimc("run", prog, "-i", EXAMPLE / "samples.npy", "-o", d / f"{name}.npy", "--report", d / f"{name}.json")
        out[name] = (prog, np.load(d / f"{name}.npy"), json.loads((d / f"{name}.json").read_text()))
    return out


def test_mnist_replicated_program_runs_faster_with_the_same_outputs_and_events(mnist):
    (_, bout, brep), (rp, rout, rrep) = mnist["base"], mnist["rep"]
    assert np.array_equal(bout, rout)
    program = read_program(rp.read_bytes(), str(rp))
    reps = {L["name"]: L["replication"] for L in rrep["layers"]}
    assert reps["/0/Conv"] > 1 and reps["/4/Conv"] > 1
    assert {n: program.replication(n) for n in reps} == reps
    # every physical crossbar is counted and placed
    assert rrep["crossbars_unique"] == brep["crossbars"] == brep["crossbars_unique"] == len(program.xbars)
    assert rrep["crossbars"] == sum(1 + len(x.copies) for x in program.xbars) > brep["crossbars"]
    assert rrep["crossbars"] == sum(L["crossbars"] for L in rrep["layers"])
    assert rrep["imas"] > brep["imas"] and rrep["tiles"] >= brep["tiles"]
    # time: the conv layers' crossbar time divides by their replication (ceil of positions per copy)
    step = _step(program.config, 1)  # 100 ns: the read, not the ADCs, bounds a step here
    for L, B in zip(rrep["layers"], brep["layers"]):
        assert L["name"] == B["name"] and L["digital_time_s"] == B["digital_time_s"]
        if L["name"] in ("/0/Conv", "/4/Conv"):
            positions = B["crossbar_cycles"] / T
            assert L["crossbar_cycles"] == math.ceil(positions / L["replication"]) * T
            assert L["crossbar_time_s"] == pytest.approx(L["crossbar_cycles"] * step, rel=1e-9)
    assert rrep["latency_s"] < brep["latency_s"]
    slowest = max(L["latency_s"] for L in rrep["layers"])
    assert rrep["throughput_inferences_per_s"] == pytest.approx(1 / slowest, rel=1e-12)
    assert rrep["throughput_inferences_per_s"] > 10 * brep["throughput_inferences_per_s"]
    # events: equal, except router traffic, which follows the placement (the copies move the later
    # layers to other tiles; spec/report.md, interconnect model)
    placed = {"router_flits", "chip_flits"}
    assert {k: v for k, v in rrep["run"]["counters"].items() if k not in placed} == {
        k: v for k, v in brep["run"]["counters"].items() if k not in placed
    }
    assert rrep["adc_conversions_by_bits"] == brep["adc_conversions_by_bits"]
    for comp in ("crossbar", "dac", "sample_hold", "adc", "shift_add", "buffer", "digital"):
        assert rrep["energy_breakdown_j"][comp] == pytest.approx(brep["energy_breakdown_j"][comp], rel=1e-12)
    # the bit-level path counts the traffic to and from the copies as the fast path does
    _, bit = run_program(program, {program.inputs[0].name: np.load(EXAMPLE / "samples.npy")}, fast_path=False)
    assert bit["run"]["counters"] == rrep["run"]["counters"]


def test_mnist_replicated_program_counts_the_same_traffic_when_its_fused_layers_repeat(mnist):
    """Chunks of one image: the fused layers' later runs reuse what their first run checked and
    counted (``ConvStep``: events, and the buffer homes that decide the router traffic), and count
    as the bit-level path does in the same chunks."""
    rp = mnist["rep"][0]
    program = read_program(rp.read_bytes(), str(rp))
    feed = {program.inputs[0].name: np.load(EXAMPLE / "samples.npy")[:3]}
    out_f, fast = run_program(program, feed, batch_size=1)
    out_b, bit = run_program(program, feed, batch_size=1, fast_path=False)
    assert np.array_equal(out_f[program.outputs[0].name], out_b[program.outputs[0].name])
    assert fast["run"]["counters"]["router_flits"] > 0
    assert fast["run"]["counters"] == bit["run"]["counters"]
    assert [L["counters"] for L in fast["layers"]] == [L["counters"] for L in bit["layers"]]


def test_mnist_replicated_program_round_trips_exactly(mnist):
    rp = mnist["rep"][0]
    data = rp.read_bytes()
    program = read_program(data, str(rp))
    text = disassemble(program)
    assert "replication=" in text and "copies=[[" in text
    assert write_program(assemble(text, "disasm")) == data
    assert disassemble(read_program(write_program(program), "again")) == text


def test_router_traffic_to_a_copy_on_another_chip():
    """A copy on chip 1 receives its share of the inputs and returns its column results across
    the chip boundary: all of that traffic is chip traffic too; a copy on the home tile moves none."""
    rep = conv_program(3)
    rep.xbars[0].copies = [(1, 0, 0), (0, 0, 1)]
    flit = rep.config["router"]["flit_bits"]
    share = 2 * math.ceil(P / N)  # copy 1 serves the 6 next iterations of each of the 2 images
    image, table = rep.const(rep.xbars[0].image), rep.const(rep.xbars[0].row_table)
    psum_bytes = math.ceil((255 * int(image[table >= 0].sum(axis=0).max())).bit_length() / 8)
    want = math.ceil(share * 9 * 8 / flit) + math.ceil(share * 3 * psum_bytes * 8 / flit)
    for fast in (True, False):
        _, r = run_program(rep, {"x": X}, fast_path=fast)
        c = r["run"]["counters"]
        assert (c["router_flits"], c["chip_flits"]) == (want, want) == (27 + 18, 45)
    # and every instruction on its own (no fused layer, no crossbar group)
    m = machine_for(rep)
    m.conv_chains, m.groups, m.run_shiftadds, m.mvm_runs = {}, {}, {}, {}
    _, r1 = run_program(rep, {"x": X}, fast_path=False)
    assert r1["run"]["counters"] == c and {L.get("path") for L in r1["layers"]} == {"bit-level"}

"""Counters, energy and time of one small layer, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.executor import run_program
from test_executor import dense_program

# One 3x2 layer, offset scheme at 2 bits (weight_bits 2 -> one 2-bit slice per output, offset 2):
# stored = W + 2 = [[3, 0], [1, 2], [2, 3]]. Crossbar: 4 rows x 3 columns (2 weight columns + the
# unit column), row 3 unused. 8-bit inputs through a 1-bit DAC: T = 8 steps. Two images.
W = np.array([[1, -2], [-1, 0], [0, 1]])
X = np.array([[1, 2, 3], [10, 20, 30]])


def _program():
    return dense_program(W, weight_bits=2, act_bits=8, cell_bits=2, dac_bits=1, rows=4, cols=3, adc_bits=8)


def test_results_of_the_small_layer():
    out, _ = run_program(_program(), {"x": X.astype(np.float32)})
    # x @ W = [1-2+0, -2+0+3] = [-1, 1] -> clamped at 0 -> [0, 1]; [10-20, -20+30] -> [0, 10]
    assert out["y"].tolist() == [[0.0, 1.0], [0.0, 10.0]]


def test_counters_by_hand():
    _, rep = run_program(_program(), {"x": X.astype(np.float32)})
    c = rep["run"]["counters"]
    P, T, rows_used, C = 2, 8, 3, 3
    assert c["crossbar_reads"] == P * T == 16
    assert c["dac_activations"] == 16 * rows_used == 48
    assert c["cell_ops"] == 48 * C == 144
    assert c["sample_holds"] == c["adc_conversions"] == 16 * C == 48
    # popcounts of the input codes: 1,2,3 -> 1+1+2; 10,20,30 -> 2+2+4
    assert c["dac_ones"] == 4 + 8 == 12
    # IMA shift-adds (one per column per read) + the layer's shiftadd (3 active columns x 2)
    assert c["shift_adds"] == 48 + 6 == 54
    assert c["macs"] == 2 * 3 * 2 == 12
    # buffer reads: mvm 2 x 3 u8 codes; shiftadd 2 x 3 i64 columns; requant the [2, 2] i64 accumulator
    assert c["buffer_read_bytes"] == 6 + 48 + 32 == 86
    # writes: shiftadd [2, 2] i64, requant [2, 2] u8
    assert c["buffer_write_bytes"] == 32 + 4 == 36
    assert c["bus_bytes"] == 6
    assert c["digital_ops"] == 4
    assert c["router_flits"] == 0  # one crossbar, one tile
    assert rep["adc_conversions_by_bits"] == {"8": 24.0}  # per inference
    assert rep["counters"]["crossbar_reads"] == 8.0  # per inference = run / batch


def test_energy_and_time_by_hand():
    prog = _program()
    cfg = prog.config
    _, rep = run_program(prog, {"x": X.astype(np.float32)})
    pJ = 1e-12
    e = cfg["energy"]
    # whole run (2 images), from the counts above and the isaac8 per-event energies
    want = {
        "crossbar": 144 * e["cell_op"] * pJ,
        "dac": 48 * e["dac_activation"] * pJ,
        "sample_hold": 48 * e["sample_hold"] * pJ,
        "adc": 48 * e["adc_conversion"] * pJ * 2.0 ** (8 - cfg["adc"]["ref_bits"]),
        "shift_add": 54 * e["shift_add"] * pJ,
        "buffer": (86 * e["edram_read_byte"] + 36 * e["edram_write_byte"]) * pJ,
        "interconnect": 6 * e["bus_byte"] * pJ,
        "digital": 4 * e["digital_op"] * pJ,
        "decision": 0.0,
    }
    # time: a read step is max(100 ns, 3 columns / 1.28 GS/s) = 100 ns; 16 steps; requant 4 elements
    # at 1 lane x 1.2 GHz. Layer time for the run = 1.6 us + 3.333 ns; per inference half of it.
    step = max(cfg["crossbar"]["read_ns"] * 1e-9, 3 / (cfg["adc"]["per_crossbar"] * cfg["adc"]["rate_gsps"] * 1e9))
    assert step == pytest.approx(100e-9)
    run_time = 16 * step + 4 / (cfg["digital"]["lanes"] * cfg["digital"]["clock_ghz"] * 1e9)
    assert rep["latency_s"] == pytest.approx(run_time / 2, rel=1e-12)
    assert rep["throughput_inferences_per_s"] == pytest.approx(2 / run_time, rel=1e-12)
    assert rep["cycles"] == math.ceil(run_time / 2 * 1.2e9 - 1e-6) == 962
    # leakage: one IMA (input + output register), one tile (output register); a single chip's
    # links are not charged (spec/report.md)
    pw = cfg["power"]
    static = (pw["ima_input_register"] + pw["ima_output_register"] + pw["tile_output_register"]) * 1e-3
    want["leakage"] = static * run_time
    got = rep["run"]["energy_breakdown_j"]
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-30), k
    assert rep["run"]["energy_j"] == pytest.approx(sum(want.values()), rel=1e-12)
    assert rep["energy_j"] == pytest.approx(sum(want.values()) / 2, rel=1e-12)
    # the per-layer figures add up to the totals
    assert sum(L["energy_j"] for L in rep["layers"]) == pytest.approx(rep["energy_j"], rel=1e-12)


def test_adc_energy_follows_the_crossbar_resolution():
    lo = dense_program(W, weight_bits=2, rows=4, cols=3, adc_bits=6)
    hi = dense_program(W, weight_bits=2, rows=4, cols=3, adc_bits=10)
    _, rl = run_program(lo, {"x": X.astype(np.float32)})
    _, rh = run_program(hi, {"x": X.astype(np.float32)})
    assert rh["energy_breakdown_j"]["adc"] == pytest.approx(rl["energy_breakdown_j"]["adc"] * 2**4)
    assert rl["adc_conversions_by_bits"] == {"6": 24.0}


def test_adc_rate_limits_the_read_cycle():
    # 128 columns through one ADC at 0.64 GS/s take 200 ns > the 100 ns read
    rng = np.random.default_rng(0)
    prog = dense_program(rng.integers(-127, 128, size=(10, 15)), rows=16, cols=128)
    prog.config["adc"]["rate_gsps"] = 0.64
    _, rep = run_program(prog, {"x": rng.integers(0, 256, size=(1, 10)).astype(np.float32)})
    assert rep["layers"][0]["crossbar_time_s"] == pytest.approx(8 * 200e-9)


def test_router_flits_for_a_layer_split_over_tiles():
    # 3 row tiles on tiles 0, 1, 2 (dense_program puts crossbar i on tile i // 96: move them by hand)
    rng = np.random.default_rng(1)
    prog = dense_program(rng.integers(-127, 128, size=(40, 1)), rows=16, cols=8)
    assert len(prog.xbars) == 3
    for xb in prog.xbars:
        xb.tile = xb.id
    _, rep = run_program(prog, {"x": rng.integers(0, 256, size=(5, 40)).astype(np.float32)})
    # the input's home is the first crossbar's tile (0); crossbars 1 and 2 receive their 16 and 8
    # input codes per image: ceil(8·5·16 / 32) + ceil(8·5·8 / 32) = 20 + 10.
    # Column results of crossbars 1, 2 travel to tile 0: 8 columns each, each result needs
    # bits of 255 · (max column cell sum) -> bytes; counted as ceil(8·5·8·bytes / 32) per crossbar.
    cs = [int(prog.const(f"img{i}").astype(np.int64).sum(0).max()) for i in (1, 2)]
    psum = [-(-(255 * s).bit_length() // 8) for s in cs]
    want = 20 + 10 + sum(-(-(8 * 5 * 8 * b) // 32) for b in psum)
    assert rep["run"]["counters"]["router_flits"] == want


def test_chip_links_are_charged_only_for_multi_chip_programs():
    rng = np.random.default_rng(1)
    prog = dense_program(rng.integers(-127, 128, size=(40, 1)), rows=16, cols=8)
    _, one = run_program(prog, {"x": np.ones((1, 40), np.float32)})
    assert one["static_power_w"]["chips"] == 0.0
    prog.xbars[2].chip = 1
    _, two = run_program(prog, {"x": np.ones((1, 40), np.float32)})
    assert two["chips"] == 2
    assert two["static_power_w"]["chips"] == pytest.approx(2 * prog.config["power"]["hypertransport"] * 1e-3)
    assert two["run"]["counters"]["chip_flits"] > 0

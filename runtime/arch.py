"""Peak power, area and throughput of the machine a configuration describes (``pimc arch-report``).

Derived from the configuration alone, bottom-up as ISAAC's tables are built:

- IMA: its crossbar-side components draw the power of their events at peak rate — every crossbar
  does one read per read cycle, driving all rows (DACs, cells), sampling and converting all columns,
  shift-adding every column result — i.e. ``count × energy per event ÷ read cycle`` with the same
  ``[energy]`` figures the simulator charges; plus the registers' power and any leakage.
- tile: IMAs plus the tile components' published power (eDRAM, bus, router share, digital units,
  output register); chip: tiles plus HyperTransport.
- peak throughput: every crossbar of the chip does ``rows × weights per row`` MACs (2 operations
  each) per input vector, which takes ``⌈act_bits / dac_bits⌉`` read cycles.

With the isaac16 preset this reproduces ISAAC-CE's published figures (tests/test_arch_report.py).
"""

from __future__ import annotations

import math

from runtime.energy import MW, PJ, adc_scale, event_energies

NS = 1e-9


def read_cycle_s(cfg: dict, columns: int | None = None, adcs: int | None = None) -> float:
    """One crossbar read cycle (isa.md §7): ``max(read_ns, columns converted ÷ (ADCs × rate))``."""
    columns = cfg["crossbar"]["cols"] if columns is None else columns
    adcs = cfg["adc"]["per_crossbar"] if adcs is None else adcs
    return max(cfg["crossbar"]["read_ns"] * NS, columns / (adcs * cfg["adc"]["rate_gsps"] * 1e9))


def cells_per_weight(cfg: dict) -> int:
    """Cells one weight occupies in a crossbar row (two column groups for the differential scheme)."""
    n = math.ceil(cfg["precision"]["weight_bits"] / cfg["crossbar"]["cell_bits"])
    return 2 * n if cfg["mapping"]["scheme"] == "differential" else n


def _part(count: float, power_w: float, area_mm2: float) -> dict[str, float]:
    return {"count": count, "power_w": power_w, "area_mm2": area_mm2}


def _total(parts: dict[str, dict[str, float]]) -> tuple[float, float]:
    return sum(p["power_w"] for p in parts.values()), sum(p["area_mm2"] for p in parts.values())


def arch_report(cfg: dict) -> dict:
    """Peak figures of a validated configuration; see the module docstring for the derivation."""
    xb, adc, ima, tile = cfg["crossbar"], cfg["adc"], cfg["ima"], cfg["tile"]
    pw, ar, lk = cfg["power"], cfg["area"], cfg["leakage"]
    ev = event_energies(cfg)
    cycle = read_cycle_s(cfg)
    n_xb, rows, cols = ima["crossbars"], xb["rows"], xb["cols"]
    scale = adc_scale(cfg, adc["bits"])

    # ---- IMA: events at peak rate (one read per cycle on every crossbar) + registers + leakage
    n_adc, n_dac, n_sh, n_cell = n_xb * adc["per_crossbar"], n_xb * rows, n_xb * cols, n_xb * rows * cols
    ima_parts = {
        "adc": _part(n_adc, (n_xb * cols * ev["adc_conversions"] / cycle) + n_adc * lk["adc"] * scale * MW,
                     n_adc * ar["adc"] * scale),
        "dac": _part(n_dac, n_dac * ev["dac_activations"] / cycle + n_dac * lk["dac"] * MW, n_dac * ar["dac"]),
        "sample_hold": _part(n_sh, n_sh * ev["sample_holds"] / cycle, n_sh * ar["sample_hold"]),
        "crossbar_arrays": _part(n_cell, n_cell * ev["cell_ops"] / cycle, n_cell * ar["cell"]),
        "shift_add": _part(ima["shift_add_units"],
                           n_xb * cols * ev["shift_adds"] / cycle + ima["shift_add_units"] * lk["ima_shift_add"] * MW,
                           ima["shift_add_units"] * ar["ima_shift_add"]),
        "input_register": _part(1, pw["ima_input_register"] * MW, ar["ima_input_register"]),
        "output_register": _part(1, pw["ima_output_register"] * MW, ar["ima_output_register"]),
    }
    ima_power, ima_area = _total(ima_parts)

    # ---- tile: IMAs + published tile components (router split among the tiles sharing it)
    share = 1.0 / tile["tiles_per_router"]
    tile_parts = {
        "imas": _part(tile["imas"], tile["imas"] * ima_power, tile["imas"] * ima_area),
        "edram": _part(1, (pw["edram"] + lk["edram"]) * MW, ar["edram"]),
        "bus": _part(1, pw["bus"] * MW, ar["bus"]),
        "router": _part(share, share * pw["router"] * MW, share * ar["router"]),
        "sigmoid": _part(tile["sigmoid_units"], tile["sigmoid_units"] * pw["sigmoid"] * MW,
                         tile["sigmoid_units"] * ar["sigmoid"]),
        "shift_add": _part(tile["shift_add_units"], tile["shift_add_units"] * pw["tile_shift_add"] * MW,
                           tile["shift_add_units"] * ar["tile_shift_add"]),
        "maxpool": _part(tile["maxpool_units"], tile["maxpool_units"] * pw["maxpool"] * MW,
                         tile["maxpool_units"] * ar["maxpool"]),
        "output_register": _part(1, pw["tile_output_register"] * MW, ar["tile_output_register"]),
        "digital_leakage": _part(1, lk["digital"] * MW, 0.0),
    }
    tile_power, tile_area = _total(tile_parts)

    # ---- chip: tiles + HyperTransport
    n_tiles = cfg["chip"]["tiles"]
    chip_parts = {
        "tiles": _part(n_tiles, n_tiles * tile_power, n_tiles * tile_area),
        "hypertransport": _part(1, pw["hypertransport"] * MW, ar["hypertransport"]),
    }
    chip_power, chip_area = _total(chip_parts)

    # ---- peak throughput
    cpw = cells_per_weight(cfg)
    weights_per_row = cols // cpw if cols >= cpw else cols / cpw  # a weight wider than a crossbar spans several
    macs_per_vector = rows * weights_per_row
    steps = math.ceil(cfg["precision"]["act_bits"] / xb["dac_bits"])
    crossbars = n_tiles * tile["imas"] * n_xb
    ops_per_s = 2 * macs_per_vector * crossbars / (steps * cycle)
    gops = ops_per_s / 1e9

    return {
        "crossbars_per_chip": crossbars,
        "read_cycle_ns": cycle / NS,
        "bit_steps": steps,
        "cells_per_weight": cpw,
        "macs_per_crossbar_vector": macs_per_vector,
        "adc_energy_pj": ev["adc_conversions"] / PJ,
        "ima_power_w": ima_power,
        "ima_area_mm2": ima_area,
        "tile_power_w": tile_power,
        "tile_area_mm2": tile_area,
        "chip_power_w": chip_power,
        "chip_area_mm2": chip_area,
        "peak_gops": gops,
        "peak_gops_per_w": gops / chip_power,
        "peak_gops_per_s_mm2": gops / chip_area,
        "ima": ima_parts,
        "tile": tile_parts,
        "chip": chip_parts,
    }

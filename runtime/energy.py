"""Energy per counted event and static power, from a validated hardware configuration.

The cost model charges ``energy = Σ counter × event_energies(cfg)[counter] + static power × time``.
The per-event figures are the configuration's ``[energy]`` keys (picojoules; their defaults are
ISAAC's component powers × the 100 ns cycle ÷ events per cycle, see ``spec/hardware-config.md``);
this module only converts units and applies the ADC resolution model, so that the compiler, the
simulator and ``arch-report`` agree on one set of numbers.
"""

from __future__ import annotations

PJ = 1e-12
MW = 1e-3

#: counter (spec/isa.md §3, §5 and the reserved §4 units) -> energy component of the report
COMPONENT_OF: dict[str, str] = {
    "cell_ops": "crossbar",
    "dac_activations": "dac",
    "sample_holds": "sample_hold",
    "adc_conversions": "adc",
    "shift_adds": "shift_add",
    "buffer_read_bytes": "buffer",
    "buffer_write_bytes": "buffer",
    "bus_bytes": "interconnect",
    "router_flits": "interconnect",
    "digital_ops": "digital",
    "decision_compares": "decision",
    "decision_table_bytes": "decision",
}

#: counters that are tallies, not energy-bearing events (their work is charged through the others)
NO_ENERGY = ("crossbar_reads", "macs", "dac_ones")


def adc_scale(cfg: dict, bits: int) -> float:
    """Factor by which ADC energy (and area) at ``bits`` exceeds that at ``adc.ref_bits``."""
    ref = cfg["adc"]["ref_bits"]
    if cfg["adc"]["energy_model"] == "exponential":
        return 2.0 ** (bits - ref)
    return bits / ref  # "linear"


def adc_energy(cfg: dict, bits: int | None = None) -> float:
    """Joules of one ADC conversion at ``bits`` (default: the configured ``adc.bits``)."""
    if bits is None:
        bits = cfg["adc"]["bits"]
    if not isinstance(bits, int) or isinstance(bits, bool) or bits < 1:
        raise ValueError(f"ADC resolution must be a positive integer, not {bits!r}")
    return cfg["energy"]["adc_conversion"] * PJ * adc_scale(cfg, bits)


def event_energies(cfg: dict) -> dict[str, float]:
    """Joules per event for every counter; ``adc_conversions`` at ``adc.bits`` (use
    :func:`adc_energy` for crossbars whose ADC runs at another resolution)."""
    e = cfg["energy"]
    out = {name: 0.0 for name in NO_ENERGY}
    out.update(
        {
            "cell_ops": e["cell_op"] * PJ,
            "dac_activations": e["dac_activation"] * PJ,
            "sample_holds": e["sample_hold"] * PJ,
            "adc_conversions": adc_energy(cfg),
            "shift_adds": e["shift_add"] * PJ,
            "buffer_read_bytes": e["edram_read_byte"] * PJ,
            "buffer_write_bytes": e["edram_write_byte"] * PJ,
            "bus_bytes": e["bus_byte"] * PJ,
            "router_flits": e["router_flit"] * PJ,
            "digital_ops": e["digital_op"] * PJ,
            "decision_compares": e["decision_compare"] * PJ,
            "decision_table_bytes": e["decision_table_byte"] * PJ,
        }
    )
    return out


def leakage_power(cfg: dict, adc_bits: int | None = None) -> dict[str, float]:
    """Static power in watts of one unit at each level, *excluding* its children.

    Whatever has no counted event is charged by time: the ``[leakage]`` keys (0 in the presets:
    ISAAC's totals are carried by the event energies), the IMA and tile registers, and the chip's
    HyperTransport links. A used IMA costs ``ima_w`` plus ``crossbar_w`` per crossbar it holds, and
    so on up. ``adc_bits`` scales ADC leakage like ADC energy (default ``adc.bits``).
    """
    lk, pw = cfg["leakage"], cfg["power"]
    bits = cfg["adc"]["bits"] if adc_bits is None else adc_bits
    crossbar = cfg["adc"]["per_crossbar"] * lk["adc"] * adc_scale(cfg, bits) + cfg["crossbar"]["rows"] * lk["dac"]
    ima = cfg["ima"]["shift_add_units"] * lk["ima_shift_add"] + pw["ima_input_register"] + pw["ima_output_register"]
    tile = lk["edram"] + lk["digital"] + pw["tile_output_register"]
    chip = pw["hypertransport"]
    return {"crossbar_w": crossbar * MW, "ima_w": ima * MW, "tile_w": tile * MW, "chip_w": chip * MW}


def flits(cfg: dict, nbytes: int) -> int:
    """Router flits needed to move ``nbytes`` bytes."""
    bits = cfg["router"]["flit_bits"]
    return -(-8 * int(nbytes) // bits)

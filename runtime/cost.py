"""The cost model: events -> energy per component, time per layer, latency and throughput.

Inputs are the events every instruction counted while it ran (``runtime.executor.InstrStats``)
and the hardware configuration embedded in the program; per-event energies and static power come
from ``runtime.energy`` (one set of numbers for the simulator and ``arch-report``). Timing follows
``spec/isa.md`` §7; the exact rules and every report key are in ``spec/report.md``.
"""

from __future__ import annotations

from collections import OrderedDict

from runtime import energy as E
from runtime.arch import read_cycle_s

#: every counter the report carries (all of them appear, 0 when nothing counted them)
EVENTS = (
    "crossbar_reads",
    "dac_activations",
    "dac_ones",
    "cell_ops",
    "sample_holds",
    "adc_conversions",
    "shift_adds",
    "macs",
    "buffer_read_bytes",
    "buffer_write_bytes",
    "bus_bytes",
    "router_flits",
    "chip_flits",
    "digital_ops",
    "decision_compares",
    "decision_table_bytes",
)

#: energy components of the report, in display order
COMPONENTS = ("crossbar", "dac", "sample_hold", "adc", "shift_add", "buffer", "interconnect", "digital", "decision", "leakage")

NO_LAYER = "(no layer)"


def step_seconds(cfg: dict, cols: int) -> float:
    """One crossbar read cycle: max(read time, columns converted / (ADCs per crossbar · ADC rate)),
    the same figure ``arch-report`` uses (``runtime.arch.read_cycle_s``)."""
    return read_cycle_s(cfg, cols)


def digital_seconds(cfg: dict, elements: int) -> float:
    """A digital instruction: elements / (lanes · clock)."""
    return elements / (cfg["digital"]["lanes"] * cfg["digital"]["clock_ghz"] * 1e9)


def instr_energy(cfg: dict, events: dict[str, int], adc_by_bits: dict[int, int], ee: dict[str, float]) -> dict[str, float]:
    """Dynamic energy (J) of one instruction's events, per component; ADCs at their resolution."""
    out = {c: 0.0 for c in COMPONENTS}
    for name, n in events.items():
        if name == "adc_conversions":
            continue  # charged per resolution below
        comp = E.COMPONENT_OF.get(name)
        if comp is not None:
            out[comp] += n * ee[name]
    for bits, n in adc_by_bits.items():
        out["adc"] += n * E.adc_energy(cfg, int(bits))
    return out


def physical_xbars(xbars):
    """Every physical crossbar as (adc_bits, chip, tile, ima): each declared crossbar, then its
    copies (format 1.1: a replicated layer's crossbars exist ``replication`` times)."""
    for xb in xbars:
        yield int(xb.adc_bits), int(xb.chip), int(xb.tile), int(xb.ima)
        for chip, tile, ima in xb.copies:
            yield int(xb.adc_bits), int(chip), int(tile), int(ima)


def static_power(cfg: dict, xbars) -> dict[str, float]:
    """Static power (W) of the units the program occupies: crossbars (at their ADC resolution,
    copies included), IMAs and tiles holding at least one crossbar or copy, and the chips' links
    when it spans several."""
    parts = {"crossbars": 0.0, "imas": 0.0, "tiles": 0.0, "chips": 0.0}
    imas, tiles, chips = set(), set(), set()
    for adc_bits, chip, tile, ima in physical_xbars(xbars):
        parts["crossbars"] += E.leakage_power(cfg, adc_bits)["crossbar_w"]
        imas.add((chip, tile, ima))
        tiles.add((chip, tile))
        chips.add(chip)
    lk = E.leakage_power(cfg)
    parts["imas"] = len(imas) * lk["ima_w"]
    parts["tiles"] = len(tiles) * lk["tile_w"]
    # chip-level static power is the off-chip links (ISAAC's HyperTransport): charged only when the
    # program spans several chips; a single-chip program never drives them (assumed power-gated)
    parts["chips"] = len(chips) * lk["chip_w"] if len(chips) > 1 else 0.0
    return parts


def copy_shares(iters: int, batch: int, replication: int) -> list[int]:
    """Of ``iters`` iterations over a run of ``batch`` inferences, how many each of a crossbar's
    ``replication`` copies serves: each inference's iters / batch in contiguous shares of the
    ceiling, in order (isa.md §1); iterations not a multiple of the batch (never for compiled
    programs) are shared as one run."""
    if replication == 1:
        return [iters]
    per, rest = divmod(iters, batch)
    if rest:
        per, batch = iters, 1
    c = -(-per // replication)
    return [batch * max(0, min((k + 1) * c, per) - k * c) for k in range(replication)]


def copy_steps(reads: int, steps_per_iter: int, batch: int, replication: int) -> int:
    """Read steps of the busiest copy of a crossbar whose ``mvm``s made ``reads`` crossbar reads
    (P iterations x T steps over a run of ``batch`` inferences; ``copy_shares``)."""
    if replication == 1 or reads == 0:
        return reads
    return max(copy_shares(-(-reads // steps_per_iter), batch, replication)) * steps_per_iter


def layer_costs(program, stats, machine, batch: int = 1) -> list[dict]:
    """Per report layer, in program order: events, dynamic energy, crossbar and digital time (whole
    run of ``batch`` inferences). A crossbar of a layer with replication N is N physical copies,
    each serving 1/N of the iterations of an inference (ceiling): the layer's crossbar time is its
    busiest copy's, its events are those of all iterations (``spec/isa.md`` §7)."""
    cfg = machine.cfg
    ee = E.event_energies(cfg)
    layers: OrderedDict[str, dict] = OrderedDict()
    for st in stats:
        if st.opcode == "halt":
            continue
        name = st.layer or NO_LAYER
        L = layers.get(name)
        if L is None:
            L = layers[name] = {
                "name": name,
                "replication": program.replication(st.layer),
                "events": {k: 0 for k in EVENTS},
                "adc_by_bits": {},
                "energy": {c: 0.0 for c in COMPONENTS},
                "xbar_busy_s": {},
                "xbar_steps": {},
                "digital_s": 0.0,
                "paths": set(),
            }
        for k, v in st.events.items():
            L["events"][k] = L["events"].get(k, 0) + v
        for b, v in st.adc_by_bits.items():
            L["adc_by_bits"][b] = L["adc_by_bits"].get(b, 0) + v
        for c, v in instr_energy(cfg, st.events, st.adc_by_bits, ee).items():
            L["energy"][c] += v
        if st.xbar is not None:
            fields = program.instrs[st.index].fields
            bits, dac_bits = int(fields["bits"]), int(fields.get("dac_bits", 1))
            steps = copy_steps(st.events.get("crossbar_reads", 0), -(-bits // dac_bits), batch, L["replication"])
            dur = step_seconds(cfg, machine.xbars[st.xbar].cols)
            L["xbar_busy_s"][st.xbar] = L["xbar_busy_s"].get(st.xbar, 0.0) + steps * dur
            L["xbar_steps"][st.xbar] = L["xbar_steps"].get(st.xbar, 0) + steps
            if st.path:
                L["paths"].add(st.path)
        L["digital_s"] += digital_seconds(cfg, st.events.get("digital_ops", 0))
    for L in layers.values():
        L["xbar_s"] = max(L["xbar_busy_s"].values(), default=0.0)  # crossbars of a layer in parallel
        L["xbar_critical_steps"] = max(L["xbar_steps"].values(), default=0)
        L["time_s"] = L["xbar_s"] + L["digital_s"]
        if not L["paths"]:
            L["path"] = "digital"
        elif len(L["paths"]) == 1:
            L["path"] = next(iter(L["paths"]))
        else:
            L["path"] = "mixed"
    return list(layers.values())

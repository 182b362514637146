"""The simulation report (schema: ``spec/report.md``) and its terminal summary.

Top-level figures are *per inference*: the run's totals divided by the batch. The run's own totals
are under ``run``. Everything is plain JSON (ints, floats, strings, lists, dicts).
"""

from __future__ import annotations

import json
import math

from runtime import cost as C

SCHEMA = "pimc-report/1"


def _div(counters: dict[str, int], n: int) -> dict[str, float]:
    return {k: v / n for k, v in counters.items()}


def build_report(program, stats, batch: int, wall_s: float, machine, fast_path: bool = True) -> dict:
    """Energy, time and counters of a finished run (whole batch), per inference and in total."""
    cfg = machine.cfg
    layers = C.layer_costs(program, stats, machine, batch)
    static = C.static_power(cfg, program.xbars)
    p_static = sum(static.values())
    clock = cfg["digital"]["clock_ghz"] * 1e9

    out_layers = []
    totals = {k: 0 for k in C.EVENTS}
    adc_bits: dict[int, int] = {}
    breakdown = {c: 0.0 for c in C.COMPONENTS}
    latency = 0.0
    slowest = 0.0
    xbar_cycles = 0
    for L in layers:
        t_inf = L["time_s"] / batch
        latency += t_inf
        slowest = max(slowest, t_inf)
        xbar_cycles += L["xbar_critical_steps"]
        e = dict(L["energy"])
        e["leakage"] = p_static * L["time_s"]  # whole run, this layer's share of the latency
        for c, v in e.items():
            breakdown[c] += v
        for k, v in L["events"].items():
            totals[k] = totals.get(k, 0) + v
        for b, v in L["adc_by_bits"].items():
            adc_bits[b] = adc_bits.get(b, 0) + v
        rep = L["replication"]
        out_layers.append(
            {
                "name": L["name"],
                "crossbars": rep * len(L["xbar_busy_s"]),
                "crossbars_unique": len(L["xbar_busy_s"]),
                "replication": rep,
                "path": L["path"],
                "cycles": math.ceil(t_inf * clock - 1e-6),
                "crossbar_cycles": L["xbar_critical_steps"] / batch,
                "latency_s": t_inf,
                "crossbar_time_s": L["xbar_s"] / batch,
                "digital_time_s": L["digital_s"] / batch,
                "energy_j": sum(e.values()) / batch,
                "energy_breakdown_j": {c: v / batch for c, v in e.items()},
                "counters": _div(L["events"], batch),
                "adc_conversions_by_bits": {str(b): v / batch for b, v in sorted(L["adc_by_bits"].items())},
            }
        )
    energy_run = sum(breakdown.values())
    throughput = 1.0 / slowest if slowest > 0 else None
    run_time = latency + (batch - 1) * slowest  # pipelined: one image per slowest-layer time
    physical = [place for _, *place in C.physical_xbars(program.xbars)]  # (chip, tile, ima), copies too
    return {
        "schema": SCHEMA,
        "per": "inference",
        "batch": batch,
        "crossbars": len(physical),
        "crossbars_unique": len(program.xbars),
        "chips": len({p[0] for p in physical}) or (1 if program.instrs else 0),
        "tiles": len({tuple(p[:2]) for p in physical}),
        "imas": len({tuple(p) for p in physical}),
        "cycles": math.ceil(latency * clock - 1e-6),
        "crossbar_cycles": xbar_cycles / batch,
        "latency_s": latency,
        "throughput_inferences_per_s": throughput,
        "energy_j": energy_run / batch,
        "energy_breakdown_j": {c: v / batch for c, v in breakdown.items()},
        "static_power_w": static,
        "counters": _div(totals, batch),
        "adc_conversions_by_bits": {str(b): v / batch for b, v in sorted(adc_bits.items())},
        "layers": out_layers,
        "run": {
            "images": batch,
            "time_s": run_time,
            "energy_j": energy_run,
            "energy_breakdown_j": breakdown,
            "counters": totals,
            "adc_conversions_by_bits": {str(b): v for b, v in sorted(adc_bits.items())},
        },
        "fast_path": fast_path,
        "simulation_wall_s": wall_s,
        "simulation_images_per_s": batch / wall_s if wall_s > 0 else None,
    }


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=False)


# ------------------------------------------------------------------------------------ terminal


def _eng(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if v == 0:
        return f"0 {unit}"
    for f, p in ((1e-15, "f"), (1e-12, "p"), (1e-9, "n"), (1e-6, "µ"), (1e-3, "m"), (1.0, ""), (1e3, "k"), (1e6, "M"), (1e9, "G")):
        if abs(v) < f * 1000:
            return f"{v / f:.3g} {p}{unit}"
    return f"{v:.3g} {unit}"


def _count(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() or v >= 100 else f"{v:,.2f}"


def summary(report: dict):
    """A rich renderable: totals, the energy breakdown and one row per layer (per inference)."""
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    head = Table(title=f"per inference (run totals / {report['batch']} images)", show_header=False)
    head.add_column(style="bold")
    head.add_column(justify="right")
    head.add_row("crossbars / tiles / chips", f"{report['crossbars']} / {report['tiles']} / {report['chips']}")
    head.add_row("latency", _eng(report["latency_s"], "s") + f"  ({report['cycles']:,} cycles)")
    head.add_row("throughput (pipelined)", _eng(report["throughput_inferences_per_s"], "inf/s"))
    head.add_row("energy", _eng(report["energy_j"], "J"))
    c = report["counters"]
    for k in ("macs", "crossbar_reads", "adc_conversions", "dac_activations"):
        head.add_row(k, _count(c[k]))
    head.add_row("simulation wall time", f"{report['simulation_wall_s']:.3f} s for {report['batch']} image(s)")

    br = Table(title="energy breakdown", show_header=True)
    br.add_column("component")
    br.add_column("energy", justify="right")
    br.add_column("share", justify="right")
    tot = report["energy_j"] or 1.0
    for k, v in report["energy_breakdown_j"].items():
        br.add_row(k, _eng(v, "J"), f"{100 * v / tot:.1f} %")

    lt = Table(title="layers", show_header=True)
    for col in ("layer", "xbars", "rep.", "path", "latency", "energy", "MACs", "ADC conv."):
        lt.add_column(col, justify="left" if col in ("layer", "path") else "right")
    for L in report["layers"]:
        lt.add_row(
            L["name"], str(L["crossbars"]), str(L["replication"]), L["path"], _eng(L["latency_s"], "s"), _eng(L["energy_j"], "J"),
            _count(L["counters"]["macs"]), _count(L["counters"]["adc_conversions"]),
        )
    return Group(head, br, lt)

"""`pimc arch-report -c CONFIG [--json]`: peak power, area and efficiency from the configuration alone.

With the isaac16 machine the terminal table puts ISAAC-CE's published figures beside ours.
"""

from __future__ import annotations

import json

import click

#: ISAAC-CE as published (Shafiee et al., ISCA 2016, Tables I and IV, corrected; quoted in
#: shared/reference/hardware-figures.md). Peak GOPS is that file's derivation (≈ 41 TOPS).
ISAAC_CE_PUBLISHED = {
    "ima_power_w": 0.02409,
    "ima_area_mm2": 0.0131,
    "tile_power_w": 0.330,
    "tile_area_mm2": 0.372,
    "chip_power_w": 65.8,
    "chip_area_mm2": 85.4,
    "peak_gops": 41000.0,
    "peak_gops_per_w": 627.5,
    "peak_gops_per_s_mm2": 478.95,
}

ROWS = [
    ("ima_power_w", "IMA power", "mW", 1e3),
    ("ima_area_mm2", "IMA area", "mm²", 1.0),
    ("tile_power_w", "tile power", "mW", 1e3),
    ("tile_area_mm2", "tile area", "mm²", 1.0),
    ("chip_power_w", "chip power", "W", 1.0),
    ("chip_area_mm2", "chip area", "mm²", 1.0),
    ("peak_gops", "peak throughput", "GOPS", 1.0),
    ("peak_gops_per_w", "peak efficiency", "GOPS/W", 1.0),
    ("peak_gops_per_s_mm2", "peak density", "GOPS/(s·mm²)", 1.0),
]


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def main(config: str, as_json: bool) -> None:
    from pimc.hw import load_config
    from runtime.arch import arch_report

    cfg = load_config(config)
    report = arch_report(cfg)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    published = ISAAC_CE_PUBLISHED if cfg == load_config("isaac16") else None
    p = cfg["precision"]
    title = (
        f"{config}: {report['crossbars_per_chip']:,} crossbars of {cfg['crossbar']['rows']}×{cfg['crossbar']['cols']}, "
        f"{p['weight_bits']}-bit weights × {p['act_bits']}-bit inputs, {cfg['adc']['bits']}-bit ADC, "
        f"read cycle {report['read_cycle_ns']:g} ns × {report['bit_steps']} steps"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("quantity")
    table.add_column("unit")
    table.add_column("pimc", justify="right")
    if published:
        table.add_column("ISAAC-CE published", justify="right")
        table.add_column("error", justify="right")
    for key, label, unit, mult in ROWS:
        ours = report[key] * mult
        row = [label, unit, _fmt(ours)]
        if published:
            ref = published[key] * mult
            approx = "≈" if key == "peak_gops" else ""
            row += [f"{approx}{_fmt(ref)}", f"{100 * (ours - ref) / ref:+.2f} %"]
        table.add_row(*row)
    Console().print(table)

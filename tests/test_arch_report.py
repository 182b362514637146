"""arch-report: peak power, area and efficiency from the configuration alone, against ISAAC-CE."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pimc.cli import main as cli
from pimc.hw import load_config
from runtime import hwconfig
from runtime.arch import arch_report, read_cycle_s

# Published ISAAC-CE figures (Shafiee et al., ISCA 2016; shared/reference/hardware-figures.md),
# written out here on purpose rather than imported from the code under test.
PUBLISHED = {
    "tile_power_w": 0.330,
    "tile_area_mm2": 0.372,
    "chip_power_w": 65.8,
    "chip_area_mm2": 85.4,
    "peak_gops_per_w": 627.5,
    "peak_gops_per_s_mm2": 478.95,
}


@pytest.mark.parametrize("key", list(PUBLISHED))
def test_isaac16_matches_isaac_within_2_percent(key):
    ours = arch_report(load_config("isaac16"))[key]
    assert ours == pytest.approx(PUBLISHED[key], rel=0.02), (key, ours, PUBLISHED[key])


def test_isaac16_ima_table_and_peak():
    r = arch_report(load_config("isaac16"))
    ima = {k: v["power_w"] for k, v in r["ima"].items()}
    assert ima["adc"] == pytest.approx(16e-3)
    assert ima["dac"] == pytest.approx(4e-3)
    assert ima["sample_hold"] == pytest.approx(10e-6)
    assert ima["crossbar_arrays"] == pytest.approx(2.4e-3)
    assert ima["shift_add"] == pytest.approx(0.2e-3)
    assert r["ima_power_w"] == pytest.approx(24.09e-3, rel=0.002)
    assert r["ima_area_mm2"] == pytest.approx(0.0131, rel=0.005)
    assert r["crossbars_per_chip"] == 16128
    # 16,128 crossbars × 4,096 ops per 1.6 µs
    assert r["peak_gops"] == pytest.approx(16128 * 4096 / 1.6e-6 / 1e9, rel=1e-12)
    assert r["read_cycle_ns"] == pytest.approx(100.0)


def test_isaac8_same_machine_four_times_the_ops():
    r16, r8 = arch_report(load_config("isaac16")), arch_report(load_config("isaac8"))
    assert r8["chip_power_w"] == pytest.approx(r16["chip_power_w"])
    assert r8["chip_area_mm2"] == pytest.approx(r16["chip_area_mm2"])
    # half the cells per weight (2× the MACs per read) and half the bit-steps
    assert r8["peak_gops"] == pytest.approx(4 * r16["peak_gops"])
    assert r8["peak_gops_per_w"] > r16["peak_gops_per_w"]


def test_report_follows_the_configuration():
    base = arch_report(load_config("isaac8"))
    wide = arch_report(hwconfig.validate({"adc": {"bits": 9}}, "x"))
    assert wide["ima"]["adc"]["power_w"] == pytest.approx(2 * base["ima"]["adc"]["power_w"])
    assert wide["peak_gops"] == base["peak_gops"]
    slow = hwconfig.validate({"adc": {"rate_gsps": 0.64}}, "x")  # 128 conversions now take 200 ns
    assert read_cycle_s(slow) == pytest.approx(200e-9)
    assert arch_report(slow)["peak_gops"] == pytest.approx(base["peak_gops"] / 2)
    diff = hwconfig.validate({"mapping": {"scheme": "differential"}}, "x")
    assert arch_report(diff)["peak_gops"] == pytest.approx(base["peak_gops"] / 2)
    two_dac = hwconfig.validate({"crossbar": {"dac_bits": 2}}, "x")
    assert arch_report(two_dac)["peak_gops"] == pytest.approx(base["peak_gops"] * 2)


def test_cli_json_and_table():
    runner = CliRunner()
    res = runner.invoke(cli, ["arch-report", "-c", "isaac16", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    for key in ("tile_power_w", "tile_area_mm2", "chip_power_w", "chip_area_mm2", "peak_gops",
                "peak_gops_per_w", "peak_gops_per_s_mm2"):
        assert isinstance(data[key], float)
    assert data["chip_power_w"] == pytest.approx(65.8, rel=0.02)
    res = runner.invoke(cli, ["arch-report", "-c", "isaac16"])
    assert res.exit_code == 0 and "ISAAC-CE published" in res.output and "627.5" in res.output
    res = runner.invoke(cli, ["arch-report"])  # default isaac8: no published column
    assert res.exit_code == 0 and "ISAAC-CE published" not in res.output

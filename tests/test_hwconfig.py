"""Hardware configuration: schema and documentation in sync, presets, validation errors, config show,
event energies against the figures derived by hand from ISAAC's table."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from pimc.cli import main as cli
from pimc.hw import PRESETS, attach_config, config_of, load_config
from runtime import hwconfig
from runtime.energy import adc_energy, event_energies, flits, leakage_power
from runtime.errors import ConfigError, UserError

SPEC = Path(__file__).resolve().parent.parent / "spec"


def test_every_schema_key_is_documented():
    doc = (SPEC / "hardware-config.md").read_text(encoding="utf-8")
    missing = [k for k in hwconfig.keys() if f"`{k}`" not in doc]
    assert not missing, f"keys missing from spec/hardware-config.md: {missing}"
    # and the doc names no key the schema lacks
    documented = set(re.findall(r"\| `([a-z_]+\.[a-z_]+)` \|", doc))
    assert documented <= set(hwconfig.keys()), documented - set(hwconfig.keys())


def test_schema_entries_carry_unit_default_and_source():
    for section, entries in hwconfig.SCHEMA.items():
        for key, e in entries.items():
            assert e["source"].strip() and e["doc"].strip(), f"{section}.{key}"
            if e["type"] == "str":
                assert e["default"] in e["choices"]


def test_keys_other_engineers_rely_on():
    cfg = hwconfig.defaults()
    for name in ["precision.weight_bits", "precision.act_bits", "crossbar.rows", "crossbar.cols",
                 "crossbar.cell_bits", "crossbar.dac_bits", "crossbar.read_ns", "crossbar.flip_encoding",
                 "adc.bits", "adc.mode", "adc.rate_gsps", "adc.per_crossbar", "ima.crossbars", "tile.imas",
                 "chip.tiles", "mapping.scheme", "mapping.order", "adc.energy_model"]:
        section, key = name.split(".")
        assert key in cfg[section], name
    assert hwconfig.SCHEMA["adc"]["mode"]["choices"] == ["saturate", "drop-lsb"]
    assert hwconfig.SCHEMA["mapping"]["scheme"]["choices"] == ["offset", "differential", "twos"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_validate_and_match_the_design_points(name):
    cfg = load_config(name)
    assert hwconfig.validate(cfg, name) == cfg
    xb, adc = cfg["crossbar"], cfg["adc"]
    assert (xb["rows"], xb["cols"], xb["cell_bits"], xb["dac_bits"], xb["read_ns"]) == (128, 128, 2, 1, 100.0)
    assert (adc["rate_gsps"], adc["per_crossbar"]) == (1.28, 1)
    assert (cfg["ima"]["crossbars"], cfg["tile"]["imas"], cfg["chip"]["tiles"]) == (8, 12, 168)
    assert xb["flip_encoding"] is True
    bits = {"isaac16": 16, "isaac8": 8, "ideal8": 8}[name]
    assert cfg["precision"] == {"weight_bits": bits, "act_bits": bits}
    smax = xb["rows"] * (2 ** xb["dac_bits"] - 1) * (2 ** xb["cell_bits"] - 1)
    if name == "ideal8":
        assert 2 ** adc["bits"] > smax and 2 ** adc["bits"] > 128 * 15 * 15  # lossless even at 4-bit cells/DACs
    else:
        assert adc["bits"] == 8 and 2 ** adc["bits"] <= smax  # ISAAC's 8 bits rely on the flip encoding


def test_default_is_isaac8():
    assert load_config(None) == load_config("isaac8") == hwconfig.validate({}, "empty")


def _err(raw):
    with pytest.raises(ConfigError) as info:
        hwconfig.validate(raw, "my.toml")
    return str(info.value)


def test_unknown_key_names_key_and_suggests():
    msg = _err({"crossbar": {"row": 64}})
    assert "my.toml" in msg and "'crossbar.row'" in msg and "did you mean 'crossbar.rows'" in msg
    assert "rows, cols, cell_bits" in msg
    msg = _err({"adc": {"rows": 64}})  # right key, wrong section
    assert "'adc.rows'" in msg and "'crossbar.rows'" in msg
    msg = _err({"crosbar": {"rows": 64}})
    assert "section 'crosbar'" in msg and "did you mean 'crossbar'" in msg
    msg = _err({"rows": 64})
    assert "'crossbar.rows'" in msg and "section" in msg


def test_wrong_type_names_key_value_and_allowed():
    msg = _err({"crossbar": {"rows": "128"}})
    assert "crossbar.rows = '128'" in msg and "not an integer" in msg and "[1, 4096]" in msg
    msg = _err({"crossbar": {"rows": 128.0}})
    assert "not an integer" in msg
    msg = _err({"crossbar": {"flip_encoding": 1}})
    assert "crossbar.flip_encoding = 1" in msg and "true or false" in msg
    msg = _err({"adc": {"rate_gsps": True}})
    assert "adc.rate_gsps = True" in msg and "not a number" in msg
    msg = _err({"adc": 8})
    assert "[adc]" in msg


def test_out_of_range_and_bad_choice():
    msg = _err({"crossbar": {"cell_bits": 5}})
    assert "crossbar.cell_bits = 5" in msg and "out of range" in msg and "[1, 4]" in msg
    msg = _err({"precision": {"act_bits": 3}})
    assert "precision.act_bits = 3" in msg and "[4, 16]" in msg
    msg = _err({"crossbar": {"read_ns": 0}})
    assert "crossbar.read_ns = 0" in msg and "> 0" in msg
    msg = _err({"adc": {"mode": "clip"}})
    assert "adc.mode = 'clip'" in msg and "'saturate', 'drop-lsb'" in msg
    msg = _err({"mapping": {"scheme": "diferential"}})
    assert "'offset', 'differential', 'twos'" in msg and "did you mean 'differential'" in msg
    msg = _err({"adc": {"per_crossbar": 129}})
    assert "adc.per_crossbar = 129" in msg and "crossbar.cols = 128" in msg


def test_float_keys_accept_integers():
    cfg = hwconfig.validate({"crossbar": {"read_ns": 50}}, "x")
    assert cfg["crossbar"]["read_ns"] == 50.0 and isinstance(cfg["crossbar"]["read_ns"], float)


def test_files_base_presets_and_file_errors(tmp_path):
    f = tmp_path / "narrow.toml"
    f.write_text('base = "isaac16"\n[adc]\nbits = 6\n')
    cfg = load_config(f)
    assert cfg["adc"]["bits"] == 6 and cfg["precision"]["weight_bits"] == 16
    assert load_config(str(f)) == cfg

    bad = tmp_path / "bad.toml"
    bad.write_text("[crossbar]\nrows = 128\ncols = = 3\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML: .*line 3"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"missing\.toml: hardware configuration file not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"unknown hardware preset 'isaac9' \(did you mean 'isaac8'\?\); presets: isaac8, isaac16, ideal8"):
        load_config("isaac9")
    wrong_base = tmp_path / "wb.toml"
    wrong_base.write_text('base = "isaac32"\n')
    with pytest.raises(ConfigError, match=r"wb\.toml: base = 'isaac32' is not a preset"):
        load_config(wrong_base)
    keyerr = tmp_path / "key.toml"
    keyerr.write_text("[adc]\nbitz = 6\n")
    with pytest.raises(ConfigError, match=r"key\.toml: unknown key 'adc\.bitz' \(did you mean 'adc\.bits'\?\)"):
        load_config(keyerr)


def test_toml_and_json_round_trip():
    for name in PRESETS:
        cfg = load_config(name)
        assert hwconfig.validate(tomllib.loads(hwconfig.to_toml(cfg)), "rt") == cfg
        assert hwconfig.validate(json.loads(hwconfig.to_json(cfg)), "rt") == cfg


def test_module_attribute_round_trip():
    from xdsl.context import Context
    from xdsl.dialects.builtin import Builtin, ModuleOp
    from xdsl.parser import Parser

    cfg = load_config("isaac16")
    module = ModuleOp([])
    attach_config(module, cfg)
    assert config_of(module) == cfg
    ctx = Context()
    ctx.load_dialect(Builtin)
    reparsed = Parser(ctx, str(module)).parse_module()
    assert config_of(reparsed) == cfg
    assert config_of(ModuleOp([])) == load_config("isaac8")
    with pytest.raises(ConfigError, match="no 'pimc.hw' attribute"):
        config_of(ModuleOp([]), default=None)


# ----------------------------------------------------------------------------------- the CLI


def test_config_show_round_trips_through_the_cli(tmp_path):
    runner = CliRunner()
    for name in PRESETS:
        res = runner.invoke(cli, ["config", "show", name])
        assert res.exit_code == 0, res.output
        assert hwconfig.validate(tomllib.loads(res.output), "printed") == load_config(name)
        out = tmp_path / f"{name}.toml"
        out.write_text(res.output)
        assert load_config(out) == load_config(name)
    res = runner.invoke(cli, ["config", "show", "isaac16", "--json"])
    assert res.exit_code == 0 and json.loads(res.output) == load_config("isaac16")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[crossbar]\nrowz = 64\n", ["crossbar.rowz", "crossbar.rows"]),
        ('[crossbar]\nrows = "many"\n', ["crossbar.rows", "'many'", "[1, 4096]"]),
        ("[crossbar]\ncell_bits = 9\n", ["crossbar.cell_bits = 9", "[1, 4]"]),
        ('[adc]\nmode = "round"\n', ["adc.mode = 'round'", "'saturate', 'drop-lsb'"]),
        ("[adc\nbits = 8\n", ["invalid TOML", "line 1"]),
    ],
)
def test_cli_reports_config_errors_without_traceback(tmp_path, text, expected):
    f = tmp_path / "user.toml"
    f.write_text(text)
    for args in (["config", "show", str(f)], ["arch-report", "-c", str(f)]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output
        assert res.output.startswith("error: ") and str(f) in res.output
        for piece in expected:
            assert piece in res.output, (piece, res.output)


def test_cli_unknown_preset():
    res = CliRunner().invoke(cli, ["config", "show", "isac16"])
    assert res.exit_code == 2 and "did you mean 'isaac16'" in res.output and "Traceback" not in res.output


# -------------------------------------------------------------------------------- energies


def test_event_energies_equal_the_hand_derived_isaac_figures():
    """hardware-figures.md: component power × 100 ns / events served per cycle (8 × 128 per IMA)."""
    e = event_energies(load_config("isaac16"))
    cyc = 100e-9
    assert e["adc_conversions"] == pytest.approx(16e-3 * cyc / 1024, rel=1e-12)  # 1.5625 pJ
    assert e["adc_conversions"] == pytest.approx(1.56e-12, rel=0.002)
    assert e["adc_conversions"] == pytest.approx(2e-3 / 1.28e9, rel=1e-12)  # nameplate at 1.28 GS/s
    assert e["dac_activations"] == pytest.approx(4e-3 * cyc / 1024, rel=1e-12)  # 0.39 pJ
    assert e["cell_ops"] == pytest.approx(2.4e-3 * cyc / (8 * 128 * 128), rel=1e-12)  # 1.83 fJ
    assert e["cell_ops"] == pytest.approx(1.83e-15, rel=0.001)
    assert e["sample_holds"] == pytest.approx(10e-6 * cyc / 1024, rel=1e-12)  # ≈ 1 fJ
    assert e["shift_adds"] == pytest.approx(0.2e-3 * cyc / 1024, rel=1e-12)
    assert e["buffer_read_bytes"] == pytest.approx(2.02e-12, rel=0.001)
    assert e["buffer_write_bytes"] == e["buffer_read_bytes"]
    assert e["bus_bytes"] == pytest.approx(0.68e-12, rel=0.006)
    assert e["router_flits"] == pytest.approx(42e-3 / (8 * 1.2e9), rel=1e-12)
    assert e["digital_ops"] == pytest.approx(1.71e-3 * 1e-9, rel=1e-12)  # PUMA ALU
    assert e["crossbar_reads"] == e["macs"] == e["dac_ones"] == 0.0
    for counter in ("crossbar_reads", "dac_activations", "cell_ops", "sample_holds", "adc_conversions",
                    "shift_adds", "buffer_read_bytes", "buffer_write_bytes", "macs", "digital_ops",
                    "router_flits", "decision_compares", "decision_table_bytes"):
        assert counter in e


def test_adc_energy_models():
    cfg = load_config("isaac8")
    assert adc_energy(cfg, 8) == pytest.approx(1.5625e-12)
    assert adc_energy(cfg, 6) == pytest.approx(1.5625e-12 / 4)
    assert adc_energy(cfg, 10) == pytest.approx(1.5625e-12 * 4)
    assert adc_energy(cfg) == adc_energy(cfg, 8)
    lin = hwconfig.validate({"adc": {"energy_model": "linear"}}, "x")
    assert adc_energy(lin, 4) == pytest.approx(1.5625e-12 / 2)
    assert adc_energy(lin, 12) == pytest.approx(1.5625e-12 * 1.5)
    assert event_energies(load_config("ideal8"))["adc_conversions"] == pytest.approx(1.5625e-12 * 2**8)


def test_leakage_and_flits():
    cfg = load_config("isaac8")
    lk = leakage_power(cfg)
    assert lk["crossbar_w"] == 0.0  # ISAAC's crossbar-side powers are all carried by events
    assert lk["ima_w"] == pytest.approx((1.24 + 0.23) * 1e-3)  # registers
    assert lk["tile_w"] == pytest.approx(1.68e-3)
    assert lk["chip_w"] == pytest.approx(10.4)
    puma = hwconfig.validate({"leakage": {"adc": 0.2, "dac": 0.00039}}, "x")
    assert leakage_power(puma)["crossbar_w"] == pytest.approx((0.2 + 128 * 0.00039) * 1e-3)
    assert leakage_power(puma, adc_bits=9)["crossbar_w"] == pytest.approx((0.4 + 128 * 0.00039) * 1e-3)
    assert flits(cfg, 0) == 0 and flits(cfg, 4) == 1 and flits(cfg, 5) == 2


def test_config_error_is_a_user_error():
    from pimc.errors import ConfigError as PimcConfigError

    assert PimcConfigError is ConfigError and issubclass(ConfigError, UserError)

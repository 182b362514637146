"""Hardware configurations for the compiler: presets, TOML files, and the ``pimc.hw`` IR attribute.

Validation itself lives in ``runtime.hwconfig`` (the simulator checks embedded configs with the same
schema). A TOML file may start from a preset with a top-level ``base = "isaac16"`` and override
only what differs.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from runtime.errors import ConfigError
from runtime.hwconfig import validate

__all__ = ["PRESETS", "DEFAULT_PRESET", "ConfigError", "load_config", "config_of", "attach_config", "ATTR"]

#: preset name -> one-line description (the files are pimc/hw/presets/NAME.toml)
PRESETS: dict[str, str] = {
    "isaac8": "ISAAC-CE machine with 8-bit weights and activations (the ISAAC-like baseline; default)",
    "isaac16": "ISAAC-CE design point: 16-bit weights and inputs (reproduces ISAAC's published figures)",
    "ideal8": "isaac8 with a 16-bit, lossless ADC (for verification)",
}
DEFAULT_PRESET = "isaac8"
#: name of the module attribute holding the resolved configuration as JSON
ATTR = "pimc.hw"


def _preset_text(name: str) -> str:
    return (resources.files("pimc.hw.presets") / f"{name}.toml").read_text(encoding="utf-8")


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:  # the message carries "(at line L, column C)"
        raise ConfigError(f"{source}: invalid TOML: {err}") from None


def _merge(base: dict, over: dict) -> dict:
    """Section-wise override of a raw configuration (``over`` wins key by key)."""
    out = {s: dict(v) if isinstance(v, dict) else v for s, v in base.items()}
    for s, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(s), dict):
            out[s].update(v)
        else:
            out[s] = v
    return out


def _raw(text: str, source: str, seen: tuple[str, ...]) -> dict[str, Any]:
    """The raw dict of a config text with its ``base`` preset (if any) merged underneath."""
    raw = _parse(text, source)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or base not in PRESETS:
        raise ConfigError(f"{source}: base = {base!r} is not a preset; allowed: {', '.join(map(repr, PRESETS))}")
    if base in seen:
        raise ConfigError(f"{source}: base = {base!r} makes a cycle of presets ({' -> '.join(seen + (base,))})")
    return _merge(_raw(_preset_text(base), f"preset {base!r}", seen + (base,)), raw)


def load_config(spec: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Resolve a preset name or a TOML file path (``None``: the default preset) to a full config."""
    if spec is None:
        spec = DEFAULT_PRESET
    if isinstance(spec, str) and spec in PRESETS:
        return validate(_raw(_preset_text(spec), f"preset {spec!r}", (spec,)), f"preset {spec!r}")
    path = Path(spec)
    looks_like_file = isinstance(spec, Path) or path.suffix or "/" in str(spec) or path.exists()
    if not looks_like_file:
        close = difflib.get_close_matches(str(spec), list(PRESETS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown hardware preset {str(spec)!r}{hint}; presets: {', '.join(PRESETS)}, or give a TOML file path"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: hardware configuration file not found (presets: {', '.join(PRESETS)})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read hardware configuration: {err}") from None
    return validate(_raw(text, str(path), ()), str(path))


def attach_config(module, cfg: dict) -> dict:
    """Store ``cfg`` (validated) on an xDSL ModuleOp as the StringAttr ``pimc.hw``; return it."""
    from xdsl.dialects.builtin import StringAttr

    cfg = validate(cfg, "configuration attached to the module")
    module.attributes[ATTR] = StringAttr(json.dumps(cfg, separators=(",", ":")))
    return cfg


def config_of(module, default: str | Path | None = DEFAULT_PRESET) -> dict[str, dict[str, Any]]:
    """The configuration stored on ``module``; without one, ``load_config(default)``.

    ``default=None`` makes a missing attribute an error (for callers that must not guess).
    """
    attr = module.attributes.get(ATTR)
    if attr is None:
        if default is None:
            raise ConfigError(f"the module has no {ATTR!r} attribute; give a hardware config with -c NAME|FILE")
        return load_config(default)
    source = f"module attribute {ATTR!r}"
    data = getattr(attr, "data", None)
    if not isinstance(data, str):
        raise ConfigError(f"{source} must be a string holding JSON, not {attr}")
    try:
        raw = json.loads(data)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source}: invalid JSON: {err}") from None
    return validate(raw, source)

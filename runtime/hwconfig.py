"""Hardware-configuration schema and validation (``spec/hardware-config.md``).

The schema is data (``spec/hardware-schema.toml``) so that the compiler, the runtime and the
documentation all read one list of keys. A configuration is a nested dict
``cfg[section][key]``; :func:`validate` turns a user's partial dict into a complete, typed one or
raises :class:`ConfigError` naming the source, the key, the bad value and what is allowed.
The runtime uses this module too (programs embed their configuration), so it imports nothing of
``pimc``.
"""

from __future__ import annotations

import difflib
import json
import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from runtime.errors import ConfigError

__all__ = ["SCHEMA", "ConfigError", "validate", "defaults", "keys", "to_toml", "to_json", "load_schema"]

_SCHEMA_FILE = "hardware-schema.toml"
_TYPES = {"int", "float", "bool", "str"}


def _read_schema_text() -> str:
    """The schema as shipped (package ``runtime.spec``), else the source tree's ``spec/``."""
    try:
        return (resources.files("runtime.spec") / _SCHEMA_FILE).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, TypeError):
        return (Path(__file__).resolve().parent.parent / "spec" / _SCHEMA_FILE).read_text(encoding="utf-8")


def load_schema(text: str | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """Parse and sanity-check the schema: a schema bug is ours, so it raises ValueError, not a user error."""
    schema = tomllib.loads(_read_schema_text() if text is None else text)
    for section, entries in schema.items():
        for key, e in entries.items():
            name = f"{section}.{key}"
            if e.get("type") not in _TYPES:
                raise ValueError(f"schema {name}: bad type {e.get('type')!r}")
            for field in ("unit", "default", "source", "doc"):
                if field not in e:
                    raise ValueError(f"schema {name}: missing {field!r}")
            _check_value(e, e["default"], name, "schema default")
    return schema


def _allowed(e: dict[str, Any]) -> str:
    """Human-readable description of the values a key accepts."""
    t = e["type"]
    if t == "bool":
        return "true or false"
    if t == "str":
        return "one of " + ", ".join(repr(c) for c in e["choices"]) if "choices" in e else "a string"
    kind = "an integer" if t == "int" else "a number"
    parts = []
    if "gt" in e:
        parts.append(f"> {e['gt']:g}")
    if "min" in e:
        parts.append(f">= {e['min']:g}")
    if "max" in e:
        parts.append(f"<= {e['max']:g}")
    if "min" in e and "max" in e:
        return f"{kind} in [{e['min']:g}, {e['max']:g}]"
    return kind + (" " + " and ".join(parts) if parts else "")


def _check_value(e: dict[str, Any], value: Any, name: str, source: str) -> Any:
    """Return ``value`` converted to the key's type, or raise ConfigError naming key, value and range."""
    t = e["type"]
    unit = f" {e['unit']}" if e.get("unit") else ""

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{source}: {name} = {value!r} {why}; allowed: {_allowed(e)}{unit}")

    if t == "bool":
        if not isinstance(value, bool):
            raise bad(f"is {_type_name(value)}, not a boolean")
        return value
    if t == "str":
        if not isinstance(value, str):
            raise bad(f"is {_type_name(value)}, not a string")
        if "choices" in e and value not in e["choices"]:
            close = difflib.get_close_matches(value, e["choices"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise bad(f"is not a valid choice{hint}")
        return value
    if t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"is {_type_name(value)}, not an integer")
        v: int | float = value
    else:  # float: integers are accepted and converted
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"is {_type_name(value)}, not a number")
        v = float(value)
        if not math.isfinite(v):
            raise bad("is not finite")
    if "gt" in e and not v > e["gt"]:
        raise bad("is out of range")
    if "min" in e and v < e["min"]:
        raise bad("is out of range")
    if "max" in e and v > e["max"]:
        raise bad("is out of range")
    return v


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            dict: "a table", list: "an array"}.get(type(value), type(value).__name__)


SCHEMA: dict[str, dict[str, dict[str, Any]]] = load_schema()


def keys() -> list[str]:
    """Every key as ``section.key``, in schema order."""
    return [f"{s}.{k}" for s, entries in SCHEMA.items() for k in entries]


def defaults() -> dict[str, dict[str, Any]]:
    """The configuration with every key at its default (the isaac8 machine)."""
    return {s: {k: e["default"] for k, e in entries.items()} for s, entries in SCHEMA.items()}


def _unknown(name: str, candidates: list[str], source: str, what: str) -> ConfigError:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return ConfigError(f"{source}: unknown {what} {name!r}{hint}; allowed: {', '.join(candidates)}")


def validate(raw: dict, source: str = "<config>") -> dict[str, dict[str, Any]]:
    """Check a (partial) configuration against the schema and fill in defaults.

    ``source`` names where ``raw`` came from (a file, a preset, a program) in error messages.
    Returns a new, complete dict; ``raw`` is not modified.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a configuration must be a table of sections, not {_type_name(raw)}")
    all_keys = keys()
    cfg = defaults()
    for section, entries in raw.items():
        if section not in SCHEMA:
            if not isinstance(entries, dict):
                # a top-level `rows = 128` instead of `[crossbar] rows = 128`
                matches = [k for k in all_keys if k.split(".")[1] == section]
                if matches:
                    raise ConfigError(
                        f"{source}: key {section!r} must be inside its section; write it as "
                        f"{' or '.join(repr(m) for m in matches)} (e.g. [{matches[0].split('.')[0]}] {section} = ...)"
                    )
            raise _unknown(section, list(SCHEMA), source, "section")
        if not isinstance(entries, dict):
            raise ConfigError(
                f"{source}: {section} = {entries!r} must be a table [{section}] with keys "
                f"{', '.join(SCHEMA[section])}"
            )
        for key, value in entries.items():
            name = f"{section}.{key}"
            if key not in SCHEMA[section]:
                # suggest from the section first, then from every key (a key put in the wrong section)
                close = difflib.get_close_matches(key, list(SCHEMA[section]), n=3, cutoff=0.6)
                close = [f"{section}.{c}" for c in close] or [
                    k for k in all_keys if k.split(".")[1] == key
                ] or difflib.get_close_matches(name, all_keys, n=3, cutoff=0.75)
                hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
                raise ConfigError(
                    f"{source}: unknown key {name!r}{hint}; keys of [{section}]: {', '.join(SCHEMA[section])}"
                )
            cfg[section][key] = _check_value(SCHEMA[section][key], value, name, source)
    _check_consistency(cfg, source)
    return cfg


def _check_consistency(cfg: dict, source: str) -> None:
    """Constraints that involve several keys."""
    xb = cfg["crossbar"]
    if cfg["adc"]["per_crossbar"] > xb["cols"]:
        raise ConfigError(
            f"{source}: adc.per_crossbar = {cfg['adc']['per_crossbar']} exceeds crossbar.cols = {xb['cols']}; "
            f"allowed: 1 to crossbar.cols"
        )
    # The float32 exactness bound of the simulator, rows*(2^dac-1)*(2^cell-1) < 2^24, holds for every
    # value the ranges allow (4096 * 15 * 15 < 2^24), so it needs no check here.


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)  # shortest repr that round-trips; valid TOML for finite floats
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg: dict, comments: bool = True) -> str:
    """The configuration as TOML that :func:`validate` reads back to an equal dict.

    With ``comments``, each key carries its unit and doc line from the schema.
    """
    out: list[str] = []
    for section, entries in cfg.items():
        if out:
            out.append("")
        out.append(f"[{section}]")
        for key, value in entries.items():
            line = f"{key} = {_toml_value(value)}"
            e = SCHEMA.get(section, {}).get(key)
            if comments and e:
                unit = f"[{e['unit']}] " if e["unit"] else ""
                line = f"{line:<40} # {unit}{e['doc']}"
            out.append(line)
    return "\n".join(out) + "\n"


def to_json(cfg: dict, indent: int | None = 2) -> str:
    """The configuration as JSON (what programs and the ``pimc.hw`` IR attribute embed)."""
    return json.dumps(cfg, indent=indent)

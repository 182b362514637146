"""`pimc config show NAME|FILE [--json]`: the resolved configuration (every key, defaults filled)."""

from __future__ import annotations

import click


def main(name: str, as_json: bool) -> None:
    from pimc.hw import load_config
    from runtime.hwconfig import to_json, to_toml

    cfg = load_config(name)
    if as_json:
        click.echo(to_json(cfg))
    else:
        click.echo(f"# resolved hardware configuration: {name}", nl=True)
        click.echo(to_toml(cfg), nl=False)

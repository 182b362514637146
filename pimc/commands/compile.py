"""`pimc compile`: ONNX -> nn -> (calibrate, quantize) -> pass pipeline -> isa -> program file.

Each ``--emit`` level stops the flow where it names: ``nn`` after import, ``quant`` after
quantization, ``xbar`` before ``convert-xbar-to-isa``, ``isa`` after the pipeline, ``asm`` the
program's text form, ``program`` (default) the binary ``.pimx`` file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from runtime.errors import UserError


def print_stats(module, stream=None) -> None:
    """Crossbars, cells used and utilization per layer (``mapping_stats``) as a table, then the
    totals that have no column (chips, traffic between chips)."""
    from rich.console import Console
    from rich.table import Table

    from pimc.transforms.mapping_stats import mapping_stats

    rows = mapping_stats(module)
    layers = [r for r in rows if r.get("name") != "total"]
    total = next((r for r in rows if r.get("name") == "total"), None)
    keys = list((layers or rows)[0].keys()) if rows else []
    table = Table(title="crossbar mapping")
    for k in keys:
        table.add_column(k.replace("_", " "), justify="left" if k in ("name", "kind") else "right")
    for r in layers:
        table.add_row(*[_fmt(r.get(k)) for k in keys])
    if total is not None:
        table.add_section()
        table.add_row(*[_fmt(total.get(k)) for k in keys])
    console = Console(file=stream or sys.stdout, width=160)
    console.print(table)
    for k, v in (total or {}).items():
        if k not in keys:
            console.print(f"{k.replace('_', ' ')}: {_fmt(v) if v is not None else 'n/a (run xbar-place)'}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):  # the only float column is utilization
        return f"{v:.1%}"
    return "" if v is None else str(v)


def main(
    model: str | None,
    output_path: str | None,
    pipeline: str | None,
    emit: str,
    print_pipeline: bool,
    stats: bool,
    plugins: tuple[str, ...],
    config: str,
    input_shapes: tuple[str, ...],
    quant: dict[str, Any],
) -> None:
    from pimc import driver
    from pimc.driver import write_ir

    q = driver.QuantOptions.from_cli(quant)
    cfg = driver.resolve_config(config, q)
    pipe = driver.Pipeline(cfg, pipeline, plugins)
    if print_pipeline:
        print(pipe.text)
        return
    if not model:
        raise UserError("pimc compile needs a MODEL.onnx (or --print-pipeline)")
    if emit in ("isa", "asm", "program"):
        pipe.require_codegen(f"--emit {emit}")

    module = driver.load_model(model, cfg, input_shapes)
    if emit == "nn":
        return write_ir(module, output_path)
    driver.quantize(module, cfg, q)
    if emit == "quant":
        return write_ir(module, output_path)
    pipe.run_mapping(module)
    if stats:  # on stderr when the IR or assembly text goes to stdout
        print_stats(module, sys.stderr if emit != "program" and not output_path else sys.stdout)
    if emit == "xbar":
        return write_ir(module, output_path)
    pipe.run_codegen(module)
    if emit == "isa":
        return write_ir(module, output_path)

    program = driver.emit(module, cfg)
    if emit == "asm":
        from runtime.asm import disassemble

        text_out = disassemble(program)
        if output_path:
            Path(output_path).write_text(text_out, encoding="utf-8")
        else:
            sys.stdout.write(text_out)
        return

    from runtime.container import save_program

    out = Path(output_path) if output_path else Path(model).with_suffix(".pimx")
    save_program(program, out)
    copies = sum(len(x.copies) for x in program.xbars)
    physical = f" ({len(program.xbars) + copies} with replicas)" if copies else ""
    print(
        f"wrote {out}: {len(program.instrs)} instructions, {len(program.xbars)} crossbars{physical}, "
        f"{out.stat().st_size:,} bytes",
        file=sys.stderr,
    )

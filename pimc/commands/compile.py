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


def _print_ir(module, output_path: str | None) -> None:
    from xdsl.printer import Printer

    if output_path:
        with open(output_path, "w", encoding="utf-8") as f:
            Printer(stream=f).print_op(module)
            f.write("\n")
    else:
        Printer(stream=sys.stdout).print_op(module)
        sys.stdout.write("\n")


def resolve_config(config: str, quant: dict[str, Any]) -> dict:
    """The hardware configuration, with the command line's --weight-bits/--act-bits applied."""
    from pimc.hw import load_config
    from runtime.hwconfig import validate

    cfg = load_config(config)
    over = {k: quant.get(k) for k in ("weight_bits", "act_bits") if quant.get(k) is not None}
    if over:
        cfg = dict(cfg)
        cfg["precision"] = {**cfg["precision"], **over}
        cfg = validate(cfg, f"{config} with --weight-bits/--act-bits")
    return cfg


def quantize(module, cfg: dict, quant: dict[str, Any]) -> None:
    """Calibrates a float model on the user's data (``--calibration``) and quantizes it in place;
    a float model without calibration data is an error that says how to give it."""
    from pimc.quant import quantize_module

    calib = None
    if quant.get("calibration"):
        from pimc.frontend.inputs import load_inputs

        calib = load_inputs(quant["calibration"], module)
    quantize_module(
        module,
        calib,
        cfg,
        method=quant.get("calib_method") or "minmax",
        percentile=quant.get("percentile") or 99.99,
    )


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


def _warn_replication(module) -> None:
    """Format 1.0 programs have no way to say a layer is replicated: say so rather than let a
    replicated mapping look simulated."""
    from pimc.dialects.xbar import LayerOp

    replicated = [op.layer_name for op in module.walk() if isinstance(op, LayerOp) and (op.int_prop("replication") or 1) > 1]
    if replicated:
        print(
            f"warning: {len(replicated)} layer(s) are replicated by xbar-place (e.g. {replicated[0]}), but "
            "format 1.0 programs declare only the first copy of each crossbar: the simulator counts and "
            "times the unreplicated layers",
            file=sys.stderr,
        )


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
    from pimc import pipeline as pl

    cfg = resolve_config(config, quant)
    if print_pipeline:
        print(pl.default_pipeline(cfg))
        return
    if not model:
        raise UserError("pimc compile needs a MODEL.onnx (or --print-pipeline)")
    text = pipeline if pipeline is not None else pl.default_pipeline(cfg)
    passes = pl.available_passes(plugins)
    pl.parse(text, passes)  # fail on a bad pipeline before the (slow) import
    before, after = pl.split_at_codegen(text, passes)
    if emit in ("isa", "asm", "program") and not after:
        raise UserError(
            f"--emit {emit} needs the pipeline to end with '{pl.CODEGEN_PASS}' (got {text!r}); "
            "use --emit xbar to stop at the mapping level"
        )

    from pimc.frontend.onnx_import import import_onnx, parse_input_shapes
    from pimc.hw import attach_config

    module = import_onnx(model, parse_input_shapes(input_shapes) or None)
    attach_config(module, cfg)
    if emit == "nn":
        return _print_ir(module, output_path)

    quantize(module, cfg, quant)
    if emit == "quant":
        return _print_ir(module, output_path)

    ctx = pl.make_context()
    pl.run_pipeline(module, pl.parse(before, passes), ctx=ctx)
    if stats:  # on stderr when the IR or assembly text goes to stdout
        print_stats(module, sys.stderr if emit != "program" and not output_path else sys.stdout)
    if emit == "xbar":
        return _print_ir(module, output_path)
    _warn_replication(module)
    pl.run_pipeline(module, pl.parse(after, passes), ctx=ctx)
    if emit == "isa":
        return _print_ir(module, output_path)

    from pimc.backend.emit import emit_program

    program = emit_program(module, cfg)
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
    print(
        f"wrote {out}: {len(program.instrs)} instructions, {len(program.xbars)} crossbars, "
        f"{out.stat().st_size:,} bytes",
        file=sys.stderr,
    )


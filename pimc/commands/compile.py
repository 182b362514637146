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

from pimc.errors import InputError


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


def is_float_model(module) -> bool:
    """True when any op still computes in float (needs calibration before quantization)."""
    from xdsl.dialects.builtin import TensorType

    from pimc.dialects import nn

    for op in module.walk():
        if op.name.startswith("nn.") and not isinstance(op, (nn.QuantizeOp, nn.ConstantOp)):
            for r in op.results:
                if isinstance(r.type, TensorType) and not isinstance(r.type.element_type, nn.QuantType):
                    if not isinstance(op, nn.DequantizeOp):
                        return True
    return False


def quantize(module, cfg: dict, quant: dict[str, Any], model_path: str) -> None:
    """Calibrates a float model on the user's data and quantizes it (in place)."""
    from pimc.quant import quantize_module

    if not is_float_model(module):
        quantize_module(module, None, cfg)
        return
    cal = quant.get("calibration")
    if not cal:
        raise InputError(
            f"{model_path} is a float model: pimc needs calibration inputs to choose activation ranges. "
            "Give a batch of typical inputs with --calibration CAL.npy (an array in the model's input "
            "layout, batch first) or --calibration CAL.npz (one array per input name)"
        )
    from pimc.frontend.inputs import load_inputs

    calib = load_inputs(cal, module)
    quantize_module(
        module,
        calib,
        cfg,
        method=quant.get("calib_method") or "minmax",
        percentile=quant.get("percentile") or 99.99,
    )


def print_stats(module) -> None:
    """Crossbars, cells used and utilization per layer (``mapping_stats``) as a table."""
    from rich.console import Console
    from rich.table import Table

    from pimc.transforms.mapping_stats import mapping_stats

    stats = mapping_stats(module)
    rows = stats.get("layers", []) if isinstance(stats, dict) else list(stats)
    table = Table(title="crossbar mapping")
    if rows:
        keys = list(rows[0].keys())
        for k in keys:
            table.add_column(str(k), justify="left" if k in ("name", "layer", "kind") else "right")
        for r in rows:
            table.add_row(*[_fmt(r.get(k)) for k in keys])
        if isinstance(stats, dict):
            total = {k: v for k, v in stats.items() if k != "layers" and not isinstance(v, (list, dict))}
            if total:
                table.add_section()
                table.add_row(*[_fmt(total.get(k, "total" if i == 0 else "")) for i, k in enumerate(keys)])
    Console(file=sys.stdout, width=160).print(table)
    if isinstance(stats, dict):
        extra = {k: v for k, v in stats.items() if k != "layers" and not isinstance(v, (list, dict))}
        missing = {k: v for k, v in extra.items() if not rows or k not in rows[0]}
        for k, v in missing.items():
            print(f"{k}: {_fmt(v)}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1%}" if 0.0 <= v <= 1.0 else f"{v:.4g}"
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

    quantize(module, cfg, quant, model)
    if emit == "quant":
        return _print_ir(module, output_path)

    ctx = pl.make_context()
    pl.run_pipeline(module, pl.parse(before, passes), ctx=ctx)
    if stats:
        print_stats(module)
    if emit == "xbar":
        return _print_ir(module, output_path)
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
        f"wrote {out}: {len(program.instrs)} instructions, {len(program.xbars)} crossbars",
        file=sys.stderr,
    )


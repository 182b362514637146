"""The ``pimc`` command line.

Each command parses its options here and calls into the module that does the work (imported
lazily, so ``pimc --help`` is fast). A user's mistake raises ``runtime.errors.UserError``: it is
printed as one line ``error: ...`` with the error's exit status; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys

import click

from runtime.errors import UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """Turns user errors into one clear line (no traceback unless --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as err:
            if ctx.params.get("debug") or (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show the full traceback of errors.")
@click.version_option(package_name="pimc")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """pimc: compile ONNX CNNs to ReRAM crossbar programs and simulate them."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _config_option(f):
    return click.option(
        "-c",
        "--config",
        "config",
        default="isaac8",
        show_default=True,
        help="Hardware preset name (isaac8, isaac16, ideal8) or a TOML file.",
    )(f)


def _input_shape_option(f):
    return click.option(
        "--input-shape",
        "input_shapes",
        multiple=True,
        metavar="NAME=DxDxD",
        help="Concrete shape for an input with dynamic dimensions (batch excluded from fixing), "
        "e.g. --input-shape x=1x3x32x32. Repeatable.",
    )(f)


def _quant_options(f):
    f = click.option("--weight-bits", type=click.IntRange(4, 16), default=None, help="Override the config's weight bits.")(f)
    f = click.option("--act-bits", type=click.IntRange(4, 16), default=None, help="Override the config's activation bits.")(f)
    f = click.option(
        "--calib-method",
        type=click.Choice(["minmax", "percentile"]),
        default="minmax",
        show_default=True,
        help="How activation ranges are chosen from the calibration data.",
    )(f)
    f = click.option("--percentile", type=click.FloatRange(50, 100), default=99.99, show_default=True)(f)
    f = click.option(
        "--calibration",
        type=click.Path(dir_okay=False),
        default=None,
        help="Calibration inputs (.npy batch, or .npz keyed by input name).",
    )(f)
    return f


# ------------------------------------------------------------------------------------------ config


@main.group(context_settings=CONTEXT)
def config() -> None:
    """Hardware configurations."""


@config.command("show", context_settings=CONTEXT)
@click.argument("name", default="isaac8")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
def config_show(name: str, as_json: bool) -> None:
    """Print the resolved configuration of a preset NAME or a TOML file."""
    from pimc.commands import config_show as impl

    impl.main(name, as_json)


@main.command("arch-report", context_settings=CONTEXT)
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def arch_report(config: str, as_json: bool) -> None:
    """Peak power, area and efficiency derived from a configuration alone."""
    from pimc.commands import arch_report as impl

    impl.main(config, as_json)


# ------------------------------------------------------------------------------ front end, quant


@main.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-i", "--input", "input_path", required=True, type=click.Path(dir_okay=False), help="Input .npy (or .npz by input name).")
@click.option("-o", "--output", "output_path", required=True, type=click.Path(dir_okay=False), help="Output .npy (.npz for several outputs).")
@click.option("--int", "integer", is_flag=True, help="Run the quantized network in exact integer arithmetic.")
@_config_option
@_input_shape_option
@_quant_options
def reference(model, input_path, output_path, integer, config, input_shapes, **quant) -> None:
    """Run the float (or integer) reference of MODEL on inputs."""
    from pimc.commands import reference as impl

    impl.main(model, input_path, output_path, integer, config, input_shapes, quant)


@main.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output_path", required=True, type=click.Path(dir_okay=False))
@_config_option
@_input_shape_option
@_quant_options
def quantize(model, output_path, config, input_shapes, **quant) -> None:
    """Write pimc's quantization of MODEL as a QDQ ONNX model that onnxruntime runs."""
    from pimc.commands import quantize as impl

    impl.main(model, output_path, config, input_shapes, quant)


# ------------------------------------------------------------------------------ compile and opt


@main.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path(dir_okay=False), required=False)
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False), default=None, help="Program file (.pimx) or IR/asm text for --emit.")
@click.option("-p", "--pipeline", default=None, help="Pass pipeline (xDSL syntax); see --print-pipeline.")
@click.option("--emit", type=click.Choice(["nn", "quant", "xbar", "isa", "asm", "program"]), default="program", show_default=True)
@click.option("--print-pipeline", is_flag=True, help="Print the default pipeline and exit.")
@click.option("--stats", is_flag=True, help="Print crossbars, cells used and utilization per layer.")
@click.option("--plugin", "plugins", multiple=True, type=click.Path(dir_okay=False), help="Python file defining extra passes.")
@_config_option
@_input_shape_option
@_quant_options
def compile(model, output_path, pipeline, emit, print_pipeline, stats, plugins, config, input_shapes, **quant) -> None:
    """Compile an ONNX MODEL into a crossbar program."""
    from pimc.commands import compile as impl

    impl.main(model, output_path, pipeline, emit, print_pipeline, stats, plugins, config, input_shapes, quant)


@main.command(context_settings=CONTEXT)
@click.argument("ir_file", type=click.Path(dir_okay=False))
@click.option("-p", "--pipeline", required=True, help="Pass pipeline (xDSL syntax).")
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False), default=None)
@click.option("--print-ir-after-all", is_flag=True)
@click.option("--plugin", "plugins", multiple=True, type=click.Path(dir_okay=False))
@click.option("-c", "--config", "config", default=None, help="Hardware config for IR without a pimc.hw attribute.")
def opt(ir_file, pipeline, output_path, print_ir_after_all, plugins, config) -> None:
    """Run passes on textual IR (xDSL's opt driver)."""
    from pimc.commands import opt as impl

    impl.main(ir_file, pipeline, output_path, print_ir_after_all, plugins, config)


@main.command(context_settings=CONTEXT)
@click.argument("program", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False), default=None)
def disasm(program, output_path) -> None:
    """Print a program's text form."""
    from pimc.commands import disasm as impl

    impl.main(program, output_path)


@main.command(context_settings=CONTEXT)
@click.argument("text", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output_path", required=True, type=click.Path(dir_okay=False))
def asm(text, output_path) -> None:
    """Assemble a program's text form into a program file."""
    from pimc.commands import asm as impl

    impl.main(text, output_path)


# ------------------------------------------------------------------------------------- simulate


def _run_options(f):
    f = click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False), default=None, help="Write outputs (.npy/.npz).")(f)
    f = click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="Write the JSON report.")(f)
    f = click.option("--batch-size", type=click.IntRange(1), default=None, help="At most this many images simulated at once.")(f)
    f = click.option("--no-fast-path", is_flag=True, help="Always run the bit-level path.")(f)
    return f


@main.command(context_settings=CONTEXT)
@click.argument("program", type=click.Path(dir_okay=False))
@click.option("-i", "--input", "input_path", required=True, type=click.Path(dir_okay=False))
@_run_options
def run(program, input_path, output_path, report_path, batch_size, no_fast_path) -> None:
    """Run PROGRAM on the simulator: outputs, cycles and energy."""
    from pimc.commands import run as impl

    impl.main(program, input_path, output_path, report_path, batch_size, no_fast_path)


@main.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-i", "--input", "input_path", required=True, type=click.Path(dir_okay=False))
@click.option("-p", "--pipeline", default=None)
@click.option("--plugin", "plugins", multiple=True, type=click.Path(dir_okay=False))
@_run_options
@_config_option
@_input_shape_option
@_quant_options
def simulate(model, input_path, pipeline, plugins, output_path, report_path, batch_size, no_fast_path, config, input_shapes, **quant) -> None:
    """Compile MODEL and run it on the simulator in one go."""
    from pimc.commands import simulate as impl

    impl.main(model, input_path, pipeline, plugins, output_path, report_path, batch_size, no_fast_path, config, input_shapes, quant)


@main.command(context_settings=CONTEXT)
@click.argument("program", type=click.Path(dir_okay=False))
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False))
@click.option("--labels", "labels_path", required=True, type=click.Path(dir_okay=False))
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None, help="Float ONNX model to compare with (default: PROGRAM with the suffix .onnx, where `pimc compile MODEL.onnx` writes MODEL.pimx).")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None)
def eval(program, data_path, labels_path, model_path, batch_size, report_path) -> None:
    """Top-1 accuracy of the simulator and of the float model, side by side."""
    from pimc.commands import eval as impl

    impl.main(program, data_path, labels_path, model_path, batch_size, report_path)


if __name__ == "__main__":  # pragma: no cover
    main()


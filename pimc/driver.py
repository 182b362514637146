"""The compile flow as a library: ONNX -> nn -> quantized nn -> pass pipeline -> Program.

``pimc compile``, ``pimc simulate``, ``pimc quantize``, ``pimc reference --int``, the benchmarks and
the tests all go through these functions, so there is one definition of what "compiling a model"
means. Each stage can be stopped after (``--emit``), which is why they are separate functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import UserError
from runtime.model import Program


@dataclass
class QuantOptions:
    """What the command line's quantization options say (None: take the hardware config's)."""

    calibration: str | None = None  # .npy batch or .npz keyed by input name
    calib_method: str = "minmax"
    percentile: float = 99.99
    weight_bits: int | None = None
    act_bits: int | None = None

    @classmethod
    def from_cli(cls, quant: dict[str, Any]) -> QuantOptions:
        return cls(
            calibration=quant.get("calibration"),
            calib_method=quant.get("calib_method") or "minmax",
            percentile=quant.get("percentile") or 99.99,
            weight_bits=quant.get("weight_bits"),
            act_bits=quant.get("act_bits"),
        )


@dataclass
class Compiled:
    """A compiled model: the program, and the quantized ``nn`` module it was lowered from (the
    integer reference of exactly that module is what the simulator must match)."""

    program: Program
    quantized: Any = field(repr=False)
    config: dict = field(repr=False)


def resolve_config(config: str | Path | dict, quant: QuantOptions | None = None) -> dict:
    """The validated hardware configuration (preset name, TOML file or dict), with
    ``--weight-bits``/``--act-bits`` applied."""
    from pimc.hw import load_config
    from runtime.hwconfig import validate

    cfg = validate(config, "the given configuration") if isinstance(config, dict) else load_config(config)
    over = {}
    if quant is not None:
        over = {k: getattr(quant, k) for k in ("weight_bits", "act_bits") if getattr(quant, k) is not None}
    if over:
        cfg = {**cfg, "precision": {**cfg["precision"], **over}}
        cfg = validate(cfg, f"{config if not isinstance(config, dict) else 'configuration'} with --weight-bits/--act-bits")
    return cfg


def load_model(model: str | Path, cfg: dict, input_shapes: tuple[str, ...] | dict | None = None):
    """Imports an ONNX model into float ``nn`` IR with the hardware configuration attached."""
    from pimc.frontend.onnx_import import import_onnx, parse_input_shapes
    from pimc.hw import attach_config

    shapes = input_shapes if isinstance(input_shapes, dict) else parse_input_shapes(input_shapes or ())
    module = import_onnx(str(model), shapes or None)
    attach_config(module, cfg)
    return module


def quantize(module, cfg: dict, quant: QuantOptions) -> None:
    """Calibrates on the user's data and quantizes in place. A float model without calibration
    data is an error that says how to give it; an imported QDQ model needs none."""
    from pimc.quant import quantize_module

    calib = None
    if quant.calibration:
        from pimc.frontend.inputs import load_inputs

        calib = load_inputs(quant.calibration, module)
    quantize_module(module, calib, cfg, method=quant.calib_method, percentile=quant.percentile)


class Pipeline:
    """A pass pipeline split at code generation, checked before any slow work is done."""

    def __init__(self, cfg: dict, text: str | None = None, plugins: tuple[str, ...] = ()):
        from pimc import pipeline as pl

        self.text = text if text is not None else pl.default_pipeline(cfg)
        self.passes = pl.available_passes(plugins)
        pl.parse(self.text, self.passes)  # a bad pipeline fails before the (slow) import
        self.mapping, self.codegen = pl.split_at_codegen(self.text, self.passes)
        self._ctx = pl.make_context()

    def require_codegen(self, what: str) -> None:
        from pimc import pipeline as pl

        if not self.codegen:
            raise UserError(
                f"{what} needs the pipeline to end with '{pl.CODEGEN_PASS}' (got {self.text!r}); "
                "use --emit xbar to stop at the mapping level"
            )

    def run_mapping(self, module) -> None:
        from pimc import pipeline as pl

        pl.run_pipeline(module, pl.parse(self.mapping, self.passes), ctx=self._ctx)

    def run_codegen(self, module) -> None:
        from pimc import pipeline as pl

        pl.run_pipeline(module, pl.parse(self.codegen, self.passes), ctx=self._ctx)


def write_ir(module, output_path: str | None) -> None:
    """Prints IR as text to a file, or to standard output."""
    import sys

    from xdsl.printer import Printer

    if output_path:
        with open(output_path, "w", encoding="utf-8") as f:
            Printer(stream=f).print_op(module)
            f.write("\n")
    else:
        Printer(stream=sys.stdout).print_op(module)
        sys.stdout.write("\n")


def emit(module, cfg: dict) -> Program:
    from pimc.backend.emit import emit_program

    return emit_program(module, cfg)


def compile_model(
    model: str | Path,
    config: str | Path | dict = "isaac8",
    quant: QuantOptions | None = None,
    pipeline: str | None = None,
    plugins: tuple[str, ...] = (),
    input_shapes: tuple[str, ...] | dict | None = None,
) -> Compiled:
    """ONNX file -> Program, in memory, exactly as ``pimc compile`` does it."""
    quant = quant or QuantOptions()
    cfg = resolve_config(config, quant)
    pipe = Pipeline(cfg, pipeline, plugins)
    pipe.require_codegen("compiling to a program")
    module = load_model(model, cfg, input_shapes)
    quantize(module, cfg, quant)
    quantized = module.clone()
    pipe.run_mapping(module)
    pipe.run_codegen(module)
    return Compiled(emit(module, cfg), quantized, cfg)

"""isa module -> ``runtime.model.Program``: a one-to-one translation of directives and instructions.

The isa module already is the program in order (``pimc.dialects.isa``), so emission only turns
attributes into program values, tags every instruction with the open ``.layer``, embeds the
hardware configuration, and checks the result against the runtime's instruction schema
(``runtime.opcodes.validate_program``): a program the runtime would reject is a compiler bug and
fails here, at compile time, with the offending instruction named.
"""

from __future__ import annotations

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from pimc.dialects import isa
from runtime.model import Buffer, Const, Instr, Layer, Port, Program, Xbar


def machine_config(module: ModuleOp, cfg: dict) -> dict:
    """``cfg`` with the crossbar geometry the mapping used (``pimc.crossbar``, recorded by
    convert-xbar-to-isa): pass options such as ``xbar-bit-slice{cell-bits=3}`` define the machine
    the program runs on, so its embedded configuration must say 3-bit cells."""
    import json

    from xdsl.dialects.builtin import StringAttr

    from pimc.transforms.convert_xbar_to_isa import GEOMETRY_ATTR
    from runtime.hwconfig import validate

    attr = module.attributes.get(GEOMETRY_ATTR)
    if not isinstance(attr, StringAttr):
        return cfg
    geometry = {k: v for k, v in json.loads(attr.data).items() if v and cfg["crossbar"].get(k) != v}
    if not geometry:
        return cfg
    changed = {**cfg, "crossbar": {**cfg["crossbar"], **geometry}}
    shown = ", ".join(f"crossbar.{k} = {v}" for k, v in sorted(geometry.items()))
    return validate(changed, f"the configuration with the mapping's {shown}")


def emit_program(module: ModuleOp, cfg: dict | None = None) -> Program:
    """The program held by an isa-level module; ``cfg`` defaults to the module's ``pimc.hw``.

    The embedded configuration is ``cfg`` with the crossbar geometry the mapping used
    (``machine_config``)."""
    from runtime.errors import ProgramError
    from runtime.opcodes import validate_program

    if cfg is None:
        from pimc.hw import config_of

        cfg = config_of(module)
    program = Program(config=machine_config(module, cfg))
    layer = ""
    for op in module.body.block.ops:
        if not isinstance(op, isa.IsaOp):
            raise ValueError(
                f"emit_program: {op.name} is not an isa op; run the pipeline through convert-xbar-to-isa first"
            )
        f = op.fields()
        if isinstance(op, isa.BufferDirective):
            program.buffers.append(Buffer(f["sym_name"], f["type"], list(f["shape"])))
        elif isinstance(op, isa.ConstDirective):
            program.consts.append(Const(f["sym_name"], np.asarray(f["value"])))  # a view of the IR bytes
        elif isinstance(op, isa.XbarDirective):
            flat = f.pop("copies")
            program.xbars.append(Xbar(**f, copies=[tuple(flat[i : i + 3]) for i in range(0, len(flat), 3)]))
        elif isinstance(op, isa.InputDirective):
            program.inputs.append(Port(f["port"], f["buf"], f["scale"], f["zp"]))
        elif isinstance(op, isa.OutputDirective):
            program.outputs.append(Port(f["port"], f["buf"], f["scale"], f["zp"]))
        elif isinstance(op, isa.LayerDirective):
            layer = f["label"]
            if f["replication"] != 1:
                program.layers[layer] = Layer(f["replication"])
        else:
            program.instrs.append(Instr(op.OPCODE, f, layer))
    try:
        validate_program(program, "the compiled program")
    except ProgramError as err:  # the compiler's fault, not the user's
        raise RuntimeError(f"internal error: convert-xbar-to-isa produced an ill-formed program: {err}") from err
    return program

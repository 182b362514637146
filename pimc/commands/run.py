"""`pimc run`: execute a program file on the simulator; outputs, the summary table and the report."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from runtime.errors import RunInputError


def program_inputs(path: str, program) -> dict[str, np.ndarray]:
    """The user's arrays keyed by the program's input names (.npy for one input, .npz by name).

    Shapes and dtypes are checked by the executor against the ``.input`` ports.
    """
    from pimc.frontend.inputs import read_arrays

    names = [p.name for p in program.inputs]
    data = read_arrays(path)
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            raise RunInputError(f"{path}: the program has {len(names)} inputs ({', '.join(names)}); give a .npz file keyed by input name")
        return {names[0]: data}
    if len(names) == 1 and len(data) == 1 and names[0] not in data:
        return {names[0]: next(iter(data.values()))}
    missing = [n for n in names if n not in data]
    extra = [k for k in data if k not in names]
    if missing or extra:
        parts = ([f"missing {', '.join(map(repr, missing))}"] if missing else []) + ([f"unknown {', '.join(map(repr, extra))}"] if extra else [])
        raise RunInputError(f"{path}: {'; '.join(parts)}; the program's inputs are {', '.join(map(repr, names))}")
    return {n: data[n] for n in names}


def prefix_errors(path: str, fn, *args, **kwargs):
    """Run ``fn``; an input error gets the input file's name in front (which file is wrong)."""
    try:
        return fn(*args, **kwargs)
    except RunInputError as err:
        raise RunInputError(f"{path}: {err}") from None


def execute(program, inputs, batch_size, no_fast_path, input_path: str):
    from runtime.executor import run_program

    return prefix_errors(
        input_path, run_program, program, inputs, batch_size=batch_size, progress=sys.stderr.isatty(), fast_path=not no_fast_path
    )


def finish(outputs, report, output_path, report_path) -> None:
    """Write outputs and report; print the summary table."""
    from rich.console import Console

    from runtime.report import summary, to_json

    if output_path:
        from pimc.frontend.inputs import save_outputs

        save_outputs(output_path, outputs)
    if report_path:
        Path(report_path).write_text(to_json(report) + "\n", encoding="utf-8")
    Console(file=sys.stdout, width=max(100, Console().width)).print(summary(report))


def main(program: str, input_path: str, output_path, report_path, batch_size, no_fast_path) -> None:
    from runtime.container import load_program

    prog = load_program(program)
    inputs = program_inputs(input_path, prog)
    outputs, report = execute(prog, inputs, batch_size, no_fast_path, input_path)
    finish(outputs, report, output_path, report_path)


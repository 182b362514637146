"""``xbar-report-sparsity``: how much of each crossbar is zero, before code generation.

A pimc plugin pass (an xDSL ``ModulePass``). Run it anywhere between ``xbar-tile`` and
``convert-xbar-to-isa``. For every ``xbar.crossbar`` it records, as discardable attributes,

- ``sparsity.zero_cells``: the fraction of stored cells that are 0 (cells that draw no current and
  that bit-sparse encodings and squeeze-out aim to exploit),
- ``sparsity.zero_rows`` / ``sparsity.zero_cols``: the number of all-zero rows / columns (what a
  squeeze-out pass could drop from this crossbar without changing any result),

and it prints a per-layer summary table to stderr (or writes JSON with ``output=FILE``). The cells
are the *stored* cells: with the ``offset`` scheme a zero weight is stored as 2^(b-1), so the same
network shows far fewer zero cells than with ``differential`` or ``twos`` — which is the point of
comparing schemes with this pass.

    pimc compile model.onnx --calibration cal.npy --plugin examples/custom_pass/xbar_sparsity.py \
        -p 'convert-nn-to-xbar,xbar-bit-slice{scheme="differential"},xbar-tile,xbar-place,xbar-report-sparsity,convert-xbar-to-isa'
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import FloatAttr, IntegerAttr, ModuleOp, f64, i64
from xdsl.passes import ModulePass

from pimc.dialects import xbar


def crossbar_sparsity(image: np.ndarray) -> dict[str, float | int]:
    """Zero-cell fraction, all-zero rows and all-zero columns of one cell image (whole-array NumPy)."""
    zero = image == 0
    return {
        "cells": int(image.size),
        "zero_cells": float(zero.mean()) if image.size else 0.0,
        "zero_rows": int(zero.all(axis=1).sum()),
        "zero_cols": int(zero.all(axis=0).sum()),
    }


@dataclass(frozen=True)
class XbarReportSparsity(ModulePass):
    """Annotate every crossbar with its zero-cell statistics and summarize them per layer."""

    name = "xbar-report-sparsity"

    output: str | None = None  # write the summary as JSON here instead of printing a table
    quiet: bool = False  # only annotate the IR

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        layers = []
        for layer in op.walk():
            if not isinstance(layer, xbar.LayerOp):
                continue
            stats = []
            for x in layer.crossbars():
                s = crossbar_sparsity(x.image_array())
                x.attributes["sparsity.zero_cells"] = FloatAttr(s["zero_cells"], f64)
                x.attributes["sparsity.zero_rows"] = IntegerAttr(s["zero_rows"], i64)
                x.attributes["sparsity.zero_cols"] = IntegerAttr(s["zero_cols"], i64)
                stats.append(s)
            if not stats:
                continue
            cells = sum(s["cells"] for s in stats)
            zeros = sum(s["zero_cells"] * s["cells"] for s in stats)
            layers.append(
                {
                    "layer": layer.layer_name,
                    "crossbars": len(stats),
                    "cells": cells,
                    "zero_cells": zeros / cells if cells else 0.0,
                    "zero_rows": sum(s["zero_rows"] for s in stats),
                    "zero_cols": sum(s["zero_cols"] for s in stats),
                }
            )
        if not layers:
            print("xbar-report-sparsity: no tiled crossbars found (run it after xbar-tile)", file=sys.stderr)
        total_cells = sum(entry["cells"] for entry in layers)
        summary = {
            "layers": layers,
            "cells": total_cells,
            "zero_cells": (sum(e["zero_cells"] * e["cells"] for e in layers) / total_cells) if total_cells else 0.0,
        }
        if self.output:
            with open(self.output, "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=1)
        elif not self.quiet:
            _print_table(summary)


def _print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="crossbar sparsity (stored cells)")
    for col in ("layer", "crossbars", "cells", "zero cells", "all-zero rows", "all-zero cols"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for e in summary["layers"]:
        table.add_row(
            e["layer"], str(e["crossbars"]), str(e["cells"]), f"{e['zero_cells']:.1%}", str(e["zero_rows"]), str(e["zero_cols"])
        )
    table.add_section()
    table.add_row("total", "", str(summary["cells"]), f"{summary['zero_cells']:.1%}", "", "")
    Console(file=sys.stderr, width=120).print(table)

"""Per-layer mapping statistics of a tiled (and optionally placed) module: the ``--stats`` table.

Cells used are the cells of the rows and columns a crossbar actually uses (its image, R'×C');
cells available are the whole crossbars (R×C each). Replicated copies count in the physical
totals (``crossbars_placed``), not in the unique ``crossbars``.
"""

from __future__ import annotations

from xdsl.dialects.builtin import IntegerAttr, ModuleOp

from pimc.dialects.xbar import LayerOp
from pimc.transforms.xbar_place import CHIPS_ATTR, TRAFFIC_ATTR


def _module_int(module: ModuleOp, key: str) -> int | None:
    a = module.attributes.get(key)
    return int(a.value.data) if isinstance(a, IntegerAttr) else None


def mapping_stats(module: ModuleOp) -> list[dict]:
    """One dict per ``xbar.layer`` (program order) and a final ``name = "total"`` row.

    Keys: name, kind, k, n, crossbars, replication, crossbars_placed, cells_used, cells_available,
    utilization (used / available, 0 without crossbars); the total row adds chips and
    chip_traffic_bytes (None before xbar-place).
    """
    rows: list[dict] = []
    for layer in (o for o in module.walk() if isinstance(o, LayerOp)):
        xs = layer.crossbars()
        r = layer.int_prop("xbar_rows") or 0
        c = layer.int_prop("xbar_cols") or 0
        rep = layer.int_prop("replication") or 1
        used = sum(x.shape[0] * x.shape[1] for x in xs)
        avail = len(xs) * r * c
        rows.append(
            {
                "name": layer.layer_name,
                "kind": layer.kind.data,
                "k": layer.k,
                "n": layer.n,
                "crossbars": len(xs),
                "replication": rep,
                "crossbars_placed": len(xs) * rep,
                "cells_used": used,
                "cells_available": avail,
                "utilization": used / avail if avail else 0.0,
            }
        )
    used = sum(row["cells_used"] for row in rows)
    avail = sum(row["cells_available"] for row in rows)
    rows.append(
        {
            "name": "total",
            "kind": "",
            "k": None,
            "n": None,
            "crossbars": sum(row["crossbars"] for row in rows),
            "replication": None,
            "crossbars_placed": sum(row["crossbars_placed"] for row in rows),
            "cells_used": used,
            "cells_available": avail,
            "utilization": used / avail if avail else 0.0,
            "chips": _module_int(module, CHIPS_ATTR),
            "chip_traffic_bytes": _module_int(module, TRAFFIC_ATTR),
        }
    )
    return rows

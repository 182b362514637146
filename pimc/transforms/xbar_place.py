"""``xbar-place``: give every crossbar a place (chip, tile, IMA); optionally replicate early layers.

Policy (document of record; the cost model reads the result):

- Layers are placed in program order. A layer occupies whole IMAs (its crossbars share the IMA's
  input registers and shift-and-add unit, so crossbars of two layers never share an IMA): its
  ``replication`` copies take ⌈r·n / X⌉ consecutive IMAs (X = ``ima.crossbars``), copy after copy;
  IMAs fill tiles (``tile.imas``) and tiles fill chips (``chip.tiles``) in order, so a layer larger
  than what is left of a chip continues on the next one, and a model larger than one chip uses as
  many chips as it needs. Each ``xbar.crossbar`` records the place of its first copy (``chip``,
  ``tile``, ``ima``) and those of its other copies (``copies``): copy k of the layer's crossbar j
  (of n) sits in the layer's IMA ⌊(k·n + j) / X⌋.
- ``replicate`` (ISAAC): a layer's pipeline stage time is proportional to its iterations per
  inference (output positions) divided by its replication. Within the IMAs left free on the chips
  the unreplicated model needs, the slowest stage is replicated once more, repeatedly, until its next
  copy no longer fits (then no other copy could shorten the pipeline) or every stage runs one
  position per copy.
- Traffic between chips (``pimc.chip_traffic_bytes``, per inference): a layer's input activation
  codes are sent from the home chip of each producing layer (the chip of its last crossbar; model
  inputs arrive on chip 0) to every other chip the layer occupies; a layer spread over several chips
  also sends its partial sums (4 bytes per output element and extra chip) to its home chip. Digital
  ops are assumed to run on the home chip of the layer that produced their input.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import DenseArrayBase, ModuleOp, i64
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass

from pimc.dialects.nn import element_of, shape_of
from pimc.dialects.xbar import LayerOp, i64_attr
from pimc.errors import PipelineError
from pimc.transforms.xbar_bit_slice import config_or_default

CHIPS_ATTR = "pimc.chips"
TRAFFIC_ATTR = "pimc.chip_traffic_bytes"


def positions(layer: LayerOp) -> int:
    """Iterations (im2col rows) per inference: Ho·Wo for a conv, the non-batch leading dims for a gemm."""
    out = shape_of(layer.output)
    if layer.kind.data == "conv":
        return int(out[2] * out[3])
    p = 1
    for d in out[1:-1]:
        p *= int(d)
    return p


def _elements(value: SSAValue) -> int:
    p = 1
    for d in shape_of(value)[1:]:
        p *= int(d)
    return p


def _bytes_per_code(value: SSAValue) -> int:
    t = element_of(value)
    bits = getattr(t, "bits", None)
    return (bits.data + 7) // 8 if bits is not None else 4


def producers(value: SSAValue, memo: dict[SSAValue, frozenset[LayerOp]]) -> frozenset[LayerOp]:
    """The xbar layers whose outputs reach ``value`` through digital ops only."""
    if value in memo:
        return memo[value]
    found: set[LayerOp] = set()
    stack = [value]
    seen: set[SSAValue] = set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        owner = v.owner
        if isinstance(owner, LayerOp):
            found.add(owner)
        elif isinstance(owner, Operation):
            stack.extend(owner.operands)
    memo[value] = frozenset(found)
    return memo[value]


def choose_replication(
    n_xbars: list[int], pos: list[int], per_ima: int, free_imas: int
) -> list[int]:
    """Greedy ISAAC-style replication of the slowest pipeline stage within ``free_imas``."""
    reps = [1] * len(n_xbars)
    imas = [-(-n // per_ima) for n in n_xbars]
    heap = [(-p, i) for i, p in enumerate(pos) if n_xbars[i] > 0]
    heapq.heapify(heap)
    while heap:
        neg_t, i = heap[0]
        r = reps[i]
        if r >= pos[i]:
            break  # the slowest stage already runs one position per copy
        more = -(-(r + 1) * n_xbars[i] // per_ima) - imas[i]
        if more > free_imas:
            break
        free_imas -= more
        imas[i] += more
        reps[i] = r + 1
        heapq.heapreplace(heap, (-(pos[i] / reps[i]), i))
    return reps


@dataclass(frozen=True)
class XbarPlace(ModulePass):
    """Place crossbars on IMAs, tiles and chips (config ima.crossbars, tile.imas, chip.tiles).

    ``replicate``: replicate the slowest pipeline stages (ISAAC) within the free IMAs of the chips
    the model needs anyway.
    """

    name = "xbar-place"

    replicate: bool = False

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        cfg = config_or_default(op)
        per_ima = int(cfg.get("ima", {}).get("crossbars", 8))
        imas_per_tile = int(cfg.get("tile", {}).get("imas", 12))
        tiles_per_chip = int(cfg.get("chip", {}).get("tiles", 168))
        if min(per_ima, imas_per_tile, tiles_per_chip) < 1:
            raise PipelineError("xbar-place: ima.crossbars, tile.imas and chip.tiles must be >= 1")
        imas_per_chip = imas_per_tile * tiles_per_chip
        layers = [o for o in op.walk() if isinstance(o, LayerOp)]
        for layer in layers:
            if not layer.crossbars() and layer.columns is None:
                raise PipelineError(f"xbar-place: layer '{layer.layer_name}' is not tiled; run xbar-tile before xbar-place")
        xbars = [layer.crossbars() for layer in layers]
        n = [len(x) for x in xbars]
        base_imas = sum(-(-k // per_ima) for k in n)
        chips = max(1, -(-base_imas // imas_per_chip))
        reps = [1] * len(layers)
        if self.replicate:
            reps = choose_replication(n, [positions(ly) for ly in layers], per_ima, chips * imas_per_chip - base_imas)

        cursor = 0  # next free IMA (global index)
        layer_chips: list[set[int]] = []
        home: dict[LayerOp, int] = {}
        def place(ima: int) -> tuple[int, int, int]:
            tile = ima // imas_per_tile
            return tile // tiles_per_chip, tile % tiles_per_chip, ima % imas_per_tile

        for layer, xs, r in zip(layers, xbars, reps):
            for j, x in enumerate(xs):
                chip, tile, ima = place(cursor + j // per_ima)
                x.properties["chip"] = i64_attr(chip)
                x.properties["tile"] = i64_attr(tile)
                x.properties["ima"] = i64_attr(ima)
                copies = [v for k in range(1, r) for v in place(cursor + (k * len(xs) + j) // per_ima)]
                if copies:
                    x.properties["copies"] = DenseArrayBase.from_list(i64, copies)
                else:
                    x.properties.pop("copies", None)
            used = -(-r * len(xs) // per_ima)
            first = cursor // imas_per_chip
            last = (cursor + used - 1) // imas_per_chip if used else first
            home[layer] = last
            layer_chips.append(set(range(first, last + 1)))
            cursor += used
            layer.properties["replication"] = i64_attr(r)
        chips = max(1, -(-cursor // imas_per_chip))

        memo: dict[SSAValue, frozenset[LayerOp]] = {}
        traffic = 0
        for layer, occ in zip(layers, layer_chips):
            in_bytes = _elements(layer.input) * _bytes_per_code(layer.input)
            srcs = [home[p] for p in producers(layer.input, memo)] or [0]
            for h in srcs:
                traffic += in_bytes * len(occ - {h})
            if len(occ) > 1:
                out_elems = _elements(layer.output)
                traffic += 4 * out_elems * (len(occ) - 1)
        op.attributes[CHIPS_ATTR] = i64_attr(chips)
        op.attributes[TRAFFIC_ATTR] = i64_attr(traffic)

"""Hypothesis strategies for valid ``runtime.model.Program`` objects (shared by the container, text
and simulator tests).

``programs()`` draws programs that ``runtime.opcodes.validate_program`` accepts: unique names
(including ones that need quoting in the text form), every element type, constants small and large
(list and base64 text forms), crossbars with images within ``crossbar.cell_bits``, and instructions
of every opcode (reserved ones included) with fields drawn from ``runtime.opcodes.OPCODES``,
sometimes leaving defaults out. The instructions are structurally valid but their buffer shapes
do not agree with each other: these programs exercise the file formats, not the arithmetic.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime.model import DTYPES, Buffer, Const, Instr, Layer, Port, Program, Xbar
from runtime.opcodes import BUFFER_DTYPES, INT64_MAX, INT64_MIN, OPCODES, Field

_BARE_FIRST = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_/"
_BARE_REST = _BARE_FIRST + "0123456789.-/:@$"

#: names the text form prints bare
bare_names = st.builds(lambda a, b: a + b, st.sampled_from(_BARE_FIRST), st.text(_BARE_REST, max_size=10))
#: names that must be quoted: spaces, quotes, backslashes, control characters, non-ASCII, leading digits
odd_names = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8)
names = st.one_of(bare_names, bare_names, odd_names)

#: finite floats, with -0.0, subnormals and extremes (bit-exact round trips)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
positive_floats = st.floats(min_value=5e-324, allow_nan=False, allow_infinity=False)
int64s = st.integers(INT64_MIN, INT64_MAX)


def _int_for(f: Field) -> st.SearchStrategy[int]:
    lo = f.min if f.min is not None else INT64_MIN
    hi = f.max if f.max is not None else INT64_MAX
    return st.one_of(st.integers(max(lo, -300), min(hi, 300)), st.integers(lo, hi))


@st.composite
def configs(draw) -> dict:
    """A hardware-config-shaped dict (canonical JSON must round-trip it: nested, floats, lists)."""
    cfg = {
        "crossbar": {
            "rows": draw(st.integers(8, 256)),
            "cols": draw(st.integers(8, 256)),
            "cell_bits": draw(st.integers(1, 4)),
            "read_ns": draw(finite_floats),
        },
        "adc": {"bits": draw(st.integers(1, 16)), "mode": draw(st.sampled_from(["saturate", "drop-lsb"]))},
    }
    extra = draw(
        st.dictionaries(
            st.text(max_size=6),
            st.recursive(
                st.none() | st.booleans() | int64s | finite_floats | st.text(max_size=6),
                lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
                max_leaves=8,
            ),
            max_size=3,
        )
    )
    cfg["extra"] = extra
    return cfg


@st.composite
def programs(draw, max_instrs: int = 12, max_xbars: int = 3) -> Program:
    cfg = draw(configs())
    used: set[str] = set()

    def fresh() -> str:
        return draw(names.filter(lambda n: n not in used).map(lambda n: used.add(n) or n))

    # buffers: at least one i64 buffer (for the fields that require it) and one of each kind drawn
    buffers = [Buffer(fresh(), "i64", [-1, draw(st.integers(0, 64))])]
    for _ in range(draw(st.integers(1, 4))):
        shape = [-1] + draw(st.lists(st.integers(0, 40), max_size=4))
        buffers.append(Buffer(fresh(), draw(st.sampled_from(BUFFER_DTYPES)), shape))

    # constants of every type; some past the text form's list threshold (base64), some empty / 0-d
    consts: list[Const] = []
    for _ in range(draw(st.integers(0, 4))):
        dt = draw(st.sampled_from(sorted(DTYPES)))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=20))
        elements = finite_floats if dt == "f64" else None
        if dt == "f64" and draw(st.booleans()):
            elements = st.floats(allow_nan=False)  # infinities force the base64 form
        arr = draw(hnp.arrays(DTYPES[dt], shape, elements=elements))
        consts.append(Const(fresh(), arr))
    # the fixed-shape constants some fields require
    n = draw(st.integers(1, 6))
    colmap = Const(fresh(), draw(hnp.arrays(np.int64, (draw(st.integers(0, 6)), 5))))
    vec = Const(fresh(), draw(hnp.arrays(np.int64, (n,))))
    table = Const(fresh(), draw(hnp.arrays(draw(st.sampled_from([np.int8, np.uint8, np.int16])), (1, draw(st.integers(1, 300))))))
    consts += [colmap, vec, table]

    # crossbars
    xbars: list[Xbar] = []
    cell_max = 2 ** cfg["crossbar"]["cell_bits"] - 1
    for i in range(draw(st.integers(0, max_xbars))):
        rows = draw(st.integers(1, min(cfg["crossbar"]["rows"], 40)))
        cols = draw(st.integers(1, min(cfg["crossbar"]["cols"], 40)))
        image = Const(fresh(), draw(hnp.arrays(np.uint8, (rows, cols), elements=st.integers(0, cell_max))))
        rt = Const(fresh(), draw(hnp.arrays(np.int32, (rows,), elements=st.integers(-1, 1000))))
        consts += [image, rt]
        xbars.append(
            Xbar(
                i, image.name, rows, cols, rt.name, draw(st.integers(1, 16)), draw(st.sampled_from(["saturate", "drop-lsb"])),
                draw(st.integers(0, 3)), draw(st.integers(0, 200)), draw(st.integers(0, 11)), draw(st.integers(0, 1)),
            )
        )  # fmt: skip
    consts = draw(st.permutations(consts))

    ports_in = [Port(fresh(), draw(st.sampled_from(buffers)).name, draw(positive_floats), 0) for _ in range(draw(st.integers(0, 2)))]
    ports_out = [Port(fresh(), draw(st.sampled_from(buffers)).name, draw(positive_floats), 0) for _ in range(draw(st.integers(0, 2)))]
    bydt = {b.name: b.dtype for b in buffers}
    for p in (*ports_in, *ports_out):
        info = np.iinfo(DTYPES[bydt[p.buf]])
        p.zp = draw(st.integers(max(info.min, -(2**40)), min(info.max, 2**40)))

    by_kind = {
        "buf": [b.name for b in buffers],
        "i64buf": [b.name for b in buffers if b.dtype == "i64"],
        "const": [c.name for c in consts],
    }
    layers = draw(st.lists(st.one_of(st.just(""), names), min_size=1, max_size=3))
    opnames = [o for o in sorted(OPCODES) if o != "mvm" or xbars]
    instrs = []
    for _ in range(draw(st.integers(0, max_instrs))):
        op = OPCODES[draw(st.sampled_from(opnames))]
        fields = {}
        if op.reserved:
            fields = draw(
                st.dictionaries(
                    st.sampled_from(["xbar", "src", "dst", "theta", "mode", "bounds", "groups", "p"]),
                    st.one_of(int64s, finite_floats, names, st.lists(int64s, max_size=3), st.lists(names, min_size=1, max_size=3)),
                    max_size=4,
                )
            )
        else:
            for f in op.fields:
                if not f.required and draw(st.booleans()):
                    continue  # leave the default out
                fields[f.name] = draw(_value(f, by_kind, len(xbars), {"colmap": colmap, "vec": vec, "table": table}))
            if "lo" in fields and fields["lo"] > fields["hi"]:
                fields["lo"], fields["hi"] = fields["hi"], fields["lo"]
            if op.name == "requant" and fields["layout"] == "nchw":
                fields["out_hw"] = draw(st.lists(st.integers(1, 64), min_size=2, max_size=2))
        instrs.append(Instr(op.name, fields, draw(st.sampled_from(layers))))
    return Program(cfg, ports_in, ports_out, buffers, consts, xbars, instrs, layers=draw(_replication(instrs, xbars)))


@st.composite
def _replication(draw, instrs: list[Instr], xbars: list[Xbar]) -> dict[str, Layer]:
    """Format 1.1 layer replication: a factor per named layer (1 when layers that share a crossbar
    drew different ones), and replication - 1 copies, at random places, of every crossbar its
    mvms use."""
    names = sorted({i.layer for i in instrs if i.layer})
    rep = {n: draw(st.integers(1, 3)) for n in names}
    users: dict[int, set[str]] = {}
    for i in instrs:
        if i.opcode == "mvm":
            users.setdefault(int(i.fields["xbar"]), set()).add(i.layer)
    changed = True
    while changed:
        changed = False
        for layers in users.values():
            if len({rep.get(n, 1) for n in layers}) > 1:
                for n in layers:
                    changed |= rep.get(n, 1) != 1
                    if n in rep:
                        rep[n] = 1
    place = st.tuples(st.integers(0, 3), st.integers(0, 2**32 - 1), st.integers(0, 15))
    for xid, layers in users.items():
        r = rep.get(next(iter(layers)), 1)
        xbars[xid].copies = draw(st.lists(place, min_size=r - 1, max_size=r - 1))
    return {n: Layer(r) for n, r in rep.items() if r != 1 or draw(st.booleans())}


def _value(f: Field, by_kind: dict, n_xbars: int, fixed: dict) -> st.SearchStrategy:
    if f.kind == "buf":
        return st.sampled_from(by_kind["i64buf"] if f.dtypes == ("i64",) else by_kind["buf"])
    if f.kind == "bufs":
        return st.lists(st.sampled_from(by_kind["buf"]), min_size=max(1, f.min_length), max_size=3)
    if f.kind == "src":
        return st.sampled_from(by_kind["buf"] + [fixed["vec"].name])
    if f.kind == "const":
        if f.last_dim == 5:
            return st.just(fixed["colmap"].name)
        if f.ndim == 1:
            return st.just(fixed["vec"].name)
        return st.just(fixed["table"].name)
    if f.kind == "xbar":
        return st.integers(0, n_xbars - 1)
    if f.kind == "int":
        return _int_for(f)
    if f.kind == "f64":
        return positive_floats if f.positive else finite_floats
    if f.kind == "ints":
        size = {"min_size": f.length, "max_size": f.length} if f.length is not None else {"max_size": 5}
        return st.lists(_int_for(f), **size)
    if f.kind == "enum":
        return st.sampled_from(f.choices)
    raise AssertionError(f.kind)

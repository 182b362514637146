"""Pass registry, plugins and pipelines (xDSL pass-pipeline syntax).

``PASSES`` maps every pimc pass name to a factory returning its class (imported lazily, so that
``pimc --help`` and ``--print-pipeline`` stay fast). User passes join from a plugin file
(``--plugin FILE.py``: every ``ModulePass`` subclass defined in the file) or from installed packages
through the entry-point group ``pimc.passes`` (an entry point names a pass class or a module).

The hardware configuration reaches passes as the module attribute ``pimc.hw``
(``pimc.hw.attach_config``); ``run_pipeline`` attaches ``cfg`` before running, so a pipeline runs
the same from ``pimc compile`` and ``pimc opt``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass, PassPipeline
from xdsl.utils.arg_spec import parse_pipeline
from xdsl.utils.exceptions import ArgSpecParseError

from pimc.errors import PipelineError

PassFactory = Callable[[], type[ModulePass]]

#: pimc's own passes: name -> module defining it (the class is the ModulePass with that name)
_BUILTIN_PASS_MODULES: dict[str, str] = {
    "nn-quantize": "pimc.transforms.nn_quantize",
    "convert-nn-to-xbar": "pimc.transforms.convert_nn_to_xbar",
    "xbar-bit-slice": "pimc.transforms.xbar_bit_slice",
    "xbar-tile": "pimc.transforms.xbar_tile",
    "xbar-place": "pimc.transforms.xbar_place",
    "convert-xbar-to-isa": "pimc.transforms.convert_xbar_to_isa",
}

#: the mapping flow after quantization, in order (``default_pipeline``)
DEFAULT_PASSES: tuple[str, ...] = (
    "convert-nn-to-xbar",
    "xbar-bit-slice",
    "xbar-tile",
    "xbar-place",
    "convert-xbar-to-isa",
)

#: the pass that turns the mapping level into instructions (``--emit xbar`` stops before it)
CODEGEN_PASS = "convert-xbar-to-isa"

ENTRY_POINT_GROUP = "pimc.passes"


def _pass_in_module(module_name: str, pass_name: str) -> type[ModulePass]:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise PipelineError(f"pass '{pass_name}' is registered but {module_name} is not installed") from None
        raise
    for cls in _passes_defined_in(module, own_only=False):
        if cls.name == pass_name:
            return cls
    raise PipelineError(f"pass '{pass_name}' is registered but {module_name} defines no pass of that name")


def _lazy(module_name: str, pass_name: str) -> PassFactory:
    return lambda: _pass_in_module(module_name, pass_name)


def _passes_defined_in(module: Any, own_only: bool = True) -> list[type[ModulePass]]:
    """The concrete ModulePass subclasses with a ``name`` defined in ``module``."""
    found = []
    for obj in vars(module).values():
        if (
            inspect.isclass(obj)
            and issubclass(obj, ModulePass)
            and obj is not ModulePass
            and not inspect.isabstract(obj)
            and isinstance(getattr(obj, "name", None), str)
            and (not own_only or obj.__module__ == module.__name__)
        ):
            found.append(obj)
    return found


#: name -> factory of the pass class, for pimc's own passes
PASSES: dict[str, PassFactory] = {name: _lazy(mod, name) for name, mod in _BUILTIN_PASS_MODULES.items()}


def load_plugin(path: str | Path) -> dict[str, type[ModulePass]]:
    """Imports a plugin file and returns the passes it defines (name -> class)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"plugin file {path} does not exist")
    mod_name = f"pimc_plugin_{path.stem}_{abs(hash(str(path.resolve()))):x}"
    if mod_name in sys.modules:
        module = sys.modules[mod_name]
    else:
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise PipelineError(f"plugin {path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # a user's plugin failing to import is the user's to fix
            del sys.modules[mod_name]
            raise PipelineError(f"plugin {path} failed to import: {type(err).__name__}: {err}") from err
    passes = {cls.name: cls for cls in _passes_defined_in(module)}
    if not passes:
        raise PipelineError(
            f"plugin {path} defines no pass: a pass is a subclass of xdsl.passes.ModulePass "
            "with a `name` (a frozen dataclass)"
        )
    return passes


def entry_point_passes() -> dict[str, PassFactory]:
    """Passes that installed packages register in the ``pimc.passes`` entry-point group."""
    found: dict[str, PassFactory] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):

        def load(ep=ep) -> list[type[ModulePass]]:
            obj = ep.load()
            if inspect.isclass(obj) and issubclass(obj, ModulePass):
                return [obj]
            if inspect.ismodule(obj):
                return _passes_defined_in(obj)
            raise PipelineError(f"entry point {ep.name} = {ep.value} is neither a ModulePass nor a module")

        def factory(ep=ep, load=load) -> type[ModulePass]:
            classes = load()
            named = [c for c in classes if c.name == ep.name]
            if named or len(classes) == 1:
                return (named or classes)[0]
            raise PipelineError(f"entry point {ep.name} = {ep.value} defines no pass named '{ep.name}'")

        found[ep.name] = factory
    return found


def available_passes(plugins: Sequence[str | Path] = ()) -> dict[str, PassFactory]:
    """Every pass a pipeline may name: pimc's, installed entry points', then plugin files'."""
    passes = dict(PASSES)
    passes.update(entry_point_passes())
    for path in plugins:
        for name, cls in load_plugin(path).items():
            passes[name] = lambda cls=cls: cls
    return passes


def _options_of(cls: type[ModulePass]) -> list[str]:
    return [f.name.replace("_", "-") for f in dataclasses.fields(cls) if f.init and f.name != "name"]


def parse(pipeline: str, passes: dict[str, PassFactory]) -> tuple[ModulePass, ...]:
    """The pass instances of ``pipeline``; a syntax error, unknown pass or bad option is a
    ``PipelineError`` naming it and listing what is allowed."""
    try:
        specs = list(parse_pipeline(pipeline))
    except ArgSpecParseError as err:
        raise PipelineError(f"bad pass pipeline {pipeline!r}: {err}") from None
    unknown = [s.name for s in specs if s.name not in passes]
    if unknown:
        raise PipelineError(
            f"unknown pass{'es' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)} in the "
            f"pipeline; available passes: {', '.join(sorted(passes))} (add your own with --plugin FILE.py)"
        )
    result = []
    for spec in specs:
        cls = passes[spec.name]()
        try:
            result.append(cls.from_pass_spec(spec))
        except (ValueError, TypeError) as err:
            opts = _options_of(cls)
            raise PipelineError(
                f"pass '{spec.name}': {err}; its options are: {', '.join(opts) if opts else '(none)'}"
            ) from None
    return tuple(result)


def default_pipeline(cfg: dict | None = None) -> str:
    """The default mapping flow (after quantization) in xDSL pass-pipeline syntax.

    Options are left to their defaults, which the passes take from the hardware configuration on
    the module (``pimc.hw``), so the same text serves every config; ``cfg`` is accepted so that a
    future config-dependent flow (e.g. replication) can spell out its choices.
    """
    del cfg
    return ",".join(DEFAULT_PASSES)


def split_at_codegen(pipeline: str, passes: dict[str, PassFactory]) -> tuple[str, str]:
    """(passes before convert-xbar-to-isa, the rest), as pipeline texts: ``--emit xbar`` runs the first."""
    try:
        specs = list(parse_pipeline(pipeline))
    except ArgSpecParseError as err:
        raise PipelineError(f"bad pass pipeline {pipeline!r}: {err}") from None
    names = [s.name for s in specs]
    cut = names.index(CODEGEN_PASS) if CODEGEN_PASS in names else len(specs)
    return ",".join(str(s) for s in specs[:cut]), ",".join(str(s) for s in specs[cut:])


def make_context(extra_dialects: Iterable[Any] = ()) -> Context:
    """A context with every dialect pimc's IR uses (builtin, func, arith, nn, xbar, isa)."""
    from xdsl.dialects.arith import Arith
    from xdsl.dialects.builtin import Builtin
    from xdsl.dialects.func import Func

    from pimc.dialects.isa import ISA
    from pimc.dialects.nn import NN
    from pimc.dialects.xbar import XBAR

    ctx = Context()
    for d in (Builtin, Func, Arith, NN, ISA, *extra_dialects, XBAR):
        ctx.load_dialect(d)
    return ctx


def run_pipeline(
    module: ModuleOp,
    pipeline: str | Sequence[ModulePass],
    cfg: dict | None = None,
    print_ir_after_all: bool = False,
    plugins: Sequence[str | Path] = (),
    ctx: Context | None = None,
    out=None,
) -> ModuleOp:
    """Runs the passes on ``module`` in place (verifying after each) and returns it.

    ``cfg`` (a resolved hardware config) is attached as ``pimc.hw`` first; without it the module
    must already carry one if a pass needs it. ``print_ir_after_all`` prints the IR after each pass
    to ``out`` (stdout by default).
    """
    from xdsl.printer import Printer
    from xdsl.utils.exceptions import DiagnosticException, VerifyException

    passes = parse(pipeline, available_passes(plugins)) if isinstance(pipeline, str) else tuple(pipeline)
    if cfg is not None:
        from pimc.hw import attach_config

        attach_config(module, cfg)
    ctx = ctx or make_context()
    stream = out or sys.stdout

    def callback(prev: ModulePass | None, mod: ModuleOp, nxt: ModulePass | None) -> None:
        if prev is None:
            return
        try:
            mod.verify()
        except (VerifyException, DiagnosticException) as err:
            raise PipelineError(f"the IR does not verify after pass '{prev.name}': {err}") from err
        if print_ir_after_all:
            print(f"// -----// IR Dump After {prev.name} //----- //", file=stream)
            Printer(stream=stream).print_op(mod)
            print(file=stream)

    PassPipeline(passes, callback).apply(ctx, module)
    return module


__all__ = [
    "PASSES",
    "DEFAULT_PASSES",
    "available_passes",
    "load_plugin",
    "entry_point_passes",
    "parse",
    "default_pipeline",
    "run_pipeline",
    "make_context",
    "split_at_codegen",
]

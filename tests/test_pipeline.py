"""The pass registry, plugin loading (files and entry points), pipeline parsing and errors."""

from __future__ import annotations

import io
import sys
import textwrap

import pytest
from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.passes import ModulePass

from pimc import pipeline as pl
from pimc.errors import PipelineError
from pimc.hw import load_config

PLUGIN = textwrap.dedent(
    '''
    from dataclasses import dataclass
    from xdsl.dialects.builtin import StringAttr
    from xdsl.passes import ModulePass

    @dataclass(frozen=True)
    class TagModule(ModulePass):
        """Sets a module attribute (to see that it ran, with its option)."""
        name = "test-tag-module"
        value: str = "default"
        times: int = 1

        def apply(self, ctx, op):
            op.attributes["test.tag"] = StringAttr(self.value * self.times)

    class NotAPass:
        name = "not-a-pass"
    '''
)


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "tag_plugin.py"
    path.write_text(PLUGIN)
    return path


def test_every_registered_pass_resolves_to_a_module_pass_of_that_name():
    assert set(pl.DEFAULT_PASSES) | {"nn-quantize"} <= set(pl.PASSES)
    for name, factory in pl.PASSES.items():
        cls = factory()
        assert issubclass(cls, ModulePass) and cls.name == name


def test_default_pipeline_parses_back_into_the_mapping_flow():
    text = pl.default_pipeline(load_config("isaac8"))
    passes = pl.parse(text, pl.available_passes())
    assert [p.name for p in passes] == list(pl.DEFAULT_PASSES)
    assert passes[-1].name == pl.CODEGEN_PASS


def test_unknown_pass_names_it_and_lists_the_available_ones():
    with pytest.raises(PipelineError) as err:
        pl.parse("convert-nn-to-xbar,no-such-pass", pl.available_passes())
    msg = str(err.value)
    assert "'no-such-pass'" in msg and "xbar-tile" in msg and "--plugin" in msg


def test_bad_option_names_the_pass_and_its_options(plugin):
    with pytest.raises(PipelineError) as err:
        pl.parse("test-tag-module{colour=1}", pl.available_passes([plugin]))
    msg = str(err.value)
    assert "test-tag-module" in msg and "colour" in msg and "value, times" in msg


def test_bad_option_type_is_a_pipeline_error(plugin):
    with pytest.raises(PipelineError, match="test-tag-module"):
        pl.parse('test-tag-module{times="many"}', pl.available_passes([plugin]))


def test_syntax_error_is_a_pipeline_error():
    with pytest.raises(PipelineError, match="bad pass pipeline"):
        pl.parse("xbar-tile{", pl.available_passes())


def test_plugin_file_passes_load_and_run_with_options(plugin):
    passes = pl.load_plugin(plugin)
    assert list(passes) == ["test-tag-module"]  # NotAPass is ignored
    module = ModuleOp([])
    pl.run_pipeline(module, 'test-tag-module{value="ab" times=2}', plugins=[plugin])
    assert module.attributes["test.tag"] == StringAttr("abab")


def test_plugin_without_a_pass_or_missing_or_broken_is_an_error(tmp_path):
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(PipelineError, match="defines no pass"):
        pl.load_plugin(empty)
    with pytest.raises(PipelineError, match="does not exist"):
        pl.load_plugin(tmp_path / "missing.py")
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_xyz\n")
    with pytest.raises(PipelineError, match="failed to import"):
        pl.load_plugin(broken)


def test_entry_point_group_registers_passes(tmp_path, monkeypatch):
    """A real installed distribution (a dist-info on sys.path) registering a pass in pimc.passes."""
    pkg = tmp_path / "ep_pkg_pimc_test.py"
    pkg.write_text(PLUGIN.replace("test-tag-module", "test-ep-pass"))
    dist = tmp_path / "ep_pkg_pimc_test-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-pkg-pimc-test\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pimc.passes]\ntest-ep-pass = ep_pkg_pimc_test:TagModule\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    passes = pl.available_passes()
    assert "test-ep-pass" in passes
    module = ModuleOp([])
    pl.run_pipeline(module, 'test-ep-pass{value="ep"}')
    assert module.attributes["test.tag"] == StringAttr("ep")
    sys.modules.pop("ep_pkg_pimc_test", None)


def test_print_ir_after_all_dumps_after_each_pass(plugin):
    out = io.StringIO()
    module = ModuleOp([])
    pl.run_pipeline(module, 'test-tag-module{value="x"},test-tag-module{value="y"}', plugins=[plugin], print_ir_after_all=True, out=out)
    text = out.getvalue()
    assert text.count("IR Dump After test-tag-module") == 2
    assert 'test.tag = "x"' in text and 'test.tag = "y"' in text


def test_run_pipeline_attaches_the_config(plugin):
    from pimc.hw import config_of

    module = ModuleOp([])
    cfg = load_config("isaac16")
    pl.run_pipeline(module, "", cfg)
    assert config_of(module)["precision"]["weight_bits"] == cfg["precision"]["weight_bits"] == 16


def test_split_at_codegen_keeps_options():
    before, after = pl.split_at_codegen('xbar-bit-slice{cell-bits=1 scheme="twos"},xbar-tile,convert-xbar-to-isa,x', {})
    assert before == 'xbar-bit-slice{cell-bits=1 scheme="twos"},xbar-tile'
    assert after == "convert-xbar-to-isa,x"
    assert pl.split_at_codegen("xbar-tile", {}) == ("xbar-tile", "")

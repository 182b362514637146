"""pimc: a compiler for ReRAM crossbar CNN accelerators (ONNX in, crossbar instruction stream out)."""

__version__ = "0.1.0"

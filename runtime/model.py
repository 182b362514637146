"""In-memory form of a pimc program (``spec/isa.md`` §2), shared by the container reader/writer
(``runtime.container``), the assembler (``runtime.asm``) and the executor (``runtime.executor``).

A field value is one of: ``int``, ``float``, ``str``, or a list of ``int`` / ``str``. Names of
buffers and constants are plain strings. Arrays are NumPy arrays with one of ``DTYPES``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

FORMAT_VERSION = (1, 1)

#: element types of buffers and constants, by their name in the program
DTYPES: dict[str, np.dtype] = {
    "u8": np.dtype(np.uint8),
    "u16": np.dtype(np.uint16),
    "i8": np.dtype(np.int8),
    "i16": np.dtype(np.int16),
    "i32": np.dtype(np.int32),
    "i64": np.dtype(np.int64),
    "f64": np.dtype(np.float64),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

Value = Union[int, float, str, list[int], list[str]]


@dataclass
class Port:
    """A model input or output bound to a buffer, with its host-side (de)quantization."""

    name: str
    buf: str
    scale: float
    zp: int


@dataclass
class Buffer:
    name: str
    dtype: str  # a key of DTYPES
    shape: list[int]  # shape[0] == -1: the batch, bound at run time


@dataclass
class Const:
    name: str
    array: np.ndarray  # dtype one of DTYPES


@dataclass
class Xbar:
    """A crossbar: its cell image, which input drives each physical row, its ADC and its place."""

    id: int
    image: str  # name of a u8 constant [rows, cols]
    rows: int
    cols: int
    row_table: str  # name of an i32 constant [rows]; -1 = unused row
    adc_bits: int
    adc_mode: str  # "saturate" | "drop-lsb"
    chip: int = 0
    tile: int = 0
    ima: int = 0
    lossless: int = 0
    #: places (chip, tile, ima) of the crossbar's extra copies when its layer is replicated
    #: (``Layer.replication`` - 1 of them; format 1.1, ``spec/isa.md`` §2)
    copies: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class Layer:
    """What a program says about a report layer beyond its instructions (format 1.1)."""

    #: copies of each of the layer's crossbars on the machine, each serving 1/replication of the
    #: layer's iterations (``spec/isa.md`` §2, §7)
    replication: int = 1


@dataclass
class Instr:
    opcode: str
    fields: dict[str, Value]
    layer: str = ""  # the report layer (spec/isa.md: `.layer NAME`)


@dataclass
class Program:
    config: dict  # the resolved hardware configuration (spec/hardware-config.md)
    inputs: list[Port] = field(default_factory=list)
    outputs: list[Port] = field(default_factory=list)
    buffers: list[Buffer] = field(default_factory=list)
    consts: list[Const] = field(default_factory=list)
    xbars: list[Xbar] = field(default_factory=list)
    instrs: list[Instr] = field(default_factory=list)
    #: layer name -> its declaration; a layer without an entry has the defaults (replication 1)
    layers: dict[str, Layer] = field(default_factory=dict)
    version: tuple[int, int] = FORMAT_VERSION

    def replication(self, layer: str) -> int:
        info = self.layers.get(layer)
        return 1 if info is None else int(info.replication)

    def const(self, name: str) -> np.ndarray:
        return self._consts()[name].array

    def _consts(self) -> dict[str, Const]:
        cache = self.__dict__.get("_const_index")
        if cache is None or len(cache) != len(self.consts):
            cache = {c.name: c for c in self.consts}
            self.__dict__["_const_index"] = cache
        return cache

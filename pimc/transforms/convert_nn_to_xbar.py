"""``convert-nn-to-xbar``: each quantized ``nn.conv2d`` / ``nn.gemm`` becomes an ``xbar.layer``.

The layer's weight becomes the im2col matrix W [K, N] (block-diagonal for grouped convs, so one
matrix describes the whole layer and tiling can pack groups); the im2col geometry and the output
stage (effective bias, requantization, clamp, zero points) are copied so that code generation needs
nothing else. Digital ops are left alone. See ``pimc.dialects.xbar`` for the contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import DenseIntOrFPElementsAttr, ModuleOp, StringAttr
from xdsl.ir import Operation
from xdsl.passes import ModulePass

from pimc.dialects import nn
from pimc.dialects.nn import QuantType, dense_from_numpy, element_of, i64_array, ints, numpy_from_dense
from pimc.dialects.xbar import LayerOp, i64_attr
from pimc.errors import ModelError, PipelineError


def hw_config(module: ModuleOp) -> dict | None:
    """The module's hardware configuration (``pimc.hw``), or None when it carries none."""
    if "pimc.hw" not in module.attributes:
        return None
    from pimc.hw import config_of

    return config_of(module)


def cfg_get(cfg: dict | None, section: str, key: str):
    if cfg is None:
        return None
    return cfg.get(section, {}).get(key)


def _layer_name(op: Operation, fallback: str) -> str:
    a = op.attributes.get("pimc.name")
    return a.data if isinstance(a, StringAttr) else fallback


def weight_matrix(op: nn.Conv2dOp | nn.GemmOp) -> np.ndarray:
    """The im2col weight matrix [K, N] of a layer (block-diagonal over groups), in the weight's dtype."""
    w = numpy_from_dense(op.weight)
    if isinstance(op, nn.GemmOp):
        return w
    cout, cg, kh, kw = w.shape
    g = op.group.value.data
    ng, kg = cout // g, cg * kh * kw
    blocks = w.reshape(g, ng, kg).transpose(0, 2, 1)  # [G, Kg, Ng]
    if g == 1:
        return np.ascontiguousarray(blocks[0])
    full = np.zeros((g, kg, g, ng), dtype=w.dtype)
    idx = np.arange(g)
    full[idx, :, idx, :] = blocks
    return full.reshape(g * kg, g * ng)


def convert_layer(op: nn.Conv2dOp | nn.GemmOp, weight_bits: int, name: str) -> LayerOp:
    """The ``xbar.layer`` equivalent of one quantized matrix layer."""
    in_t, out_t = element_of(op.input), element_of(op.output)
    if not isinstance(in_t, QuantType) or not isinstance(out_t, QuantType):
        raise PipelineError(
            f"convert-nn-to-xbar: layer '{name}' is still float; run nn-quantize first "
            "(pimc compile does; with pimc opt put nn-quantize before convert-nn-to-xbar)"
        )
    if in_t.signed.data:
        raise ModelError(
            f"layer '{name}': its input codes are signed ({in_t}); crossbars take unsigned activation codes "
            "with a zero point (quantize activations as unsigned)"
        )
    w = weight_matrix(op)
    lim = 1 << (weight_bits - 1)
    if not np.issubdtype(w.dtype, np.signedinteger):
        raise ModelError(f"layer '{name}': integer weights must be signed, got {w.dtype}")
    if w.size and (int(w.min()) < -lim or int(w.max()) > lim - 1):
        raise ModelError(
            f"layer '{name}': weights span [{int(w.min())}, {int(w.max())}], which does not fit {weight_bits}-bit "
            f"signed weights; give the weight-bits the model was quantized with (4..16)"
        )
    wdtype = np.int8 if weight_bits <= 8 else np.int16
    if isinstance(op, nn.Conv2dOp):
        _, _, kh, kw = op.weight.get_shape()
        geometry = {
            "kind": StringAttr("conv"),
            "kernel": i64_array([kh, kw]),
            "strides": i64_array(ints(op.strides)),
            "pads": i64_array(ints(op.pads)),
            "dilations": i64_array(ints(op.dilations)),
            "groups": i64_attr(op.group.value.data),
        }
    else:
        geometry = {
            "kind": StringAttr("gemm"),
            "kernel": i64_array([1, 1]),
            "strides": i64_array([1, 1]),
            "pads": i64_array([0, 0, 0, 0]),
            "dilations": i64_array([1, 1]),
            "groups": i64_attr(1),
        }
    n = w.shape[1]
    if op.bias is not None:
        bias = numpy_from_dense(op.bias).astype(np.int64)
    else:  # integer nn's bias is already the effective one (spec/quantization.md §4): absent = 0
        bias = np.zeros(n, dtype=np.int64)

    def i64_dense(a: DenseIntOrFPElementsAttr) -> DenseIntOrFPElementsAttr:
        return dense_from_numpy(numpy_from_dense(a).astype(np.int64))

    props = {
        **geometry,
        "weight": dense_from_numpy(w.astype(wdtype, copy=False)),
        "bias": dense_from_numpy(bias.reshape(n)),
        "requant_multiplier": i64_dense(op.requant_multiplier),
        "requant_shift": i64_dense(op.requant_shift),
        "clamp": i64_array(ints(op.clamp)),
        "zp_in": i64_attr(in_t.zero_point.data),
        "zp_out": i64_attr(out_t.zero_point.data),
        "act_bits": i64_attr(in_t.bits.data),
        "out_bits": i64_attr(out_t.bits.data),
        "weight_bits": i64_attr(weight_bits),
        "activation": StringAttr(op.activation.data if op.activation is not None else "none"),
    }
    if op.weight_scale is not None:
        props["weight_scale"] = op.weight_scale
    return LayerOp(op.input, op.output.type, props, name)


@dataclass(frozen=True)
class ConvertNnToXbar(ModulePass):
    """Quantized ``nn.conv2d`` / ``nn.gemm`` -> ``xbar.layer`` (im2col weight matrix + output stage).

    ``weight-bits``: the signed width of the integer weights (default: the config's
    ``precision.weight_bits``, else 8); every weight must fit it.
    """

    name = "convert-nn-to-xbar"

    weight_bits: int | None = None

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        cfg = hw_config(op)
        wb = self.weight_bits or cfg_get(cfg, "precision", "weight_bits") or 8
        if not 2 <= int(wb) <= 16:
            raise PipelineError(f"convert-nn-to-xbar: weight-bits must be in 2..16, got {wb}")
        layers = [o for o in op.walk() if isinstance(o, (nn.Conv2dOp, nn.GemmOp))]
        used: set[str] = set()
        for i, layer in enumerate(layers):
            base = _layer_name(layer, f"{'conv' if isinstance(layer, nn.Conv2dOp) else 'gemm'}{i}")
            name, k = base, 1
            while name in used:
                name, k = f"{base}_{k}", k + 1
            used.add(name)
            new = convert_layer(layer, int(wb), name)
            for key, val in layer.attributes.items():
                if key != "pimc.name" and key.startswith("pimc."):
                    new.attributes[key] = val
            parent = layer.parent_block()
            assert parent is not None
            parent.insert_op_before(new, layer)
            layer.output.replace_all_uses_with(new.output)
            parent.erase_op(layer)

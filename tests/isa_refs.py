"""References written from spec/isa.md, shared by the simulator's tests."""

from __future__ import annotations

import numpy as np


def ref_im2col(src, kernel, stride, pad, dilation, pad_value):
    """spec/isa.md §3.1 through the padded [B, Ho, Wo, C, kh, kw] view, copied as is."""
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = kernel, stride, pad, dilation
    padded = np.pad(src, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=pad_value)
    B, C, H, W = src.shape
    Ho, Wo = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1, (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    out = np.empty((B, Ho, Wo, C, kh, kw), dtype=src.dtype)
    for u in range(kh):
        for v in range(kw):
            win = padded[:, :, u * dh : u * dh + sh * (Ho - 1) + 1 : sh, v * dw : v * dw + sw * (Wo - 1) + 1 : sw]
            out[:, :, :, :, u, v] = win.transpose(0, 2, 3, 1)
    return out.reshape(B * Ho * Wo, C * kh * kw)


def ref_mvm(src: np.ndarray, image: np.ndarray, table: np.ndarray, bits: int, dac: int, cell_bits: int,
            adc_bits: int, mode: str, order: str) -> tuple[np.ndarray, int]:
    """spec/isa.md §3.2, one iteration set and one step at a time, int64."""
    R, C = image.shape
    P = src.shape[0]
    T = -(-bits // dac)
    mask = (1 << dac) - 1
    x = np.zeros((P, R), dtype=np.int64)
    for r in range(R):
        if table[r] >= 0:
            x[:, r] = src[:, table[r]]
    s_max = R * ((1 << dac) - 1) * ((1 << cell_bits) - 1)
    D = max(0, s_max.bit_length() - adc_bits)
    out = np.zeros((P, C), dtype=np.int64)
    ones = 0
    steps = range(T) if order == "lsb" else range(T - 1, -1, -1)
    for k in steps:
        d = (x >> (k * dac)) & mask
        ones += int(np.count_nonzero(d[:, table >= 0]))
        s = d @ image.astype(np.int64)
        if mode == "saturate":
            a = np.minimum(s, (1 << adc_bits) - 1)
        else:
            a = (s >> D) << D
        out += a << (k * dac)
    return out, ones

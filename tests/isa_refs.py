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

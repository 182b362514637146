"""What a fused conv layer would cost as one compiled call: a measurement for the decision on the
fast path's design (not used by the simulator).

    python benchmarks/one_call_layer.py

For the shipped example's two conv layers (and a MobileNetV2-sized one), it times the simulator's
fused layer as it runs today — ``kernels_conv.run_conv`` and ``ones_per_column``, ~15 NumPy, BLAS
and numba calls — against one numba call that builds the layer's im2col matrix with its DAC-digit
popcounts, multiplies it by the layer matrix through the BLAS that NumPy ships (its
``scipy_cblas_sgemm64_``, called through ctypes) and requantizes, and checks that both give the
same output and counts. Only 3x3, stride 1, pad 1 layers with 1-bit DAC digits and a float32
product: enough to measure, not a general kernel.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from numba import njit  # noqa: E402

from runtime import kernels as K  # noqa: E402
from runtime import kernels_conv as KC  # noqa: E402


def _sgemm():
    """NumPy's bundled OpenBLAS's sgemm (64-bit integers), or None (another BLAS, another platform)."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "libscipy_openblas64_*.so"))
    if not libs:
        return None
    f = ctypes.CDLL(libs[0]).scipy_cblas_sgemm64_
    f.restype = None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64, ctypes.c_float, ptr, i64, ptr, i64,
                  ctypes.c_float, ptr, i64]
    return f


SGEMM = _sgemm()


@njit(nogil=True, error_model="numpy")
def one_call(src, wt, bias, scale, zp, lo, hi, xt, acc, out, ones):
    """src [C, H, W] u8 -> out [N, H·W]: the 3x3 im2col matrix (pad value 0) with each column's
    popcounts, the sgemm, the binary64 requantization (``jit._requant_line_f64``)."""
    C, H, W = src.shape
    N, K = wt.shape
    P = H * W
    for c in range(C):
        for i in range(3):
            for j in range(3):
                k = (c * 3 + i) * 3 + j
                row = xt[k]
                cnt = 0
                for ho in range(H):
                    r = ho + i - 1
                    for wo in range(W):
                        cc = wo + j - 1
                        v = np.int64(src[c, r, cc]) if (0 <= r < H and 0 <= cc < W) else np.int64(0)
                        row[ho * W + wo] = v
                        v = v - ((v >> 1) & 0x55)
                        v = (v & 0x33) + ((v >> 2) & 0x33)
                        cnt += (v + (v >> 4)) & 0x0F
                ones[k] = cnt
    SGEMM(101, 111, 111, N, P, K, 1.0, wt.ctypes.data, K, xt.ctypes.data, P, 0.0, acc.ctypes.data, P)
    for n in range(N):
        for p in range(P):
            y = np.rint((np.float64(acc[n, p]) + bias[n]) * scale[n]) + zp
            out[n, p] = min(max(y, lo), hi)


def _time(fn, seconds: float) -> float:
    """The fastest of the runs of ``fn`` in ``seconds`` (after one untimed)."""
    fn()
    t0, best = time.perf_counter(), float("inf")
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    import argparse  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="time each side of each layer this long (its fastest run counts)")
    opts = ap.parse_args(argv)
    if SGEMM is None:
        print("NumPy's bundled OpenBLAS (scipy_openblas64) was not found: nothing to measure", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    print(f"{'layer (C -> N, H x W)':24s} {'today':>10s} {'one call':>10s}   (fastest runs)")
    for C, N, H in [(1, 8, 28), (8, 16, 14), (32, 32, 28)]:
        K_ = C * 9
        Wm = rng.integers(-100, 101, (K_, N))
        bias, mult, shift = rng.integers(-999, 1000, N), rng.integers(1 << 14, 1 << 15, N), np.full(N, 24)
        plan = KC.plan_conv(K.LayerMatrix(Wm, 8), 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 0, C, bias, mult, shift, 0, 0, 255)
        assert plan.chunks is not None and len(plan.chunks) == 1 and plan.fscale.size
        src = rng.integers(0, 256, (1, C, H, H), dtype=np.uint8)
        wt = np.ascontiguousarray(Wm.T.astype(np.float32))
        xt, acc = np.empty((K_, H * H), np.float32), np.empty((N, H * H), np.float32)
        out, ones = np.empty((N, H * H), np.uint8), np.empty(K_, np.int64)
        args = (src[0], wt, bias.astype(np.float64), plan.fscale, 0.0, 0.0, 255.0, xt, acc, out, ones)
        one_call(*args)
        want = KC.run_conv(src, plan, np.uint8)
        assert np.array_equal(out.reshape(want.shape), want), "outputs differ"
        assert np.array_equal(ones, KC.ones_per_column(src, plan, None)), "counts differ"
        today = _time(lambda: (KC.run_conv(src, plan, np.uint8), KC.ones_per_column(src, plan, None)), opts.seconds)
        once = _time(lambda: one_call(*args), opts.seconds)
        print(f"{f'{C} -> {N}, {H} x {H}':24s} {today * 1e6:8.1f} us {once * 1e6:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())

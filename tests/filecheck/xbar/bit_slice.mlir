// W = [[1, -2], [3, 0], [-1, 2]], 4-bit weights: the stored matrix of each scheme, checked by hand.
// RUN: pimc opt %s -c isaac8 -p 'xbar-bit-slice{cell-bits=2 scheme=offset flip=false}' | filecheck %s --check-prefix=OFFSET
// RUN: pimc opt %s -c isaac8 -p 'xbar-bit-slice{cell-bits=2 scheme=differential flip=false}' | filecheck %s --check-prefix=DIFF
// RUN: pimc opt %s -c isaac8 -p 'xbar-bit-slice{cell-bits=3 scheme=twos flip=false order=msb dac-bits=2}' | filecheck %s --check-prefix=TWOS
// RUN: pimc opt %s -c isaac8 -p 'xbar-bit-slice{cell-bits=1 scheme=twos flip=true}' | filecheck %s --check-prefix=TWOSFLIP

// w + 8 = [[9, 6], [11, 8], [7, 10]] in 2-bit digits, output-major, then the unit column
// OFFSET: "xbar.layer"
// OFFSET-SAME: cell_bits = 2 : i64, dac_bits = 1 : i64, scheme = "offset", order = "lsb", flip = 0 : i64
// OFFSET-SAME: cells = dense<[[1, 2, 2, 1, 1], [3, 2, 0, 2, 1], [3, 1, 2, 2, 1]]> : tensor<3x5xui8>
// OFFSET-SAME: colmap = dense<[[0, 0, 1, 0, 0], [0, 2, 1, 0, 0], [1, 0, 1, 0, 0], [1, 2, 1, 0, 0], [-1, 3, -1, 0, 0]]> : tensor<5x5xi64>
// OFFSET-NOT: xbar.crossbar

// W+ digits then W- digits per output (3-bit magnitudes, 2 digits), W- columns negative, no unit
// DIFF: scheme = "differential"
// DIFF-SAME: cells = dense<[[1, 0, 0, 0, 0, 0, 2, 0], [3, 0, 0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 2, 0, 0, 0]]> : tensor<3x8xui8>
// DIFF-SAME: colmap = dense<[[0, 0, 1, 0, 0], [0, 2, 1, 0, 0], [0, 0, -1, 0, 0], [0, 2, -1, 0, 0], [1, 0, 1, 0, 0], [1, 2, 1, 0, 0], [1, 0, -1, 0, 0], [1, 2, -1, 0, 0]]> : tensor<8x5xi64>

// low 3 bits in one 3-bit digit, the sign bit on its own negative column (-2 = -8 + 6)
// TWOS: cell_bits = 3 : i64, dac_bits = 2 : i64, scheme = "twos", order = "msb", flip = 0 : i64
// TWOS-SAME: cells = dense<[[1, 0, 6, 1], [3, 0, 0, 0], [7, 1, 2, 0]]> : tensor<3x4xui8>
// TWOS-SAME: colmap = dense<[[0, 0, 1, 0, 0], [0, 3, -1, 0, 0], [1, 0, 1, 0, 0], [1, 3, -1, 0, 0]]> : tensor<4x5xi64>

// flip requested: a referenced-only unit column (out = -2) is appended
// TWOSFLIP: scheme = "twos", order = "lsb", flip = 1 : i64
// TWOSFLIP-SAME: tensor<3x9xui8>
// TWOSFLIP-SAME: [-2, 0, 1, 0, 0]]> : tensor<9x5xi64>

builtin.module {
  func.func @main(%0: tensor<?x3x!nn.q<u8, 0.05, 7>>) -> tensor<?x2x!nn.q<u8, 0.05, 7>> {
    %1 = "xbar.layer"(%0) <{kind = "gemm", kernel = array<i64: 1, 1>, strides = array<i64: 1, 1>, pads = array<i64: 0, 0, 0, 0>, dilations = array<i64: 1, 1>, groups = 1 : i64, weight = dense<[[1, -2], [3, 0], [-1, 2]]> : tensor<3x2xi8>, bias = dense<[-21, 0]> : tensor<2xi64>, requant_multiplier = dense<1048576> : tensor<2xi64>, requant_shift = dense<30> : tensor<2xi64>, clamp = array<i64: 0, 255>, zp_in = 7 : i64, zp_out = 7 : i64, act_bits = 8 : i64, out_bits = 8 : i64, weight_bits = 4 : i64, activation = "none"}> ({
    ^bb0:
    }) {pimc.name = "fc0"} : (tensor<?x3x!nn.q<u8, 0.05, 7>>) -> tensor<?x2x!nn.q<u8, 0.05, 7>>
    func.return %1 : tensor<?x2x!nn.q<u8, 0.05, 7>>
  }
}

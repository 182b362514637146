// A grouped 1x1 conv (2 groups of 2 -> 2 channels) becomes one block-diagonal im2col matrix;
// the digital op after it stays.
// RUN: pimc opt %s -p 'convert-nn-to-xbar' | filecheck %s
// RUN: pimc opt %s -p 'convert-nn-to-xbar,xbar-bit-slice{cell-bits=2 scheme=offset flip=false}' | filecheck %s --check-prefix=GROUPED

// CHECK: %1 = "xbar.layer"(%0) <{kind = "conv", kernel = array<i64: 1, 1>, strides = array<i64: 1, 1>, pads = array<i64: 0, 0, 0, 0>, dilations = array<i64: 1, 1>, groups = 2 : i64
// CHECK-SAME: weight = dense<{{\[}}[1, -1, 0, 0], [2, 3, 0, 0], [0, 0, 4, 0], [0, 0, -5, 6]]> : tensor<4x4xi8>
// CHECK-SAME: bias = dense<[0, 1, 2, 3]> : tensor<4xi64>
// CHECK-SAME: clamp = array<i64: 0, 255>, zp_in = 7 : i64, zp_out = 3 : i64, act_bits = 8 : i64, out_bits = 8 : i64, weight_bits = 8 : i64, activation = "relu"
// CHECK: {pimc.name = "conv"}
// CHECK-NOT: nn.conv2d
// CHECK: "nn.maxpool"(%1)

// grouped offset: no global unit column; each top digit subtracts 2^6 · 2 · U over its own crossbar rows
// GROUPED: colmap = dense<{{\[}}[0, 0, 1, 0, 0], [0, 2, 1, 0, 0], [0, 4, 1, 0, 0], [0, 6, -1, 2, 16],
// GROUPED-SAME: [-2, 0, 1, 0, 0]]> : tensor<17x5xi64>

builtin.module {
  func.func @main(%0: tensor<?x4x3x3x!nn.q<u8, 0.05, 7>>) -> tensor<?x4x2x2x!nn.q<u8, 0.1, 3>> {
    %1 = "nn.conv2d"(%0) <{weight = dense<[[[[1]], [[2]]], [[[-1]], [[3]]], [[[4]], [[-5]]], [[[0]], [[6]]]]> : tensor<4x2x1x1xi8>, strides = array<i64: 1, 1>, pads = array<i64: 0, 0, 0, 0>, dilations = array<i64: 1, 1>, group = 2 : i64, bias = dense<[0, 1, 2, 3]> : tensor<4xi64>, weight_scale = dense<1.000000e-02> : tensor<4xf32>, requant_multiplier = dense<1048576> : tensor<4xi64>, requant_shift = dense<30> : tensor<4xi64>, clamp = array<i64: 0, 255>, activation = "relu"}> {pimc.name = "conv"} : (tensor<?x4x3x3x!nn.q<u8, 0.05, 7>>) -> tensor<?x4x3x3x!nn.q<u8, 0.1, 3>>
    %2 = "nn.maxpool"(%1) <{kernel = array<i64: 2, 2>, strides = array<i64: 1, 1>, pads = array<i64: 0, 0, 0, 0>, dilations = array<i64: 1, 1>}> : (tensor<?x4x3x3x!nn.q<u8, 0.1, 3>>) -> tensor<?x4x2x2x!nn.q<u8, 0.1, 3>>
    func.return %2 : tensor<?x4x2x2x!nn.q<u8, 0.1, 3>>
  }
}

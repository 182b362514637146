// Tiling the offset stored matrix of W = [[1, -2], [3, 0], [-1, 2]] (4-bit, 2-bit cells) into 2x3
// crossbars: ⌈3/2⌉ row blocks x ⌈5/3⌉ column chunks, the unit column once per row block.
// RUN: pimc opt %s -c isaac8 -p 'xbar-bit-slice{cell-bits=2 scheme=offset flip=false},xbar-tile{rows=2 cols=3}' | filecheck %s
// RUN: pimc opt %s -c isaac8 -p 'xbar-bit-slice{cell-bits=2 scheme=offset flip=true},xbar-tile{rows=2 cols=3 adc-bits=3 adc-mode=drop-lsb}' | filecheck %s --check-prefix=FLIP

// CHECK: "xbar.layer"
// CHECK-NOT: cells =
// CHECK-SAME: xbar_rows = 2 : i64, xbar_cols = 3 : i64, columns = 10 : i64
// CHECK-NEXT: "xbar.crossbar"() <{image = dense<[[1, 2, 2], [3, 2, 0]]> : tensor<2x3xui8>, row_table = dense<[0, 1]> : tensor<2xi32>, col0 = 0 : i64, colmap = dense<[[0, 0, 1, 0, 0], [0, 2, 1, 0, 0], [1, 0, 1, 0, 0]]> : tensor<3x5xi64>, adc_bits = 8 : i64, adc_mode = "saturate", lossless = 1 : i64}>
// CHECK-NEXT: "xbar.crossbar"() <{image = dense<[[1, 1], [2, 1]]> : tensor<2x2xui8>, row_table = dense<[0, 1]> : tensor<2xi32>, col0 = 3 : i64, colmap = dense<[[1, 2, 1, 0, 0], [-1, 3, -1, 0, 0]]> : tensor<2x5xi64>
// CHECK-NEXT: "xbar.crossbar"() <{image = dense<[[3, 1, 2]]> : tensor<1x3xui8>, row_table = dense<2> : tensor<1xi32>, col0 = 5 : i64
// CHECK-NEXT: "xbar.crossbar"() <{image = dense<[[2, 1]]> : tensor<1x2xui8>, row_table = dense<2> : tensor<1xi32>, col0 = 8 : i64, colmap = dense<[[1, 2, 1, 0, 0], [-1, 3, -1, 0, 0]]>
// CHECK-NEXT: }) {pimc.name = "fc0"}

// Flip per row block: columns whose cell sum exceeds R'·3/2 are complemented and point at the unit
// column of their row block (layer columns 4 and 9).
// FLIP: "xbar.crossbar"() <{image = dense<[[2, 1, 2], [0, 1, 0]]> : tensor<2x3xui8>, row_table = dense<[0, 1]> : tensor<2xi32>, col0 = 0 : i64, colmap = dense<[[0, 0, 1, 3, 4], [0, 2, 1, 3, 4], [1, 0, 1, 0, 0]]> : tensor<3x5xi64>, adc_bits = 3 : i64, adc_mode = "drop-lsb", lossless = 1 : i64}>
// FLIP-NEXT: col0 = 3 : i64, colmap = dense<[[1, 2, 1, 0, 0], [-1, 3, -1, 0, 0]]>
// FLIP-NEXT: "xbar.crossbar"() <{image = dense<[[0, 1, 1]]> : tensor<1x3xui8>, row_table = dense<2> : tensor<1xi32>, col0 = 5 : i64, colmap = dense<[[0, 0, 1, 3, 9], [0, 2, 1, 0, 0], [1, 0, 1, 3, 9]]>
// FLIP-NEXT: "xbar.crossbar"() <{image = dense<1> : tensor<1x2xui8>, row_table = dense<2> : tensor<1xi32>, col0 = 8 : i64, colmap = dense<[[1, 2, 1, 3, 9], [-1, 3, -1, 0, 0]]>

builtin.module {
  func.func @main(%0: tensor<?x3x!nn.q<u8, 0.05, 7>>) -> tensor<?x2x!nn.q<u8, 0.05, 7>> {
    %1 = "xbar.layer"(%0) <{kind = "gemm", kernel = array<i64: 1, 1>, strides = array<i64: 1, 1>, pads = array<i64: 0, 0, 0, 0>, dilations = array<i64: 1, 1>, groups = 1 : i64, weight = dense<[[1, -2], [3, 0], [-1, 2]]> : tensor<3x2xi8>, bias = dense<[-21, 0]> : tensor<2xi64>, requant_multiplier = dense<1048576> : tensor<2xi64>, requant_shift = dense<30> : tensor<2xi64>, clamp = array<i64: 0, 255>, zp_in = 7 : i64, zp_out = 7 : i64, act_bits = 8 : i64, out_bits = 8 : i64, weight_bits = 4 : i64, activation = "none"}> ({
    ^bb0:
    }) {pimc.name = "fc0"} : (tensor<?x3x!nn.q<u8, 0.05, 7>>) -> tensor<?x2x!nn.q<u8, 0.05, 7>>
    func.return %1 : tensor<?x2x!nn.q<u8, 0.05, 7>>
  }
}

// RUN: pimc opt %s -p convert-xbar-to-isa | filecheck %s
//
// A 2x2 conv (pads 1, fused ReLU) -> maxpool -> flatten -> gemm, tiled on 4x8 crossbars (offset
// scheme, 2-bit cells, flipped columns): the conv's stored matrix is 4 rows x 9 columns (2 outputs
// x 4 digits + the unit column) on 2 crossbars; the gemm's 8 x 13 on 2 row blocks x 2 crossbars.

builtin.module {
  func.func @main(%0: tensor<?x1x3x3xf32> {pimc.name = "x"}) -> (tensor<?x3xf32> {pimc.name = "y"}) {
    %1 = "nn.quantize"(%0) : (tensor<?x1x3x3xf32>) -> tensor<?x1x3x3x!nn.q<u8, 0.016837747767567635, 134>>
    %2 = "xbar.layer"(%1) <{kind = "conv", kernel = array<i64: 2, 2>, strides = array<i64: 1, 1>, pads = array<i64: 1, 1, 1, 1>, dilations = array<i64: 1, 1>, groups = 1 : i64, weight = dense<[[34, 127], [80, 63], [32, -75], [-127, 82]]> : tensor<4x2xi8>, bias = dense<[-2546, -26398]> : tensor<2xi64>, requant_multiplier = dense<[1883329389, 1308424887]> : tensor<2xi64>, requant_shift = dense<37> : tensor<2xi64>, clamp = array<i64: 0, 255>, zp_in = 134 : i64, zp_out = 0 : i64, act_bits = 8 : i64, out_bits = 8 : i64, weight_bits = 8 : i64, activation = "relu", weight_scale = dense<[0.0102610802, 0.0071287863]> : tensor<2xf32>, cell_bits = 2 : i64, dac_bits = 1 : i64, scheme = "offset", order = "lsb", flip = 1 : i64, xbar_rows = 4 : i64, xbar_cols = 8 : i64, columns = 9 : i64, replication = 1 : i64}> ({
      "xbar.crossbar"() <{image = dense<[[2, 0, 2, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 1], [0, 0, 2, 1, 2, 2, 0, 3], [1, 0, 0, 3, 1, 3, 2, 0]]> : tensor<4x8xui8>, row_table = dense<[0, 1, 2, 3]> : tensor<4xi32>, col0 = 0 : i64, colmap = dense<[[0, 0, 1, 0, 0], [0, 2, 1, 0, 0], [0, 4, 1, 0, 0], [0, 6, 1, 3, 8], [1, 0, 1, 3, 8], [1, 2, 1, 3, 8], [1, 4, 1, 3, 8], [1, 6, 1, 3, 8]]> : tensor<8x5xi64>, adc_bits = 8 : i64, adc_mode = "saturate", lossless = 1 : i64, chip = 0 : i64, tile = 0 : i64, ima = 0 : i64}> : () -> ()
      "xbar.crossbar"() <{image = dense<1> : tensor<4x1xui8>, row_table = dense<[0, 1, 2, 3]> : tensor<4xi32>, col0 = 8 : i64, colmap = dense<[[-1, 7, -1, 0, 0]]> : tensor<1x5xi64>, adc_bits = 8 : i64, adc_mode = "saturate", lossless = 1 : i64, chip = 0 : i64, tile = 0 : i64, ima = 0 : i64}> : () -> ()
    }) {pimc.name = "conv"} : (tensor<?x1x3x3x!nn.q<u8, 0.016837747767567635, 134>>) -> tensor<?x2x4x4x!nn.q<u8, 0.012608419172465801, 0>>
    %3 = "nn.maxpool"(%2) <{kernel = array<i64: 2, 2>, strides = array<i64: 2, 2>, pads = array<i64: 0, 0, 0, 0>, dilations = array<i64: 1, 1>}> {pimc.name = "pool"} : (tensor<?x2x4x4x!nn.q<u8, 0.012608419172465801, 0>>) -> tensor<?x2x2x2x!nn.q<u8, 0.012608419172465801, 0>>
    %4 = "nn.reshape"(%3) {pimc.name = "flat"} : (tensor<?x2x2x2x!nn.q<u8, 0.012608419172465801, 0>>) -> tensor<?x8x!nn.q<u8, 0.012608419172465801, 0>>
    %5 = "xbar.layer"(%4) <{kind = "gemm", kernel = array<i64: 1, 1>, strides = array<i64: 1, 1>, pads = array<i64: 0, 0, 0, 0>, dilations = array<i64: 1, 1>, groups = 1 : i64, weight = dense<[[46, 14, 2], [69, -34, -11], [-61, 28, 3], [-37, -37, -17], [1, -13, 87], [127, -127, -127], [-22, -20, 14], [27, 99, -75]]> : tensor<8x3xi8>, bias = dense<0> : tensor<3xi64>, requant_multiplier = dense<[1407660786, 1895452971, 1320664363]> : tensor<3xi64>, requant_shift = dense<[39, 38, 38]> : tensor<3xi64>, clamp = array<i64: 0, 255>, zp_in = 0 : i64, zp_out = 156 : i64, act_bits = 8 : i64, out_bits = 8 : i64, weight_bits = 8 : i64, activation = "none", weight_scale = dense<[0.00792696327, 0.0213477369, 0.0148741202]> : tensor<3xf32>, cell_bits = 2 : i64, dac_bits = 1 : i64, scheme = "offset", order = "lsb", flip = 1 : i64, xbar_rows = 4 : i64, xbar_cols = 8 : i64, columns = 26 : i64, replication = 1 : i64}> ({
      "xbar.crossbar"() <{image = dense<[[1, 3, 2, 1, 1, 0, 0, 2], [2, 1, 0, 0, 1, 0, 1, 1], [0, 0, 0, 2, 3, 0, 1, 2], [0, 2, 1, 2, 0, 1, 1, 1]]> : tensor<4x8xui8>, row_table = dense<[0, 1, 2, 3]> : tensor<4xi32>, col0 = 0 : i64, colmap = dense<[[0, 0, 1, 3, 12], [0, 2, 1, 0, 0], [0, 4, 1, 0, 0], [0, 6, 1, 3, 12], [1, 0, 1, 3, 12], [1, 2, 1, 3, 12], [1, 4, 1, 0, 0], [1, 6, 1, 0, 0]]> : tensor<8x5xi64>, adc_bits = 8 : i64, adc_mode = "saturate", lossless = 1 : i64, chip = 0 : i64, tile = 0 : i64, ima = 1 : i64}> : () -> ()
      "xbar.crossbar"() <{image = dense<[[1, 0, 0, 2, 1], [2, 1, 3, 1, 1], [0, 0, 0, 2, 1], [0, 3, 2, 1, 1]]> : tensor<4x5xui8>, row_table = dense<[0, 1, 2, 3]> : tensor<4xi32>, col0 = 8 : i64, colmap = dense<[[2, 0, 1, 3, 12], [2, 2, 1, 0, 0], [2, 4, 1, 0, 0], [2, 6, 1, 0, 0], [-1, 7, -1, 0, 0]]> : tensor<5x5xi64>, adc_bits = 8 : i64, adc_mode = "saturate", lossless = 1 : i64, chip = 0 : i64, tile = 0 : i64, ima = 1 : i64}> : () -> ()
      "xbar.crossbar"() <{image = dense<[[2, 3, 0, 1, 0, 0, 0, 1], [0, 0, 3, 0, 2, 0, 3, 0], [1, 1, 2, 2, 3, 3, 1, 1], [0, 1, 1, 1, 0, 0, 1, 3]]> : tensor<4x8xui8>, row_table = dense<[4, 5, 6, 7]> : tensor<4xi32>, col0 = 13 : i64, colmap = dense<[[0, 0, 1, 3, 25], [0, 2, 1, 3, 25], [0, 4, 1, 0, 0], [0, 6, 1, 3, 25], [1, 0, 1, 3, 25], [1, 2, 1, 0, 0], [1, 4, 1, 3, 25], [1, 6, 1, 0, 0]]> : tensor<8x5xi64>, adc_bits = 8 : i64, adc_mode = "saturate", lossless = 1 : i64, chip = 0 : i64, tile = 0 : i64, ima = 1 : i64}> : () -> ()
      "xbar.crossbar"() <{image = dense<[[0, 1, 1, 3, 1], [2, 0, 0, 0, 1], [1, 3, 0, 2, 1], [2, 1, 3, 0, 1]]> : tensor<4x5xui8>, row_table = dense<[4, 5, 6, 7]> : tensor<4xi32>, col0 = 21 : i64, colmap = dense<[[2, 0, 1, 3, 25], [2, 2, 1, 0, 0], [2, 4, 1, 0, 0], [2, 6, 1, 0, 0], [-1, 7, -1, 0, 0]]> : tensor<5x5xi64>, adc_bits = 8 : i64, adc_mode = "saturate", lossless = 1 : i64, chip = 0 : i64, tile = 0 : i64, ima = 1 : i64}> : () -> ()
    }) {pimc.name = "fc"} : (tensor<?x8x!nn.q<u8, 0.012608419172465801, 0>>) -> tensor<?x3x!nn.q<u8, 0.039033662527799606, 156>>
    %6 = "nn.dequantize"(%5) : (tensor<?x3x!nn.q<u8, 0.039033662527799606, 156>>) -> tensor<?x3xf32>
    func.return %6 : tensor<?x3xf32>
  }
}

// Crossbars are declared in layer order with their images, row tables (shared when equal) and places.
// CHECK:      isa.const {sym_name = "conv.xb0.image", value = dense<{{\[\[}}2, 0, 2, 1, 0, 0, 0, 0]
// CHECK:      isa.xbar {id = 0 : i64, image = @conv.xb0.image, rows = 4 : i64, cols = 8 : i64, row_table = @rows.0_3, adc_bits = 8 : i64, adc_mode = "saturate", chip = 0 : i64, tile = 0 : i64, ima = 0 : i64, lossless = 1 : i64}
// CHECK:      isa.xbar {id = 1 : i64, image = @conv.xb1.image, rows = 4 : i64, cols = 1 : i64, row_table = @rows.0_3,
// The layer column map is the crossbars' maps side by side (the unit column last, at column 8).
// CHECK:      isa.const {sym_name = "conv.colmap", value = dense<{{\[\[}}0, 0, 1, 0, 0], [0, 2, 1, 0, 0], [0, 4, 1, 0, 0], [0, 6, 1, 3, 8], [1, 0, 1, 3, 8], [1, 2, 1, 3, 8], [1, 4, 1, 3, 8], [1, 6, 1, 3, 8], [-1, 7, -1, 0, 0]]> : tensor<9x5xi64>}
// CHECK:      isa.const {sym_name = "conv.bias", value = dense<[-2546, -26398]> : tensor<2xi64>}
// CHECK:      isa.xbar {id = 2 : i64, image = @fc.xb0.image
// CHECK:      isa.const {sym_name = "rows.4_7", value = dense<[4, 5, 6, 7]> : tensor<4xi32>}
// CHECK:      isa.xbar {id = 5 : i64
// One buffer per value (batch ?), plus each layer's im2col, column-result and accumulator buffers.
// CHECK:      isa.buffer {sym_name = "x", type = "u8", shape = array<i64: -1, 1, 3, 3>}
// CHECK-NEXT: isa.buffer {sym_name = "conv.cols", type = "u8", shape = array<i64: -1, 4>}
// CHECK-NEXT: isa.buffer {sym_name = "conv.colres", type = "i64", shape = array<i64: -1, 9>}
// CHECK-NEXT: isa.buffer {sym_name = "conv.acc", type = "i64", shape = array<i64: -1, 2>}
// CHECK-NEXT: isa.buffer {sym_name = "conv", type = "u8", shape = array<i64: -1, 2, 4, 4>}
// CHECK:      isa.buffer {sym_name = "fc", type = "u8", shape = array<i64: -1, 3>}
// CHECK-NEXT: isa.input {port = "x", buf = @x, scale = 0.016837747767567635 : f64, zp = 134 : i64}
// CHECK-NEXT: isa.output {port = "y", buf = @fc, scale = 0.039033662527799606 : f64, zp = 156 : i64}
// A conv: im2col (padding with the input zero point), one mvm per crossbar, shiftadd, requant nchw.
// CHECK-NEXT: isa.layer {label = "conv"}
// CHECK-NEXT: isa.im2col {dst = @conv.cols, src = @x, kernel = array<i64: 2, 2>, stride = array<i64: 1, 1>, pad = array<i64: 1, 1, 1, 1>, dilation = array<i64: 1, 1>, pad_value = 134 : i64}
// CHECK-NEXT: isa.mvm {xbar = 0 : i64, src = @conv.cols, dst = @conv.colres, col0 = 0 : i64, bits = 8 : i64, dac_bits = 1 : i64, order = "lsb"}
// CHECK-NEXT: isa.mvm {xbar = 1 : i64, src = @conv.cols, dst = @conv.colres, col0 = 8 : i64, bits = 8 : i64, dac_bits = 1 : i64, order = "lsb"}
// CHECK-NEXT: isa.shiftadd {dst = @conv.acc, src = @conv.colres, colmap = @conv.colmap, macs = 8 : i64, init = 1 : i64}
// CHECK-NEXT: isa.requant {dst = @conv, src = @conv.acc, bias = @conv.bias, mult = @conv.mult, shift = @conv.shift, zp = 0 : i64, lo = 0 : i64, hi = 255 : i64, layout = "nchw", out_hw = array<i64: 4, 4>}
// CHECK-NEXT: isa.layer {label = "pool"}
// CHECK-NEXT: isa.maxpool {dst = @pool, src = @conv, kernel = array<i64: 2, 2>, stride = array<i64: 2, 2>, pad = array<i64: 0, 0, 0, 0>, dilation = array<i64: 1, 1>}
// CHECK-NEXT: isa.layer {label = "flat"}
// CHECK-NEXT: isa.reshape {dst = @flat, src = @pool}
// A gemm reads its input buffer directly (no im2col); four crossbars, two per row block.
// CHECK-NEXT: isa.layer {label = "fc"}
// CHECK-NEXT: isa.mvm {xbar = 2 : i64, src = @flat, dst = @fc.colres, col0 = 0 : i64
// CHECK-NEXT: isa.mvm {xbar = 3 : i64, src = @flat, dst = @fc.colres, col0 = 8 : i64
// CHECK-NEXT: isa.mvm {xbar = 4 : i64, src = @flat, dst = @fc.colres, col0 = 13 : i64
// CHECK-NEXT: isa.mvm {xbar = 5 : i64, src = @flat, dst = @fc.colres, col0 = 21 : i64
// CHECK-NEXT: isa.shiftadd {dst = @fc.acc, src = @fc.colres, colmap = @fc.colmap, macs = 24 : i64, init = 1 : i64}
// CHECK-NEXT: isa.requant {dst = @fc, src = @fc.acc, bias = @fc.bias, mult = @fc.mult, shift = @fc.shift, zp = 156 : i64, lo = 0 : i64, hi = 255 : i64, layout = "flat", out_hw = array<i64>}
// CHECK-NEXT: isa.halt
// CHECK-NOT:  func.func

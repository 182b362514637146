// Placement on chips of 2 crossbars: the 4 crossbars of fc0 span 2 chips; the input (3 bytes) goes
// from chip 0 to chip 1, and the 2 outputs' partial sums (4 bytes each) come back: 11 bytes.
// RUN: pimc opt %s -c %S/small_chip.toml -p 'xbar-bit-slice{cell-bits=2 scheme=offset flip=false},xbar-tile{rows=2 cols=3},xbar-place' | filecheck %s
// RUN: pimc opt %s -c isaac8 -p 'xbar-bit-slice{cell-bits=2 scheme=offset flip=false},xbar-tile{rows=2 cols=3},xbar-place{replicate=true}' | filecheck %s --check-prefix=REP

// CHECK: builtin.module attributes {
// CHECK-SAME: pimc.chips = 2 : i64, pimc.chip_traffic_bytes = 11 : i64
// CHECK: replication = 1 : i64
// CHECK-NEXT: col0 = 0 : i64
// CHECK-SAME: chip = 0 : i64, tile = 0 : i64, ima = 0 : i64
// CHECK-NEXT: col0 = 3 : i64
// CHECK-SAME: chip = 0 : i64, tile = 0 : i64, ima = 0 : i64
// CHECK-NEXT: col0 = 5 : i64
// CHECK-SAME: chip = 1 : i64, tile = 0 : i64, ima = 0 : i64
// CHECK-NEXT: col0 = 8 : i64
// CHECK-SAME: chip = 1 : i64, tile = 0 : i64, ima = 0 : i64

// a gemm has one position per inference: replication cannot help it
// REP: pimc.chips = 1 : i64, pimc.chip_traffic_bytes = 0 : i64
// REP: replication = 1 : i64

builtin.module {
  func.func @main(%0: tensor<?x3x!nn.q<u8, 0.05, 7>>) -> tensor<?x2x!nn.q<u8, 0.05, 7>> {
    %1 = "xbar.layer"(%0) <{kind = "gemm", kernel = array<i64: 1, 1>, strides = array<i64: 1, 1>, pads = array<i64: 0, 0, 0, 0>, dilations = array<i64: 1, 1>, groups = 1 : i64, weight = dense<[[1, -2], [3, 0], [-1, 2]]> : tensor<3x2xi8>, bias = dense<[-21, 0]> : tensor<2xi64>, requant_multiplier = dense<1048576> : tensor<2xi64>, requant_shift = dense<30> : tensor<2xi64>, clamp = array<i64: 0, 255>, zp_in = 7 : i64, zp_out = 7 : i64, act_bits = 8 : i64, out_bits = 8 : i64, weight_bits = 4 : i64, activation = "none"}> ({
    ^bb0:
    }) {pimc.name = "fc0"} : (tensor<?x3x!nn.q<u8, 0.05, 7>>) -> tensor<?x2x!nn.q<u8, 0.05, 7>>
    func.return %1 : tensor<?x2x!nn.q<u8, 0.05, 7>>
  }
}

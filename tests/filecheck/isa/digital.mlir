// RUN: pimc opt %s -p convert-xbar-to-isa | filecheck %s
//
// Digital ops: one instruction each, with the integer constants of pimc.quant.intmath
// (add_params, avgpool_params, rescale_params; checked against the formulas in test_codegen.py).

builtin.module {
  func.func @main(%0: tensor<?x2x4x4xf32> {pimc.name = "x"}) -> (tensor<?x16xf32> {pimc.name = "y"}) {
    %1 = "nn.quantize"(%0) : (tensor<?x2x4x4xf32>) -> tensor<?x2x4x4x!nn.q<u8, 0.020733773708343506, 118>>
    %2 = "nn.avgpool"(%1) <{kernel = array<i64: 2, 2>, strides = array<i64: 2, 2>, pads = array<i64: 0, 0, 0, 0>, count_include_pad = 0 : i64}> {pimc.name = "avg"} : (tensor<?x2x4x4x!nn.q<u8, 0.020733773708343506, 118>>) -> tensor<?x2x2x2x!nn.q<u8, 0.007400377653539181, 122>>
    %3 = "nn.global_avgpool"(%1) {pimc.name = "gap"} : (tensor<?x2x4x4x!nn.q<u8, 0.020733773708343506, 118>>) -> tensor<?x2x1x1x!nn.q<u8, 0.0024020967539399862, 171>>
    %4 = "nn.sub"(%2, %3) {pimc.name = "sub"} : (tensor<?x2x2x2x!nn.q<u8, 0.007400377653539181, 122>>, tensor<?x2x1x1x!nn.q<u8, 0.0024020967539399862, 171>>) -> tensor<?x2x2x2x!nn.q<u8, 0.006810814142227173, 117>>
    %5 = "nn.requantize"(%4) : (tensor<?x2x2x2x!nn.q<u8, 0.006810814142227173, 117>>) -> tensor<?x2x2x2x!nn.q<u8, 0.007400377653539181, 122>>
    %6 = "nn.concat"(%5, %2) <{axis = 1 : i64}> {pimc.name = "cat"} : (tensor<?x2x2x2x!nn.q<u8, 0.007400377653539181, 122>>, tensor<?x2x2x2x!nn.q<u8, 0.007400377653539181, 122>>) -> tensor<?x4x2x2x!nn.q<u8, 0.007400377653539181, 122>>
    %7 = "nn.reshape"(%6) {pimc.name = "flat"} : (tensor<?x4x2x2x!nn.q<u8, 0.007400377653539181, 122>>) -> tensor<?x16x!nn.q<u8, 0.007400377653539181, 122>>
    %8 = "nn.softmax"(%7) <{axis = 1 : i64}> {pimc.name = "softmax"} : (tensor<?x16x!nn.q<u8, 0.007400377653539181, 122>>) -> tensor<?x16x!nn.q<u8, 0.0005795402685180306, 0>>
    %9 = "nn.dequantize"(%8) : (tensor<?x16x!nn.q<u8, 0.0005795402685180306, 0>>) -> tensor<?x16xf32>
    func.return %9 : tensor<?x16xf32>
  }
}


// CHECK:      isa.input {port = "x", buf = @x, scale = 0.020733773708343506 : f64, zp = 118 : i64}
// CHECK-NEXT: isa.output {port = "y", buf = @softmax, scale = 0.00057954026851803064 : f64, zp = 0 : i64}
// CHECK-NEXT: isa.layer {label = "avg"}
// CHECK-NEXT: isa.avgpool {dst = @avg, src = @x, kernel = array<i64: 2, 2>, stride = array<i64: 2, 2>, pad = array<i64: 0, 0, 0, 0>, count_include_pad = 0 : i64, zin = 118 : i64, m = 1504161074 : i64, shift = 29 : i64, zp = 122 : i64, lo = 0 : i64, hi = 255 : i64}
// A global average pool is one avgpool window over the whole 4x4 map.
// CHECK-NEXT: isa.layer {label = "gap"}
// CHECK-NEXT: isa.avgpool {dst = @gap, src = @x, kernel = array<i64: 4, 4>, stride = array<i64: 1, 1>, pad = array<i64: 0, 0, 0, 0>, count_include_pad = 1 : i64, zin = 118 : i64, m = 1158504542 : i64, shift = 27 : i64, zp = 171 : i64, lo = 0 : i64, hi = 255 : i64}
// A subtraction is an add with a negative second multiplier (broadcast [?,2,1,1] over [?,2,2,2]).
// CHECK-NEXT: isa.layer {label = "sub"}
// CHECK-NEXT: isa.add {dst = @sub, a = @avg, b = @gap, ma = 1166687981 : i64, mb = -378696540 : i64, shift = 30 : i64, za = 122 : i64, zb = 171 : i64, zp = 117 : i64, lo = 0 : i64, hi = 255 : i64}
// nn.requantize -> rescale; the concat then reads inputs of one quantization.
// CHECK-NEXT: isa.layer {label = "requantize4"}
// CHECK-NEXT: isa.rescale {dst = @requantize4, src = @sub, m = 1976400757 : i64, shift = 31 : i64, zin = 117 : i64, zp = 122 : i64, lo = 0 : i64, hi = 255 : i64}
// CHECK-NEXT: isa.layer {label = "cat"}
// CHECK-NEXT: isa.concat {dst = @cat, srcs = [@requantize4, @avg], axis = 1 : i64}
// CHECK-NEXT: isa.layer {label = "flat"}
// CHECK-NEXT: isa.reshape {dst = @flat, src = @cat}
// CHECK-NEXT: isa.layer {label = "softmax"}
// CHECK-NEXT: isa.softmax {dst = @softmax, src = @flat, axis = 1 : i64, in_scale = 0.0074003776535391808 : f64, in_zp = 122 : i64, out_scale = 0.00057954026851803064 : f64, out_zp = 0 : i64}
// CHECK-NEXT: isa.halt

"""The integer-only (uint8 / int8) inference path: TensorFlow Lite's reference kernels in NumPy, bit-exact.

* `fixedpoint` - the integer arithmetic every kernel shares: quantized multipliers (M, e), the
  double-rounding MultiplyByQuantizedMultiplier, activation clamps, gemmlowp's fixed-point exp and
  reciprocal, and the `QuantParams` (scale, zero point, per-channel axis) record.
* `ops` - the integer ops (conv2d, depthwise_conv2d, add, average_pool2d, mean, fully_connected,
  softmax, resize_bilinear, concatenation, quantize / requantize / dequantize, pad, arg_max, reshape).

Tensors follow the float path's layout: activations NCHW, conv weights OIHW, depthwise weights
(C*dm, 1, KH, KW). The judge is the LiteRT interpreter with the BUILTIN_REF resolver: tests compare
every op with 0 LSB tolerance. Import the submodules explicitly (`from mobilenet_np.quantized import ops`).
"""

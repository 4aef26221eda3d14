"""What edgegen reads as an ONNX model: constants shared by the runtime's loader and the offline quantizer, kept
free of tinygrad so that `quantize` can import them cheaply."""

# The oldest default-domain opset accepted: 13 is where per-axis DequantizeLinear, ReduceSum with axes as an input
# and today's Softmax semantics begin; older files should be re-exported.
MIN_OPSET = 13
# TensorProto element types tinygrad 0.14's parser lacks: two values per byte, low nibble first.
UINT4, INT4 = 21, 22

// Test stub of TFLite Micro's op resolver (the real headers are not installed here).
// It counts registrations and fails past N, so a wrong <N> in model_ops.h is caught.
#ifndef STUB_MICRO_MUTABLE_OP_RESOLVER_H_
#define STUB_MICRO_MUTABLE_OP_RESOLVER_H_

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;

namespace tflite {
template <unsigned int N>
class MicroMutableOpResolver {
 public:
  unsigned int registered = 0;
#define STUB_OP(name) \
  TfLiteStatus Add##name() { return ++registered <= N ? kTfLiteOk : kTfLiteError; }
  STUB_OP(Conv2D) STUB_OP(DepthwiseConv2D) STUB_OP(FullyConnected) STUB_OP(MaxPool2D)
  STUB_OP(AveragePool2D) STUB_OP(Reshape) STUB_OP(Softmax) STUB_OP(Quantize) STUB_OP(Dequantize)
  STUB_OP(Add) STUB_OP(Mul) STUB_OP(Mean) STUB_OP(Relu) STUB_OP(Relu6) STUB_OP(Logistic)
  STUB_OP(Concatenation) STUB_OP(ExpandDims) STUB_OP(Squeeze) STUB_OP(Pad) STUB_OP(StridedSlice)
#undef STUB_OP
};
}  // namespace tflite

#endif

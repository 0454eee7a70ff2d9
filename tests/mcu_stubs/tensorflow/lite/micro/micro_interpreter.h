// Test stub of TFLite Micro's interpreter: enough API for example_main.cc to compile and link.
#ifndef STUB_MICRO_INTERPRETER_H_
#define STUB_MICRO_INTERPRETER_H_

#include <cstddef>
#include <cstdint>

#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

namespace tflite {
class MicroInterpreter {
 public:
  template <typename Resolver>
  MicroInterpreter(const Model*, Resolver&, uint8_t* arena, size_t size) : arena_(arena), size_(size) {}
  TfLiteStatus AllocateTensors() { return kTfLiteOk; }
  TfLiteStatus Invoke() { return kTfLiteOk; }
  template <typename T> T* typed_input_tensor(int) { return reinterpret_cast<T*>(arena_); }
  template <typename T> T* typed_output_tensor(int) { return reinterpret_cast<T*>(arena_); }
  size_t arena_used_bytes() const { return size_; }

 private:
  uint8_t* arena_;
  size_t size_;
};
}  // namespace tflite

#endif

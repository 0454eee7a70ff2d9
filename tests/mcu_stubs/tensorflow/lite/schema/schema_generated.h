// Test stub of the TFLite schema header.
#ifndef STUB_SCHEMA_GENERATED_H_
#define STUB_SCHEMA_GENERATED_H_
namespace tflite {
struct Model {};
inline const Model* GetModel(const void* data) { return static_cast<const Model*>(data); }
}  // namespace tflite
#endif

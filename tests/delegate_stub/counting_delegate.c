/* A TFLite external delegate that claims no operators and counts how often it is asked. */
#include <stddef.h>
#include <stdint.h>

typedef struct CountingDelegate {
  void* data_;
  int (*Prepare)(void* context, struct CountingDelegate* delegate);
  void* CopyFromBufferHandle;
  void* CopyToBufferHandle;
  void* FreeBufferHandle;
  int64_t flags;
  void* opaque_delegate_builder;
} CountingDelegate;

int prepare_calls = 0;
int created = 0;
static CountingDelegate delegate;

static int prepare(void* context, CountingDelegate* self) {
  (void)context; (void)self;
  ++prepare_calls;
  return 0; /* kTfLiteOk, having replaced nothing: the builtin kernels run every operator */
}

CountingDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t count,
                                                void (*report_error)(const char*)) {
  (void)keys; (void)values; (void)count; (void)report_error;
  ++created;
  delegate.data_ = NULL;
  delegate.Prepare = prepare;
  delegate.flags = 0;
  return &delegate;
}

void tflite_plugin_destroy_delegate(CountingDelegate* d) { (void)d; }

// seqzoo_abi.cu: the smallest real csrc/ library. It pins down the calling convention every kernel file
// follows (csrc/README.md) and lets a binding check, before launching anything, that the library it loaded
// speaks that convention and that the CUDA runtime inside it can see a GPU.
//
// Host functions only: they can be called (and tested) on a machine without a GPU or a driver.

#include <cuda_runtime.h>

extern "C" {

// Bumped whenever the convention in csrc/README.md changes, so that a binding can refuse a library built
// for another one instead of passing it arguments in the wrong order.
int seqzoo_abi_version(void) { return 1; }

// Number of GPUs this library's CUDA runtime sees, or -1 when it cannot ask (no driver, a driver older
// than the toolkit that built the library, ...). Torch may still see GPUs when this is -1: it carries its
// own runtime, while this library links the runtime of the nvcc that built it.
int seqzoo_cuda_device_count(void) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so a later call starts clean
    return -1;
  }
  return count;
}

// The message for a status code returned by any launcher in csrc/ (they return cudaError_t as int), so a
// Python binding can raise a readable error without linking the CUDA runtime itself.
const char* seqzoo_cuda_error_string(int status) {
  return cudaGetErrorString(static_cast<cudaError_t>(status));
}

}  // extern "C"

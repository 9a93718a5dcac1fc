// common.cuh: what every csrc/ kernel file shares: conversions between the element types the launchers take
// (float, __half, __nv_bfloat16: the bytes of torch's fp32/fp16/bf16 storage) and the fp32 they accumulate in.
//
// Included as "common.cuh": the compile path passes -I csrc/ (ops/_csrc.py compile_source), the header ships
// with the sources as package data (setup.py's "*.cuh"), and it feeds the cache key of every library built
// from csrc/ (ops/_csrc.py source_digest hashes every header there), so editing it rebuilds them all.

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace seqzoo {

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

}  // namespace seqzoo

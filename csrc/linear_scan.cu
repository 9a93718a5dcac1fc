// linear_scan.cu: the diagonal linear recurrence behind ops.linear_scan(backend="cuda").
//
//   h_t = a_t * h_{t-1} + x_t        t = 0..T-1, h_{-1} = initial state (zeros when null)
//   reverse: h_t = a_t * h_{t+1} + x_t, from t = T-1 down to 0, h_T = initial state
//
// a, x, h [B, T, D] in one dtype (float, __half or __nv_bfloat16), addressed through element strides so a
// binding may pass views; the states h0 / hT [B, D] are contiguous fp32. Accumulation is fp32.
//
// The scan is memory-bound: each thread owns one (batch, channel) pair and walks time with the state in a
// register. Threads of a block take consecutive channels, so for a channel-contiguous layout every time
// step is one coalesced load per warp; kUnroll steps are loaded before any is used, so that many loads are
// in flight per thread instead of one dependent load per step.
//
// Backward, in the forward pass's processing order s (s = t, or T-1-t when reversed), with g_s the gradient
// reaching h_s:
//   g_s = dh_s + a_{s+1} g_{s+1},   g_{T-1} = dh_{T-1} + dhT
//   dx_s = g_s,   da_s = g_s * h_{s-1} (h_{-1} = h0),   dh0 = a_0 * g_0
// i.e. the same scan walked the other way, with the coefficient of the step after the current one.
//
// Calling convention: csrc/README.md (extern "C" launchers, raw pointers, int64 sizes and strides, the
// stream last, cudaError_t returned as int; nothing is synchronised).

#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"

namespace {

constexpr int kThreads = 128;
constexpr int kUnroll = 8;
constexpr int kMinBlocks = 8;  // resident blocks per SM the register budget must allow: <= 64 registers a thread
constexpr int64_t kMaxGridY = 65535;

using seqzoo::from_float;
using seqzoo::to_float;

struct Strides {
  int64_t b, t, d;
};

// Both kernels walk time kUnroll steps at a time through pointers that move by one step's stride (64-bit,
// precomputed once): the addresses of a group are a chain of adds, not kUnroll 64-bit products t * stride kept
// alive across the loop (that cost the backward 224-244 registers, 2 blocks per SM). The arithmetic, and so
// every result, is unchanged; __launch_bounds__ holds the compiler to kMinBlocks blocks of kThreads per SM.
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    linear_scan_fwd_kernel(const T* __restrict__ a, const T* __restrict__ x, const float* __restrict__ h0,
                           T* __restrict__ h, float* __restrict__ hT, int64_t batch, int64_t seqlen, int64_t dim,
                           Strides sa, Strides sx, int reverse) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= dim) return;
  const int64_t first = reverse ? seqlen - 1 : 0;
  const int64_t dir = reverse ? -1 : 1;
  // One processing step moves every pointer by these many elements.
  const int64_t step_a = dir * sa.t, step_x = dir * sx.t, step_h = dir * dim;
  // h is written contiguous [B, T, D] (the binding allocates it).
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const T* pa = a + b * sa.b + d * sa.d + first * sa.t;
    const T* px = x + b * sx.b + d * sx.d + first * sx.t;
    T* ph = h + (b * seqlen + first) * dim + d;
    float state = h0 != nullptr ? h0[b * dim + d] : 0.0f;
    for (int64_t s0 = 0; s0 < seqlen; s0 += kUnroll) {
      const int64_t left = seqlen - s0;
      const int n = left < kUnroll ? static_cast<int>(left) : kUnroll;
      float av[kUnroll];
      float xv[kUnroll];
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        if (k < n) {
          av[k] = to_float(*pa);
          xv[k] = to_float(*px);
        }
        pa += step_a;
        px += step_x;
      }
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        if (k < n) {
          state = fmaf(av[k], state, xv[k]);
          *ph = from_float<T>(state);
        }
        ph += step_h;
      }
    }
    if (hT != nullptr) hT[b * dim + d] = state;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    linear_scan_bwd_kernel(const T* __restrict__ a, const T* __restrict__ h, const float* __restrict__ h0,
                           const T* __restrict__ dh, const float* __restrict__ dhT, T* __restrict__ da,
                           T* __restrict__ dx, float* __restrict__ dh0, int64_t batch, int64_t seqlen, int64_t dim,
                           Strides sa, Strides sh, Strides sdh, int reverse) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= dim) return;
  const int64_t first = reverse ? seqlen - 1 : 0;
  const int64_t dir = reverse ? -1 : 1;
  const int64_t last = first + dir * (seqlen - 1);  // time index of the last forward step
  // Walking the forward steps backwards moves every pointer by these many elements.
  const int64_t back_a = -dir * sa.t, back_h = -dir * sh.t, back_dh = -dir * sdh.t, back_out = -dir * dim;
  // da and dx are written contiguous [B, T, D] (the binding allocates them).
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const T* pa = a + b * sa.b + d * sa.d + last * sa.t;
    const T* pdh = dh + b * sdh.b + d * sdh.d + last * sdh.t;
    // h at the step before: only dereferenced while one exists (s > 0).
    const T* ph = h + b * sh.b + d * sh.d + (last - dir) * sh.t;
    const int64_t out = (b * seqlen + last) * dim + d;
    T* pda = da + out;
    T* pdx = dx + out;
    const float start = h0 != nullptr ? h0[b * dim + d] : 0.0f;
    float g = dhT != nullptr ? dhT[b * dim + d] : 0.0f;
    float a_next = 1.0f;  // coefficient of the forward step after the current one (none after the last)
    // Walk the forward processing steps s = T-1 .. 0, kUnroll at a time.
    for (int64_t s0 = seqlen - 1; s0 >= 0; s0 -= kUnroll) {
      const int n = s0 + 1 < kUnroll ? static_cast<int>(s0 + 1) : kUnroll;  // steps s0 .. s0 - n + 1
      float av[kUnroll];
      float dhv[kUnroll];
      float hpv[kUnroll];
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        if (k < n) {
          av[k] = to_float(*pa);
          dhv[k] = to_float(*pdh);
          hpv[k] = s0 - k > 0 ? to_float(*ph) : start;
        }
        pa += back_a;
        pdh += back_dh;
        ph += back_h;
      }
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        if (k < n) {
          g = fmaf(a_next, g, dhv[k]);
          *pdx = from_float<T>(g);
          *pda = from_float<T>(g * hpv[k]);
          a_next = av[k];
        }
        pdx += back_out;
        pda += back_out;
      }
    }
    // a_next is now a at the first forward step, g the gradient there.
    if (dh0 != nullptr) dh0[b * dim + d] = a_next * g;
  }
}

int check_sizes(int64_t batch, int64_t seqlen, int64_t dim) {
  if (batch < 0 || seqlen < 0 || dim < 0) return static_cast<int>(cudaErrorInvalidValue);
  return static_cast<int>(cudaSuccess);
}

dim3 grid_for(int64_t batch, int64_t dim) {
  const int64_t blocks_d = (dim + kThreads - 1) / kThreads;
  const int64_t blocks_b = batch < kMaxGridY ? batch : kMaxGridY;  // larger batches loop inside the kernel
  return dim3(static_cast<unsigned>(blocks_d), static_cast<unsigned>(blocks_b), 1);
}

template <typename T>
int launch_fwd(const void* a, const void* x, const float* h0, void* h, float* hT, int64_t batch, int64_t seqlen,
               int64_t dim, int64_t a_sb, int64_t a_st, int64_t a_sd, int64_t x_sb, int64_t x_st, int64_t x_sd,
               int reverse, cudaStream_t stream) {
  int status = check_sizes(batch, seqlen, dim);
  if (status != 0) return status;
  if (a == nullptr || x == nullptr || h == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  if (batch == 0 || seqlen == 0 || dim == 0) return static_cast<int>(cudaSuccess);
  linear_scan_fwd_kernel<T><<<grid_for(batch, dim), kThreads, 0, stream>>>(
      static_cast<const T*>(a), static_cast<const T*>(x), h0, static_cast<T*>(h), hT, batch, seqlen, dim,
      Strides{a_sb, a_st, a_sd}, Strides{x_sb, x_st, x_sd}, reverse);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_bwd(const void* a, const void* h, const float* h0, const void* dh, const float* dhT, void* da, void* dx,
               float* dh0, int64_t batch, int64_t seqlen, int64_t dim, int64_t a_sb, int64_t a_st, int64_t a_sd,
               int64_t h_sb, int64_t h_st, int64_t h_sd, int64_t dh_sb, int64_t dh_st, int64_t dh_sd, int reverse,
               cudaStream_t stream) {
  int status = check_sizes(batch, seqlen, dim);
  if (status != 0) return status;
  if (a == nullptr || h == nullptr || dh == nullptr || da == nullptr || dx == nullptr) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (batch == 0 || seqlen == 0 || dim == 0) return static_cast<int>(cudaSuccess);
  linear_scan_bwd_kernel<T><<<grid_for(batch, dim), kThreads, 0, stream>>>(
      static_cast<const T*>(a), static_cast<const T*>(h), h0, static_cast<const T*>(dh), dhT, static_cast<T*>(da),
      static_cast<T*>(dx), dh0, batch, seqlen, dim, Strides{a_sb, a_st, a_sd}, Strides{h_sb, h_st, h_sd},
      Strides{dh_sb, dh_st, dh_sd}, reverse);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

// Forward: a, x [B, T, D] (strides in elements), h0 [B, D] fp32 or null -> h [B, T, D] contiguous,
// hT [B, D] fp32 or null.
#define SEQZOO_LINEAR_SCAN_FWD(SUFFIX, TYPE)                                                                     \
  extern "C" int seqzoo_linear_scan_fwd_##SUFFIX(                                                                \
      const void* a, const void* x, const float* h0, void* h, float* hT, int64_t batch, int64_t seqlen,          \
      int64_t dim, int64_t a_sb, int64_t a_st, int64_t a_sd, int64_t x_sb, int64_t x_st, int64_t x_sd,           \
      int reverse, cudaStream_t stream) {                                                                        \
    return launch_fwd<TYPE>(a, x, h0, h, hT, batch, seqlen, dim, a_sb, a_st, a_sd, x_sb, x_st, x_sd, reverse,    \
                            stream);                                                                             \
  }

// Backward: a, h (the forward's output), dh [B, T, D] (strides in elements), h0 / dhT [B, D] fp32 or null
// -> da, dx [B, T, D] contiguous, dh0 [B, D] fp32 or null.
#define SEQZOO_LINEAR_SCAN_BWD(SUFFIX, TYPE)                                                                     \
  extern "C" int seqzoo_linear_scan_bwd_##SUFFIX(                                                                \
      const void* a, const void* h, const float* h0, const void* dh, const float* dhT, void* da, void* dx,       \
      float* dh0, int64_t batch, int64_t seqlen, int64_t dim, int64_t a_sb, int64_t a_st, int64_t a_sd,          \
      int64_t h_sb, int64_t h_st, int64_t h_sd, int64_t dh_sb, int64_t dh_st, int64_t dh_sd, int reverse,        \
      cudaStream_t stream) {                                                                                     \
    return launch_bwd<TYPE>(a, h, h0, dh, dhT, da, dx, dh0, batch, seqlen, dim, a_sb, a_st, a_sd, h_sb, h_st,    \
                            h_sd, dh_sb, dh_st, dh_sd, reverse, stream);                                         \
  }

SEQZOO_LINEAR_SCAN_FWD(f32, float)
SEQZOO_LINEAR_SCAN_FWD(f16, __half)
SEQZOO_LINEAR_SCAN_FWD(bf16, __nv_bfloat16)
SEQZOO_LINEAR_SCAN_BWD(f32, float)
SEQZOO_LINEAR_SCAN_BWD(f16, __half)
SEQZOO_LINEAR_SCAN_BWD(bf16, __nv_bfloat16)

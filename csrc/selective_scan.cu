// selective_scan.cu: Mamba's selective scan behind ops.selective_scan(backend="cuda").
//
//   h_t = exp(dt_t A) * h_{t-1} + dt_t u_t B_t        y_t = <h_t, C_t>      (per channel d, state n)
//
// (softplus(delta + delta_bias), D u and the silu(z) gate are done by the binding in torch.)
// u [B, T, D] (float, __half or __nv_bfloat16); dt [B, T, D] fp32; A [D, N] fp32; B, C [B, T, G, N] in u's
// type (channel d reads group d / (D/G)); h0, hT [B, D, N] fp32; y [B, T, D] fp32. Every tensor is contiguous
// (the binding passes .contiguous() tensors). N <= 256. Accumulation is fp32.
//
// One warp owns one (batch, channel) pair: lane l holds the states n = l, l + 32, ... (at most 8 each), so a
// time step is one coalesced load of B_t and C_t per warp and a shuffle reduction for <h_t, C_t>. Time is
// walked sequentially; every `chunk` steps the state entering the chunk is stored (hc [B, n_chunks, D, N]):
// the backward recomputes states from these checkpoints instead of keeping all T of them.
//
// Backward, chunks from last to first: the chunk's states are recomputed from its checkpoint into a workspace
// (ws [B, D, chunk, N], allocated by the caller), then walked backwards with the state's adjoint
//   g_t = a_{t+1} g_{t+1} + dy_t C_t  (g_{T-1} = dhT + dy_{T-1} C_{T-1}),   a_t = exp(dt_t A):
//   du_t = dt_t <g_t, B_t>,  ddt_t = u_t <g_t, B_t> + <g_t h_{t-1} a_t, A>,  dA[b] += g_t h_{t-1} a_t dt_t,
//   dB_t += g_t dt_t u_t,  dC_t += dy_t h_t   (summed over the group's channels with atomicAdd into fp32),
//   dh0 = a_0 g_0.  dA is written per batch row ([B, D, N]) and summed by the binding.
//
// Calling convention: csrc/README.md (extern "C" launchers, raw pointers, int64 sizes, scalars, the stream
// last, cudaError_t returned as int; nothing is synchronised).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kPerLane = 8;  // 32 lanes x 8 = 256 states at most
constexpr int kMaxState = 32 * kPerLane;
constexpr int64_t kMaxGridY = 65535;

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

struct Sizes {
  int64_t batch, seqlen, dim, groups, dstate, chunk, n_chunks;
};

template <typename T>
__global__ void selective_scan_fwd_kernel(const T* __restrict__ u, const float* __restrict__ dt,
                                          const float* __restrict__ A, const T* __restrict__ Bm,
                                          const T* __restrict__ Cm, const float* __restrict__ h0,
                                          float* __restrict__ y, float* __restrict__ hc, float* __restrict__ hT,
                                          Sizes s) {
  const int lane = threadIdx.x & 31;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (d >= s.dim) return;  // a whole warp leaves together
  const int64_t grp = d / (s.dim / s.groups);
  float a_n[kPerLane];
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int64_t n = lane + 32 * k;
    a_n[k] = n < s.dstate ? A[d * s.dstate + n] : 0.0f;
  }
  for (int64_t b = blockIdx.y; b < s.batch; b += gridDim.y) {
    float h[kPerLane];
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int64_t n = lane + 32 * k;
      h[k] = (h0 != nullptr && n < s.dstate) ? h0[(b * s.dim + d) * s.dstate + n] : 0.0f;
    }
    for (int64_t t = 0; t < s.seqlen; ++t) {
      if (t % s.chunk == 0) {
        float* ck = hc + ((b * s.n_chunks + t / s.chunk) * s.dim + d) * s.dstate;
#pragma unroll
        for (int k = 0; k < kPerLane; ++k) {
          const int64_t n = lane + 32 * k;
          if (n < s.dstate) ck[n] = h[k];
        }
      }
      const int64_t row = b * s.seqlen + t;
      const float dt_t = dt[row * s.dim + d];
      const float dtu = dt_t * to_float(u[row * s.dim + d]);
      const int64_t bc = (row * s.groups + grp) * s.dstate;
      float acc = 0.0f;
#pragma unroll
      for (int k = 0; k < kPerLane; ++k) {
        const int64_t n = lane + 32 * k;
        if (n < s.dstate) {
          h[k] = __expf(dt_t * a_n[k]) * h[k] + dtu * to_float(Bm[bc + n]);
          acc += h[k] * to_float(Cm[bc + n]);
        }
      }
      acc = warp_sum(acc);
      if (lane == 0) y[row * s.dim + d] = acc;
    }
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int64_t n = lane + 32 * k;
      if (n < s.dstate) hT[(b * s.dim + d) * s.dstate + n] = h[k];
    }
  }
}

template <typename T>
__global__ void selective_scan_bwd_kernel(const T* __restrict__ u, const float* __restrict__ dt,
                                          const float* __restrict__ A, const T* __restrict__ Bm,
                                          const T* __restrict__ Cm, const float* __restrict__ hc,
                                          const float* __restrict__ dy, const float* __restrict__ dhT,
                                          float* __restrict__ ws, float* __restrict__ du, float* __restrict__ ddt,
                                          float* __restrict__ dA, float* __restrict__ dB, float* __restrict__ dC,
                                          float* __restrict__ dh0, Sizes s) {
  const int lane = threadIdx.x & 31;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (d >= s.dim) return;
  const int64_t grp = d / (s.dim / s.groups);
  float a_n[kPerLane];
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int64_t n = lane + 32 * k;
    a_n[k] = n < s.dstate ? A[d * s.dstate + n] : 0.0f;
  }
  for (int64_t b = blockIdx.y; b < s.batch; b += gridDim.y) {
    // The workspace holds, for this (b, d), the state before each step of the current chunk.
    float* w = ws + (b * s.dim + d) * s.chunk * s.dstate;
    float g_next[kPerLane];  // a_{t+1} g_{t+1}: the adjoint flowing into h_t from later steps
    float da[kPerLane];
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int64_t n = lane + 32 * k;
      g_next[k] = (dhT != nullptr && n < s.dstate) ? dhT[(b * s.dim + d) * s.dstate + n] : 0.0f;
      da[k] = 0.0f;
    }
    for (int64_t c = s.n_chunks - 1; c >= 0; --c) {
      const int64_t start = c * s.chunk;
      const int64_t stop = start + s.chunk < s.seqlen ? start + s.chunk : s.seqlen;
      float h[kPerLane];
      const float* ck = hc + ((b * s.n_chunks + c) * s.dim + d) * s.dstate;
#pragma unroll
      for (int k = 0; k < kPerLane; ++k) {
        const int64_t n = lane + 32 * k;
        h[k] = n < s.dstate ? ck[n] : 0.0f;
      }
      // Recompute: each lane writes and later reads only its own entries, so no synchronisation is needed.
      for (int64_t t = start; t < stop; ++t) {
        const int64_t row = b * s.seqlen + t;
        const float dt_t = dt[row * s.dim + d];
        const float dtu = dt_t * to_float(u[row * s.dim + d]);
        const int64_t bc = (row * s.groups + grp) * s.dstate;
#pragma unroll
        for (int k = 0; k < kPerLane; ++k) {
          const int64_t n = lane + 32 * k;
          if (n < s.dstate) {
            w[(t - start) * s.dstate + n] = h[k];
            h[k] = __expf(dt_t * a_n[k]) * h[k] + dtu * to_float(Bm[bc + n]);
          }
        }
      }
      for (int64_t t = stop - 1; t >= start; --t) {
        const int64_t row = b * s.seqlen + t;
        const float dt_t = dt[row * s.dim + d];
        const float u_t = to_float(u[row * s.dim + d]);
        const float dy_t = dy[row * s.dim + d];
        const int64_t bc = (row * s.groups + grp) * s.dstate;
        float gb = 0.0f;
        float glog = 0.0f;
#pragma unroll
        for (int k = 0; k < kPerLane; ++k) {
          const int64_t n = lane + 32 * k;
          if (n < s.dstate) {
            const float h_prev = w[(t - start) * s.dstate + n];
            const float a = __expf(dt_t * a_n[k]);
            const float b_n = to_float(Bm[bc + n]);
            const float h_t = a * h_prev + dt_t * u_t * b_n;
            const float g = g_next[k] + dy_t * to_float(Cm[bc + n]);
            const float dlog = g * h_prev * a;  // d loss / d(dt A)
            gb += g * b_n;
            glog += dlog * a_n[k];
            da[k] += dlog * dt_t;
            atomicAdd(dB + bc + n, g * dt_t * u_t);
            atomicAdd(dC + bc + n, dy_t * h_t);
            g_next[k] = a * g;
          }
        }
        gb = warp_sum(gb);
        glog = warp_sum(glog);
        if (lane == 0) {
          du[row * s.dim + d] = dt_t * gb;
          ddt[row * s.dim + d] = u_t * gb + glog;
        }
      }
    }
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int64_t n = lane + 32 * k;
      if (n < s.dstate) {
        dA[(b * s.dim + d) * s.dstate + n] = da[k];
        if (dh0 != nullptr) dh0[(b * s.dim + d) * s.dstate + n] = g_next[k];
      }
    }
  }
}

int check_sizes(const Sizes& s) {
  if (s.batch < 0 || s.seqlen < 0 || s.dim < 0 || s.groups < 1 || s.dstate < 1 || s.dstate > kMaxState ||
      s.chunk < 1 || s.dim % s.groups != 0 || s.n_chunks != (s.seqlen + s.chunk - 1) / s.chunk) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaSuccess);
}

dim3 grid_for(const Sizes& s) {
  const int64_t blocks_d = (s.dim + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int64_t blocks_b = s.batch < kMaxGridY ? s.batch : kMaxGridY;  // larger batches loop in the kernel
  return dim3(static_cast<unsigned>(blocks_d), static_cast<unsigned>(blocks_b), 1);
}

template <typename T>
int launch_fwd(const void* u, const float* dt, const float* A, const void* Bm, const void* Cm, const float* h0,
               float* y, float* hc, float* hT, Sizes s, cudaStream_t stream) {
  const int status = check_sizes(s);
  if (status != 0) return status;
  if (u == nullptr || dt == nullptr || A == nullptr || Bm == nullptr || Cm == nullptr || y == nullptr ||
      hc == nullptr || hT == nullptr) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (s.batch == 0 || s.seqlen == 0 || s.dim == 0) return static_cast<int>(cudaSuccess);
  selective_scan_fwd_kernel<T><<<grid_for(s), 32 * kWarpsPerBlock, 0, stream>>>(
      static_cast<const T*>(u), dt, A, static_cast<const T*>(Bm), static_cast<const T*>(Cm), h0, y, hc, hT, s);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_bwd(const void* u, const float* dt, const float* A, const void* Bm, const void* Cm, const float* hc,
               const float* dy, const float* dhT, float* ws, float* du, float* ddt, float* dA, float* dB, float* dC,
               float* dh0, Sizes s, cudaStream_t stream) {
  const int status = check_sizes(s);
  if (status != 0) return status;
  if (u == nullptr || dt == nullptr || A == nullptr || Bm == nullptr || Cm == nullptr || hc == nullptr ||
      dy == nullptr || ws == nullptr || du == nullptr || ddt == nullptr || dA == nullptr || dB == nullptr ||
      dC == nullptr) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (s.batch == 0 || s.seqlen == 0 || s.dim == 0) return static_cast<int>(cudaSuccess);
  selective_scan_bwd_kernel<T><<<grid_for(s), 32 * kWarpsPerBlock, 0, stream>>>(
      static_cast<const T*>(u), dt, A, static_cast<const T*>(Bm), static_cast<const T*>(Cm), hc, dy, dhT, ws, du,
      ddt, dA, dB, dC, dh0, s);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

// Forward: u [B,T,D], dt [B,T,D] fp32, A [D,N] fp32, B/C [B,T,G,N], h0 [B,D,N] fp32 or null
// -> y [B,T,D] fp32, hc [B, ceil(T/chunk), D, N] fp32 (chunk checkpoints), hT [B,D,N] fp32. All contiguous.
#define SEQZOO_SELECTIVE_SCAN_FWD(SUFFIX, TYPE)                                                               \
  extern "C" int seqzoo_selective_scan_fwd_##SUFFIX(                                                          \
      const void* u, const float* dt, const float* A, const void* Bm, const void* Cm, const float* h0,        \
      float* y, float* hc, float* hT, int64_t batch, int64_t seqlen, int64_t dim, int64_t groups,             \
      int64_t dstate, int64_t chunk, int64_t n_chunks, cudaStream_t stream) {                                 \
    return launch_fwd<TYPE>(u, dt, A, Bm, Cm, h0, y, hc, hT,                                                  \
                            Sizes{batch, seqlen, dim, groups, dstate, chunk, n_chunks}, stream);              \
  }

// Backward: the forward's inputs and checkpoints, dy [B,T,D] fp32, dhT [B,D,N] fp32 or null, workspace
// ws [B,D,chunk,N] fp32 -> du, ddt [B,T,D] fp32, dA [B,D,N] fp32 (per batch row), dB, dC [B,T,G,N] fp32
// (zeroed by the caller: accumulated with atomicAdd), dh0 [B,D,N] fp32 or null.
#define SEQZOO_SELECTIVE_SCAN_BWD(SUFFIX, TYPE)                                                               \
  extern "C" int seqzoo_selective_scan_bwd_##SUFFIX(                                                          \
      const void* u, const float* dt, const float* A, const void* Bm, const void* Cm, const float* hc,        \
      const float* dy, const float* dhT, float* ws, float* du, float* ddt, float* dA, float* dB, float* dC,   \
      float* dh0, int64_t batch, int64_t seqlen, int64_t dim, int64_t groups, int64_t dstate, int64_t chunk,  \
      int64_t n_chunks, cudaStream_t stream) {                                                                \
    return launch_bwd<TYPE>(u, dt, A, Bm, Cm, hc, dy, dhT, ws, du, ddt, dA, dB, dC, dh0,                      \
                            Sizes{batch, seqlen, dim, groups, dstate, chunk, n_chunks}, stream);              \
  }

SEQZOO_SELECTIVE_SCAN_FWD(f32, float)
SEQZOO_SELECTIVE_SCAN_FWD(f16, __half)
SEQZOO_SELECTIVE_SCAN_FWD(bf16, __nv_bfloat16)
SEQZOO_SELECTIVE_SCAN_BWD(f32, float)
SEQZOO_SELECTIVE_SCAN_BWD(f16, __half)
SEQZOO_SELECTIVE_SCAN_BWD(bf16, __nv_bfloat16)

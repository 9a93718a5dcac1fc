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
//   dB_t += g_t dt_t u_t,  dC_t += dy_t h_t   (summed over the group's channels),  dh0 = a_0 g_0.
// dA is written per batch row ([B, D, N]) and summed by the binding.
//
// dB and dC are deterministic (no atomics), as in the Triton backward: the channels of a group are split into
// n_cblocks channel blocks; a thread block owns one (group, channel block, batch row) and walks its channels
// kBwdWarps at a time (one warp each, in "rounds"), in lockstep over time. At every step each warp puts its
// channel's dB_t, dC_t terms in shared memory, and after a __syncthreads the block sums them over its warps in
// warp order and adds that to its own row of the partials dBp, dCp [n_cblocks, B, T, G, N] (fp32; the first
// round stores, later rounds add; a row has one writer, the same thread every round). The binding sums the
// partials over the channel blocks (torch .sum(0), a fixed order): the same inputs give bitwise the same
// gradients, run after run.
//
// Calling convention: csrc/README.md (extern "C" launchers, raw pointers, int64 sizes, scalars, the stream
// last, cudaError_t returned as int; nothing is synchronised).

#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"

namespace {

constexpr int kWarpsPerBlock = 4;  // forward: channels (one warp each) per block
constexpr int kBwdWarps = 4;       // backward: channels a block walks at once (one warp each)
constexpr int kPerLane = 8;  // 32 lanes x 8 = 256 states at most
constexpr int kMaxState = 32 * kPerLane;
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridX = 2147483647;

using seqzoo::to_float;

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
                                          float* __restrict__ dA, float* __restrict__ dBp, float* __restrict__ dCp,
                                          float* __restrict__ dh0, Sizes s, int64_t n_cblocks) {
  // Per step, each warp's dB_t terms in [0, N) and dC_t terms in [N, 2N); two buffers, alternating steps, so
  // one barrier a step separates the writes of step t + 1 from the reads of step t (which precede it).
  __shared__ float terms[2][kBwdWarps][2 * kMaxState];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t per_group = s.dim / s.groups;
  const int64_t grp = blockIdx.x / n_cblocks;
  const int64_t cblock = blockIdx.x % n_cblocks;
  // This block's channels within the group: [c_begin, c_begin + n_here) (none for a trailing empty block,
  // which still writes its partial rows: zeros).
  const int64_t per_block = (per_group + n_cblocks - 1) / n_cblocks;
  const int64_t c_begin = cblock * per_block;
  const int64_t c_left = per_group - c_begin;
  const int64_t n_here = c_left <= 0 ? 0 : (c_left < per_block ? c_left : per_block);
  const int64_t rounds = n_here == 0 ? 1 : (n_here + kBwdWarps - 1) / kBwdWarps;
  const int64_t n2 = 2 * s.dstate;
  int buf = 0;
  // Every loop bound below is the same for all threads of the block (the barriers need that): a warp with no
  // channel in a round skips the work, never a barrier.
  for (int64_t b = blockIdx.y; b < s.batch; b += gridDim.y) {
    for (int64_t r = 0; r < rounds; ++r) {
      const int64_t left = n_here - r * kBwdWarps;
      const int n_active = left <= 0 ? 0 : (left < kBwdWarps ? static_cast<int>(left) : kBwdWarps);
      const bool active = warp < n_active;  // warp-uniform
      const int64_t d = grp * per_group + c_begin + r * kBwdWarps + warp;  // meaningful only when active
      float a_n[kPerLane];
      float g_next[kPerLane];  // a_{t+1} g_{t+1}: the adjoint flowing into h_t from later steps
      float da[kPerLane];
#pragma unroll
      for (int k = 0; k < kPerLane; ++k) {
        const int64_t n = lane + 32 * k;
        const bool here = active && n < s.dstate;
        a_n[k] = here ? A[d * s.dstate + n] : 0.0f;
        g_next[k] = (here && dhT != nullptr) ? dhT[(b * s.dim + d) * s.dstate + n] : 0.0f;
        da[k] = 0.0f;
      }
      // The workspace holds, for this (b, d), the state before each step of the current chunk.
      float* w = active ? ws + (b * s.dim + d) * s.chunk * s.dstate : nullptr;
      for (int64_t c = s.n_chunks - 1; c >= 0; --c) {
        const int64_t start = c * s.chunk;
        const int64_t stop = start + s.chunk < s.seqlen ? start + s.chunk : s.seqlen;
        if (active) {
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
        }
        for (int64_t t = stop - 1; t >= start; --t) {
          const int64_t row = b * s.seqlen + t;
          if (active) {
            const float dt_t = dt[row * s.dim + d];
            const float u_t = to_float(u[row * s.dim + d]);
            const float dy_t = dy[row * s.dim + d];
            const int64_t bc = (row * s.groups + grp) * s.dstate;
            float* mine = terms[buf][warp];
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
                mine[n] = g * dt_t * u_t;
                mine[s.dstate + n] = dy_t * h_t;
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
          __syncthreads();
          // This block's partial row for step t: the warps' terms summed in warp order.
          const int64_t part = (((cblock * s.batch + b) * s.seqlen + t) * s.groups + grp) * s.dstate;
          for (int64_t e = threadIdx.x; e < n2; e += blockDim.x) {
            float sum = 0.0f;
            for (int wi = 0; wi < n_active; ++wi) sum += terms[buf][wi][e];
            float* dst = e < s.dstate ? dBp + part + e : dCp + part + (e - s.dstate);
            *dst = r == 0 ? sum : *dst + sum;
          }
          buf ^= 1;
        }
      }
      if (active) {
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

dim3 bwd_grid_for(const Sizes& s, int64_t n_cblocks) {
  const int64_t blocks_b = s.batch < kMaxGridY ? s.batch : kMaxGridY;  // larger batches loop in the kernel
  return dim3(static_cast<unsigned>(s.groups * n_cblocks), static_cast<unsigned>(blocks_b), 1);
}

template <typename T>
int launch_bwd(const void* u, const float* dt, const float* A, const void* Bm, const void* Cm, const float* hc,
               const float* dy, const float* dhT, float* ws, float* du, float* ddt, float* dA, float* dBp,
               float* dCp, float* dh0, Sizes s, int64_t n_cblocks, cudaStream_t stream) {
  const int status = check_sizes(s);
  if (status != 0) return status;
  // One block per (group, channel block) along x: at most 2^31 - 1 of them.
  if (n_cblocks < 1 || n_cblocks > kMaxGridX / s.groups) return static_cast<int>(cudaErrorInvalidValue);
  if (u == nullptr || dt == nullptr || A == nullptr || Bm == nullptr || Cm == nullptr || hc == nullptr ||
      dy == nullptr || ws == nullptr || du == nullptr || ddt == nullptr || dA == nullptr || dBp == nullptr ||
      dCp == nullptr) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (s.batch == 0 || s.seqlen == 0 || s.dim == 0) return static_cast<int>(cudaSuccess);
  selective_scan_bwd_kernel<T><<<bwd_grid_for(s, n_cblocks), 32 * kBwdWarps, 0, stream>>>(
      static_cast<const T*>(u), dt, A, static_cast<const T*>(Bm), static_cast<const T*>(Cm), hc, dy, dhT, ws, du,
      ddt, dA, dBp, dCp, dh0, s, n_cblocks);
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
// ws [B,D,chunk,N] fp32 -> du, ddt [B,T,D] fp32, dA [B,D,N] fp32 (per batch row), dBp, dCp
// [n_cblocks,B,T,G,N] fp32 (per channel block; every entry written, the caller sums over the first axis),
// dh0 [B,D,N] fp32 or null. n_cblocks: channel blocks per group, 1 <= n_cblocks (more than D/G leaves
// blocks with no channel, whose partials are zeros).
#define SEQZOO_SELECTIVE_SCAN_BWD(SUFFIX, TYPE)                                                               \
  extern "C" int seqzoo_selective_scan_bwd_##SUFFIX(                                                          \
      const void* u, const float* dt, const float* A, const void* Bm, const void* Cm, const float* hc,        \
      const float* dy, const float* dhT, float* ws, float* du, float* ddt, float* dA, float* dBp, float* dCp,  \
      float* dh0, int64_t batch, int64_t seqlen, int64_t dim, int64_t groups, int64_t dstate, int64_t chunk,  \
      int64_t n_chunks, int64_t n_cblocks, cudaStream_t stream) {                                             \
    return launch_bwd<TYPE>(u, dt, A, Bm, Cm, hc, dy, dhT, ws, du, ddt, dA, dBp, dCp, dh0,                    \
                            Sizes{batch, seqlen, dim, groups, dstate, chunk, n_chunks}, n_cblocks, stream);   \
  }

SEQZOO_SELECTIVE_SCAN_FWD(f32, float)
SEQZOO_SELECTIVE_SCAN_FWD(f16, __half)
SEQZOO_SELECTIVE_SCAN_FWD(bf16, __nv_bfloat16)
SEQZOO_SELECTIVE_SCAN_BWD(f32, float)
SEQZOO_SELECTIVE_SCAN_BWD(f16, __half)
SEQZOO_SELECTIVE_SCAN_BWD(bf16, __nv_bfloat16)

"""Triton pieces shared by the linear-attention ops' kernels (``ops.gla``, ``ops.delta_rule``), as
flash-linear-attention shares its ``chunk_h`` / ``chunk_o`` between GLA, DeltaNet and Gated DeltaNet.

Not an op (no reference, no backends): the kernels stay in their op (``gla/triton_chunk.py``,
``gla/triton_recurrent.py``, ``delta_rule/triton_chunk.py``, ``delta_rule/triton_recurrent.py``) and call
these ``@triton.jit`` device functions, which Triton inlines into each kernel:

- :mod:`.triton_tiles`: addressing (a program's batch and head, masked [rows, columns] tiles of a [B, T, H, C]
  tensor or of a chunk-padded buffer, a [K, V] state tile, a state that starts at zero or at h0) and the
  host-side tile width ``block``;
- :mod:`.triton_chunk`: the chunk-state recurrence and the chunk output. With h the state before a chunk,
  G the log decays summed from the chunk start (per key [BT, K] for GLA, per head [BT] for the delta rule)
  and x the values written (v for GLA, u = U - W h for the delta rule):

      h_next = exp(G_last) h + (k exp(G_last - G))^T x          (forward; carry_state)
      dh     = exp(G_last) dh' + scale (q exp(G))^T do [- W^T du] (backward; carry_state, the same function)
      o      = scale ((q exp(G)) h + A x)                        (the inter-chunk term: decayed_dot)
      dx     = scale A^T do + (k exp(G_last - G)) dh'            (dv for GLA, du for the delta rule)

- :mod:`.triton_recurrent`: one token of the fused recurrent kernels (read a row, decay a state tile, write
  k x^T into it, read q S out of it) and the host-side tile choice.

Why device functions rather than fla's shared kernels with constexpr switches: the two ops keep their
states differently. GLA's state recurrence splits the key dimension over programs and keeps a [BK, BV]
state tile in registers; the delta rule's needs the whole key dimension for u = U - W h, so its program
owns a value tile and keeps the state in global memory, read back key tile by key tile (head dims up to
256 without a [256, BV] register tile). One kernel for both would carry two loop structures behind a
switch, sharing nothing but its name. The arithmetic inside the loops is the same, and that is what lives
here: inlined, each kernel keeps its registers, spills and shared memory (the compile check's report before
and after, bench_results/compile-check-sm90-sm80.md: all equal but sm_90 gla ``_chunk_bwd_dh_kernel``, 94 ->
92 registers), and a per-key or per-head decay is the caller's broadcast ([BT, BK] against [BT, 1]), not a
branch. Where an inlined piece moved ptxas's choices the caller keeps the order it had: the [BT, BT] tile
is loaded by the caller (``chunk_tile``), and gla's recurrent backward writes its forward walk out. Nothing here has run on a GPU: the
kernels are checked under the interpreter (tests/test_gla.py, tests/test_delta_rule.py) and compiled for
sm_90 / sm_80 by ``make compile-check``.
"""

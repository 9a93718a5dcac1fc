"""ops.selective_scan / ops.selective_state_update: every backend against the step-by-step reference (outputs,
final state and the gradients of u, delta, A, B, C, D, z, delta_bias and the initial state), with and without
groups, T = 1 and T not a multiple of the chunk, fp32 and bf16; the reference against a closed form; the decoding
step against the scan one token further; argument errors; the mamba mixer's initialisation."""

from __future__ import annotations

import pytest
import torch

from seqzoo import ops
from seqzoo.ops.testing import assert_matches_reference

selective_scan = ops.selective_scan
HAS_CUDA = torch.cuda.is_available()


def make(b=2, t=9, d=6, n=4, groups=None, dtype=torch.float32, full=True, device="cpu", seed=0):
    """Inputs the way the mamba mixer makes them: A < 0 (S4D-Real), dt = softplus(delta + bias) ~ 0.01..1."""
    g = torch.Generator().manual_seed(seed)
    bc = (b, t, n) if groups is None else (b, t, groups, n)
    x = {
        "u": torch.randn(b, t, d, generator=g),
        "delta": torch.randn(b, t, d, generator=g) - 1.0,
        "A": -torch.exp(torch.randn(d, n, generator=g)),
        "B": torch.randn(bc, generator=g),
        "C": torch.randn(bc, generator=g),
    }
    if full:
        x["D"] = torch.randn(d, generator=g)
        x["z"] = torch.randn(b, t, d, generator=g)
        x["delta_bias"] = torch.randn(d, generator=g) * 0.5
        x["initial_state"] = torch.randn(b, d, n, generator=g)
    out = {k: v.to(device) for k, v in x.items()}
    for k in ("u", "delta", "B", "C", "z"):  # activations in the low precision; parameters and state fp32
        if k in out:
            out[k] = out[k].to(dtype)
    return out


def check(backend, softplus=True, tolerance=None, **case):
    assert_matches_reference(
        selective_scan,
        backend,
        make(**case),
        delta_softplus=softplus,
        output_final_state=True,
        tolerance=tolerance,
    )


# -- the reference -------------------------------------------------------------------------------------------


def test_reference_is_the_closed_form():
    # h_T = sum_s exp(A sum_{r>s} dt_r) dt_s u_s B_s + exp(A sum_r dt_r) h_0, in fp64, no softplus.
    x = {k: v.double() for k, v in make(t=5, groups=2, full=True).items()}
    x["delta"] = x["delta"].abs()
    y, h = selective_scan(**x, output_final_state=True, backend="reference")
    dt = x["delta"] + x["delta_bias"]
    Bc = x["B"].repeat_interleave(3, dim=2)
    Cc = x["C"].repeat_interleave(3, dim=2)
    for t in range(5):
        state = torch.exp(x["A"] * dt[:, : t + 1].sum(1)[..., None]) * x["initial_state"]
        for s in range(t + 1):
            decay = torch.exp(x["A"] * dt[:, s + 1 : t + 1].sum(1)[..., None])
            state = state + decay * (dt[:, s] * x["u"][:, s])[..., None] * Bc[:, s]
        want = ((state * Cc[:, t]).sum(-1) + x["D"] * x["u"][:, t]) * torch.nn.functional.silu(x["z"][:, t])
        torch.testing.assert_close(y[:, t], want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, state, rtol=1e-12, atol=1e-12)


def test_states_chain_across_calls():
    x = make(t=30)
    y, h = selective_scan(**x, delta_softplus=True, output_final_state=True)
    first = {k: (v[:, :11] if v.dim() >= 3 and k != "initial_state" else v) for k, v in x.items()}
    rest = {k: v[:, 11:] for k, v in x.items() if v.dim() >= 3 and k != "initial_state"}
    y1, s = selective_scan(**first, delta_softplus=True, output_final_state=True)
    y2, s = selective_scan(
        **rest,
        A=x["A"],
        D=x["D"],
        delta_bias=x["delta_bias"],
        initial_state=s,
        delta_softplus=True,
        output_final_state=True,
    )
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    torch.testing.assert_close(s, h)


# -- torch -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1, 2, 23, 24, 25, 100, 301])  # the blocked scan's sequential cut-off is 24
@pytest.mark.parametrize("groups", [None, 1, 3])
def test_torch_matches_reference(t, groups):
    check("torch", t=t, groups=groups)


@pytest.fixture
def loop_path(monkeypatch):
    """Every real scan on the CPU takes the torch backend's loop path (torch_loop.py), however narrow."""
    from seqzoo.ops.selective_scan import torch_loop

    monkeypatch.setattr(torch_loop, "LOOP_MIN_STATES", 1)


@pytest.mark.parametrize("t", [1, 2, 37])
@pytest.mark.parametrize("groups", [None, 1, 3])
@pytest.mark.parametrize("full", [False, True])
def test_torch_loop_path_matches_reference(loop_path, t, groups, full):
    x = make(t=t, groups=groups, full=full)
    if not full:  # no softplus: dt = delta, kept > 0 (a stable scan; negative dt overflows fp32 by t = 37)
        x["delta"] = x["delta"].abs()
    assert_matches_reference(selective_scan, "torch", x, delta_softplus=full, output_final_state=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_torch_loop_path_dtypes(loop_path, dtype):
    check("torch", t=20, groups=2, dtype=dtype)


def test_torch_loop_path_some_gradients_and_inference(loop_path):
    x = make(t=15, groups=3)
    # Only u and C differentiated (the others' gradients are not asked for); then no autograd at all.
    assert_matches_reference(
        selective_scan, "torch", x, grad=("u", "C"), delta_softplus=True, output_final_state=True
    )
    with torch.no_grad():
        y, h = selective_scan(**x, delta_softplus=True, output_final_state=True, backend="torch")
        y_ref, h_ref = selective_scan(**x, delta_softplus=True, output_final_state=True, backend="reference")
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)


def test_torch_picks_the_loop_for_wide_real_scans(monkeypatch):
    from seqzoo.ops.selective_scan import torch_loop

    A = -torch.ones(128, 16)
    assert torch_loop.use_loop(64, 128, 16, A, torch.device("cpu"))  # Mamba at d_model 64, batch 64
    assert not torch_loop.use_loop(1, 128, 16, A, torch.device("cpu"))  # one long sequence: blocked
    assert not torch_loop.use_loop(64, 128, 16, A.to(torch.complex64), torch.device("cpu"))
    calls = []
    real = torch_loop.LoopScan.apply
    monkeypatch.setattr(torch_loop.LoopScan, "apply", lambda *a: calls.append(1) or real(*a))
    x = make(b=64, t=3, d=128, n=16, full=False)
    selective_scan(**x, backend="torch")
    assert calls, "a 64 x 128 x 16 scan should take the loop path"


@pytest.mark.parametrize("softplus", [False, True])
def test_torch_minimal_arguments(softplus):
    x = make(t=40, full=False)
    if not softplus:
        x["delta"] = torch.nn.functional.softplus(x["delta"])
    assert_matches_reference(selective_scan, "torch", x, delta_softplus=softplus, output_final_state=True)
    assert selective_scan(**x)[1] is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t", [1, 77])
def test_torch_low_precision(dtype, t):
    check("torch", t=t, groups=2, dtype=dtype)


def test_torch_large_state_and_strong_decay():
    # d_state 256, and steps whose decay exp(dt A) underflows to 0 within a few tokens: nothing may overflow.
    x = make(b=1, t=50, d=3, n=256)
    x["delta"] = x["delta"] + 6.0
    assert_matches_reference(selective_scan, "torch", x, delta_softplus=True, output_final_state=True)


def test_auto_is_torch_on_cpu():
    selective_scan(**make())
    assert selective_scan.last_backend == "torch"


# -- the decoding step ---------------------------------------------------------------------------------------------


def last_token_by_state_update(x, backend):
    """Scan the first 7 of 8 tokens (reference), then step the 8th with ``selective_state_update``.
    Returns (its y, the full scan's y at the 8th token, its new state, the full scan's final state, the state
    passed in, a copy of that state taken before the step)."""
    y, h = selective_scan(**x, delta_softplus=True, output_final_state=True, backend="reference")
    prefix = {k: (v[:, :7] if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items()}
    _, state = selective_scan(**prefix, delta_softplus=True, output_final_state=True, backend="reference")
    before = state.clone()
    y_t, new_state = ops.selective_state_update(
        state,
        x["u"][:, 7],
        x["delta"][:, 7],
        x["A"],
        x["B"][:, 7],
        x["C"][:, 7],
        x["D"],
        x["z"][:, 7],
        x["delta_bias"],
        True,
        backend=backend,
    )
    return y_t, y[:, 7], new_state, h, state, before


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("groups", [None, 2])
def test_state_update_is_the_scan_one_token_further(backend, groups):
    y_t, y_ref, new_state, h, state, before = last_token_by_state_update(make(t=8, groups=groups), backend)
    torch.testing.assert_close(y_t, y_ref)
    torch.testing.assert_close(new_state, h)
    assert not torch.equal(new_state, state)  # a new state; the one passed in is unchanged
    assert torch.equal(state, before)


def test_state_update_gradients_match_reference():
    x = make(t=1)
    inputs = {
        "state": x.pop("initial_state"),
        "x": x["u"][:, 0],
        "dt": x["delta"][:, 0],
        "A": x["A"],
        "B": x["B"][:, 0],
        "C": x["C"][:, 0],
        "D": x["D"],
        "z": x["z"][:, 0],
        "dt_bias": x["delta_bias"],
    }
    assert_matches_reference(ops.selective_state_update, "torch", inputs, dt_softplus=True)


# -- argument errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, exc, word",
    [
        (dict(u=torch.randn(2, 9)), ValueError, "u"),
        (dict(delta=torch.randn(2, 8, 6)), ValueError, "delta"),
        (dict(A=torch.randn(5, 4)), ValueError, "A"),
        (dict(A=torch.randn(6, 300)), ValueError, "A"),
        (dict(B=torch.randn(2, 9, 5)), ValueError, "B"),
        (dict(C=torch.randn(2, 9, 4, 4)), ValueError, "C"),  # 4 groups do not divide D=6
        (dict(D=torch.randn(5)), ValueError, "D"),
        (dict(z=torch.randn(2, 9, 5)), ValueError, "z"),
        (dict(delta_bias=torch.randn(6, 1)), ValueError, "delta_bias"),
        (dict(initial_state=torch.randn(2, 6, 3)), ValueError, "initial_state"),
        (dict(u=torch.randint(0, 3, (2, 9, 6))), TypeError, "u"),
        (dict(delta_softplus=1), TypeError, "delta_softplus"),
        (dict(output_final_state="yes"), TypeError, "output_final_state"),
    ],
)
def test_bad_arguments_name_the_argument(change, exc, word):
    args = {**make(), **change}
    with pytest.raises(exc, match=word):
        selective_scan(**args)


def test_state_update_bad_arguments():
    with pytest.raises(ValueError, match="state"):
        ops.selective_state_update(
            torch.randn(2, 6, 3),
            torch.randn(2, 6),
            torch.randn(2, 6),
            -torch.rand(6, 4),
            torch.randn(2, 4),
            torch.randn(2, 4),
        )


def test_kernels_refuse_float64_and_cuda_says_why():
    x = {k: v.double() for k, v in make().items()}
    with pytest.raises(ValueError, match="float64|Triton"):
        selective_scan(**x, backend="triton")
    reason = selective_scan.backends("cpu")["cuda"]
    assert reason != "available" and "cuda" in reason.lower()
    with pytest.raises(ValueError, match="cuda"):
        selective_scan(**make(), backend="cuda")


# -- the mamba mixer's initialisation ------------------------------------------------------------------------------


def test_mamba_initialisation_survives_the_model_init():
    import seqzoo
    from seqzoo.models.backbone import init_weights  # the GPT-style init CausalLM applies

    m = seqzoo.build_mixer("mamba", 64, d_state=8)
    assert m.dt_rank == 4 and m.d_inner == 128
    init_weights(torch.nn.Sequential(m))  # normal(0.02) over every Linear, then post_init
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6 and dt.min() < 0.01 < dt.max()
    assert m.dt_proj.weight.abs().max() <= 0.5 and m.dt_proj.weight.std() > 0.1
    torch.testing.assert_close(-torch.exp(m.A_log[5]), -torch.arange(1.0, 9.0))
    assert m.A_log._no_weight_decay and m.D._no_weight_decay and torch.equal(m.D, torch.ones(128))


# -- triton (TRITON_INTERPRET=1 on a CPU) ---------------------------------------------------------------------

triton_here = pytest.mark.skipif(
    selective_scan.backends("cpu")["triton"] != "available", reason="Triton cannot run here"
)


@triton_here
@pytest.mark.parametrize("t", [1, 8, 19])  # the interpreter's chunk is 8: one step, one chunk, a ragged third
@pytest.mark.parametrize("groups", [None, 3])
def test_triton_matches_reference(t, groups):
    check("triton", t=t, groups=groups)


@triton_here
def test_triton_minimal_arguments_and_wide_blocks():
    # No D, z, bias, initial state; no gradient through the final state; 8 channels per group -> 4-wide blocks
    # (several blocks per group, partial dB/dC summed); d_state 5 (padded to 8).
    x = make(b=1, t=11, d=16, n=5, groups=2, full=False)
    assert_matches_reference(selective_scan, "triton", x, delta_softplus=True)


@triton_here
def test_triton_without_softplus_strong_decay():
    x = make(b=1, t=10, d=2, n=3)
    x["delta"] = torch.nn.functional.softplus(x["delta"] + 3.0)
    assert_matches_reference(selective_scan, "triton", x, delta_softplus=False, output_final_state=True)


@triton_here
def test_triton_bf16():
    check("triton", t=9, groups=2, dtype=torch.bfloat16)


@triton_here
def test_triton_backward_split_over_states(monkeypatch):
    # The backward splits the N states over programs (du and ddt summed over the state blocks), here 3 blocks
    # of 2 for N = 5, the last one part-masked.
    from seqzoo.ops.selective_scan import triton as K

    monkeypatch.setattr(K, "_bwd_blocks", lambda d_per_group, chunk, bn: (1, 2, 1))
    check("triton", t=9, n=5, groups=2)


# -- the CUDA source and the GPU backends ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_library(tmp_path_factory):
    """csrc/selective_scan.cu built as a shared library for sm_90 (only host code runs without a GPU)."""
    import ctypes

    from seqzoo.ops import _csrc

    try:
        nvcc = _csrc.find_nvcc()
    except RuntimeError:
        pytest.skip("nvcc not installed")
    path = tmp_path_factory.mktemp("csrc") / "selective_scan.so"
    _csrc.compile_source(_csrc.csrc_dir() / "selective_scan.cu", "sm_90", path, nvcc=nvcc)
    return ctypes.CDLL(str(path))


@pytest.mark.parametrize("kind", ["fwd", "bwd"])
@pytest.mark.parametrize("suffix", ["f32", "f16", "bf16"])
def test_cuda_launchers_follow_the_abi(built_library, kind, suffix):
    # Every launcher exists with the binding's signature and checks its arguments before launching: an empty
    # problem is a success, bad sizes or a missing tensor cudaErrorInvalidValue (1). Nothing reaches a GPU.
    import ctypes

    from seqzoo.ops.selective_scan import cuda as binding

    fn = getattr(built_library, f"seqzoo_selective_scan_{kind}_{suffix}")
    fn.argtypes = binding._FWD_ARGTYPES if kind == "fwd" else binding._BWD_ARGTYPES
    fn.restype = ctypes.c_int
    n_ptr = 9 if kind == "fwd" else 15
    dummy = ctypes.c_void_p(0x1000)  # never dereferenced

    def call(ptrs, b, t, d, g, n, chunk=64, n_cblocks=1):
        extra = () if kind == "fwd" else (n_cblocks,)  # the backward's channel blocks per group
        return fn(*ptrs, b, t, d, g, n, chunk, -(-t // chunk), *extra, None)

    assert call([dummy] * n_ptr, 0, 5, 4, 1, 16) == 0
    assert call([dummy] * n_ptr, 2, 5, 0, 1, 16) == 0
    assert call([dummy] * n_ptr, 2, 5, 4, 1, 257) == 1  # d_state above 256
    assert call([dummy] * n_ptr, 2, 5, 6, 4, 16) == 1  # groups must divide D
    assert call([None] * n_ptr, 2, 5, 4, 1, 16) == 1
    if kind == "bwd":
        assert call([dummy] * n_ptr, 0, 5, 4, 1, 16, n_cblocks=3) == 0
        assert call([dummy] * n_ptr, 2, 5, 4, 1, 16, n_cblocks=0) == 1  # at least one channel block
        assert call([dummy] * n_ptr, 2, 5, 4, 2, 16, n_cblocks=2**31) == 1  # grid.x over 2^31 - 1


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("t", [1, 16, 17, 300])
@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("n", [16, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_gpu_backends_match_reference(backend, t, groups, n, dtype):
    check(backend, b=2, t=t, d=40, n=n, groups=groups, dtype=dtype, device="cuda")


@pytest.mark.parametrize("complex_a", [False, True])
def test_torch_inference_in_segments_carries_the_state(monkeypatch, complex_a):
    # Inference scans time in segments of at least 64 steps: force three (64, 64, 22) and compare.
    from seqzoo.ops.selective_scan import torch as backend

    monkeypatch.setattr(backend, "SEGMENT_STATES", 1)
    x = make(t=150, groups=3)
    if complex_a:
        x["A"] = torch.complex(x["A"], torch.randn_like(x["A"]))
        x["initial_state"] = x["initial_state"].to(torch.complex64)
    with torch.no_grad():
        y, h = selective_scan(**x, delta_softplus=True, output_final_state=True, backend="torch")
        y_ref, h_ref = selective_scan(**x, delta_softplus=True, output_final_state=True, backend="reference")
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups", [None, 2])
def test_torch_inference_path_matches_reference(groups):
    # Without autograd the torch backend takes an in-place path (states written over a work buffer).
    x = make(t=60, groups=groups)
    with torch.no_grad():
        y, h = selective_scan(**x, delta_softplus=True, output_final_state=True, backend="torch")
        y_ref, h_ref = selective_scan(**x, delta_softplus=True, output_final_state=True, backend="reference")
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-4)


@triton_here
def test_triton_largest_state():
    # d_state 256 (the largest the kernels take): one channel per program, every state in one tile.
    check("triton", b=1, t=10, d=2, n=256)


# Lowers both Triton kernels to PTX for an H100 (sm_90) without a GPU: catches what the interpreter accepts but
# the compiler would not (3-D scans, flips, masks). Runs in a subprocess because the interpreter is on here.
_COMPILE_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from seqzoo.ops.selective_scan import triton as K
def compile_kernel(fn, names, n_ptr, n_int, consts, elem):
    sig = {a: (elem if a in ("U", "BM", "CM") else "*fp32") for a in names[:n_ptr]}
    sig.update({a: "i32" for a in names[n_ptr:n_ptr + n_int]})
    sig.update({a: "constexpr" for a in names[n_ptr + n_int:]})
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": 4})
fwd = "U DT A BM CM H0 Y HC HT T D G N DPG NC HAS_H0 L BD BN".split()
bwd = "U DT A BM CM HC DY DHT DU DDT DA DB DC DH0 B T D G N DPG NC HAS_DHT L BD BN".split()
for elem in ("*fp32", "*bf16"):
    compile_kernel(K._ss_fwd_kernel, fwd, 9, 6, {"HAS_H0": True, "L": 16, "BD": 16, "BN": 16}, elem)
    compile_kernel(K._ss_bwd_kernel, bwd, 14, 7, {"HAS_DHT": True, "L": 16, "BD": 1, "BN": 256}, elem)
print("compiled")
"""


@pytest.mark.skipif(not __import__("importlib").util.find_spec("triton"), reason="triton not installed")
def test_triton_kernels_compile_for_sm90():
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_SM90], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]


# -- complex A (mamba-ssm's selective_scan_ref convention: y = 2 Re<h, C> + D u) -------------------------------


def s4d_lin(d, n):
    """S4D-Lin: A_n = -1/2 + i pi n, the same for every channel (Re A < 0: every decay inside the unit disc)."""
    return torch.complex(torch.full((d, n), -0.5), torch.pi * torch.arange(n).float().expand(d, n))


def make_complex(complex_bc=False, initial_state="complex", dtype=torch.float32, **case):
    """make()'s inputs with a complex A; B, C complex when ``complex_bc``; the initial state complex, real
    (promoted by the op) or absent."""
    x = make(dtype=dtype, **case)
    g = torch.Generator().manual_seed(1)
    d, n = x["A"].shape
    x["A"] = s4d_lin(d, n)
    if complex_bc:
        for k in ("B", "C"):
            x[k] = torch.complex(x[k].float(), torch.randn(x[k].shape, generator=g))
    if initial_state == "complex" and "initial_state" in x:
        x["initial_state"] = torch.complex(
            x["initial_state"], torch.randn(x["initial_state"].shape, generator=g)
        )
    elif initial_state is None:
        x.pop("initial_state", None)
    return x


def test_complex_reference_by_hand():
    # T=2, D=1, N=1, no softplus, computed with Python complex numbers (cmath), not with the op's code.
    import cmath
    import math

    a, h0 = -0.5 + 3.0j, 0.3 - 0.2j
    u, dt, z = [0.7, -1.2], [0.4, 0.9], [0.5, -0.3]
    Bv, Cv = [1.5 - 0.5j, -0.8 + 0.25j], [0.6 + 1.1j, -0.4 - 0.7j]
    d_skip = 0.25
    silu = [v / (1 + math.exp(-v)) for v in z]
    h1 = cmath.exp(dt[0] * a) * h0 + dt[0] * u[0] * Bv[0]
    h2 = cmath.exp(dt[1] * a) * h1 + dt[1] * u[1] * Bv[1]
    want_y = [(2 * (h * c).real + d_skip * v) * s for h, c, v, s in zip((h1, h2), Cv, u, silu)]

    def t(v, shape):
        return torch.tensor(
            v, dtype=torch.complex128 if any(isinstance(e, complex) for e in v) else torch.float64
        ).view(shape)

    x = {
        "u": t(u, (1, 2, 1)),
        "delta": t(dt, (1, 2, 1)),
        "A": t([a], (1, 1)),
        "B": t(Bv, (1, 2, 1)),
        "C": t(Cv, (1, 2, 1)),
        "D": t([d_skip], (1,)),
        "z": t(z, (1, 2, 1)),
        "initial_state": t([h0], (1, 1, 1)),
    }
    for backend in ("reference", "torch"):
        y, h = selective_scan(**x, output_final_state=True, backend=backend)
        assert y.dtype == torch.float64 and h.dtype == torch.complex128
        torch.testing.assert_close(
            y.flatten(), torch.tensor(want_y, dtype=torch.float64), rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(
            h.flatten(), torch.tensor([h2], dtype=torch.complex128), rtol=1e-12, atol=1e-12
        )


def test_complex_a_with_zero_imaginary_part_is_the_real_scan_with_twice_c():
    # With Im A = 0 and real B, C and state, h stays real and 2 Re<h, C> = <h, 2C>: the conjugate-pair readout.
    x = make(t=30, groups=2)
    yc, hc = selective_scan(
        **{**x, "A": x["A"].to(torch.complex64)}, delta_softplus=True, output_final_state=True
    )
    y, h = selective_scan(**{**x, "C": 2 * x["C"]}, delta_softplus=True, output_final_state=True)
    assert hc.dtype == torch.complex64
    torch.testing.assert_close(yc, y)
    torch.testing.assert_close(hc, h.to(torch.complex64))


@pytest.mark.parametrize("t", [1, 30, 100])
@pytest.mark.parametrize("groups", [None, 3])
@pytest.mark.parametrize("complex_bc", [False, True])
def test_complex_torch_matches_reference(t, groups, complex_bc):
    # Outputs, the complex final state and the gradients of every input (complex A, B, C, state included).
    x = make_complex(complex_bc=complex_bc, t=t, groups=groups)
    assert_matches_reference(selective_scan, "torch", x, delta_softplus=True, output_final_state=True)


@pytest.mark.parametrize("initial_state", [None, "real"])
@pytest.mark.parametrize("t", [1, 30])
def test_complex_without_or_with_a_real_initial_state(initial_state, t):
    # A real initial state with a complex A is promoted (zero imaginary part); its gradient is the real part.
    x = make_complex(complex_bc=True, initial_state=initial_state, t=t, groups=2)
    assert_matches_reference(selective_scan, "torch", x, delta_softplus=True, output_final_state=True)
    if initial_state == "real":
        promoted = {**x, "initial_state": x["initial_state"].to(torch.complex64)}
        y, h = selective_scan(**x, delta_softplus=True, output_final_state=True)
        y2, h2 = selective_scan(**promoted, delta_softplus=True, output_final_state=True)
        torch.testing.assert_close(y, y2)
        torch.testing.assert_close(h, h2)


def test_complex_minimal_arguments_and_inference_path():
    x = make_complex(t=40, full=False, initial_state=None)
    x["delta"] = torch.nn.functional.softplus(x["delta"])
    assert_matches_reference(selective_scan, "torch", x, output_final_state=True)
    with torch.no_grad():  # the torch backend's in-place path (states written over a complex work buffer)
        for complex_bc in (False, True):
            x = make_complex(t=60, groups=3, complex_bc=complex_bc)
            y, h = selective_scan(**x, delta_softplus=True, output_final_state=True, backend="torch")
            y_ref, h_ref = selective_scan(
                **x, delta_softplus=True, output_final_state=True, backend="reference"
            )
            torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-4)


def test_complex_dtypes():
    # The state is complex64 for fp32/bf16 inputs, complex128 for fp64 ones; y keeps u's dtype.
    x = make_complex(t=30, dtype=torch.bfloat16, complex_bc=True)
    y, h = selective_scan(**x, delta_softplus=True, output_final_state=True)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.complex64
    assert_matches_reference(selective_scan, "torch", x, delta_softplus=True, output_final_state=True)
    x64 = {
        k: v.to(torch.complex128 if v.is_complex() else torch.float64) for k, v in make_complex(t=30).items()
    }
    outs = {}
    for backend in ("torch", "reference"):
        y, h = selective_scan(**x64, delta_softplus=True, output_final_state=True, backend=backend)
        assert y.dtype == torch.float64 and h.dtype == torch.complex128
        outs[backend] = (y, h)
    for got, want in zip(outs["torch"], outs["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_complex_states_chain_across_calls():
    x = make_complex(t=30, complex_bc=True)
    y, h = selective_scan(**x, delta_softplus=True, output_final_state=True)
    seq = ("u", "delta", "B", "C", "z")
    first = {k: (v[:, :11] if k in seq else v) for k, v in x.items()}
    rest = {k: (v[:, 11:] if k in seq else v) for k, v in x.items() if k != "initial_state"}
    y1, s = selective_scan(**first, delta_softplus=True, output_final_state=True)
    y2, s = selective_scan(**rest, initial_state=s, delta_softplus=True, output_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    torch.testing.assert_close(s, h)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("groups, complex_bc", [(None, False), (2, True)])
def test_complex_state_update_is_the_scan_one_token_further(backend, groups, complex_bc):
    x = make_complex(t=8, groups=groups, complex_bc=complex_bc)
    y_t, y_ref, new_state, h, state, before = last_token_by_state_update(x, backend)
    assert state.dtype == torch.complex64
    torch.testing.assert_close(y_t, y_ref)
    torch.testing.assert_close(new_state, h)
    assert new_state.dtype == torch.complex64 and torch.equal(state, before)


@pytest.mark.parametrize("complex_bc, state", [(False, "real"), (True, "complex")])
def test_complex_state_update_gradients_match_reference(complex_bc, state):
    x = make_complex(t=1, groups=3, complex_bc=complex_bc, initial_state=state)
    inputs = {
        "state": x.pop("initial_state"),
        "x": x["u"][:, 0],
        "dt": x["delta"][:, 0],
        "A": x["A"],
        "B": x["B"][:, 0],
        "C": x["C"][:, 0],
        "D": x["D"],
        "z": x["z"][:, 0],
        "dt_bias": x["delta_bias"],
    }
    assert_matches_reference(ops.selective_state_update, "torch", inputs, dt_softplus=True)


def test_kernels_refuse_complex_a_and_auto_picks_torch():
    x = make_complex(complex_bc=True)
    reason = "takes a real A; complex A runs on the reference and torch backends"
    for name in ("triton", "cuda"):  # the hooks themselves, whether or not the backend can run here
        assert selective_scan._backends[name].unsupported(**x) == reason
        assert selective_scan._backends[name].unsupported(**make()) is None
    # On a GPU, auto walks triton, cuda, torch: for a complex A both kernels decline and torch runs.
    assert selective_scan.resolve("auto", torch.device("cuda"), (), x).name == "torch"
    with pytest.raises(ValueError, match="cuda"):
        selective_scan(**x, backend="cuda")


@triton_here
def test_triton_refuses_complex_a_and_says_why():
    with pytest.raises(
        ValueError, match="backend 'triton' cannot run here: takes a real A; complex A runs on"
    ):
        selective_scan(**make_complex(), backend="triton")


@pytest.mark.parametrize(
    "change, exc, word",
    [
        (
            dict(B=torch.randn(2, 9, 4, dtype=torch.complex64)),
            TypeError,
            "B is torch.complex64 but A is real",
        ),
        (
            dict(C=torch.randn(2, 9, 2, 4, dtype=torch.complex64)),
            TypeError,
            "C is torch.complex64 but A is real",
        ),
        (dict(initial_state=torch.randn(2, 6, 4, dtype=torch.complex64)), TypeError, "initial_state is"),
        (dict(u=torch.randn(2, 9, 6, dtype=torch.complex64)), TypeError, "u must be"),
        (dict(delta=torch.randn(2, 9, 6, dtype=torch.complex64)), TypeError, "delta must be"),
        (dict(D=torch.randn(6, dtype=torch.complex64)), TypeError, "D must be"),
        (dict(z=torch.randn(2, 9, 6, dtype=torch.complex64)), TypeError, "z must be"),
        (dict(delta_bias=torch.randn(6, dtype=torch.complex64)), TypeError, "delta_bias must be"),
    ],
)
def test_complex_bad_arguments_name_the_argument(change, exc, word):
    args = {**make(), **change}  # a real A unless the change gives one
    with pytest.raises(exc, match=word):
        selective_scan(**args)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_complex_half_a_is_refused():
    with pytest.raises(TypeError, match="A must be float32, float16, bfloat16, complex64 or complex128"):
        selective_scan(**{**make(), "A": s4d_lin(6, 4).to(torch.complex32)})


def test_complex_with_complex_a_still_checks_shapes():
    x = make_complex(complex_bc=True)
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan(**{**x, "initial_state": torch.zeros(2, 6, 3, dtype=torch.complex64)})
    with pytest.raises(ValueError, match="B"):
        selective_scan(**{**x, "B": torch.zeros(2, 9, 5, dtype=torch.complex64)})


def test_complex_state_update_bad_arguments():
    b, d, n = 2, 6, 4
    args = [torch.randn(b, d, n), torch.randn(b, d), torch.randn(b, d), -torch.rand(d, n)]
    bc = [torch.randn(b, n), torch.randn(b, n)]
    with pytest.raises(TypeError, match="state is torch.complex64 but A is real"):
        ops.selective_state_update(args[0].to(torch.complex64), *args[1:], *bc)
    with pytest.raises(TypeError, match="B is torch.complex64 but A is real"):
        ops.selective_state_update(*args, bc[0].to(torch.complex64), bc[1])
    with pytest.raises(TypeError, match="dt must be"):
        ops.selective_state_update(args[0], args[1], args[2].to(torch.complex64), s4d_lin(d, n), *bc)

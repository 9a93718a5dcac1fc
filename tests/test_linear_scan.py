"""ops.linear_scan: every backend against the step-by-step reference (outputs, final states and the gradients
of a, x and initial_state), both directions, T = 1 to long T, fp32 and low precision; the reference itself
against the closed form; argument errors; the CUDA source's ABI where nvcc exists and the kernel on a GPU."""

from __future__ import annotations

import ctypes

import pytest
import torch

from seqzoo import ops
from seqzoo.ops import _csrc
from seqzoo.ops.testing import assert_matches_reference

linear_scan = ops.linear_scan
HAS_CUDA = torch.cuda.is_available()


def make(b=2, t=9, d=5, dtype=torch.float32, decay="unit", initial_state=True, device="cpu"):
    """a in (0, 1) like RG-LRU's decays ("unit"), or any real value with exact zeros ("any")."""
    if decay == "unit":
        a = torch.rand(b, t, d)
    else:
        a = torch.randn(b, t, d)
        a[:, ::4] = 0.0
    inputs = {"a": a.to(dtype), "x": torch.randn(b, t, d).to(dtype)}
    if initial_state:
        inputs["initial_state"] = torch.randn(b, d)
    return {k: v.to(device) for k, v in inputs.items()}


def check(backend, reverse, **case):
    assert_matches_reference(linear_scan, backend, make(**case), output_final_state=True, reverse=reverse)


# -- the reference -----------------------------------------------------------------------------------------


def closed_form(a, x, h0, reverse):
    """h_t = sum over the steps s so far of (product of the a's applied after s) x_s, plus h0's share."""
    if reverse:
        h, final = closed_form(a.flip(1), x.flip(1), h0, False)
        return h.flip(1), final
    b, t, d = x.shape
    out = torch.zeros(b, t, d, dtype=torch.promote_types(x.dtype, torch.float64))  # complex128 if complex
    for i in range(t):
        acc = h0 * torch.prod(a[:, : i + 1], dim=1)
        for s in range(i + 1):
            acc = acc + torch.prod(a[:, s + 1 : i + 1], dim=1) * x[:, s]
        out[:, i] = acc
    return out, out[:, -1]


@pytest.mark.parametrize("reverse", [False, True])
def test_reference_is_the_recurrence(reverse):
    x = {k: v.double() for k, v in make(t=6, decay="any").items()}
    h, final = linear_scan(**x, output_final_state=True, reverse=reverse, backend="reference")
    want, want_final = closed_form(x["a"], x["x"], x["initial_state"], reverse)
    torch.testing.assert_close(h, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, want_final, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_final_state_is_the_last_state_reached(backend):
    x = make(t=7)
    h, final = linear_scan(**x, output_final_state=True, backend=backend)
    torch.testing.assert_close(final, h[:, -1])
    assert final.dtype == torch.float32
    h, final = linear_scan(**x, output_final_state=True, reverse=True, backend=backend)
    torch.testing.assert_close(final, h[:, 0])
    assert linear_scan(**x, backend=backend)[1] is None


def test_states_chain_across_calls():
    # Scanning [0, T) equals scanning [0, k) then [k, T) from the state in between (what prefill relies on).
    x = make(t=40, initial_state=False)
    h, final = linear_scan(**x, output_final_state=True)
    h1, s = linear_scan(x["a"][:, :17], x["x"][:, :17], output_final_state=True)
    h2, s = linear_scan(x["a"][:, 17:], x["x"][:, 17:], initial_state=s, output_final_state=True)
    torch.testing.assert_close(torch.cat([h1, h2], 1), h)
    torch.testing.assert_close(s, final)


# -- torch ---------------------------------------------------------------------------------------------------

TORCH_LENGTHS = [1, 2, 7, 23, 24, 25, 49, 300]  # around the sequential cut-off and chunk boundaries


@pytest.mark.parametrize("t", TORCH_LENGTHS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("initial_state", [True, False])
def test_torch_matches_reference(t, reverse, initial_state):
    check("torch", reverse, t=t, initial_state=initial_state)


@pytest.mark.parametrize("chunk", [2, 3, 8, 17, 64])
@pytest.mark.parametrize("reverse", [False, True])
def test_torch_any_chunk_length(monkeypatch, chunk, reverse):
    # The chunk length follows T, B*D and the thread count; pin it so every split (whole chunks, leftover
    # steps, the recursive scan across chunks) is checked whatever machine runs the test.
    from seqzoo.ops.linear_scan import torch as backend

    monkeypatch.setattr(backend, "chunk_length", lambda t, width=1: min(chunk, t))
    check("torch", reverse, t=101)


@pytest.mark.parametrize("width", [1, 10**9])
@pytest.mark.parametrize("reverse", [False, True])
def test_torch_loop_or_blocked_by_width(monkeypatch, width, reverse):
    # Wide scans run as a plain loop, narrow ones blocked: force each way on the same long sequence.
    from seqzoo.ops.linear_scan import torch as backend

    monkeypatch.setattr(backend, "SEQUENTIAL_WIDTH", width)
    check("torch", reverse, t=101)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("t", [1, 300])
def test_torch_any_real_decay(t, reverse):
    # Negative decays and exact zeros: the blocked scan forms only products, never logs or quotients.
    check("torch", reverse, t=t, decay="any")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("t", [1, 300])
def test_torch_low_precision(dtype, reverse, t):
    check("torch", reverse, t=t, dtype=dtype)


def test_torch_mixed_dtypes():
    # fp32 decays with bf16 inputs (a layer computing a in fp32): h takes the promoted dtype.
    x = make(t=30)
    x["x"] = x["x"].bfloat16()
    assert linear_scan(**x)[0].dtype == torch.float32
    assert_matches_reference(linear_scan, "torch", x, output_final_state=True)


def test_torch_float64_is_exact():
    # assert_matches_reference runs the reference in fp32; here both run in fp64.
    x = {k: v.double().requires_grad_() for k, v in make(t=100, decay="any").items()}
    for reverse in (False, True):
        outs = {}
        for backend in ("torch", "reference"):
            h, final = linear_scan(**x, output_final_state=True, reverse=reverse, backend=backend)
            grads = torch.autograd.grad((h * h.detach().cos()).sum() + final.sum(), list(x.values()))
            outs[backend] = (h, final, *grads)
        for got, want in zip(outs["torch"], outs["reference"]):
            assert got.dtype == torch.float64
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_gradient_through_the_final_state_only():
    x = {k: v.requires_grad_() for k, v in make(t=30).items()}
    grads = {}
    for backend in ("torch", "reference"):
        _, final = linear_scan(**x, output_final_state=True, reverse=True, backend=backend)
        grads[backend] = torch.autograd.grad(final.sum(), list(x.values()))
    for got, want in zip(grads["torch"], grads["reference"]):
        torch.testing.assert_close(got, want)


def test_auto_is_torch_on_cpu():
    linear_scan(**make())
    assert linear_scan.last_backend == "torch"


# -- triton (TRITON_INTERPRET=1 on a CPU) -----------------------------------------------------------------

triton_here = pytest.mark.skipif(
    linear_scan.backends("cpu")["triton"] != "available", reason="Triton cannot run here"
)


@triton_here
@pytest.mark.parametrize("t, d", [(1, 5), (9, 5), (37, 40)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("initial_state", [True, False])
def test_triton_matches_reference(t, d, reverse, initial_state):
    check("triton", reverse, t=t, d=d, initial_state=initial_state)


@triton_here
@pytest.mark.parametrize("reverse", [False, True])
def test_triton_long_sequence(reverse):
    # Many time tiles, a ragged last one; few channels to keep the interpreter quick.
    check("triton", reverse, b=1, t=300, d=3, decay="any")


@triton_here
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_low_precision(dtype):
    check("triton", True, t=20, d=6, dtype=dtype)


def check_strided_views(backend, reverse, device, d=70):
    """a with a channel stride of 2, x time-major ([T, B, D] memory), against the reference on the same views
    (assert_matches_reference would clone them contiguous). Outputs and the gradients of the underlying
    tensors are compared."""
    results = {}
    for name in (backend, "reference"):
        gen = torch.Generator().manual_seed(1)
        a_mem = torch.rand(2, 50, 2 * d, generator=gen).to(device).requires_grad_()
        x_mem = torch.randn(50, 2, d, generator=gen).to(device).requires_grad_()
        h0 = torch.randn(2, d, generator=gen).to(device).requires_grad_()
        h, final = linear_scan(
            a_mem[:, :, ::2],
            x_mem.transpose(0, 1),
            h0,
            output_final_state=True,
            reverse=reverse,
            backend=name,
        )
        # Cotangents by shape (randn_like would follow each output's memory layout).
        cot = torch.randn(h.shape, generator=gen).to(device)
        cot_final = torch.randn(final.shape, generator=gen).to(device)
        loss = (h * cot).sum() + (final * cot_final).sum()
        results[name] = (h, final, *torch.autograd.grad(loss, [a_mem, x_mem, h0]))
    for got, want in zip(results[backend], results["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("reverse", [False, True])
def test_torch_takes_strided_views(reverse):
    check_strided_views("torch", reverse, "cpu")


@triton_here
def test_triton_takes_strided_views():
    check_strided_views("triton", True, "cpu", d=3)


# -- argument errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(a=torch.rand(2, 5)), ValueError, "a"),
        (dict(x=torch.randn(2, 5, 4)), ValueError, "same shape"),
        (dict(a=torch.rand(2, 0, 3), x=torch.randn(2, 0, 3)), ValueError, "T >= 1"),
        (dict(x=torch.randint(0, 3, (2, 5, 3))), TypeError, "x"),
        (dict(x=[[0.0]]), TypeError, "x"),
        (dict(initial_state=torch.randn(2, 4)), ValueError, "initial_state"),
        (dict(initial_state=torch.randn(2, 3, 1)), ValueError, "initial_state"),
        (dict(reverse=1), TypeError, "reverse"),
        (dict(output_final_state="yes"), TypeError, "output_final_state"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, exc, word):
    args = {"a": torch.rand(2, 5, 3), "x": torch.randn(2, 5, 3), **kwargs}
    with pytest.raises(exc, match=word):
        linear_scan(**args)


def test_kernels_refuse_float64_and_say_why():
    x = {k: v.double() for k, v in make().items()}
    with pytest.raises(ValueError, match="float64"):
        linear_scan(**x, backend="triton")


def test_cuda_backend_says_why_it_cannot_run_on_cpu():
    reason = linear_scan.backends("cpu")["cuda"]
    assert reason != "available" and "cuda" in reason.lower()
    with pytest.raises(ValueError, match="cuda"):
        linear_scan(**make(), backend="cuda")


# -- the CUDA source ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_library(tmp_path_factory):
    """csrc/linear_scan.cu built as a shared library for sm_90 (host code only is exercised without a GPU)."""
    try:
        nvcc = _csrc.find_nvcc()
    except RuntimeError:
        pytest.skip("nvcc not installed")
    path = tmp_path_factory.mktemp("csrc") / "linear_scan.so"
    _csrc.compile_source(_csrc.csrc_dir() / "linear_scan.cu", "sm_90", path, nvcc=nvcc)
    return ctypes.CDLL(str(path))


@pytest.mark.parametrize("kind", ["fwd", "bwd"])
@pytest.mark.parametrize("suffix", ["f32", "f16", "bf16"])
def test_cuda_launchers_follow_the_abi(built_library, kind, suffix):
    # Every launcher exists with the binding's signature and checks its arguments before launching: an empty
    # problem is a no-op success, a negative size or a missing tensor is cudaErrorInvalidValue (1). None of
    # these reach the GPU, so this runs without one.
    from seqzoo.ops.linear_scan import cuda as binding

    fn = getattr(built_library, f"seqzoo_linear_scan_{kind}_{suffix}")
    fn.argtypes = binding._FWD_ARGTYPES if kind == "fwd" else binding._BWD_ARGTYPES
    fn.restype = ctypes.c_int
    n_ptr = 5 if kind == "fwd" else 8
    n_int = len(fn.argtypes) - n_ptr - 2
    dummy = ctypes.c_void_p(0x1000)  # never dereferenced: nothing is launched for these sizes

    def call(ptrs, sizes):
        return fn(*ptrs, *sizes, *([1] * (n_int - 3)), 0, None)

    assert call([dummy] * n_ptr, [0, 5, 3]) == 0
    assert call([dummy] * n_ptr, [2, 5, 0]) == 0
    assert call([dummy] * n_ptr, [-1, 5, 3]) == 1
    assert call([None] * n_ptr, [2, 5, 3]) == 1


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("t", [1, 8, 9, 300, 4099])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("initial_state", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_gpu_backends_match_reference(backend, t, reverse, initial_state, dtype):
    check(backend, reverse, b=3, t=t, d=200, dtype=dtype, initial_state=initial_state, device="cuda")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_gpu_backends_any_real_decay(backend):
    check(backend, True, b=2, t=77, d=130, decay="any", device="cuda")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_gpu_backends_take_strided_views(backend, reverse):
    check_strided_views(backend, reverse, "cuda")


# -- complex a and x (diagonal complex SSMs: S4D, selective_scan with a complex A) --------------------------------


def make_complex(kinds="ccc", b=2, t=9, d=5, dtype=torch.complex64):
    """a, x, initial_state each complex ("c"), real ("r") or, for the state, absent ("-"). Complex decays lie
    inside the unit disc (|a| < 1, any phase), like exp(dt A) with Re A < 0."""
    g = torch.Generator().manual_seed(0)
    real = torch.float64 if dtype == torch.complex128 else torch.float32

    def draw(kind, *shape, decay=False):
        if kind == "r":
            return (torch.rand(*shape, generator=g) if decay else torch.randn(*shape, generator=g)).to(real)
        if decay:
            radius, phase = torch.rand(*shape, generator=g), 2 * torch.pi * torch.rand(*shape, generator=g)
            return torch.polar(radius, phase).to(dtype)
        return torch.complex(torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)).to(dtype)

    inputs = {"a": draw(kinds[0], b, t, d, decay=True), "x": draw(kinds[1], b, t, d)}
    if kinds[2] != "-":
        inputs["initial_state"] = draw(kinds[2], b, d)
    return inputs


@pytest.mark.parametrize("t", [1, 30, 100])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kinds", ["ccc", "cc-", "ccr", "rcc", "crc"])
def test_complex_torch_matches_reference(t, reverse, kinds):
    # Outputs, the complex final state and the gradients of a, x and initial_state (real ones get Re of theirs).
    x = make_complex(kinds, t=t)
    assert_matches_reference(linear_scan, "torch", x, output_final_state=True, reverse=reverse)
    h, final = linear_scan(**x, output_final_state=True, reverse=reverse)
    assert h.dtype == final.dtype == torch.complex64


@pytest.mark.parametrize("reverse", [False, True])
def test_complex_reference_is_the_recurrence(reverse):
    x = make_complex("ccc", t=6, dtype=torch.complex128)
    h, final = linear_scan(**x, output_final_state=True, reverse=reverse, backend="reference")
    want, want_final = closed_form(x["a"], x["x"], x["initial_state"], reverse)
    assert want.dtype == torch.complex128
    torch.testing.assert_close(h, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, want_final, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_complex_torch_gradcheck(reverse):
    # The custom backward against finite differences, in complex128 (PyTorch's complex gradient convention).
    x = {
        k: v.requires_grad_() for k, v in make_complex("ccc", b=1, t=30, d=2, dtype=torch.complex128).items()
    }

    def fn(a, xs, h0):
        return linear_scan(a, xs, h0, output_final_state=True, reverse=reverse, backend="torch")

    assert torch.autograd.gradcheck(fn, (x["a"], x["x"], x["initial_state"]))


def test_complex_torch_complex128_is_exact():
    x = {k: v.requires_grad_() for k, v in make_complex("ccc", t=100, dtype=torch.complex128).items()}
    outs = {}
    for backend in ("torch", "reference"):
        h, final = linear_scan(**x, output_final_state=True, backend=backend)
        loss = (h * h.detach().cos()).real.sum() + final.imag.sum()
        outs[backend] = (h, final, *torch.autograd.grad(loss, list(x.values())))
    for got, want in zip(outs["torch"], outs["reference"]):
        assert got.dtype == torch.complex128
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_complex_low_precision_input_with_complex_decays():
    # bf16 inputs with complex64 decays: the scan runs in complex64.
    x = make_complex("cr-", t=40)
    x["x"] = x["x"].bfloat16()
    assert linear_scan(**x)[0].dtype == torch.complex64
    assert_matches_reference(linear_scan, "torch", x, output_final_state=True)


def test_kernels_refuse_complex_and_auto_picks_torch():
    reason = "takes real a, x and initial_state; complex ones run on the reference and torch backends"
    for kinds in ("ccc", "rcr", "crr"):
        x = make_complex(kinds)
        for name in ("triton", "cuda"):
            assert linear_scan._backends[name].unsupported(**x) == reason
        assert linear_scan.resolve("auto", torch.device("cuda"), (), x).name == "torch"
    assert linear_scan._backends["triton"].unsupported(**make()) is None


@triton_here
def test_triton_refuses_complex_and_says_why():
    with pytest.raises(
        ValueError, match="backend 'triton' cannot run here: takes real a, x and initial_state"
    ):
        linear_scan(**make_complex(), backend="triton")


def test_complex_bad_arguments_name_the_argument():
    real = {"a": torch.rand(2, 5, 3), "x": torch.randn(2, 5, 3)}
    with pytest.raises(TypeError, match="initial_state is torch.complex64 but a .* and x .* are real"):
        linear_scan(**real, initial_state=torch.randn(2, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="initial_state"):
        linear_scan(**make_complex("cc-"), initial_state=torch.randn(2, 4, dtype=torch.complex64))
    with pytest.raises(TypeError, match="x must be float32, float16, bfloat16, complex64 or complex128"):
        linear_scan(real["a"], torch.randint(0, 3, (2, 5, 3)))

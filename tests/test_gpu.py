"""On a GPU (`pytest -m gpu`, TRITON_INTERPRET unset there by conftest): every op's GPU backends against its
reference, in fp32 and bf16, outputs and gradients of every input; every mixer's forward, backward and
decoding on CUDA against the same mixer on the CPU; and a short bf16 training run. Per-op files hold more
GPU cases (gla, flow_attention, linear_scan, selective_scan, attention); this file makes sure nothing with a
GPU path is left out. Deselected in CI (no GPU), run by `make gpu-check`."""

from __future__ import annotations

import pytest
import torch

import seqzoo
from seqzoo import ops

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = "cuda"
TOL = {torch.float32: (2e-3, 2e-3), torch.bfloat16: (5e-2, 5e-2)}


def _inputs(op: str, dtype):
    """Small GPU inputs (T not a multiple of any tile) and the op's keyword arguments."""
    g = torch.Generator(device=DEV).manual_seed(0)

    def r(*s, pos=False, dt=None):
        x = torch.rand(*s, generator=g, device=DEV) if pos else torch.randn(*s, generator=g, device=DEV)
        return x.to(dt or dtype)

    if op == "causal_conv1d":
        return dict(
            x=r(2, 77, 96),
            weight=r(96, 4),
            bias=r(96),
            activation="silu",
            initial_state=r(2, 96, 3),
            output_final_state=True,
        )
    if op == "gla":
        return dict(
            q=r(2, 77, 2, 64),
            k=r(2, 77, 2, 64),
            v=r(2, 77, 2, 64),
            g=-r(2, 77, 2, 64, pos=True, dt=torch.float32) / 8,
            initial_state=r(2, 2, 64, 64, dt=torch.float32),
            output_final_state=True,
        )
    if op == "flow_attention":
        return dict(q=r(2, 77, 2, 32, pos=True), k=r(2, 77, 2, 32, pos=True), v=r(2, 77, 2, 48))
    # The step ops (decoding): a few tokens after a state.
    if op == "gla_step":
        return dict(
            q=r(2, 5, 2, 64),
            k=r(2, 5, 2, 64),
            v=r(2, 5, 2, 64),
            g=-r(2, 5, 2, 64, pos=True, dt=torch.float32) / 8,
            initial_state=r(2, 2, 64, 64, dt=torch.float32),
        )
    if op == "delta_rule_step":
        return dict(
            q=torch.nn.functional.normalize(r(2, 5, 2, 64, dt=torch.float32), dim=-1).to(dtype),
            k=torch.nn.functional.normalize(r(2, 5, 2, 64, dt=torch.float32), dim=-1).to(dtype),
            v=r(2, 5, 2, 64),
            beta=r(2, 5, 2, pos=True),
            g=-r(2, 5, 2, pos=True, dt=torch.float32) / 8,
            initial_state=r(2, 2, 64, 64, dt=torch.float32),
        )
    if op in ("flow_attention_prefill", "flow_attention_step"):
        q, k, v = r(2, 12, 2, 32, pos=True), r(2, 12, 2, 32, pos=True), r(2, 12, 2, 48)
        _, state = ops.flow_attention_prefill(q[:, :7], k[:, :7], v[:, :7], backend="torch")
        if op == "flow_attention_prefill":
            return dict(q=q[:, 7:], k=k[:, 7:], v=v[:, 7:], state=state)
        return dict(q=q[:, 7], k=k[:, 7], v=v[:, 7], state=state)
    if op == "linear_scan":
        return dict(
            a=r(2, 77, 96, pos=True),
            x=r(2, 77, 96),
            initial_state=r(2, 96, dt=torch.float32),
            output_final_state=True,
        )
    if op == "selective_scan":
        return dict(
            u=r(2, 77, 64),
            delta=r(2, 77, 64),
            A=-r(64, 16, pos=True, dt=torch.float32) - 0.1,
            B=r(2, 77, 16),
            C=r(2, 77, 16),
            D=r(64, dt=torch.float32),
            z=r(2, 77, 64),
            delta_bias=r(64, dt=torch.float32),
            delta_softplus=True,
            initial_state=r(2, 64, 16, dt=torch.float32),
            output_final_state=True,
        )
    if op == "s4d_kernel":
        f = torch.float32
        return dict(
            log_dt=r(32, dt=f) - 3,
            A_re=-r(32, 8, pos=True, dt=f) - 0.1,
            A_im=r(32, 8, dt=f),
            B_re=r(32, 8, dt=f),
            B_im=r(32, 8, dt=f),
            C_re=r(32, 8, dt=f),
            C_im=r(32, 8, dt=f),
            L=100,
        )
    if op == "s4_kernel":
        f = torch.float32
        return dict(
            log_dt=r(32, dt=f) - 3,
            Lambda_re=-r(32, 8, pos=True, dt=f) - 0.1,
            Lambda_im=r(32, 8, dt=f),
            P_re=r(32, 8, dt=f) / 4,
            P_im=r(32, 8, dt=f) / 4,
            B_re=r(32, 8, dt=f),
            B_im=r(32, 8, dt=f),
            C_re=r(32, 8, dt=f),
            C_im=r(32, 8, dt=f),
            L=100,
        )
    if op == "fft_conv":
        return dict(u=r(2, 77, 32), K=r(32, 60, dt=torch.float32), D=r(32, dt=torch.float32))
    raise KeyError(op)


GPU_CASES = [
    (op, backend)
    for op in (
        "causal_conv1d",
        "gla",
        "flow_attention",
        "linear_scan",
        "selective_scan",
        "s4d_kernel",
        "s4_kernel",
        "fft_conv",
    )
    for backend in ("triton", "cuda")
]
# The step ops (decoding), with the fused recurrent kernels that their auto takes for a few tokens on a GPU.
GPU_CASES += [
    ("gla_step", "triton"),
    ("gla_step", "triton_recurrent"),
    ("delta_rule_step", "triton"),
    ("delta_rule_step", "triton_recurrent"),
    ("flow_attention_prefill", "triton"),
    ("flow_attention_step", "triton"),
]


def _outputs(out):
    return [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, torch.Tensor)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("op_name, backend", GPU_CASES)
def test_gpu_backend_matches_reference(op_name, backend, dtype):
    op = getattr(ops, op_name)
    if backend not in op.backends(DEV):
        pytest.skip(f"{op_name} has no {backend} backend")
    if op_name in ("s4d_kernel", "s4_kernel") and dtype != torch.float32:
        pytest.skip("the SSM kernels take fp32 parameters")
    base = _inputs(op_name, dtype)
    reason = op.backends(DEV)[backend]
    if reason != "available":  # e.g. nvcc missing for cuda: say so
        pytest.skip(f"{op_name}/{backend}: {reason}")
    results = {}
    for which in ("reference", backend):
        x = {
            k: (
                v.detach().clone().requires_grad_(v.is_floating_point()) if isinstance(v, torch.Tensor) else v
            )
            for k, v in base.items()
        }
        outs = _outputs(op(**x, backend=which))
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        grads = {k: v.grad for k, v in x.items() if isinstance(v, torch.Tensor) and v.grad is not None}
        results[which] = ([o.detach().float() for o in outs], {k: g.float() for k, g in grads.items()})
    rtol, atol = TOL[dtype]
    (ref_out, ref_grad), (out, grad) = results["reference"], results[backend]
    for a, b in zip(out, ref_out):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * max(1.0, b.abs().max().item()))
    assert set(grad) == set(ref_grad)
    for k in ref_grad:
        scale = max(1.0, ref_grad[k].abs().max().item())
        torch.testing.assert_close(grad[k], ref_grad[k], rtol=rtol, atol=atol * scale, msg=f"grad of {k}")


# channel_blocks: None is the binding's own choice; (2, 2) makes each backward block walk 10 channels of a
# group in rounds of 4, 4 and 2 warps; (4, 6) leaves the last channel block of each group without a channel.
@pytest.mark.parametrize("groups, channel_blocks", [(1, None), (2, 2), (4, 6)])
def test_cuda_selective_scan_backward_is_deterministic(groups, channel_blocks, monkeypatch):
    """csrc/selective_scan.cu sums dB and dC over a group's channels without atomics (per-block partials, then
    a fixed-order sum): two backward passes give bitwise the same gradients, and they match the reference."""
    from seqzoo.ops.selective_scan import cuda as binding
    from seqzoo.ops.testing import assert_matches_reference

    reason = ops.selective_scan.backends(DEV)["cuda"]
    if reason != "available":
        pytest.skip(f"selective_scan/cuda: {reason}")
    if channel_blocks is not None:
        monkeypatch.setattr(binding, "channel_blocks", lambda *shape: channel_blocks)
    g = torch.Generator(device=DEV).manual_seed(0)
    b, t, d, n = 2, 300, 40, 16  # T: several checkpoint chunks, not a multiple of one
    x = dict(
        u=torch.randn(b, t, d, generator=g, device=DEV),
        delta=torch.randn(b, t, d, generator=g, device=DEV) - 1.0,
        A=-torch.exp(torch.randn(d, n, generator=g, device=DEV)),
        B=torch.randn(b, t, groups, n, generator=g, device=DEV),
        C=torch.randn(b, t, groups, n, generator=g, device=DEV),
        D=torch.randn(d, generator=g, device=DEV),
        z=torch.randn(b, t, d, generator=g, device=DEV),
        delta_bias=torch.randn(d, generator=g, device=DEV) * 0.5,
        initial_state=torch.randn(b, d, n, generator=g, device=DEV),
    )
    cotangents = (
        torch.randn(b, t, d, generator=g, device=DEV),
        torch.randn(b, d, n, generator=g, device=DEV),
    )

    def gradients():
        leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
        y, h = ops.selective_scan(**leaves, delta_softplus=True, output_final_state=True, backend="cuda")
        torch.autograd.backward([y, h], list(cotangents))
        return {k: v.grad for k, v in leaves.items()}

    first, second = gradients(), gradients()
    for k in x:
        assert torch.equal(first[k], second[k]), f"the gradient of {k} differs between two identical runs"
    assert_matches_reference(ops.selective_scan, "cuda", x, delta_softplus=True, output_final_state=True)


@pytest.mark.parametrize("name", sorted(seqzoo.list_mixers()))
def test_mixer_forward_backward_and_decoding_on_cuda_match_cpu(name):
    from seqzoo.models.mixer_settings import with_paper_settings

    kwargs = with_paper_settings(name, seq_len=40)
    kwargs.pop("name", None)
    torch.manual_seed(0)
    cpu = seqzoo.build_mixer(name, 64, **kwargs)
    gpu = seqzoo.build_mixer(name, 64, **kwargs).to(DEV)
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(2, 40, 64)
    y_cpu = cpu(x.clone().requires_grad_())
    y_cpu.square().sum().backward()
    xg = x.to(DEV)
    y_gpu = gpu(xg.requires_grad_())
    y_gpu.square().sum().backward()
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=2e-3, atol=2e-3)
    for (n, p_cpu), (_, p_gpu) in zip(cpu.named_parameters(), gpu.named_parameters()):
        if p_cpu.grad is None:
            continue
        scale = max(1.0, p_cpu.grad.abs().max().item())
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=5e-3, atol=5e-3 * scale, msg=n)
    # Decoding on the GPU: prefill half, step the rest, equal to the forward (not for an encoder-only mixer:
    # vig refuses to decode, tests/test_mixer_contract.py checks that).
    if gpu.bidirectional:
        return
    with torch.no_grad():
        y = gpu(xg)
        y_pre, state = gpu.prefill(xg[:, :20])
        steps = []
        for t in range(20, 40):
            y_t, state = gpu.step(xg[:, t], state)
            steps.append(y_t)
        torch.testing.assert_close(torch.cat([y_pre, torch.stack(steps, 1)], 1), y, rtol=2e-3, atol=2e-3)


def test_short_bf16_training_run_learns(tmp_path):
    from seqzoo.train.config import load_config
    from seqzoo.train.loop import train

    config = load_config(
        {
            "name": "gpu-bf16",
            "model": {"d_model": 64, "n_layers": 2, "mixer": ["gla", "attention"]},
            "data": {"source": "builtin", "max_bytes": 300_000, "seq_len": 128},
            "optim": {"lr": 3e-3, "warmup_steps": 5},
            "train": {
                "steps": 60,
                "batch_size": 16,
                "device": "cuda",
                "precision": "bf16",
                "eval_every": 60,
                "eval_batches": 4,
                "ckpt_every": 60,
                "out_dir": str(tmp_path / "{name}"),
            },
            "log": {"every": 10, "progress": False, "tensorboard": False, "plot": False},
        }
    )
    summary = train(config)
    assert summary["device"] == "cuda"
    assert torch.isfinite(torch.tensor(summary["val_loss"]))
    assert summary["val_loss"] < 4.0  # from ~5.5 (uniform over bytes) at step 0

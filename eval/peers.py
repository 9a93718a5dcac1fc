"""seqzoo's GPU kernels side by side with the peers' on the same inputs: our time over theirs.

    python -m seqzoo.eval.peers                      # on a GPU; writes bench_results/<gpu>-peers.{json,md}
    python -m seqzoo.eval.peers --quick --out DIR

Pairs (each only where the peer imports; a missing peer is listed with the reason, never an error):

| ours | theirs |
|---|---|
| ``ops.gla`` triton, per-channel decay | flash-linear-attention ``chunk_gla`` |
| ``ops.gla`` triton, one decay per head | flash-linear-attention ``chunk_simple_gla`` |
| ``ops.delta_rule`` triton, without / with decay | flash-linear-attention ``chunk_delta_rule`` / ``chunk_gated_delta_rule`` |
| ``ops.linear_scan`` triton (HGRN's recurrence) | flash-linear-attention ``fused_recurrent_hgrn`` |
| ``ops.attention`` auto (flash-attn or SDPA) | PyTorch SDPA; flash-attn ``flash_attn_func`` |
| ``ops.selective_scan`` triton and cuda | mamba-ssm ``selective_scan_fn`` |
| Mamba-2's SSD on ``ops.gla`` triton (``seqzoo.layers.mamba2.ssd``) | mamba-ssm ``mamba_chunk_scan_combined`` |

Every pair runs forward and forward+backward in bf16 on a few training shapes, timed with CUDA events
(median of repeats after warm-up), and the outputs of both sides are compared (max abs difference, reported
beside the time: a fast wrong kernel must show). The whole suite is sized to finish in about two minutes on
an H100/H200 so that it fits the prepared GPU check (``make gpu-check``). Measurements, not tests.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from .bench_measure import time_ms


def _time_ms(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median milliseconds of ``fn`` on the current GPU (CUDA events), as ``seqzoo bench`` times."""
    return statistics.median(time_ms(fn, torch.device("cuda", torch.cuda.current_device()), repeats, warmup))


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _step(fn, inputs: list[torch.Tensor], mode: str):
    """A closure running ``fn`` (and its backward into every input that wants a gradient)."""

    def run():
        for x in inputs:
            x.grad = None
        o = _first(fn())
        if mode == "fwd+bwd":
            o.backward(torch.ones_like(o))
        return o

    return run


def _pairs(quick: bool):
    """(name, shape, make_inputs, ours, theirs, theirs_name) for every pair; make_inputs -> dict of tensors."""
    from seqzoo import ops

    dev, bf16 = "cuda", torch.bfloat16
    shapes = (
        [dict(B=4, T=2048, H=16, K=128)]
        if quick
        else [dict(B=4, T=2048, H=16, K=128), dict(B=2, T=8192, H=8, K=128)]
    )
    pairs = []

    def r(*s, dtype=bf16):
        return torch.randn(*s, device=dev, dtype=dtype).requires_grad_()

    def gla_inputs(s, scalar):
        b, t, h, k = s["B"], s["T"], s["H"], s["K"]
        g = torch.nn.functional.logsigmoid(torch.randn(b, t, h, *(() if scalar else (k,)), device=dev)) / 16
        return {"q": r(b, t, h, k), "k": r(b, t, h, k), "v": r(b, t, h, k), "g": g.requires_grad_()}

    for s in shapes:
        for scalar, fla_name in ((False, "chunk_gla"), (True, "chunk_simple_gla")):

            def ours(x, scalar=scalar):
                return ops.gla(x["q"], x["k"], x["v"], x["g"], backend="triton")

            def theirs(x, scalar=scalar):
                if scalar:
                    from fla.ops.simple_gla import chunk_simple_gla as f
                else:
                    from fla.ops.gla import chunk_gla as f
                return f(x["q"], x["k"], x["v"], g=x["g"], scale=x["q"].shape[-1] ** -0.5)

            pairs.append(
                (
                    "gla" + (" scalar decay" if scalar else ""),
                    s,
                    lambda s=s, sc=scalar: gla_inputs(s, sc),
                    ours,
                    theirs,
                    f"fla {fla_name}",
                )
            )

        def delta_inputs(s=s):
            b, t, h, dk = s["B"], s["T"], s["H"], s["K"]
            # As DeltaNet's layer makes them: unit q and k, beta = sigmoid(.), a slow per-head decay.
            q, k = (
                torch.nn.functional.normalize(torch.randn(b, t, h, dk, device=dev), dim=-1)
                .to(bf16)
                .requires_grad_()
                for _ in "qk"
            )
            beta = torch.sigmoid(torch.randn(b, t, h, device=dev)).to(bf16).requires_grad_()
            g = (torch.nn.functional.logsigmoid(torch.randn(b, t, h, device=dev)) / 16).requires_grad_()
            return {"q": q, "k": k, "v": r(b, t, h, dk), "beta": beta, "g": g}

        for gated, fla_name in ((False, "chunk_delta_rule"), (True, "chunk_gated_delta_rule")):

            def ours_delta(x, gated=gated):
                g = x["g"] if gated else None
                return ops.delta_rule(x["q"], x["k"], x["v"], x["beta"], g, backend="triton")

            def theirs_delta(x, gated=gated):
                scale = x["q"].shape[-1] ** -0.5
                if gated:
                    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

                    return chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], scale=scale)
                from fla.ops.delta_rule import chunk_delta_rule

                return chunk_delta_rule(x["q"], x["k"], x["v"], x["beta"], scale=scale)

            pairs.append(
                (
                    "gated delta rule" if gated else "delta rule",
                    s,
                    delta_inputs,
                    ours_delta,
                    theirs_delta,
                    f"fla {fla_name}",
                )
            )
        d = s["H"] * s["K"]

        def scan_inputs(s=s, d=d):
            a = torch.sigmoid(torch.randn(s["B"], s["T"], d, device=dev) + 4).to(bf16).requires_grad_()
            return {"a": a, "x": r(s["B"], s["T"], d)}

        def ours_scan(x):
            return ops.linear_scan(x["a"], x["x"], backend="triton")

        def theirs_hgrn(x):
            from fla.ops.hgrn import fused_recurrent_hgrn

            # HGRN: h_t = exp(g_t) h_{t-1} + x_t, g = log a.
            return fused_recurrent_hgrn(x["x"], torch.log(x["a"].float()).to(x["a"].dtype))

        pairs.append(
            (
                "linear_scan (HGRN recurrence)",
                dict(B=s["B"], T=s["T"], D=d),
                scan_inputs,
                ours_scan,
                theirs_hgrn,
                "fla fused_recurrent_hgrn",
            )
        )

        def attn_inputs(s=s):
            return {n: r(s["B"], s["T"], s["H"], s["K"]) for n in ("q", "k", "v")}

        def ours_attn(x):
            return ops.attention(x["q"], x["k"], x["v"], causal=True)

        def sdpa(x):
            q, k, v = (x[n].transpose(1, 2) for n in ("q", "k", "v"))
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)

        def flash(x):
            from flash_attn import flash_attn_func

            return flash_attn_func(x["q"], x["k"], x["v"], causal=True)

        pairs.append(("attention", s, attn_inputs, ours_attn, sdpa, "torch SDPA"))
        pairs.append(("attention", s, attn_inputs, ours_attn, flash, "flash-attn"))

        def ss_inputs(s=s):
            b, t, dd, n = s["B"], s["T"], 2 * 1024 if not quick else 1024, 16
            return {
                "u": r(b, t, dd),
                "delta": r(b, t, dd),
                "A": (-torch.rand(dd, n, device=dev) - 0.5).requires_grad_(),
                "B": r(b, t, n),
                "C": r(b, t, n),
                "D": torch.ones(dd, device=dev).requires_grad_(),
                "z": r(b, t, dd),
                "bias": torch.zeros(dd, device=dev).requires_grad_(),
            }

        for backend in ("triton", "cuda"):

            def ours_ss(x, backend=backend):
                return ops.selective_scan(
                    x["u"],
                    x["delta"],
                    x["A"],
                    x["B"],
                    x["C"],
                    x["D"],
                    x["z"],
                    x["bias"],
                    True,
                    backend=backend,
                )[0]

            def mamba(x):
                from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

                # mamba-ssm's layout: u, delta, z [B, D, T]; B, C [B, N, T].
                tr = lambda y: y.transpose(1, 2).contiguous()  # noqa: E731
                return tr(
                    selective_scan_fn(
                        tr(x["u"]),
                        tr(x["delta"]),
                        x["A"],
                        tr(x["B"]),
                        tr(x["C"]),
                        x["D"],
                        tr(x["z"]),
                        x["bias"],
                        delta_softplus=True,
                    )
                )

            pairs.append(
                (
                    f"selective_scan ({backend})",
                    dict(B=s["B"], T=s["T"]),
                    ss_inputs,
                    ours_ss,
                    mamba,
                    "mamba-ssm selective_scan_fn",
                )
            )
    # Mamba-2's SSD: seqzoo's mamba2 layer runs it on ops.gla (Triton); mamba-ssm has a dedicated kernel.
    for s in [dict(B=4, T=2048, H=24, P=64, N=128)] if not quick else [dict(B=2, T=1024, H=8, P=64, N=64)]:

        def ssd_inputs(s=s):
            b, t, h, p, n = s["B"], s["T"], s["H"], s["P"], s["N"]
            dt = torch.empty(b, t, h, device=dev).uniform_(-6.9, -2.3).exp().requires_grad_()
            A = (-torch.empty(h, device=dev).uniform_(1, 16)).requires_grad_()
            return {"x": r(b, t, h, p), "dt": dt, "A": A, "B": r(b, t, 1, n), "C": r(b, t, 1, n)}

        def ours_ssd(x):
            from seqzoo.layers.mamba2 import ssd

            return ssd(x["x"], x["dt"], x["A"], x["B"], x["C"], backend="triton")[0]

        def theirs_ssd(x):
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            return mamba_chunk_scan_combined(x["x"], x["dt"], x["A"], x["B"], x["C"], chunk_size=64)

        pairs.append(
            ("ssd (Mamba-2)", s, ssd_inputs, ours_ssd, theirs_ssd, "mamba-ssm mamba_chunk_scan_combined")
        )
    return pairs


def run(quick: bool = False, repeats: int = 20, warmup: int = 3) -> list[dict]:
    rows = []
    for name, shape, make, ours, theirs, theirs_name in _pairs(quick):
        for mode in ("fwd", "fwd+bwd"):
            row = {"op": name, "shape": shape, "mode": mode, "peer": theirs_name}
            try:
                x = make()
                ts = [v for v in x.values() if isinstance(v, torch.Tensor) and v.requires_grad]
                row["ours_ms"] = round(
                    _time_ms(_step(lambda f=ours, x=x: f(x), ts, mode), repeats, warmup), 4
                )
            except Exception as e:  # noqa: BLE001 - reported in the table
                row["ours_error"] = f"{type(e).__name__}: {str(e)[:300]}"
                rows.append(row)
                continue
            try:
                row["theirs_ms"] = round(
                    _time_ms(_step(lambda f=theirs, x=x: f(x), ts, mode), repeats, warmup), 4
                )
                with torch.no_grad():
                    a, b = _first(ours(x)).float(), _first(theirs(x)).float()
                row["max_abs_diff"] = float((a - b).abs().max())
                row["ratio"] = round(row["ours_ms"] / row["theirs_ms"], 3)
            except ImportError as e:
                row["theirs_error"] = f"not installed ({e.name or e})"
            except Exception as e:  # noqa: BLE001
                row["theirs_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            rows.append(row)
            print(_line(row), flush=True)
            torch.cuda.empty_cache()
    return rows


def _line(row: dict) -> str:
    shape = ",".join(f"{k}={v}" for k, v in row["shape"].items())
    ours = f"{row['ours_ms']:.3f}" if "ours_ms" in row else row.get("ours_error", "-")
    theirs = f"{row['theirs_ms']:.3f}" if "theirs_ms" in row else row.get("theirs_error", "-")
    ratio = f"{row['ratio']:.2f}" if "ratio" in row else "-"
    diff = f"{row['max_abs_diff']:.2e}" if "max_abs_diff" in row else "-"
    return f"| {row['op']} | {shape} | {row['mode']} | {ours} | {row['peer']} | {theirs} | {ratio} | {diff} |"


def markdown(rows: list[dict], gpu: str) -> str:
    head = (
        f"seqzoo against its peers on {gpu}, bf16, median ms (CUDA events); ratio = ours / theirs "
        "(below 1: seqzoo faster); max |diff| between the two outputs.\n\n"
        "| op | shape | mode | ours ms | peer | theirs ms | ratio | max abs diff |\n|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([head, *(_line(r) for r in rows)]) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one shape per pair")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default="bench_results", help="folder for <gpu>-peers.json and .md")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("seqzoo.eval.peers needs a CUDA GPU (the peers' kernels are GPU-only)", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name()
    rows = run(quick=args.quick, repeats=args.repeats)
    slug = gpu.lower().replace("nvidia ", "").replace(" ", "-")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"gpu": gpu, "torch": torch.__version__, "date": _dt.date.today().isoformat()}
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    (out / f"{slug}-peers.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (out / f"{slug}-peers.md").write_text(markdown(rows, gpu))
    print(f"wrote {out / (slug + '-peers.json')} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

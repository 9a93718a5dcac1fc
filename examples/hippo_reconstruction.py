"""HiPPO online function approximation: how well each measure's state remembers the past of a signal.

A band-limited white signal u (seed 0, T = 3 time units, step dt = 1e-3, frequencies up to ``freq`` = 3) drives the
HiPPO ODE x' = A x + B u of each measure (``seqzoo.layers.ssm_init.hippo``, discretised bilinearly); from the
final state alone the past is read back with the measure's basis, u(now - s) ~ sum_n x_n p_n(s):

- LegT (translated Legendre, window of 1000 steps):  p_n(s) = (-1)^n sqrt(2n+1) P_n(2 s - 1),  s in [0, 1]
- FouT (truncated Fourier, the same window):          p_2k = sqrt2 cos(2 pi k s) (p_0 = 1), p_2k+1 = sqrt2 sin(2 pi k s)
- TI-LegS (S4's LegS as a time-invariant ODE):        p_n(s) = (-1)^n sqrt(2n+1) P_n(1 - 2 e^{-s}),  s in time units
- LegS (time-varying, the original HiPPO, x' = (A x + B u)/t): the whole history, p_n(v) = sqrt(2n+1) P_n(2 v - 1)

s is the time back from now in units of the window (LegT, FouT) or of time (TI-LegS). The matrices are the
training convention (LegT halved, FouT with pi), whose LegT/FouT window is 2 time units: run with step 2 dt they
are exactly the systems of state-spaces/s4's visualizations.py (its matrices are the training ones doubled) on a
window of 1/dt = 1000 steps. That is the timescale rule (``ssm_init.dt_range``): the step sets the memory.

Prints the relative RMSE of each reconstruction (over the last 1000 steps; LegS scaled: over all of it) and writes
the figure (``--out``, PNG; needs matplotlib). Measured (this script, defaults, CPU, fp64, ~0.4 s): LegT 3.8e-3,
FouT 2.9e-2, TI-LegS 9.3e-3, LegS (scaled) 5.1e-3 -- the signal is the s4 repo's (numpy seed 0), and these are
the figure of its visualizations.py ``plot(T=3, dt=1e-3, N=64, freq=3)`` (a numpy port measured 3.8e-3,
2.8e-2, 9.3e-3, 5.1e-3).

    python examples/hippo_reconstruction.py --out bench_results/hippo-reconstruction.png
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from seqzoo.layers.ssm_init import hippo

WINDOW = {
    "legt": True,
    "fout": True,
    "legs": False,
}  # measures on a sliding window (the others: all the past)
MEMORIES = ("LegT", "FouT", "TI-LegS", "LegS (scaled)")


def white_signal(T: float, dt: float, freq: float, rms: float = 0.5, seed: int = 0) -> torch.Tensor:
    """[round(T/dt)] float64: white noise band-limited to ``freq`` (random Fourier coefficients, zero above it),
    of RMS ``rms``, shifted to start at 0 (nengo's WhiteSignal, as visualizations.py ``whitesignal``)."""
    if not 1.0 / T <= freq <= 0.5 / dt:
        raise ValueError(f"freq must be in [1/T, 1/(2 dt)] = [{1 / T}, {0.5 / dt}], got {freq}")
    # numpy's legacy generator, drawn in the order visualizations.py draws (imaginary parts, then real parts), so
    # seed 0 is the signal of the s4 repo's figure (np.random.seed(0)).
    rng = np.random.RandomState(seed)
    n_coef = math.ceil(T / dt / 2.0)
    sigma = rms * math.sqrt(0.5)
    imag = torch.from_numpy(rng.normal(0.0, sigma, size=n_coef + 1))
    real = torch.from_numpy(rng.normal(0.0, sigma, size=n_coef + 1))
    imag[-1] = 0.0  # the Nyquist coefficient of a real signal is real
    coef = torch.complex(real, imag)
    coef[0] = 0.0
    above = torch.fft.rfftfreq(2 * n_coef, d=dt, dtype=torch.float64) > freq
    coef = coef * (~above)
    coef = coef / math.sqrt(1.0 - above.sum().item() / n_coef)  # keep the RMS after the cut
    u = torch.fft.irfft(coef * math.sqrt(2 * n_coef), n=2 * n_coef)[: round(T / dt)]
    return u - u[0]


def bilinear(A: torch.Tensor, B: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Abar = (I - dt A/2)^{-1} (I + dt A/2), Bbar = (I - dt A/2)^{-1} dt B."""
    eye = torch.eye(A.shape[0], dtype=A.dtype)
    M = eye - dt / 2 * A
    return torch.linalg.solve(M, eye + dt / 2 * A), torch.linalg.solve(M, dt * B)


def final_state(A: torch.Tensor, B: torch.Tensor, dt: float, u: torch.Tensor) -> torch.Tensor:
    """x after the last input of x_k = Abar x_{k-1} + Bbar u_k, x_{-1} = 0: [N].

    x = sum_k Abar^(L-1-k) Bbar u_k, with the Krylov columns Abar^j Bbar (j < L) built by doubling
    ([K, Abar^len(K) K]: log2 L matrix products instead of L matrix-vector steps)."""
    Abar, Bbar = bilinear(A, B, dt)
    K, power = Bbar[:, None], Abar  # K = [Abar^j Bbar], power = Abar^len(K)
    while K.shape[1] < len(u):
        K = torch.cat([K, power @ K], 1)
        power = power @ power
    return K[:, : len(u)] @ u.flip(0)


def scaled_legs_state(N: int, u: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The time-varying LegS memory x' = (A x + B u) / t over steps t = 1..L (bilinear, as HiPPOScale):
    x_t = Abar_t x_{t-1} + Bbar_t u_t with Abar_t = (I - A/2t)^{-1} (I + A/2t), Bbar_t = (I - A/2t)^{-1} B/t,
    the step matrices made ``chunk`` steps at a time by one batched triangular solve."""
    A, B = hippo("legs", N)
    eye = torch.eye(N, dtype=A.dtype)
    x = np.zeros(N)
    u_np = u.numpy()
    for first in range(0, len(u), chunk):
        t = torch.arange(first + 1, min(first + chunk, len(u)) + 1, dtype=A.dtype)[:, None, None]
        rhs = torch.cat([eye + A / (2 * t), (B / t[..., 0])[..., None]], -1)  # [c, N, N + 1]
        step = torch.linalg.solve_triangular(eye - A / (2 * t), rhs, upper=False).numpy()  # lower triangular
        # the sequential part in numpy: a 64 x 64 matrix-vector product costs less there than torch's call overhead
        for k in range(step.shape[0]):
            x = step[k, :, :N] @ x + step[k, :, N] * u_np[first + k]
    return torch.from_numpy(x)


def legendre(N: int, z: torch.Tensor) -> torch.Tensor:
    """[len(z), N]: P_0(z) .. P_{N-1}(z) by Bonnet's recursion (n+1) P_{n+1} = (2n+1) z P_n - n P_{n-1}."""
    cols = [torch.ones_like(z), z]
    for n in range(1, N - 1):
        cols.append(((2 * n + 1) * z * cols[n] - n * cols[n - 1]) / (n + 1))
    return torch.stack(cols[:N], -1)


def basis(measure: str, N: int, s: torch.Tensor) -> torch.Tensor:
    """[len(s), N]: the reconstruction basis at s = time back from now (window units for legt/fout)."""
    n = torch.arange(N, dtype=torch.float64)
    if measure == "legt":
        return legendre(N, 2 * s - 1) * torch.sqrt(2 * n + 1) * (-1.0) ** n
    if measure == "legs":
        return legendre(N, 1 - 2 * torch.exp(-s)) * torch.sqrt(2 * n + 1) * (-1.0) ** n
    if measure == "fout":
        k = torch.arange(N // 2, dtype=torch.float64)
        cos = math.sqrt(2) * torch.cos(2 * math.pi * k * s[:, None])
        sin = math.sqrt(2) * torch.sin(2 * math.pi * k * s[:, None])
        cos[:, 0] = 1.0
        return torch.stack([cos, sin], -1).reshape(len(s), N)
    raise ValueError(f"measure must be one of {tuple(WINDOW)}, got {measure!r}")


def reconstruct(T: float = 3.0, dt: float = 1e-3, N: int = 64, freq: float = 3.0, seed: int = 0) -> dict:
    """Run every memory over the signal; returns {"u": signal, "window": steps, name: (reconstruction over
    its span [K], relative RMSE)} with spans: the last ``window`` = 1/dt steps, or all of it (LegS scaled).

    Runs on one torch thread: the products are small (64 x 64), and more threads only hand work off (on a
    loaded 2-core machine, 2 threads took 10x the time of one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _reconstruct(T, dt, N, freq, seed)
    finally:
        torch.set_num_threads(threads)


def _reconstruct(T, dt, N, freq, seed):
    u = white_signal(T, dt, freq, seed=seed)
    L, window = len(u), round(1 / dt)
    if window > L:
        raise ValueError(f"need T >= 1 (a window of 1/dt steps), got T={T}")
    out = {"u": u, "window": window}
    back = torch.arange(window, dtype=torch.float64) * dt  # time back from now of the window's samples
    for name, measure in (("LegT", "legt"), ("FouT", "fout"), ("TI-LegS", "legs")):
        A, B = hippo(measure, N)
        # Training-convention LegT/FouT run with step 2 dt: their window (2 time units) spans 1/dt steps.
        step = 2 * dt if WINDOW[measure] else dt
        x = final_state(A, B, step, u)
        rec = (basis(measure, N, back) @ x).flip(0)  # forward in time
        target = u[-window:]
        out[name] = (rec, ((rec - target).pow(2).mean() / target.pow(2).mean()).sqrt().item())
    x = scaled_legs_state(N, u)
    n = torch.arange(N, dtype=torch.float64)
    v = torch.linspace(0.0, 1.0, L, dtype=torch.float64)
    rec = legendre(N, 2 * v - 1) * torch.sqrt(2 * n + 1) @ x
    out["LegS (scaled)"] = (rec, ((rec - u).pow(2).mean() / u.pow(2).mean()).sqrt().item())
    return out


def plot(result: dict, dt: float, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"{path} skipped: matplotlib is not installed (pip install 'seqzoo[eval]')")
        return False
    u = result["u"]
    t = torch.arange(len(u), dtype=torch.float64) * dt
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(t, u, "k", lw=1.5, label="input u")
    for name in MEMORIES:
        rec, err = result[name]
        ax.plot(t[-len(rec) :], rec, lw=1, label=f"{name} (rel. RMSE {err:.1e})")
    ax.axvline(t[-result["window"]].item(), color="grey", ls=":", lw=1)
    ax.set_xlabel("time")
    ax.set_title("HiPPO online reconstruction from the final state (N = 64)")
    ax.legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", type=float, default=3.0, help="signal length in time units")
    p.add_argument("--dt", type=float, default=1e-3, help="step; the window is 1/dt steps")
    p.add_argument("--N", type=int, default=64, help="state size")
    p.add_argument("--freq", type=float, default=3.0, help="band limit of the signal")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="hippo-reconstruction.png", help="figure path (PNG)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    start = time.perf_counter()
    result = reconstruct(args.T, args.dt, args.N, args.freq, args.seed)
    print(f"T={args.T} dt={args.dt} N={args.N} freq={args.freq} seed={args.seed}: relative RMSE")
    for name in MEMORIES:
        print(f"  {name:14s} {result[name][1]:.2e}")
    print(f"  ({time.perf_counter() - start:.2f} s)")
    if not args.no_plot and plot(result, args.dt, args.out):
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()

"""HiPPO measures and S4's general-rank NPLR (issue 28; How to Train Your HiPPO, Gu et al. 2023).

(A, B) of every measure at N = 8 against the numbers of state-spaces/s4 ``src/models/hippo/hippo.py``
``transition()`` (training convention: LegT halved, FouT with pi; written out below from the repo's code at
e757cef57d89); the NPLR form reconstructs A, B and P; S4 with FouT / LegT (rank 2) / the hippo mix computes the
same outputs as a convolution and step by step; the step-size options; the reconstruction example's thresholds.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

import seqzoo
from seqzoo.layers.ssm_init import (
    HIPPO_MEASURES,
    dplr_init,
    dt_init,
    dt_range,
    hippo,
    log_dt_from_param,
    nplr,
    nplr_legs,
    rank_correction,
    s4d_init,
)

ROOT = Path(__file__).resolve().parents[1]

# transition(measure, 8) of state-spaces/s4 hippo.py (A row by row, then B), 7 significant digits.
TRANSITION_N8 = {
    "legs": (
        [
            [-1, 0, 0, 0, 0, 0, 0, 0],
            [-1.732051, -2, 0, 0, 0, 0, 0, 0],
            [-2.236068, -3.872983, -3, 0, 0, 0, 0, 0],
            [-2.645751, -4.582576, -5.91608, -4, 0, 0, 0, 0],
            [-3, -5.196152, -6.708204, -7.937254, -5, 0, 0, 0],
            [-3.316625, -5.744563, -7.416198, -8.774964, -9.949874, -6, 0, 0],
            [-3.605551, -6.244998, -8.062258, -9.539392, -10.81665, -11.95826, -7, 0],
            [-3.872983, -6.708204, -8.660254, -10.24695, -11.61895, -12.84523, -13.96424, -8],
        ],
        [1, 1.732051, 2.236068, 2.645751, 3, 3.316625, 3.605551, 3.872983],
    ),
    "legt": (
        [
            [-0.5, 0.8660254, -1.118034, 1.322876, -1.5, 1.658312, -1.802776, 1.936492],
            [-0.8660254, -1.5, 1.936492, -2.291288, 2.598076, -2.872281, 3.122499, -3.354102],
            [-1.118034, -1.936492, -2.5, 2.95804, -3.354102, 3.708099, -4.031129, 4.330127],
            [-1.322876, -2.291288, -2.95804, -3.5, 3.968627, -4.387482, 4.769696, -5.123475],
            [-1.5, -2.598076, -3.354102, -3.968627, -4.5, 4.974937, -5.408327, 5.809475],
            [-1.658312, -2.872281, -3.708099, -4.387482, -4.974937, -5.5, 5.97913, -6.422616],
            [-1.802776, -3.122499, -4.031129, -4.769696, -5.408327, -5.97913, -6.5, 6.98212],
            [-1.936492, -3.354102, -4.330127, -5.123475, -5.809475, -6.422616, -6.98212, -7.5],
        ],
        [0.5, 0.8660254, 1.118034, 1.322876, 1.5, 1.658312, 1.802776, 1.936492],
    ),
    "lagt": (
        [
            [-0.5, 0, 0, 0, 0, 0, 0, 0],
            [-1, -0.5, 0, 0, 0, 0, 0, 0],
            [-1, -1, -0.5, 0, 0, 0, 0, 0],
            [-1, -1, -1, -0.5, 0, 0, 0, 0],
            [-1, -1, -1, -1, -0.5, 0, 0, 0],
            [-1, -1, -1, -1, -1, -0.5, 0, 0],
            [-1, -1, -1, -1, -1, -1, -0.5, 0],
            [-1, -1, -1, -1, -1, -1, -1, -0.5],
        ],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ),
    "fout": (
        [
            [-1, 0, -1.414214, 0, -1.414214, 0, -1.414214, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [-1.414214, 0, -2, -3.141593, -2, 0, -2, 0],
            [0, 0, 3.141593, 0, 0, 0, 0, 0],
            [-1.414214, 0, -2, 0, -2, -6.283185, -2, 0],
            [0, 0, 0, 0, 6.283185, 0, 0, 0],
            [-1.414214, 0, -2, 0, -2, 0, -2, -9.424778],
            [0, 0, 0, 0, 0, 0, 9.424778, 0],
        ],
        [1, 0, 1.414214, 0, 1.414214, 0, 1.414214, 0],
    ),
    "foud": (
        [
            [-0.5, 0, 0, 0, 0, 0, 0, 0],
            [0, -0.5, 0, 0, 0, 0, 0, 0],
            [0, 0, -0.5, -6.283185, 0, 0, 0, 0],
            [0, 0, 6.283185, -0.5, 0, 0, 0, 0],
            [0, 0, 0, 0, -0.5, -12.56637, 0, 0],
            [0, 0, 0, 0, 12.56637, -0.5, 0, 0],
            [0, 0, 0, 0, 0, 0, -0.5, -18.84956],
            [0, 0, 0, 0, 0, 0, 18.84956, -0.5],
        ],
        [1, 0, 1.414214, 0, 1.414214, 0, 1.414214, 0],
    ),
}


@pytest.mark.parametrize("measure", HIPPO_MEASURES)
def test_measures_equal_the_s4_repo_transition_at_n8(measure):
    A, B = hippo(measure, 8)
    want_A, want_B = (torch.tensor(v, dtype=torch.float64) for v in TRANSITION_N8[measure])
    torch.testing.assert_close(A, want_A, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(B, want_B, rtol=1e-6, atol=1e-7)


def test_rank_corrections_make_a_normal_matrix():
    # legs: P = sqrt(n + 1/2); legt: rank 2 (odd / even n), halved like A; fout: P = B; foud: none needed.
    q = torch.arange(8, dtype=torch.float64)
    torch.testing.assert_close(rank_correction("legs", 8)[0], torch.sqrt(q + 0.5))
    P = rank_correction("legt", 8)
    assert P.shape == (2, 8) and (P[0, 0::2] == 0).all() and (P[1, 1::2] == 0).all()
    torch.testing.assert_close(P.sum(0), torch.sqrt(q + 0.5))  # sqrt(2n+1) / sqrt2
    torch.testing.assert_close(rank_correction("fout", 8)[0], hippo("fout", 8)[1])
    assert (rank_correction("foud", 8) == 0).all()
    assert rank_correction("legs", 8, rank=3).shape == (3, 8)
    with pytest.raises(ValueError, match="rank"):
        rank_correction("legt", 8, rank=1)
    with pytest.raises(ValueError, match="measure"):
        hippo("legx", 8)


@pytest.mark.parametrize("measure", HIPPO_MEASURES)
def test_nplr_reconstructs_a_b_and_p(measure):
    """A = V_f (diag Lambda_f - P~_f^T conj P~_f) V_f^* with the conjugates restored, to 1e-10 in fp64."""
    n = 16
    lam, P, B, V = nplr(measure, n)
    A, B0 = hippo(measure, n)
    P0 = rank_correction(measure, n)
    assert lam.shape == (n // 2,) and B.shape == (n // 2,) and V.shape == (n, n // 2)
    assert P.shape == (P0.shape[0], n // 2)
    assert (lam.imag >= 0).all()  # one of each conjugate pair: the positive imaginary parts
    full = lambda v: torch.cat([v, v.conj()], -1)  # noqa: E731
    Vf = torch.cat([V, V.conj()], 1)
    torch.testing.assert_close(Vf.conj().T @ Vf, torch.eye(n, dtype=torch.complex128), rtol=0, atol=1e-12)
    rebuilt = Vf @ (torch.diag(full(lam)) - full(P).T @ full(P).conj()) @ Vf.conj().T
    assert (rebuilt - A).abs().max() < 1e-10
    assert (Vf @ full(B) - B0).abs().max() < 1e-10
    assert (full(P) @ Vf.T - P0).abs().max() < 1e-10
    if measure in ("legt", "lagt", "fout"):
        assert (lam.real == 0).all()  # A + P P^T is skew: Re(Lambda) = 0 exactly
    if measure in ("fout", "foud"):
        # the zero frequency: one mode at Im = 0, with the hand-set eigenvector on states 0 and 1
        assert lam.imag[-1] == 0 and (lam.imag[:-1] > 1).all()
        torch.testing.assert_close(V[:2, -1], torch.tensor([1, -1j], dtype=torch.complex128) / math.sqrt(2))


def test_nplr_legs_keeps_its_contract_and_b_clip():
    lam, P, B = nplr_legs(8)
    lam2, P2, B2, _ = nplr("legs", 8)
    torch.testing.assert_close(lam, lam2)
    torch.testing.assert_close(P, P2[0])
    torch.testing.assert_close(B, B2)
    assert B.imag.abs().max() > 0.5  # so the clip below bites
    _, _, Bc, _ = nplr("legs", 8, B_clip=0.5)
    torch.testing.assert_close(Bc.real, B.real)
    torch.testing.assert_close(Bc.imag, B.imag.clamp(-0.5, 0.5))
    with pytest.raises(ValueError, match="B_clip"):
        nplr("legs", 8, B_clip=-1.0)


def test_hippo_mix_and_s4d_inits():
    lam, P, B = dplr_init("hippo", 8, 5)
    assert lam.shape == (5, 4) and P.shape == (1, 5, 4) and B.shape == (5, 4)
    torch.testing.assert_close(lam[:3], nplr("legs", 8)[0].expand(3, 4))  # channels 0..2 LegS
    torch.testing.assert_close(lam[3:], nplr("fout", 8)[0].expand(2, 4))  # 3..4 FouT
    assert dplr_init("legt", 8, 2)[1].shape == (2, 2, 4)  # rank 2
    m = torch.arange(4, dtype=torch.float64)
    A, B = s4d_init("foud", 8)
    torch.testing.assert_close(
        A, torch.complex(torch.full((4,), -0.5, dtype=torch.float64), 2 * math.pi * m.flip(0))
    )
    A, _ = s4d_init("inv2", 8)
    torch.testing.assert_close(A.imag, 8 / math.pi * (8 / (m + 1) - 1))
    A, _ = s4d_init("quad", 8)
    torch.testing.assert_close(A.imag, (2 * m + 1) ** 2 / math.pi)


def test_dt_range_is_the_timescale_rule_and_dt_options():
    assert dt_range(10, 1000) == (1e-3, 1e-1)  # S4's default range
    assert dt_range(1, 16384) == (1 / 16384, 1.0)
    for bad in ((0, 10), (10, 5), (1, math.inf)):
        with pytest.raises(ValueError, match="dependency"):
            dt_range(*bad)
    g = torch.Generator().manual_seed(0)
    p = dt_init((500, 4), 1e-3, 1e-1, "softplus", generator=g)
    dt = torch.exp(log_dt_from_param(p, "softplus"))
    assert dt.shape == (500, 4) and 1e-3 * (1 - 1e-9) <= dt.min() and dt.max() <= 1e-1 * (1 + 1e-9)
    assert dt.log().max() - dt.log().min() > 4
    # the same draws under both transforms
    q = dt_init((500, 4), 1e-3, 1e-1, "exp", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(q, dt.log())
    # far below, softplus(p) underflows but log dt stays finite (= p)
    assert log_dt_from_param(torch.tensor([-200.0, 30.0]), "softplus").isfinite().all()
    with pytest.raises(ValueError, match="dt_transform"):
        dt_init(3, transform="sigmoid")


def step_through(m, x):
    state = m.init_state(x.shape[0], dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        y, state = m.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"init": "fout"},
        {"init": "fout", "real_transform": "relu", "dt_tie": False, "dt_transform": "softplus"},
        {"init": "legt", "l_max": 8},  # rank 2, and T > l_max (C~ re-derived)
        {"init": "hippo", "B_clip": 2.0},
    ],
)
def test_s4_hippo_inits_convolution_equals_recurrence(kwargs):
    torch.manual_seed(0)
    m = seqzoo.build_mixer("s4", 4, d_state=8, dt_min=1e-2, dt_max=1.0, **{"l_max": 16, **kwargs}).double()
    x = torch.randn(2, 13, 4, dtype=torch.float64)
    conv = m(x)
    torch.testing.assert_close(step_through(m, x), conv, rtol=1e-9, atol=1e-9)
    if kwargs["init"] == "legt":
        assert m.rank == 2 and m.P_re.shape == (2, 4, 4)
    if kwargs.get("real_transform") == "relu":
        # Re(Lambda) = 0 exactly on FouT's non-zero frequencies; the zero frequency sits at -1e-4
        assert (m._real()[:, :-1] == 0).all() and torch.allclose(
            m._real()[:, -1], torch.tensor(-1e-4, dtype=torch.float64)
        )
        assert m.softplus_inv_dt.shape == (4, 4)


def test_s4_arguments_are_checked():
    with pytest.raises(ValueError, match="init"):
        seqzoo.build_mixer("s4", 4, init="legx")
    with pytest.raises(ValueError, match="rank"):
        seqzoo.build_mixer("s4", 4, init="legt", rank=1)
    with pytest.raises(ValueError, match="real_transform"):
        seqzoo.build_mixer("s4", 4, real_transform="sigmoid")
    with pytest.raises(ValueError, match="dt_transform"):
        seqzoo.build_mixer("s4", 4, dt_transform="tanh")
    with pytest.raises(TypeError, match="dt_tie"):
        seqzoo.build_mixer("s4", 4, dt_tie="no")
    with pytest.raises(ValueError, match="B_clip"):
        seqzoo.build_mixer("s4", 4, B_clip=0)


def test_reconstruction_example_reaches_its_thresholds():
    """examples/hippo_reconstruction.py at its full size (T 3, dt 1e-3, N 64, freq 3, seed 0: the s4 repo's
    figure): rel. RMSE LegT <= 1e-2, FouT <= 6e-2, TI-LegS <= 2e-2, LegS (scaled) <= 1e-2 (2x the measured)."""
    spec = importlib.util.spec_from_file_location(
        "hippo_reconstruction", ROOT / "examples" / "hippo_reconstruction.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.reconstruct()
    got = {name: result[name][1] for name in example.MEMORIES}
    limits = {"LegT": 1e-2, "FouT": 6e-2, "TI-LegS": 2e-2, "LegS (scaled)": 1e-2}
    assert all(got[k] <= limits[k] for k in limits), got

"""eval/peers.py (the GPU comparison with flash-linear-attention, SDPA, flash-attn, mamba-ssm): what can be
checked without a GPU: the pairs it runs, the table it writes, and a clear refusal on a CPU."""

from __future__ import annotations

import torch

from seqzoo.eval import peers


def test_pairs_cover_every_peer():
    names = {(op.split(" (")[0], peer) for op, _, _, _, _, peer in peers._pairs(quick=True)}
    assert names == {
        ("gla", "fla chunk_gla"),
        ("gla scalar decay", "fla chunk_simple_gla"),
        ("linear_scan", "fla fused_recurrent_hgrn"),
        ("attention", "torch SDPA"),
        ("attention", "flash-attn"),
        ("selective_scan", "mamba-ssm selective_scan_fn"),
        ("delta rule", "fla chunk_delta_rule"),
        ("gated delta rule", "fla chunk_gated_delta_rule"),
        ("ssd", "mamba-ssm mamba_chunk_scan_combined"),
    }


def test_markdown_reports_ratio_difference_and_missing_peers():
    rows = [
        {
            "op": "gla",
            "shape": {"B": 4, "T": 2048},
            "mode": "fwd",
            "peer": "fla chunk_gla",
            "ours_ms": 1.0,
            "theirs_ms": 2.0,
            "ratio": 0.5,
            "max_abs_diff": 1e-3,
        },
        {
            "op": "attention",
            "shape": {"B": 4},
            "mode": "fwd",
            "peer": "flash-attn",
            "ours_ms": 1.0,
            "theirs_error": "not installed (flash_attn)",
        },
    ]
    text = peers.markdown(rows, "NVIDIA H200")
    assert "| gla | B=4,T=2048 | fwd | 1.000 | fla chunk_gla | 2.000 | 0.50 | 1.00e-03 |" in text
    assert "not installed (flash_attn)" in text and "NVIDIA H200" in text


def test_refuses_without_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert peers.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err

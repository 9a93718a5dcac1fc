"""Drawing equivalent matrices (``seqzoo.analysis.equivalent_matrix``).

Convention (what a picture shows): one panel per head or channel (the view's ``groups``), row t = output
position, column s = value position, the colour Phi[b, g, t, s]: the weight of value s in output t. "Values" are
the op's value argument (v per head; the per-channel input of a scan or convolution), so Phi does not include
the value projection. ``scale="signed"`` (default) draws Phi on a diverging colour map centred at zero with
limits +-max|Phi| (a complex Phi: its real part); ``scale="abs-minmax"`` draws |Phi| min-max normalised per
panel. Neither softmax-normalises the rows: a linear or state-space mixer's Phi has negative entries and rows
that do not sum to one, and forcing them into a distribution hides exactly that difference from attention.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .equivalent import EquivalentView

SCALES = ("signed", "abs-minmax")


def _panel(matrix: torch.Tensor, scale: str):
    m = matrix.detach().cpu()
    if scale == "signed":
        m = m.real if m.is_complex() else m
        lim = float(m.abs().max()) or 1.0
        return m.double().numpy(), dict(cmap="RdBu_r", vmin=-lim, vmax=lim)
    a = m.abs().double()
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo if hi > lo else 1.0)).numpy(), dict(cmap="viridis", vmin=0.0, vmax=1.0)


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"plot: scale must be one of {SCALES}, got {scale!r}")


def draw(ax, view: EquivalentView, *, batch: int = 0, group: int = 0, scale: str = "signed", marks=None):
    """One panel on ``ax``: Phi[batch, group]. ``marks``: optional dict of position lists, "keys" (drawn as
    column ticks) and "queries" (row ticks), and "targets": (row, column) pairs circled (where recall should
    read from)."""
    _check_scale(scale)
    data, style = _panel(view.matrix[batch, group], scale)
    im = ax.imshow(data, interpolation="nearest", **style)
    marks = marks or {}
    for s in marks.get("keys", []):
        ax.axvline(s, color="k", lw=0.4, alpha=0.35)
    for t in marks.get("queries", []):
        ax.axhline(t, color="k", lw=0.4, alpha=0.35)
    for t, s in marks.get("targets", []):
        ax.scatter([s], [t], s=30, facecolors="none", edgecolors="lime", linewidths=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def plot(view: EquivalentView, *, batch: int = 0, groups=None, scale: str = "signed", ax=None, title=None):
    """Phi of ``groups`` (indices into the view's groups; default the first four) side by side; returns the
    Figure. With ``ax`` (one group): draws there. See the module docstring for the colour convention."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    _check_scale(scale)
    n = view.matrix.shape[1]
    groups = list(range(min(n, 4))) if groups is None else list(groups)
    if ax is not None:
        draw(ax, view, batch=batch, group=groups[0], scale=scale)
        return ax.figure
    fig, axes = plt.subplots(1, len(groups), figsize=(2.4 * len(groups), 2.6), squeeze=False)
    for a, g in zip(axes[0], groups):
        im = draw(a, view, batch=batch, group=g, scale=scale)
        a.set_title(f"{view.grouping} {view.groups[g] if view.groups else g}", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(title or f"{view.mixer or view.op}: Phi ({view.kind}, {scale})", fontsize=9)
    return fig


def plot_mixers(views: dict, path, *, batch: int = 0, group: int = 0, scale: str = "signed", cols: int = 6):
    """A grid, one panel per mixer (``{name: view}``): Phi[batch, group]; written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    _check_scale(scale)
    names = list(views)
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.2 * rows), squeeze=False)
    for a in axes.flat:
        a.axis("off")
    for a, name in zip(axes.flat, names):
        v = views[name]
        draw(a, v, batch=batch, group=min(group, v.matrix.shape[1] - 1), scale=scale)
        a.axis("on")
        a.set_title(f"{name} ({v.kind})", fontsize=8)
    fig.suptitle(f"Equivalent matrices Phi (row: output t, column: value s; {scale} scale)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def mixer_grid(
    path, *, names=None, d_model: int = 32, seq_len: int = 24, seed: int = 0, scale: str = "signed"
):
    """Every registered mixer (or ``names``), built with its paper settings and its record's small test
    kwargs at ``d_model``, on one random input x [1, seq_len, d_model] (seed ``seed``): the grid of Phi
    (first head / channel) written to ``path``. Returns ``{name: view}``. Untrained weights: the picture shows
    each family's structure (softmax rows, decayed q.k, Toeplitz), not what training makes of it."""
    import seqzoo
    from seqzoo.models.mixer_settings import with_paper_settings

    from .equivalent import equivalent_matrix

    records = seqzoo.list_mixers()
    views = {}
    x = torch.randn(1, seq_len, d_model, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for name in names or sorted(records):
        kwargs = with_paper_settings(name, seq_len=seq_len)
        kwargs.pop("name", None)
        torch.manual_seed(seed)
        mixer = seqzoo.build_mixer(name, d_model, **{**kwargs, **dict(records[name].test_kwargs)})
        views[name] = equivalent_matrix(mixer, x)
    plot_mixers(views, path, scale=scale)
    return views

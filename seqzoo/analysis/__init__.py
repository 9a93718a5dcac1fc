"""seqzoo.analysis: the dynamical-systems view of every mixer (``equivalent_matrix``) and its plots.

    from seqzoo import analysis
    view = analysis.equivalent_matrix(mixer, x)      # Phi [B, G, T, T] per head or channel, exact in fp64
    view.check(1e-10)                                # Phi @ values (+ offset) == the core's output
    analysis.plot(view)                              # signed colour scale

Nothing in ``seqzoo.layers`` or ``seqzoo.ops`` imports this package; it reads their op calls through
``seqzoo.ops.record_calls``.
"""

from .equivalent import (
    ADAPTERS,
    PROBES,
    Core,
    EquivalentView,
    Probe,
    channel,
    equivalent_matrices,
    equivalent_matrix,
    head,
    probe_call,
    record_core,
    record_core_calls,
)
from .plot import mixer_grid, plot, plot_mixers

__all__ = [
    "ADAPTERS",
    "Core",
    "EquivalentView",
    "PROBES",
    "Probe",
    "channel",
    "equivalent_matrices",
    "equivalent_matrix",
    "head",
    "mixer_grid",
    "plot",
    "plot_mixers",
    "probe_call",
    "record_core",
    "record_core_calls",
]

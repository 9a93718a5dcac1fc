"""Makes ``lm_eval --model seqzoo`` find seqzoo's harness model.

lm-eval 0.4.13 (the newest release) knows only the models listed inside its own package; it has no plugin
discovery yet (its main branch reads the ``lm_eval.models`` entry points, which seqzoo's pyproject declares
for when that is released). Until then, the installed ``seqzoo-lm-eval.pth`` file calls :func:`register`
when the running program is the harness's CLI (``lm_eval``, ``lm-eval`` or ``python -m lm_eval``), and only
then: every other Python start-up pays one ``sys.argv`` check. :func:`register` adds a lazy entry, so the
harness imports seqzoo only when ``--model seqzoo`` is asked for.
"""

from __future__ import annotations

import os
import sys

TARGET = "seqzoo.eval.harness.model:SeqzooLM"


def harness_cli_running() -> bool:
    argv = getattr(sys, "orig_argv", None) or []
    if os.path.basename(sys.argv[0] if sys.argv else "") in ("lm_eval", "lm-eval"):
        return True
    return any(a == "-m" and b == "lm_eval" for a, b in zip(argv, argv[1:]))


def register() -> None:
    """Add ``seqzoo`` to lm-eval's model registry (lazily: nothing of seqzoo or torch is imported)."""
    try:
        import lm_eval.models  # noqa: F401  (its own lazy entries first: the registry then is not empty)
        from lm_eval.api.registry import model_registry
    except ImportError:
        return
    if "seqzoo" not in model_registry:
        model_registry.register("seqzoo", target=TARGET)


def on_startup() -> None:
    """What the .pth line runs; never raises (a broken hook must not break Python start-up)."""
    try:
        if harness_cli_running():
            register()
    except Exception as e:  # pragma: no cover - only reached on a broken install
        print(f"seqzoo: could not register the lm-eval model: {e}", file=sys.stderr)

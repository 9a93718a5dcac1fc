"""The ``seqzoo`` command (also ``python -m seqzoo``).

    seqzoo list       mixers with their papers; ops with their backends
    seqzoo version    versions of seqzoo, torch, triton
    seqzoo train      train from a YAML config (train/command.py)
    seqzoo generate   sample text from a trained run (train/generate.py)
    seqzoo mqar       MQAR sweep over mixers x d_model x settings x lrs (eval/mqar.py)
    seqzoo bench      time op backends (eval/bench.py)
    seqzoo demo       quick comparison of mixers on built-in data, on CPU (eval/demo.py)
    seqzoo eval       lm-eval-harness on a trained run (eval/harness/command.py)
    seqzoo lra        Long Range Arena: one task, a sweep, or generated data (eval/lra/command.py)
    seqzoo linearize  attention run -> liger / lizard / gla, LoRA fine-tuned (train/linearize.py)
    seqzoo convert    transformers checkpoint folder -> run (train/hf_command.py)
    seqzoo export     run -> transformers checkpoint folder (train/hf_command.py)
    seqzoo explain    equivalent matrices of a trained MQAR run (eval/explain.py)

Each subcommand lives in its own module with ``configure_parser(parser)`` and ``main(args) -> int``
(or in an object of a module holding several: ``"module:Name"``); a new command is added the same way.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys

# name -> (module, help); modules are imported only when their command runs.
COMMANDS = {
    "train": ("seqzoo.train.command", "train a model from a YAML config (the one recipe)"),
    "generate": ("seqzoo.train.generate", "sample text from a trained run"),
    "mqar": ("seqzoo.eval.mqar", "MQAR sweep: recall accuracy for every mixer (the Zoology comparison)"),
    "bench": ("seqzoo.eval.bench", "time op backends, forward and forward+backward"),
    "demo": ("seqzoo.eval.demo", "quick comparison of mixers on built-in data, on CPU"),
    "eval": ("seqzoo.eval.harness.command", "score a trained run with lm-eval-harness (offline tasks ship)"),
    "lra": ("seqzoo.eval.lra.command", "Long Range Arena: train a mixer on a task, sweep, generate data"),
    "linearize": ("seqzoo.train.linearize", "attention run -> liger/lizard/gla, LoRA fine-tuned"),
    "explain": ("seqzoo.eval.explain", "equivalent matrices (dynamical-systems view) of a trained MQAR run"),
    "convert": ("seqzoo.train.hf_command:ConvertCommand", "transformers checkpoint folder -> seqzoo run"),
    "export": ("seqzoo.train.hf_command:ExportCommand", "seqzoo run -> transformers checkpoint folder"),
}


def _command(module: str):
    """The object with configure_parser and main: a module, or ``module:Name`` an attribute of one."""
    name, _, attr = module.partition(":")
    mod = importlib.import_module(name)
    return getattr(mod, attr) if attr else mod


def cmd_list(args) -> int:
    import torch

    import seqzoo
    from seqzoo import ops

    try:
        device = torch.device(args.device)
    except (RuntimeError, TypeError):
        print(
            f"seqzoo list: error: argument --device: not a device: {args.device!r} (cpu, cuda, cuda:1...)",
            file=sys.stderr,
        )
        return 2
    print("Mixers (seqzoo.build_mixer(name, d_model, **kwargs)):")
    for name, info in seqzoo.list_mixers().items():
        print(f"  {name:<16} {info.description}")
        print(f"  {'':<16} paper: {info.paper}")
    print(f"\nOps (seqzoo.ops.<name>(..., backend=...)), backends on {device}:")
    for name, op in ops.list_ops().items():
        print(f"  {name}")
        for backend, status in op.backends(device).items():
            mark = "yes" if status == "available" else f"no ({status})"
            print(f"      {backend:<14} {mark}")
    return 0


def cmd_version(args) -> int:
    import torch

    import seqzoo

    print(f"seqzoo {seqzoo.__version__}")
    print(f"torch {torch.__version__} (CUDA {'available' if torch.cuda.is_available() else 'not available'})")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton not installed")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqzoo", description="Efficient sequence mixers behind one contract."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("list", help="mixers with their papers; ops with their backends")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="device to report backends for")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("version", help="versions of seqzoo, torch and triton")
    p.set_defaults(func=cmd_version)
    parser.commands = {"list": sub.choices["list"], "version": p}
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        parser.commands[name] = p
        p.set_defaults(module=module)
        try:
            _command(module).configure_parser(p)
        except ImportError as e:  # an optional extra missing: say which, when the command is used
            p.set_defaults(import_error=e)
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# Numeric options that several commands share, and the values they take (checked before a command runs, so
# that `--steps -1` is a usage error, not a crash minutes later). name -> (test, what it must be).
NUMERIC_OPTIONS = {
    **{
        name: (lambda v: v >= 1, "a positive int")
        for name in (
            "steps",
            "batch_size",
            "seq_len",
            "d_model",
            "n_layers",
            "eval_batches",
            "max_new_tokens",
            "num_samples",
            "rank",
            "top_k",
            "repeats",
        )
    },
    **{name: (lambda v: v >= 0, "an int >= 0") for name in ("warmup", "max_ref_T")},
    **{
        name: (lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
        for name in ("lr", "alpha", "limit")
    },
    "temperature": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "top_p": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
}


def check_numeric_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error (exit 2, the option named) for a shared numeric option out of its range."""
    for name, (ok, what) in NUMERIC_OPTIONS.items():
        value = getattr(args, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
            parser.error(f"argument --{name.replace('_', '-')}: must be {what}, got {value!r}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    check_numeric_options(parser.commands.get(args.command, parser), args)
    if hasattr(args, "func"):
        return args.func(args)
    if getattr(args, "import_error", None) is not None:
        print(f"seqzoo {args.command}: a needed package is missing: {args.import_error}", file=sys.stderr)
        return 2
    try:
        return _command(args.module).main(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        # A bad argument that reached the command (a config value, a mixer keyword, a missing file): the
        # message names it; SEQZOO_DEBUG=1 shows the traceback.
        if os.environ.get("SEQZOO_DEBUG"):
            raise
        print(f"seqzoo {args.command}: error: {e}", file=sys.stderr)
        print("(SEQZOO_DEBUG=1 shows where it was raised)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

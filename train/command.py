"""``seqzoo train CONFIG [key=value ...] [--resume]``: the one recipe from a YAML config.

CONFIG is a path or the short name of a shipped config (``seqzoo train --list`` shows them). Overrides use
dotted keys: ``seqzoo train tiny-attention optim.lr=1e-3 model.mixer=short_conv train.steps=100``.
Under ``torchrun --nproc_per_node N -m seqzoo train ...`` the same command trains with DDP.
"""

from __future__ import annotations

import sys

from .config import ConfigError, available_configs, load_config


def configure_parser(p) -> None:
    p.add_argument("config", nargs="?", help="config path or shipped config name")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-3")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--list", action="store_true", help="list the shipped configs")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def main(args) -> int:
    if args.list or not args.config:
        print("shipped configs: " + ", ".join(available_configs()))
        return 0 if args.list else 2
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"seqzoo train: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        from .config import dump_config

        print(dump_config(config))
        return 0
    from .loop import train

    try:
        train(config, resume=args.resume)
    except ImportError as e:  # an optional extra the config needs (eval.tasks: lm-eval)
        print(f"seqzoo train: {e}", file=sys.stderr)
        return 2
    return 0

"""``seqzoo explain RUN``: the equivalent matrices (``seqzoo.analysis.equivalent_matrix``) of a trained MQAR model.

Loads the run's final model (``RUN/model``, saved by every ``seqzoo train`` / ``seqzoo mqar`` run) and its
task from ``RUN/config.yaml``, takes the task's test examples (the same ones the run's accuracy is scored on),
and for every layer computes Phi on the mixer's own input (the block's normalised hidden state, captured by a
forward pre-hook), in fp64. Writes:

- ``explain.png``: one row per layer; the first panel is sum_g |Phi_g| over the heads / channels, the next the
  ``--groups`` heads (channels) with the most |Phi| mass, all for one example (``--example``). Thin lines mark the
  key positions (columns, k_i at 2i) and the query positions (rows); circles mark (query, its key's value
  position 2i + 1), where an associative-recall read would sit;
- ``explain.json``: per layer, over ``--num`` test examples: ``hit_rate`` = how often, at a query position t of
  the key k_i, argmax_s sum_g |Phi[g, t, s]| is k_i's position 2i or its value's 2i + 1; ``best_group_hit_rate``
  the same for the best single head / channel; ``hit_rate_slackN`` the aggregate rate counting an argmax up to N
  (``--slack``, default 2) positions after the value as a hit (a short convolution of width 4 on k and v, as the
  linear-attention family's paper settings have, makes the pair's binding readable there); and the model's
  accuracy on those examples.

    seqzoo explain runs/mqar/mqar-cpu/runs/attention-d64-T64-kv8-lr0.003-XXXX --out attention.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

IGNORE_INDEX = -100


def load_run(run: Path):
    """(model, config dict) of a finished run (``RUN/model`` and ``RUN/config.yaml``)."""
    from seqzoo.models.lm import CausalLM

    if not (run / "model").is_dir():
        raise ValueError(f"{run}: no model/ folder (the run did not finish, or it is not a run folder)")
    config = yaml.safe_load((run / "config.yaml").read_text())
    return CausalLM.load(run / "model").eval(), config


def test_examples(config: dict, num: int):
    """The first ``num`` test examples (inputs, labels) of the run's task (``data.source: task``)."""
    from seqzoo.eval.tasks import get_task

    data = config["data"]
    if data.get("source") != "task":
        raise ValueError(f"explain reads task runs (MQAR); this run's data.source is {data.get('source')!r}")
    task = get_task(data["name"])(**data["task_args"], seed=config["train"].get("seed", 0))
    return task.val_inputs[:num], task.val_labels[:num]


def mixer_inputs(model, inputs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each block's mixer input for ``inputs`` (forward pre-hooks) and the model's logits."""
    captured = []
    hooks = [
        b.mixer.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach()))
        for b in model.backbone.blocks
    ]
    try:
        with torch.no_grad():
            logits = model(inputs)
    finally:
        for h in hooks:
            h.remove()
    return captured, logits if isinstance(logits, torch.Tensor) else logits[0]


def recall_targets(inputs: torch.Tensor, labels: torch.Tensor, num_kv_pairs: int):
    """Per example, [(query position t, key position 2i)] for every scored query (inputs[t] = key k_i)."""
    out = []
    for row, lab in zip(inputs, labels):
        keys = row[0 : 2 * num_kv_pairs : 2]
        pairs = []
        for t in (lab != IGNORE_INDEX).nonzero().flatten().tolist():
            match = (keys == row[t]).nonzero().flatten()
            if len(match):
                pairs.append((t, 2 * int(match[0])))
        out.append(pairs)
    return out


def hit_rates(matrix: torch.Tensor, targets, slack: int = 0) -> tuple[float, float]:
    """(aggregate, best single group) rates of argmax_s |Phi[t, s]| in [2i, 2i + 1 + slack] at the query rows
    t of key k_i (aggregate: |Phi| summed over the heads / channels)."""
    mag = matrix.abs().double()  # [B, G, T, T]
    agg = mag.sum(1).argmax(-1)  # [B, T]
    per_group = mag.argmax(-1)  # [B, G, T]
    hits, group_hits, n = 0, torch.zeros(mag.shape[1], dtype=torch.float64), 0
    for b, pairs in enumerate(targets):
        for t, k in pairs:
            n += 1
            hits += k <= int(agg[b, t]) <= k + 1 + slack
            group_hits += ((per_group[b, :, t] >= k) & (per_group[b, :, t] <= k + 1 + slack)).double()
    return hits / max(n, 1), float(group_hits.max()) / max(n, 1)


def draw(views, inputs, targets, example: int, groups: int, path: Path, title: str, scale: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seqzoo.analysis.plot import draw as draw_panel

    pairs = targets[example]
    marks = {
        "keys": sorted({k for _, k in pairs}),
        "queries": [t for t, _ in pairs],
        "targets": [(t, k + 1) for t, k in pairs],
    }
    cols = 1 + min(groups, max(v.matrix.shape[1] for v in views))
    fig, axes = plt.subplots(len(views), cols, figsize=(2.6 * cols, 2.7 * len(views)), squeeze=False)
    for row, view in enumerate(views):
        m = view.matrix[example : example + 1]
        total = type(view)(**{**view.__dict__, "matrix": m.abs().sum(1, keepdim=True)})
        draw_panel(axes[row][0], total, scale="abs-minmax", marks=marks)
        axes[row][0].set_title(f"layer {row}: sum |Phi| over {view.grouping}s", fontsize=8)
        mass = m.abs().sum((0, 2, 3))
        for c, g in enumerate(mass.argsort(descending=True)[:groups].tolist(), start=1):
            one = type(view)(**{**view.__dict__, "matrix": m[:, g : g + 1]})
            draw_panel(axes[row][c], one, scale=scale, marks=marks)
            axes[row][c].set_title(f"layer {row}: {view.grouping} {g} ({view.kind})", fontsize=8)
        for c in range(1 + min(groups, m.shape[1]), cols):
            axes[row][c].axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a finished MQAR run folder (holds model/ and config.yaml)")
    p.add_argument("--out", default=None, help="PNG path (default RUN/explain.png; the JSON beside it)")
    p.add_argument("--example", type=int, default=0, help="which test example to draw")
    p.add_argument("--num", type=int, default=256, help="test examples the hit rates are measured on")
    p.add_argument("--groups", type=int, default=3, help="heads / channels drawn per layer, beside the sum")
    p.add_argument("--scale", choices=("signed", "abs-minmax"), default="signed")
    p.add_argument(
        "--slack",
        type=int,
        default=2,
        help="also count an argmax up to this many positions after the value (a short convolution of width "
        "4 moves a pair's binding there); reported as hit_rate_slackN",
    )


def main(args) -> int:
    # A context, not torch.set_grad_enabled(False): main also runs inside other processes (tests, notebooks).
    with torch.no_grad():
        return _explain(args)


def _explain(args) -> int:
    from seqzoo.analysis import equivalent_matrix

    run = Path(args.run)
    try:
        model, config = load_run(run)
        inputs, labels = test_examples(config, max(args.num, args.example + 1))
    except (ValueError, FileNotFoundError) as e:
        print(f"seqzoo explain: {e}", file=sys.stderr)
        return 2
    num_kv = config["data"]["task_args"]["num_kv_pairs"]
    targets = recall_targets(inputs, labels, num_kv)
    xs, logits = mixer_inputs(model, inputs)
    scored = labels != IGNORE_INDEX
    accuracy = float((logits.argmax(-1)[scored] == labels[scored]).double().mean())
    views, layers = [], []
    for i, (block, x) in enumerate(zip(model.backbone.blocks, xs)):
        try:
            view = equivalent_matrix(block.mixer, x)
        except ValueError as e:
            print(f"seqzoo explain: layer {i}: {e}", file=sys.stderr)
            return 2
        agg, best = hit_rates(view.matrix, targets)
        near, _ = hit_rates(view.matrix, targets, args.slack)
        views.append(view)
        layers.append(
            {
                "layer": i,
                "mixer": view.mixer,
                "kind": view.kind,
                "hit_rate": agg,
                "best_group_hit_rate": best,
                f"hit_rate_slack{args.slack}": near,
            }
        )
    out = Path(args.out) if args.out else run / "explain.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    name = config.get("name", run.name)
    draw(
        views,
        inputs,
        targets,
        args.example,
        args.groups,
        out,
        f"{name}\nPhi per layer, test example {args.example} (lines: keys | queries; circles: query -> value)",
        args.scale,
    )
    report = {"run": str(run), "examples": len(inputs), "accuracy": accuracy, "layers": layers}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    for r in layers:
        print(
            f"layer {r['layer']} ({r['mixer']}, {r['kind']}): argmax |Phi| at the query hits its key/value in "
            f"{r['hit_rate']:.1%} of {sum(map(len, targets))} queries (best single {view.grouping}: "
            f"{r['best_group_hit_rate']:.1%}; up to {args.slack} positions after the value: "
            f"{r[f'hit_rate_slack{args.slack}']:.1%})"
        )
    print(f"accuracy {accuracy:.3f}; wrote {out} and {out.with_suffix('.json')}")
    return 0

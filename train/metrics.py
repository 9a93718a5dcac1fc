"""Run logging: ``metrics.jsonl`` (one JSON object per line), TensorBoard when installed, and the loss
curve PNG at the end (matplotlib, from the ``eval`` extra, when installed)."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLogger:
    def __init__(self, out_dir: Path, enabled: bool = True, tensorboard: bool = True, resume_from: int = 0):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        if resume_from and self.path.exists():
            # Lines written after the checkpoint we resume from will be written again: drop them.
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line and json.loads(line)["step"] <= resume_from
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif not resume_from:
            self.path.write_text("")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(
                    str(Path(out_dir) / "tensorboard"), purge_step=resume_from or None
                )
            except ImportError:
                self.writer = None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(out_dir: Path) -> Path | None:
    """``loss.png``: training loss and validation loss against step. None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("loss.png skipped: matplotlib is not installed (pip install 'seqzoo[eval]')")
        return None
    rows = read_metrics(out_dir)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(Path(out_dir).name)
    ax.legend()
    ax.grid(alpha=0.3)
    path = Path(out_dir) / "loss.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

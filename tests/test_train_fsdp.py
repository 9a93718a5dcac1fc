"""FSDP2 training on CPUs (two processes, gloo): sharded checkpoints survive SIGKILL and resume exactly.

The two ranks are forked from the test process (``multiprocessing``'s fork context) with the environment
torchrun gives (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK): a fork inherits the imported torch, where a
fresh interpreter would spend most of this test's time importing it again (spawned instead when this process
has initialised CUDA).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import sys
import time
import traceback

import pytest
import torch

pytest.importorskip("datasets", reason="the train extra is not installed")

# Imported once here rather than by every forked rank: FSDP2 imports torch._dynamo (and with it triton when
# installed) on first use, seconds on a busy CPU.
import torch._dynamo  # noqa: E402,F401
import torch.distributed.checkpoint  # noqa: E402,F401
import torch.distributed.fsdp  # noqa: E402,F401

from seqzoo.train import data as train_data  # noqa: E402
from seqzoo.train.checkpoint import is_sharded_checkpoint, latest_checkpoint  # noqa: E402
from seqzoo.train.config import load_config  # noqa: E402
from seqzoo.train.loop import train  # noqa: E402
from seqzoo.train.metrics import read_metrics  # noqa: E402

pytestmark = pytest.mark.skipif(
    sys.platform != "linux"
    or not torch.distributed.is_available()
    or not torch.distributed.is_gloo_available(),
    reason="needs Linux (fork) and torch.distributed with gloo",
)

STEPS, CKPT_EVERY = 16, 4


def fsdp_config(out_dir) -> dict:
    """A run small enough for two ranks on two busy CPU cores: 16 steps, a checkpoint every 4."""
    return {
        "name": "fsdp",
        # Dropout draws from every rank's RNG: a resume that lost an RNG state would show in the losses.
        "model": {
            "d_model": 32,
            "n_layers": 2,
            "mixer": ["short_conv", {"name": "attention", "n_heads": 2}],
            "dropout": 0.1,
        },
        "data": {"source": "builtin", "max_bytes": 50_000, "seq_len": 32},
        "optim": {"lr": 3e-3, "warmup_steps": 3},
        "train": {
            "steps": STEPS,
            "batch_size": 4,
            "eval_every": 100,
            "eval_batches": 1,
            "ckpt_every": CKPT_EVERY,
            "out_dir": str(out_dir),
            "threads": 1,
            "device": "cpu",  # gloo on CPUs, also on a machine with a GPU
            "distributed": "fsdp",
        },
        "log": {"every": 1, "progress": False, "tensorboard": False, "plot": False},
    }


def _rank_main(rank: int, port: int, raw: dict, resume: bool, error_file: str) -> None:
    """One rank, as torchrun would start it; an exception is written to ``error_file`` for the test."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    try:
        train(load_config(raw), resume=resume)
        torch.distributed.destroy_process_group()
    except BaseException:
        with open(error_file, "w") as f:
            f.write(traceback.format_exc())
        os._exit(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(raw: dict, tmp_path, tag: str, resume: bool = False) -> list:
    # A forked child cannot use CUDA once its parent has (an earlier test on a GPU machine): spawn then. The
    # ranks run on CPUs, but torch still asks CUDA for its RNG states where a GPU is present.
    ctx = multiprocessing.get_context("spawn" if torch.cuda.is_initialized() else "fork")
    port = _free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(r, port, raw, resume, str(tmp_path / f"error-{tag}-{r}.txt")))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    return procs


def _join(procs: list, tmp_path, tag: str, timeout: float = 120) -> None:
    """Wait for both ranks; when one fails the other would wait in a collective forever, so it is killed."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(p.is_alive() for p in procs):
        if any(p.exitcode not in (None, 0) for p in procs):
            break
        time.sleep(0.05)
    hung = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
        p.join()
    errors = "\n".join(f.read_text() for f in sorted(tmp_path.glob(f"error-{tag}-*.txt")))
    assert [p.exitcode for p in procs] == [0, 0], (
        f"{tag}: exit codes {[p.exitcode for p in procs]}, "
        + (f"killed after {timeout} s: {hung}\n" if hung and not errors else "")
        + errors
    )


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


@pytest.fixture
def stdlib_listed_once(monkeypatch):
    """The builtin corpus lists the standard library's files (a walk of thousands of paths) in every rank of
    every run: list them once, here, and let the forked ranks inherit the list. The same files either way."""
    files = train_data.stdlib_files()
    monkeypatch.setattr(train_data, "stdlib_files", lambda: list(files))


def test_fsdp_sigkill_then_resume_gives_identical_losses(tmp_path, stdlib_listed_once):
    # (a) The uninterrupted run.
    ref_dir = tmp_path / "ref"
    procs = _start(fsdp_config(ref_dir), tmp_path, "ref")
    _join(procs, tmp_path, "ref")
    ref = _losses(ref_dir)
    assert sorted(ref) == list(range(1, STEPS + 1))

    # Its checkpoints are sharded (DCP) and found as the latest; its final model is plain safetensors.
    ckpt = latest_checkpoint(ref_dir / "checkpoints")
    assert ckpt is not None and ckpt.name == f"step_{STEPS:08d}" and is_sharded_checkpoint(ckpt)
    assert (ckpt / "dcp" / ".metadata").is_file()
    assert {p.name for p in ckpt.glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}
    from seqzoo.train.generate import load_run_model

    final = load_run_model(ref_dir)  # model/model.safetensors, gathered from the shards
    summary = json.loads((ref_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["parameters"] == final.num_parameters()
    # The checkpoint's gathered weights are the final weights (the last checkpoint is the last step).
    from safetensors.torch import load_file

    saved = load_file(ckpt / "model.safetensors")
    state = final.state_dict()
    assert saved and all(torch.equal(saved[k], state[k]) for k in saved)
    # A sharded checkpoint is not read into a plain (one-process or DDP) run: the error says what to change.
    from seqzoo.train.checkpoint import load_checkpoint

    optimizer = torch.optim.AdamW(final.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    with pytest.raises(ValueError, match="sharded.*train.distributed"):
        load_checkpoint(ckpt, final, optimizer, scheduler, None, sharded=False)

    # (b) The same run, both ranks SIGKILLed once a checkpoint exists and a later step has been logged, so
    # that work done after the checkpoint is lost and must be redone the same way.
    run_dir = tmp_path / "killed"
    procs = _start(fsdp_config(run_dir), tmp_path, "killed")
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and all(p.is_alive() for p in procs):
        ckpt = latest_checkpoint(run_dir / "checkpoints")
        if ckpt is not None and max(_losses(run_dir), default=0) > int(ckpt.name.split("_")[1]):
            killed_at = max(_losses(run_dir))
            for p in procs:
                os.kill(p.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    for p in procs:
        p.join(30)
    assert killed_at is not None, "the run ended (or hung) before it could be killed after a checkpoint"
    assert [p.exitcode for p in procs] == [-signal.SIGKILL] * 2
    assert killed_at < STEPS and not (run_dir / "summary.json").exists()
    resumed_from = int(latest_checkpoint(run_dir / "checkpoints").name.split("_")[1])
    assert CKPT_EVERY <= resumed_from < STEPS

    procs = _start(fsdp_config(run_dir), tmp_path, "resumed", resume=True)
    _join(procs, tmp_path, "resumed")
    got = _losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    # Exact equality, not a tolerance: the resumed ranks hold the same shards (same world size), restore every
    # bit of the parameters, Adam moments, schedule and RNG states, read the same batches (a function of the
    # step) and reduce in the same order (gloo, two ranks, one thread each), so every float op repeats.
    assert all(got[s] == ref[s] for s in range(1, STEPS + 1)), (resumed_from, got, ref)


def test_fsdp_on_one_process_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    raw = fsdp_config(tmp_path / "one")
    with pytest.raises(ValueError, match=r"train.distributed=fsdp.*one process.*torchrun"):
        train(load_config(raw))


def test_loss_window_reads_the_losses_once_and_names_a_bad_step():
    """The loop keeps each step's loss as a tensor and reads a window of them at once (one sync): the logged
    mean is the in-order float sum of the per-step losses, as when each was read at its step; a loss that is
    not finite is reported with its own step."""
    from seqzoo.train.loop import LossWindow

    window = LossWindow(world=1)
    losses = [0.1, 0.2, 0.3000001, 5.5]
    for step, v in enumerate(losses, start=1):
        window.add(step, torch.tensor(v))
    assert window.pending and not window.values  # nothing read yet
    mean, n, _ = window.close()
    total = 0.0
    for v in losses:
        total += torch.tensor(v).item()
    assert (mean, n) == (total / 4, 4) and not window.pending and not window.values
    window.add(7, torch.tensor(1.0))
    window.add(8, torch.tensor(float("nan")))
    with pytest.raises(FloatingPointError, match="step 8: the loss is nan"):
        window.flush()

"""Long Range Arena (Tay et al. 2021): the six tasks, their data, and what the papers report.

    data = load_task("listops", data_dir="data/lra/listops")            # reads the LRA release layout
    data = load_task("listops", data_dir=d, generate={"num_train": 20000})  # generates it there first if empty

The loaders (``loaders.py``) read the files people have: the LRA release (ListOps TSVs, the AAN pairs, the
Pathfinder image folders), IMDB through ``datasets`` and CIFAR-10's Python batches. ListOps and Pathfinder are
synthetic, and their generators are written here (``listops.py``, ``pathfinder.py``), so both tasks run with
no download. ``seqzoo lra TASK --mixer NAME`` trains one through the recipe; ``seqzoo lra sweep`` a grid
(``command.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TaskInfo:
    name: str
    description: str
    seq_len: int
    n_classes: int
    generator: str | None = None  # the task's generator, when it is synthetic
    image_size: tuple[int, int] | None = None  # (H, W) of an image task, its pixels row-major (vig's grid)


TASKS: dict[str, TaskInfo] = {
    "listops": TaskInfo("listops", "nested MAX/MIN/MED/SUM_MOD expressions over digits", 2000, 10, "listops"),
    "text": TaskInfo("text", "IMDB sentiment, byte level", 4096, 2),
    "retrieval": TaskInfo("retrieval", "AAN citation pairs, byte level, two towers", 4000, 2),
    "image": TaskInfo("image", "CIFAR-10 grayscale, one pixel per token", 1024, 10, image_size=(32, 32)),
    "pathfinder": TaskInfo(
        "pathfinder", "are the two dots joined by a path? 32 x 32 pixels", 1024, 2, "pathfinder", (32, 32)
    ),
    "pathx": TaskInfo("pathx", "Pathfinder at 128 x 128 pixels", 16384, 2, "pathfinder", (128, 128)),
}
TASK_ORDER = ["listops", "text", "retrieval", "image", "pathfinder", "pathx"]

# Test accuracy (%) as the papers report it (to one decimal), in TASK_ORDER; "fail" where the paper reports the model failed
# (no better than chance), None where it reports no result.
PUBLISHED: dict[str, dict] = {
    "s4": {
        "source": "Gu et al. 2022 (S4)",
        "acc": [59.6, 86.8, 90.9, 88.7, 94.2, 96.4],
    },
    "s4d": {
        "source": "Gu et al. 2022 (S4D-LegS)",
        "acc": [60.5, 86.2, 89.5, 88.2, 93.1, 91.9],
    },
    "attention": {
        "source": "Tay et al. 2021 (Transformer)",
        "acc": [36.4, 64.3, 57.5, 42.4, 71.4, "fail"],
    },
    "flow": {
        "source": "Wu et al. 2022 (Flowformer)",
        "acc": [38.7, 64.3, 62.2, 43.2, 74.0, None],
    },
}


def default_data_dir(name: str) -> Path:
    return Path("data") / "lra" / name


def check_task(name: str) -> TaskInfo:
    if name not in TASKS:
        import difflib

        close = difflib.get_close_matches(str(name), list(TASKS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown LRA task {name!r}{hint}; the tasks are {TASK_ORDER}")
    return TASKS[name]


def generate_task(name: str, data_dir: str | Path, **generator_args) -> Path:
    """Write a synthetic task's data into ``data_dir`` in the LRA release layout; returns the folder."""
    info = check_task(name)
    data_dir = Path(data_dir)
    if info.generator == "listops":
        from .listops import write_listops_release

        args = {"num_train": 96_000, "num_val": 2_000, "num_test": 2_000, **generator_args}
        write_listops_release(data_dir, **args)
    elif info.generator == "pathfinder":
        from .pathfinder import write_pathfinder_release

        args = {"resolution": 32 if name == "pathfinder" else 128, **generator_args}
        write_pathfinder_release(data_dir, **args)
    else:
        raise ValueError(
            f"LRA task {name!r} is not synthetic: there is no generator (only listops, pathfinder and pathx)"
        )
    return data_dir


def has_data(name: str, data_dir: str | Path) -> bool:
    data_dir = Path(data_dir)
    return data_dir.is_dir() and any(data_dir.iterdir())


def load_task(name: str, data_dir: str | Path | None = None, generate: dict | None = None, **loader_args):
    """The task's splits (``loaders.LRAData``); with ``generate``, an empty ``data_dir`` is filled first."""
    from .loaders import load_lra

    info = check_task(name)
    if data_dir is None and name != "text":
        data_dir = default_data_dir(name)
    if generate is not None:
        if info.generator is None:
            raise ValueError(
                f"data.generate: LRA task {name!r} has no generator (only listops, pathfinder, pathx)"
            )
        if not has_data(name, data_dir):
            generate_task(name, data_dir, **generate)
        if info.generator == "pathfinder" and "difficulty" not in loader_args:
            # The generator writes the difficulty folder it was given (or named after contour_length); the
            # loader reads that one.
            from .pathfinder import resolve_difficulty

            given = generate.get("difficulty", generate.get("difficulty_name"))
            loader_args["difficulty"] = resolve_difficulty(given, generate.get("contour_length"))[0]
    return load_lra(name, data_dir, **loader_args)

"""Task datasets (synthetic recall tasks, Long Range Arena) that train through the one recipe.

A task is a function ``make(seed=..., **task_args) -> seqzoo.train.data.TaskData`` registered by name:

    @register_task("mqar")
    def mqar(seed=0, vocab_size=8192, ...): ...

and a config picks it with ``data: {source: task, name: mqar, task_args: {...}}``.
"""

from __future__ import annotations

from collections.abc import Callable

_TASKS: dict[str, Callable] = {}


def register_task(name: str):
    def add(fn):
        _TASKS[name] = fn
        return fn

    return add


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str) -> Callable:
    if name not in _TASKS:
        raise ValueError(f"data.name: unknown task {name!r}; registered tasks: {list_tasks()}")
    return _TASKS[name]


def _register_synthetic() -> None:
    """Wrap each generator of :mod:`.synthetic` as a task: a train and a test set from disjoint seeds."""
    import inspect

    from seqzoo.train.batches import TaskData

    from . import synthetic

    def as_task(generator, extra_vocab: str | None = None):
        defaults = {k: p.default for k, p in inspect.signature(generator).parameters.items()}

        def make(seed: int = 0, num_train: int = 10_000, num_test: int = 1_000, **kwargs):
            unknown = set(kwargs) - set(defaults) - {"num_examples"}
            if unknown:
                allowed = sorted(set(defaults) - {"num_examples", "seed"}) + ["num_train", "num_test"]
                raise ValueError(f"data.task_args: unknown argument(s) {sorted(unknown)}; allowed: {allowed}")
            # Train and test come from different seeds (2s and 2s + 1), so they never share a stream.
            train = generator(num_train, seed=2 * seed, **kwargs)
            test = generator(num_test, seed=2 * seed + 1, **kwargs)
            vocab = kwargs.get("vocab_size", defaults["vocab_size"])
            if extra_vocab:
                vocab += kwargs.get(extra_vocab, defaults[extra_vocab])
            return TaskData(*train, *test, vocab_size=vocab)

        make.__doc__ = generator.__doc__
        return make

    register_task("mqar")(as_task(synthetic.mqar))
    register_task("single_query_ar")(as_task(synthetic.single_query_ar))
    register_task("induction_heads")(as_task(synthetic.induction_heads))
    register_task("selective_copying")(as_task(synthetic.selective_copying))
    register_task("noisy_recall")(as_task(synthetic.noisy_recall, extra_vocab="noise_vocab"))


_register_synthetic()

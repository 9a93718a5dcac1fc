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

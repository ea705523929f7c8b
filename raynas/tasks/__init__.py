"""Tasks and their datasets, chosen by name.

``TASKS``: ``classification`` (images -> class), ``tagging`` (token sequences with lengths ->
one class per token), ``masked_lm`` (packed text blocks with masked positions -> the original
tokens there). ``DATASETS``: each loads the train / validation / test splits of one task
(``digits``, ``cluttered_digits``, ``parquet``, ``image_folder``, ``generated_tagging``,
``parquet_tagging``, ``stdlib_text``, ``parquet_text``).
A family says which tasks it accepts (``Family.tasks``); a job may name one
(``task: {name, options}``), else the family's first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raynas.errors import ConfigError
from raynas.registry import Registry
from raynas.tasks.base import (
    Batch,
    Metric,
    Task,
    TaskData,
    TensorDictDataset,
    make_loader,
    sample_batches,
    to_device,
)


def _builtin() -> None:
    from raynas.tasks import (  # noqa: F401
        classification,
        cluttered,
        mlm,
        parallel,
        speech,
        speech_data,
        tagging,
        translation,
    )


TASKS: Registry[type[Task]] = Registry("task", "task.name", _builtin, group="raynas.tasks")


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset loader: ``load(task, path, val_fraction, test_fraction, seed, **options)``
    returns ``TaskData``; ``task`` names the task it serves."""

    task: str
    load: Any
    needs_path: bool = False


DATASETS: Registry[DatasetEntry] = Registry("dataset", "data.name", _builtin,
                                            group="raynas.datasets")


def build_task(space, task_cfg: Mapping[str, Any] | None = None) -> Task:
    """The task a job trains ``space``'s family on: ``task_cfg`` (``{name, options}``) or
    the family's first task; a task the family does not take is a ``ConfigError``."""
    from raynas.supernets import get_family

    family = get_family(space.family)
    name = (task_cfg or {}).get("name") or family.tasks[0]
    if name not in family.tasks:
        TASKS.get(name)  # an unknown name lists the registered ones
        raise ConfigError(f"task.name = {name!r}: family {family.name!r} takes "
                          f"{', '.join(family.tasks)}")
    return TASKS.create(name, (task_cfg or {}).get("options"), model=dict(space.model))


def load_task_data(task: Task, data: Mapping[str, Any], base: Path | None = None) -> TaskData:
    """Load the splits ``data`` (a ``DataConfig`` dump) describes, checked against ``task``."""
    from raynas.config import DataConfig

    data = DataConfig(**data).model_dump()  # defaults for what the caller left out
    entry = DATASETS.get(data["name"])
    if entry.task != task.name:
        serving = [n for n in DATASETS.names() if DATASETS.get(n).task == task.name]
        raise ConfigError(f"data.name = {data['name']!r}: a dataset of task {entry.task!r}; "
                          f"task {task.name!r} takes {', '.join(serving) or 'none'}")
    path = data.get("path")
    if entry.needs_path and not path:
        raise ConfigError(f"data.path is required when data.name = {data['name']!r}")
    if path:
        path = Path(path) if base is None or Path(path).is_absolute() else base / path
        if not path.exists():
            raise ConfigError(f"data.path = {str(path)!r}: does not exist")
    from raynas.registry import check_options

    options = dict(data.get("options") or {})
    context = {"task": task, "path": path, "val_fraction": data["val_fraction"],
               "test_fraction": data["test_fraction"], "seed": data["seed"]}
    check_options("data.options", data["name"], "dataset", entry.load, options, context)
    splits = entry.load(**context, **options)
    task.check_data(splits)
    return splits


def default_task(space) -> Task:
    """The family's first task with default options (what latency timing and export of a
    space use when no job says otherwise: inputs depend only on the model settings)."""
    return build_task(space, None)


def example_args(space, batch_size: int, task: Task | None = None) -> tuple:
    """The model's example inputs for ``space`` at ``batch_size``, in ``forward`` order
    (latency timing, FLOPs counting, export)."""
    task = task or default_task(space)
    ex = task.example_inputs(batch_size)
    return tuple(ex[k] for k in task.input_names)


__all__ = [
    "DATASETS", "TASKS", "Batch", "DatasetEntry", "Metric", "Task", "TaskData",
    "TensorDictDataset", "build_task", "default_task", "example_args", "load_task_data",
    "make_loader", "sample_batches", "to_device",
]

"""The job's ``hparams:`` section: what ``raynas tune`` searches, in the space language.

Each key is a dotted job key (``train.lr``, ``train.distill.options.temperature``,
``data.batch_size``...) and each value a dim as in a search space file (``float`` with
``low``, ``high`` and ``log``; ``int``; ``choice``), bounds inclusive. A trial's job is the
resolved job with the trial's values set at those keys; every bound and choice is checked
up front by building that job, so a value the job refuses is an error before any trial runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raynas.errors import ConfigError
from raynas.space.dims import Choice, FloatRange, IntRange

# Keys a supernet training reads: what a trial may change.
TUNABLE = ("train", "data", "weights", "task", "seed")
# Path keys of a job: made absolute in best_job.yaml, which lives in another folder.
_PATH_KEYS = ("data.path", "train.resume_from", "train.init_ticket", "latency.table",
              "latency.lut", "latency.predictor")


def parse_hparams(cfg) -> tuple[Choice | IntRange | FloatRange, ...]:
    """The dims of ``cfg.hparams`` (ConfigError naming the key if one is malformed, outside
    the tunable sections, or has a bound or choice the job refuses)."""
    from raynas.space.space import _parse_space

    hparams = flat_hparams(cfg.hparams)
    if not hparams:
        return ()
    for key in hparams:
        if key.split(".")[0] not in TUNABLE:
            raise ConfigError(
                f"hparams.{key}: not a key a supernet training reads; `raynas tune` tunes "
                f"keys under {', '.join(TUNABLE)} (e.g. train.lr, train.weight_decay)")
    try:
        space = _parse_space({"name": "hparams", "dims": hparams}, "hparams")
    except ConfigError as exc:  # "hparams: dims.train.lr.low = ..." -> "hparams.train.lr..."
        raise ConfigError(str(exc).replace("hparams: dims.", "hparams.", 1)) from None
    dims = space.dims
    for dim in dims:
        if not isinstance(dim, Choice | IntRange | FloatRange):
            raise ConfigError(f"hparams.{dim.name}.type = 'per_layer': a hyperparameter is a "
                              "float, int or choice dim")
        values = list(dim.values) if isinstance(dim, Choice) else [dim.low, dim.high]
        for value in values:
            _check_value(cfg, dim.name, value)
    return dims


def flat_hparams(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dims by dotted key: ``{train: {lr: {type: float...}}}`` (as a command-line override
    ``hparams.train.lr={type: float...}`` nests it) reads as ``{train.lr: {type: float...}}``."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, Mapping) and "type" not in value and value:
            out.update(flat_hparams(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_value(cfg, key: str, value: Any) -> None:
    from raynas.config import build_config

    try:
        build_config(trial_doc(cfg, {key: value}), "job")
    except ConfigError as exc:
        raise ConfigError(f"hparams.{key}: the value {value!r} makes a job raynas refuses: "
                          f"{str(exc).removeprefix('job: ')}") from None


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 0.1}`` -> ``{"train": {"lr": 0.1}}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def trial_doc(cfg, values: Mapping[str, Any]) -> dict[str, Any]:
    """The job document of one trial: ``cfg`` resolved (every component as ``{name,
    options}``, so a key inside options keeps the component's name), without the study's
    own sections, with ``values`` set at their dotted keys."""
    from raynas.config import _merge

    doc = cfg.resolved()
    for key in ("hparams", "hpo", "base_dir"):
        doc.pop(key, None)
    return _merge(doc, nested(values))


def best_job_doc(cfg, values: Mapping[str, Any]) -> dict[str, Any]:
    """A job file for ``raynas run`` with the best trial's values: the trial's document with
    the paths the job names made absolute (it is written into the study's folder) and no
    output folder (``raynas run`` picks its own)."""
    from raynas.config import resolve_path

    doc = trial_doc(cfg, values)
    doc.pop("output_dir", None)
    space = resolve_path(cfg, cfg.space)
    if space.is_file():
        doc["space"] = str(space.resolve())
    for key in _PATH_KEYS:
        section, name = key.split(".")
        value = doc.get(section, {}).get(name)
        if value and "://" not in str(value):
            doc[section][name] = str(Path(resolve_path(cfg, value)).resolve())
    return doc


def tune_space(dims) -> dict[str, Any]:
    """Ray Tune's search space of the dims (inclusive int bounds: Tune's randint excludes
    its upper one)."""
    from ray import tune

    out: dict[str, Any] = {}
    for d in dims:
        if isinstance(d, Choice):
            out[d.name] = tune.choice(list(d.values))
        elif isinstance(d, IntRange):
            out[d.name] = tune.randint(d.low, d.high + 1)
        else:
            out[d.name] = (tune.loguniform if d.log else tune.uniform)(d.low, d.high)
    return out


ARCH_PREFIX = "arch."  # a joint space's architecture dims: arch.<dim>, arch.<dim>.<slot>


def arch_tune_space(space) -> dict[str, Any]:
    """Ray Tune dims of ``space``'s architecture, for a study that searches the subnet with
    its hyperparameters: ``arch.<dim>`` per dim and ``arch.<dim>.<i>`` per layer slot of a
    per-layer dim (every possible layer: the searcher sees a fixed-dimensional space; the
    subnet keeps the first ``depth`` of them, see ``arch_of``)."""
    from ray import tune

    from raynas.space import PerLayer

    out = {ARCH_PREFIX + k: v for k, v in
           tune_space([d for d in space.dims if not isinstance(d, PerLayer)]).items()}
    for d in space.dims:
        if isinstance(d, PerLayer):
            out.update({f"{ARCH_PREFIX}{d.name}.{i}": tune.choice(list(d.values))
                        for i in range(d.max_len)})
    return out


def arch_of(space, config: Mapping[str, Any]):
    """The subnet a trial's ``arch.*`` values name (validated against ``space``)."""
    from raynas.space import PerLayer

    def value(key: str) -> Any:  # a searcher may draw numpy scalars
        v = config[key]
        return v.item() if hasattr(v, "item") else v

    values = {d.name: value(ARCH_PREFIX + d.name) for d in space.dims
              if not isinstance(d, PerLayer)}
    for d in space.dims:
        if isinstance(d, PerLayer):
            values[d.name] = [value(f"{ARCH_PREFIX}{d.name}.{i}")
                              for i in range(int(values[d.depth]))]
    return space.validate(values)
# A trial's reported ``violation.<metric>``: how far its subnet is over a budget on that
# metric, (value - limit) / limit; > 0 breaks it (see ``raynas.hpo.constrained``).
VIOLATION = "violation."


def arch_point(space, arch) -> dict[str, Any]:
    """``arch`` as a point of ``arch_tune_space(space)``, the inverse of ``arch_of``: the
    layer slots past its depth hold the dim's first value (searchers take whole points)."""
    from raynas.space import PerLayer

    out: dict[str, Any] = {}
    for d in space.dims:
        if isinstance(d, PerLayer):
            layers = list(arch[d.name])
            out.update({f"{ARCH_PREFIX}{d.name}.{i}": layers[i] if i < len(layers)
                        else d.values[0] for i in range(d.max_len)})
        else:
            out[ARCH_PREFIX + d.name] = arch[d.name]
    return out


def inside(dim, value: Any) -> Any:
    """``value`` if ``dim`` holds it, else the nearest value it does hold."""
    if isinstance(dim, Choice):
        return value if value in dim.values else dim.values[0]
    return type(dim.low)(min(max(value, dim.low), dim.high))

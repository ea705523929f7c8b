"""Job configuration: YAML loading, dotted overrides, clear errors (the models are in
``schema``, what their sections mean together in ``checks``).

A job file (see ``jobs/``) names the space, the data and one section per stage. Every key
has a default except ``name`` and ``space``. Overrides on the command line use dotted keys:
``raynas run jobs/quickstart.yaml train.epochs=5 search.budget=64``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from raynas.config.checks import check_job
from raynas.config.schema import (  # noqa: F401 (the package's names)
    DEFAULT_TRACKING_URI,
    Component,
    ComponentField,
    DataConfig,
    EvaluatorConfig,
    ExportConfig,
    FidelityConfig,
    FinetuneConfig,
    HpoConfig,
    JobConfig,
    LatencyConfig,
    ObjectiveConfig,
    RayConfig,
    SearchConfig,
    TrackingConfig,
    TrainConfig,
)
from raynas.errors import ConfigError, describe_value
from raynas.space.space import yaml_value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.epochs=5", "search.searcher=optuna_tpe"]`` -> nested dict (YAML values)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r}: expected dotted.key=value, "
                              f"e.g. train.epochs=5")
        key, raw = pair.split("=", 1)
        try:
            value = yaml_value(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r}: {p} is set twice")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(merged.get(k), Mapping):
            merged[k] = _merge(dict(merged[k]), v)
        else:
            merged[k] = v
    return merged


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = JobConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type)
                                 and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _is_union_tag(part: Any) -> bool:
    # pydantic appends the union member it tried (``literal['best']``, ``int``,
    # ``constrained-int``) to the location of each member's error.
    return isinstance(part, str) and ("[" in part or "-" in part or part in (
        "int", "float", "str", "bool", "list", "dict", "tuple", "none"))


def _format_error(errors: list[dict[str, Any]], source: str) -> str:
    first = errors[0]
    loc = tuple(p for p in first["loc"] if not _is_union_tag(p))
    where = ".".join(str(p) for p in loc) or "<top level>"
    value = first.get("input")
    if first["type"] == "extra_forbidden":
        model = _model_at(loc)
        allowed = ", ".join(k for k in (model.model_fields if model else {}) if k != "base_dir")
        return f"{source}: {where}: unknown key; allowed keys here: {allowed}"
    if first["type"] == "missing":
        return f"{source}: {where}: required key is missing"
    # A union fails once per member: say what each member would have accepted.
    messages = []
    for err in errors:
        if tuple(p for p in err["loc"] if not _is_union_tag(p)) == loc and \
                err["msg"] not in messages:
            messages.append(err["msg"])
    return f"{source}: {where} = {describe_value(value)}: {'; or '.join(messages)}"


def build_config(doc: Mapping[str, Any], source: str = "<config>",
                 overrides: list[str] | None = None, base_dir: str | Path = ".") -> JobConfig:
    """Validate a job document (plus overrides) into a ``JobConfig``; ConfigError if bad."""
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: a job file must be a YAML mapping")
    data = _merge(dict(doc), parse_overrides(overrides or []))
    data["base_dir"] = str(Path(base_dir).resolve())
    try:
        cfg = JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc.errors(), source)) from None
    check_job(cfg, source)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Read a job YAML file and apply dotted overrides."""
    from raynas.space.space import read_yaml

    path = Path(path)
    return build_config(read_yaml(path, "job file"), str(path), overrides, base_dir=path.parent)


def resolve_path(cfg: JobConfig, value: str) -> Path:
    """A path from the config: as given if it exists (absolute or from the cwd), else relative
    to the job file's directory."""
    p = Path(value)
    if p.is_absolute() or p.exists():
        return p
    return Path(cfg.base_dir) / p

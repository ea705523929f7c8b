"""Job configuration: frozen pydantic models, YAML loading, dotted overrides, clear errors.

A job file (see ``jobs/``) names the space, the data and one section per stage. Every key
has a default except ``name`` and ``space``. Overrides on the command line use dotted keys:
``raynas run jobs/quickstart.yaml train.epochs=5 search.budget=64``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from raynas.errors import ConfigError, describe_value

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Component(_Section):
    """A component chosen by registered name, with its own options. In YAML either the name
    alone (``sampler: sandwich``) or ``{name: sandwich, options: {...}}``."""

    name: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)


def _component(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


ComponentField = Annotated[Component, BeforeValidator(_component)]


class DataConfig(_Section):
    name: str = Field("digits", description="a dataset of the job's task: digits, "
                      "cluttered_digits, parquet, image_folder (classification); "
                      "generated_tagging, parquet_tagging (tagging); or a user's, registered "
                      "under raynas.datasets")
    path: str | None = Field(None, description="file or folder of datasets that read one")
    options: dict[str, Any] = Field(default_factory=dict, description="the dataset's own "
                                    "settings, e.g. {label_column: target} for parquet")
    batch_size: int = Field(256, ge=1, description="batch size of evaluation passes")
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    seed: int = Field(0, ge=0, le=2**32 - 1, description="split seed (numpy's range)")


class RayConfig(_Section):
    address: str | None = Field(
        None, description="cluster to join; None starts an embedded local Ray "
        "(unless RAY_ADDRESS is set, as under `ray job submit`)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded Ray")
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom resources of the embedded Ray, e.g. "
        "{'target:local-cpu': 1} to measure latency there with latency.resource")
    storage_path: str | None = Field(
        None, description="where Ray Train checkpoints and the Ray Tune experiment live "
        "(default <output_dir>/ray); on a multi-node cluster, storage every node reaches: "
        "an NFS path, s3://bucket/prefix or gs://bucket/prefix")
    placement_timeout_s: float | None = Field(
        None, gt=0, description="on a cluster, how long a stage may wait for Ray to place its "
        "workers or actors before it stops with an error (None: wait, reporting what is "
        "pending every few seconds); on the embedded Ray an impossible request fails at once")


class TrackingConfig(_Section):
    uri: str | None = Field(None, description="MLflow tracking URI; MLFLOW_TRACKING_URI wins")
    experiment: str | None = Field(None, description="experiment name (default: job name)")


class TrainConfig(_Section):
    epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, description="per worker")
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(5e-5, ge=0)
    optimizer: ComponentField = Field(
        Component(name="sgd"), description="sgd (options: momentum, nesterov), adamw "
        "(beta1, beta2, eps), scaled_adam (icefall's ScaledAdam: beta1, beta2, eps, "
        "scalar_lr_scale, param_min_rms, param_max_rms, scalar_max, size_update_period, "
        "clipping_scale, clipping_update_period), or a user's under raynas.optimizers")
    schedule: ComponentField = Field(
        Component(name="warmup_cosine"), description="learning rate per step: "
        "warmup_cosine (train.warmup_epochs, then cosine to 0), eden (icefall's, for "
        "scaled_adam: lr_batches, lr_epochs, warmup_batches, warmup_start), or a user's "
        "under raynas.schedules")
    warmup_epochs: int = Field(1, ge=0, description="warm-up of warmup_cosine")
    num_workers: int = Field(2, ge=1, description="Ray Train data-parallel workers")
    cpus_per_worker: float = Field(1, gt=0)
    use_gpu: bool = Field(False, description="one GPU per worker: model and batches on it, "
                          "NCCL all-reduce")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the training workers: PACK fills a node first, "
        "SPREAD puts them on different nodes where it can")
    sampler: ComponentField = Field(
        Component(name="sandwich"), description="which subnets train each step: sandwich, "
        "uniform, largest_first, bestup, worstup, complexity_aware, performance_aware, or a "
        "user's under raynas.samplers")
    num_subnets: int = Field(4, ge=1, le=16, description="subnets per step (sandwich: "
                             "largest + smallest + the rest random)")
    distill: ComponentField = Field(
        Component(name="kl"), description="in-place distillation from the first (largest) "
        "subnet of each step: kl (option: temperature), alpha_divergence (alpha_min, "
        "alpha_max, iw_clip; AlphaNet's adaptive form) or none")
    dropout: ComponentField = Field(
        Component(name="fixed"), description="dropout rate per subnet: fixed (option p, "
        "default 0: none) or adaptive (p_max x the subnet's size / the largest's; options "
        "p_max, measure: params or flops), or a user's under raynas.dropouts")
    prune: ComponentField = Field(
        Component(name="none"), description="pruning during supernet training: none, or "
        "supertickets (global magnitude pruning every `interval` epochs to min(target, "
        "step x k); options target, interval, step, regrow, rho, rho_warmup, "
        "shrink_threshold, shrink_interval), or a user's under raynas.pruners")
    init_ticket: str | None = Field(
        None, description="a ticket file from `raynas ticket export`: train only its arch, "
        "from fresh weights, with its pruning masks fixed")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0, description="clip every gradient element to "
                                    "[-grad_clip, grad_clip] after the workers' average "
                                    "(null: none)")
    grad_cosine: bool = Field(False, description="log grad_cosine: the cosine similarity of "
                              "consecutive steps' gradients, averaged per epoch (a copy of "
                              "the gradient per worker)")
    max_failures: int = Field(2, ge=0, description="worker failures survived by restarting "
                              "from the latest checkpoint")
    checkpoints_to_keep: int = Field(2, ge=1)
    resume_from: str | None = Field(None, description="checkpoint directory to resume from")


class EvaluatorConfig(_Section):
    calib_batches: int = Field(2, ge=1, description="BN recalibration batches per subnet")
    calib_batch_size: int = Field(256, ge=1)
    num_cpus: float = Field(1, gt=0)
    num_gpus: float = Field(0, ge=0, description="GPUs of the evaluator actor: with one, "
                            "subnets are scored on it")


class LatencyConfig(_Section):
    model: Literal["measured", "lut", "predictor", "flops"] = Field(
        "measured", description="where a subnet's latency comes from: timed on the target, "
        "summed from a per-op lookup table, or predicted (learned model, or linear in FLOPs)")
    target: str = Field("local-cpu", description="device name recorded with every latency")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:[0-9]+)?)$", description="torch device "
                        "the subnets are timed on: cpu, or cuda[:N] (synchronised timing)")
    batch_size: int = Field(1, ge=1)
    threads: int = Field(1, ge=1)
    min_run_time_s: float = Field(0.02, gt=0, description="timing window per subnet")
    resource: str | None = Field(
        None, description="custom Ray resource of the node(s) that carry the target; "
        "measurements run in an actor there (e.g. 'target:edge-cpu')")
    resource_wait_s: float = Field(
        600, gt=0, description="how long to wait for a node with latency.resource")
    table: str | None = Field(
        None, description="Parquet cache of measured latencies (read, then extended)")
    lut: str | None = Field(None, description="lookup table JSON (model: lut)")
    predictor: str | None = Field(
        None, description="fitted predictor file from `raynas latency fit` (model: "
        "predictor or flops)")
    drift_share: float = Field(
        0.05, ge=0, le=1, description="share of subnets also measured when the model is not "
        "'measured', to check its error during search")
    drift_bound: float = Field(0.15, gt=0, description="mean relative error that warns")
    drift_window: int = Field(20, ge=2, description="recent checked subnets the error averages")


class ObjectiveConfig(_Section):
    name: str = Field(min_length=1)
    goal: Literal["max", "min"]


class SearchConfig(_Section):
    searcher: str = "optuna_nsga2"
    budget: int = Field(200, ge=1, description="subnets to evaluate")
    subnets_per_trial: int = Field(16, ge=1, description="subnets each Tune trial evaluates")
    max_concurrent_trials: int = Field(2, ge=1)
    latency_budget_ms: float | None = Field(None, gt=0)
    objectives: list[ObjectiveConfig] | None = Field(
        None, description="what the search optimises: metrics of the task (e.g. accuracy, "
        "loss), latency_ms, flops or params, each with a goal (max or min); default: the "
        "task's primary metric and latency_ms")
    population_size: int = Field(32, ge=2, description="population of NSGA-II and evolution")
    options: dict[str, Any] = Field(
        default_factory=dict, description="searcher-specific settings, e.g. "
        "{optimizer: NGOpt} for nevergrad, {parents_size: 8} for hat_evolution")
    evaluator: EvaluatorConfig = EvaluatorConfig()


class ExportConfig(_Section):
    pick: Literal["best"] | Annotated[int, Field(ge=0)] = Field(
        "best", description="'best' (the best value of the first search objective within the "
        "latency budget) or the index of a Pareto point, ordered by latency")
    formats: tuple[Literal["torchscript", "onnx"], ...] = ("torchscript", "onnx")
    atol: float = Field(1e-4, gt=0, description="max |exported - supernet| output difference")


class FidelityConfig(_Section):
    """``raynas fidelity``: does the supernet rank subnets as training them from scratch does?"""

    subnets: int = Field(8, ge=2, le=256, description="subnets compared (M), spread over the "
                         "FLOPs range")
    spread: tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]] = \
        Field((0.0, 1.0), description="the FLOPs quantile range [low, high] the subnets are "
              "spread over (inclusive; [0, 1]: from the smallest to the largest subnet)")
    candidates: int = Field(500, ge=2, description="subnets drawn (seeded) to pick from when "
                            "the space has more; a smaller space is enumerated whole")
    epochs: int | None = Field(None, ge=1, le=10_000, description="epochs of each standalone "
                               "training (None: train.epochs, the supernet's budget)")
    top_k: int = Field(3, ge=1, description="k of the top-k overlap (at most subnets)")
    min_kendall_tau: float | None = Field(
        None, ge=-1, le=1, description="stop (exit status 3) when the measured Kendall tau is "
        "below this; with fidelity.stage, before the search (None: report only)")
    stage: bool = Field(False, description="whether `raynas run` measures fidelity between "
                        "train and search")
    cache_dir: str | None = Field(
        None, description="folder of cached standalone results, one JSON file per subnet and "
        "setting (None: fidelity-cache beside the output folder, e.g. outputs/fidelity-cache; "
        "a relative path starts from the working directory)")
    max_concurrent: int | None = Field(
        None, ge=1, description="standalone trainings (Ray Tune trials) at once (None: as "
        "many as Ray's CPUs, or GPUs with train.use_gpu, hold when they start; on an "
        "autoscaling cluster, set it to let nodes join)")

    @field_validator("spread")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError("the low quantile must be below the high one, e.g. [0.0, 1.0]")
        return v

    @field_validator("candidates", "top_k")
    @classmethod
    def _against_subnets(cls, v: int, info: ValidationInfo) -> int:
        m = info.data.get("subnets")
        if m is None:
            return v
        if info.field_name == "candidates" and v < m:
            raise ValueError(f"must be at least fidelity.subnets ({m})")
        if info.field_name == "top_k" and v > m:
            raise ValueError(f"must be at most fidelity.subnets ({m})")
        return v


class JobConfig(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    space: str
    # torch, numpy and Optuna seeds must lie in [0, 2**32 - 1]: refuse others up front.
    seed: int = Field(0, ge=0, le=2**32 - 1)
    output_dir: str | None = None
    task: ComponentField | None = Field(
        None, description="the task the family's models learn: classification, tagging, or "
        "a user's under raynas.tasks (default: the family's first task)")
    data: DataConfig = DataConfig()
    weights: ComponentField = Field(
        Component(name="shared"), description="weight scheme: shared (front-slicing), "
        "mos_layer / mos_neuron (Mixture-of-Supernets), balanced_mixture (K supernets)")
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()
    train: TrainConfig = TrainConfig()
    latency: LatencyConfig = LatencyConfig()
    search: SearchConfig = SearchConfig()
    export: ExportConfig = ExportConfig()
    fidelity: FidelityConfig = FidelityConfig()
    base_dir: str = Field(".", description="directory relative paths start from (set by load)")

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or self.tracking.uri or DEFAULT_TRACKING_URI

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir or Path("outputs") / self.name).resolve()

    @property
    def storage_path(self) -> str:
        """Ray Train / Ray Tune storage: ``ray.storage_path`` (a URI stays as it is), else
        ``<output_dir>/ray``."""
        path = self.ray.storage_path
        if path and "://" in path:
            return path
        return str(Path(path).resolve() if path else self.out_dir / "ray")

    def resolved(self) -> dict[str, Any]:
        """The full config with every default filled in (what gets logged)."""
        return self.model_dump(mode="json")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.epochs=5", "search.searcher=optuna_tpe"]`` -> nested dict (YAML values)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r}: expected dotted.key=value, "
                              f"e.g. train.epochs=5")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
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
    _check_cross_fields(cfg, source)
    return cfg


def _check_cross_fields(cfg: JobConfig, source: str) -> None:
    from raynas.search.registry import SEARCHERS  # registry is light: no ray import

    try:
        SEARCHERS.get(cfg.search.searcher)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _check_components(cfg, source)
    lat = cfg.latency
    if lat.model == "lut" and not lat.lut:
        raise ConfigError(f"{source}: latency.lut is required when latency.model = 'lut' "
                          "(build one with `raynas latency profile JOB.yaml --lut`)")
    if lat.model in ("predictor", "flops") and not lat.predictor:
        raise ConfigError(f"{source}: latency.predictor is required when latency.model = "
                          f"{lat.model!r} (fit one with `raynas latency fit TABLE`)")
    if cfg.data.val_fraction + cfg.data.test_fraction >= 0.8:
        raise ConfigError(f"{source}: data.val_fraction + data.test_fraction = "
                          f"{cfg.data.val_fraction + cfg.data.test_fraction}: must be < 0.8")


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


def _check_optimizer_values(t: TrainConfig) -> None:
    """Build the optimizer over one dummy parameter: its factory checks its options' values
    (a ConfigError now, not a failure in every Ray Train worker later)."""
    import torch

    from raynas.training.optim import OPTIMIZERS

    dummy = [{"params": [torch.zeros(2, requires_grad=True)], "weight_decay": t.weight_decay}]
    try:
        OPTIMIZERS.create(t.optimizer.name, t.optimizer.options, groups=dummy, lr=t.lr)
    except (TypeError, ValueError) as exc:  # torch's own checks (e.g. a negative momentum)
        raise ConfigError(f"train.optimizer.options = {describe_value(t.optimizer.options)}: "
                          f"{exc}") from None


def _check_components(cfg: JobConfig, source: str) -> None:
    """Names and options of the training components, and pairs that cannot work."""
    from raynas.registry import check_options, option_names
    from raynas.tasks import DATASETS
    from raynas.training.dropout import DROPOUTS
    from raynas.training.losses import DISTILLERS
    from raynas.training.optim import OPTIMIZERS, SCHEDULES
    from raynas.training.samplers import SAMPLERS
    from raynas.weights import WEIGHT_SCHEMES

    t = cfg.train
    try:
        dataset = DATASETS.get(cfg.data.name)
        check_options("data.options", cfg.data.name, "dataset", dataset.load,
                      cfg.data.options, ("task", "path", "val_fraction", "test_fraction",
                                         "seed"))
        if dataset.needs_path and not cfg.data.path:
            raise ConfigError(f"data.path is required when data.name = {cfg.data.name!r}")
        sampler = SAMPLERS.get(t.sampler.name)
        check_options("train.sampler.options", t.sampler.name, "sampler", sampler,
                      t.sampler.options, ("space", "num_subnets", "seed"))
        distiller = DISTILLERS.get(t.distill.name)
        check_options("train.distill.options", t.distill.name, "distillation loss",
                      distiller, t.distill.options)
        DISTILLERS.create(t.distill.name, t.distill.options)  # checks the options' values
        check_options("train.optimizer.options", t.optimizer.name, "optimizer",
                      OPTIMIZERS.get(t.optimizer.name), t.optimizer.options, ("groups", "lr"))
        _check_optimizer_values(t)
        DROPOUTS.create(t.dropout.name, t.dropout.options, space=None)  # checks the values
        SCHEDULES.create(t.schedule.name, t.schedule.options, train=t)  # checks the values
        check_options("weights.options", cfg.weights.name, "weight scheme",
                      WEIGHT_SCHEMES.get(cfg.weights.name), cfg.weights.options,
                      ("space", "build"))
        _check_pruning(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    first = (sampler.teaches_first(t.sampler.options) if hasattr(sampler, "teaches_first")
             else sampler.teacher_first)
    if distiller.needs_teacher and not first and t.num_subnets > 1:
        teachers = [n for n in SAMPLERS.names() if SAMPLERS.get(n).teacher_first]
        modes_hint = (", 'max' first in train.sampler.options.modes"
                      if "modes" in (option_names(sampler) or ()) else "")
        raise ConfigError(
            f"{source}: train.distill = {t.distill.name!r} distils from the largest subnet, "
            f"but train.sampler = {t.sampler.name!r} does not train it first; use a sampler "
            f"that does ({', '.join(teachers)}){modes_hint} or train.distill=none")


def _check_pruning(cfg: JobConfig) -> None:
    """``train.prune``'s options and schedule, and what it cannot be combined with."""
    from raynas.training.pruning import PRUNERS

    t = cfg.train
    pruner = PRUNERS.create(t.prune.name, t.prune.options, space=None)  # checks the values
    if pruner is not None and hasattr(pruner, "check_schedule"):
        pruner.check_schedule(t.epochs)
    for what, on in ((f"train.prune = {t.prune.name!r}", pruner is not None),
                     (f"train.init_ticket = {t.init_ticket!r}", bool(t.init_ticket))):
        if on and cfg.weights.name != "shared":
            raise ConfigError(f"{what}: masks act on one set of shared weights; "
                              f"weights = {cfg.weights.name!r} is not supported with it "
                              "(use weights=shared)")
    if pruner is not None and t.init_ticket:
        raise ConfigError(f"train.init_ticket = {t.init_ticket!r}: a ticket's masks are fixed; "
                          f"train.prune = {t.prune.name!r} cannot prune them further "
                          "(set train.prune=none)")

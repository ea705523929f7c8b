"""The job file's schema: one frozen pydantic model per section, every key's default and
range, and what the job derives from them (output and storage paths, tracking URI).

What the sections mean together (component names and options, pairs that cannot work) is
``raynas.config.checks``; reading files and overrides is ``raynas.config``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
)

from raynas.config.latency import LatencyConfig, TargetConfig, _Section  # noqa: F401

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"


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
                      "generated_tagging, parquet_tagging (tagging); stdlib_text, parquet_text "
                      "(masked_lm); generated_translation, parquet_translation (translation); "
                      "generated_speech, wav_folder, parquet_speech (speech_recognition); or a "
                      "user's, registered under raynas.datasets")
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


class HalvingConfig(_Section):
    """Successive halving inside a search's evaluations: see ``raynas.evaluation.halving``."""

    start: float = Field(0.25, gt=0, le=1, description="share of the validation set a subnet "
                         "is first scored on (1: the whole set, no halving)")
    eta: float = Field(2.0, gt=1, description="each rung scores eta times the share before")
    z: float = Field(2.0, ge=0, description="optimism: a partial score counts as z standard "
                     "errors better than measured when judged against the front")


class EvaluatorConfig(_Section):
    calib_batches: int = Field(2, ge=1, description="BN recalibration batches per subnet")
    calib_batch_size: int = Field(256, ge=1)
    num_cpus: float = Field(1, gt=0)
    num_gpus: float = Field(0, ge=0, description="GPUs of the evaluator actor: with one, "
                            "subnets are scored on it")
    halving: HalvingConfig | None = Field(
        None, description="multi-fidelity search: a subnet is scored on a slice of the "
        "validation set first and on more only while it could still reach the front (None: "
        "every subnet on the whole set)")


class ObjectiveConfig(_Section):
    name: str = Field(min_length=1)
    goal: Literal["max", "min"]


class SearchConfig(_Section):
    searcher: str = "optuna_nsga2"
    budget: int = Field(200, ge=1, description="subnets to evaluate")
    subnets_per_trial: int = Field(16, ge=1, description="subnets each Tune trial evaluates")
    evaluators: Literal["auto"] | Annotated[int, Field(ge=1)] = Field(
        "auto", description="evaluator actors scoring subnets in parallel, each holding the "
        "trained weights ('auto': as many as the free CPUs, or GPUs with evaluator.num_gpus, "
        "of nodes that carry no latency target allow, with 8 batches each at least, and 1 at "
        "least); with several, one shared meter per target times latency")
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="Tune trials in flight (default: 2 per evaluator, so each "
        "evaluator has its next batch queued)")
    latency_budget_ms: float | None = Field(None, gt=0)
    constraints: list[str] = Field(
        default_factory=list, description="budgets on any metric a subnet's record holds, "
        "each METRIC<=LIMIT: params<=2e6, flops<=5e6, peak_memory_mb<=8, latency_ms<=0.5, "
        "or a task metric to minimise (loss<=0.3); a subnet above one is infeasible, as "
        "above the latency budget")
    objectives: list[ObjectiveConfig] | None = Field(
        None, description="what the search optimises: metrics of the task (e.g. accuracy, "
        "loss), latency_ms, flops, params or peak_memory_mb, each with a goal (max or min); "
        "default: the task's primary metric and latency_ms")
    population_size: int = Field(32, ge=2, description="population of NSGA-II and evolution")
    options: dict[str, Any] = Field(
        default_factory=dict, description="searcher-specific settings, e.g. "
        "{optimizer: NGOpt} for nevergrad, {parents_size: 8} for hat_evolution")
    evaluator: EvaluatorConfig = EvaluatorConfig()

    @field_validator("constraints", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v  # search.constraints=params<=2e6 on its own


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


class HpoConfig(_Section):
    """``raynas tune``: a study over the job's ``hparams``, each trial a supernet training."""

    searcher: Literal["optuna_tpe", "nevergrad", "random"] = Field(
        "optuna_tpe", description="what suggests each trial's hyperparameters (random: "
        "seeded draws; the only one population-based training takes)")
    scheduler: ComponentField = Field(
        Component(name="asha"), description="fifo (every trial trains every epoch), asha "
        "(stops the weaker trials early; options: grace_period, reduction_factor, "
        "brackets) or pbt (the weaker trials continue from a stronger one's checkpoint with "
        "mutated hyperparameters; options: perturbation_interval, quantile_fraction, "
        "resample_probability, perturbation_factors), all counted in epochs")
    trials: int = Field(8, ge=1, description="trials of the study (pbt: the population)")
    max_concurrent_trials: int = Field(2, ge=1, description="trials training at once, as "
                                       "Ray's resources allow")
    probes: int = Field(4, ge=2, le=32, description="subnets whose mean validation metric "
                        "judges a trial's supernet each epoch: the largest, the smallest and "
                        "the rest spread over FLOPs")
    options: dict[str, Any] = Field(default_factory=dict, description="the searcher's own "
                                    "settings, e.g. {optimizer: NGOpt} for nevergrad")


class FinetuneConfig(_Section):
    """``raynas finetune``: chosen subnets trained on from their inherited weights."""

    epochs: int = Field(3, ge=1, le=1000)
    lr: float = Field(0.01, gt=0, description="peak learning rate (train.schedule over "
                      "these epochs, no warm-up)")
    weight_decay: float = Field(0.0, ge=0)
    distill: float = Field(0.0, ge=0, le=1, description="weight of distillation from the "
                           "supernet's largest subnet (KL at temperature); 0: labels only")
    temperature: float = Field(1.0, gt=0)
    num_workers: int = Field(1, ge=1, le=64, description=">1: each trial a Ray Train run of that "
                             "many data-parallel workers (train.cpus_per_worker, use_gpu, "
                             "placement_strategy); 1: in the trial's own process")
    trials: int = Field(4, ge=1, description="trials of its study (hpo.searcher suggests)")
    hparams: dict[str, Any] = Field(
        default_factory=lambda: {"lr": {"type": "float", "low": 1e-3, "high": 0.1,
                                        "log": True}},
        description="finetune keys its study searches (epochs, lr, weight_decay, distill, "
        "temperature), each a dim as in a space file; {} for none")


class JobConfig(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    space: str
    # torch, numpy and Optuna seeds must lie in [0, 2**32 - 1]: refuse others up front.
    seed: int = Field(0, ge=0, le=2**32 - 1)
    output_dir: str | None = None
    task: ComponentField | None = Field(
        None, description="the task the family's models learn: classification, tagging, masked_lm, "
        "translation, speech_recognition, or "
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
    hparams: dict[str, Any] = Field(
        default_factory=dict, description="what `raynas tune` searches: dotted job key -> "
        "dim in the space language (float with low, high, log; int; choice), e.g. "
        "{train.lr: {type: float, low: 0.01, high: 0.3, log: true}}")
    hpo: HpoConfig = HpoConfig()
    finetune: FinetuneConfig = FinetuneConfig()
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

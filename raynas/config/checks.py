"""What a job's sections mean together, checked when it loads: registered component names
and their option values (built once, cheaply, so a bad value is a ConfigError now and not a
failure in every Ray worker later), and pairs of settings that cannot work.
"""

from __future__ import annotations

from raynas.config.schema import JobConfig, TrainConfig
from raynas.errors import ConfigError, describe_value


def check_job(cfg: JobConfig, source: str) -> None:
    """What the sections of a validated job mean together: the searcher, the training
    components and their option values, the latency model's files, the data split."""
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
    from raynas.hpo.finetune import parse_finetune_hparams
    from raynas.hpo.space import parse_hparams

    for parse in (parse_hparams, parse_finetune_hparams):
        try:
            parse(cfg)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    if cfg.data.val_fraction + cfg.data.test_fraction >= 0.8:
        raise ConfigError(f"{source}: data.val_fraction + data.test_fraction = "
                          f"{cfg.data.val_fraction + cfg.data.test_fraction}: must be < 0.8")




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

"""The job file's ``latency`` section: where a subnet's latency comes from, and how a
measured one is timed (windows, estimator, the confirmation pass before a front is reported).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetConfig(_Section):
    """One more device every subnet is timed on (``latency.targets``), for its own front."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="device name; its latency "
                      "is the record's latency_ms/<name> column")
    resource: str | None = Field(None, description="custom Ray resource of the node(s) that "
                                 "carry it (None: timed where the evaluator runs)")
    threads: int | None = Field(None, ge=1, description="(None: latency.threads)")
    batch_size: int | None = Field(None, ge=1, description="(None: latency.batch_size)")


class LatencyConfig(_Section):
    model: Literal["measured", "lut", "predictor", "flops"] = Field(
        "measured", description="where a subnet's latency comes from: timed on the target, "
        "summed from a per-op lookup table, or predicted (learned model, or linear in FLOPs)")
    target: str = Field("local-cpu", description="device name recorded with every latency")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:[0-9]+)?)$", description="torch device "
                        "the subnets are timed on: cpu, or cuda[:N] (synchronised timing)")
    batch_size: int = Field(1, ge=1)
    threads: int = Field(1, ge=1)
    min_run_time_s: float = Field(0.02, gt=0, description="timing per subnet, split over "
                                  "latency.windows")
    windows: int = Field(5, ge=1, le=1000, description="short timing windows per subnet; "
                         "each keeps its median time per call")
    estimator: Literal["min", "median"] = Field(
        "min", description="the latency from the timed blocks of calls: min, the fastest "
        "block (other work on the machine only adds time), or median, the median window's "
        "median block")
    confirm: bool = Field(True, description="re-time the Pareto candidates (latency.model "
                          "measured) in interleaved windows before the front is reported; "
                          "each keeps the lower of its two timings")
    confirm_run_time_s: float = Field(0.1, gt=0, description="timing per candidate in the "
                                      "confirmation pass, over twice latency.windows")
    confirm_margin: float = Field(0.25, ge=0, description="a subnet is a candidate when it "
                                  "would be on the front with its latency divided by 1 + "
                                  "this margin")
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
    targets: list[TargetConfig] = Field(
        default_factory=list, description="more devices every subnet is also timed on "
        "(latency_ms/<name>); the search reports one Pareto front per device, the job's "
        "target first")

    @field_validator("targets")
    @classmethod
    def _distinct(cls, v: list[TargetConfig], info: ValidationInfo) -> list[TargetConfig]:
        names = [t.name for t in v] + [info.data.get("target")]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"target {twice[0]!r} is named twice (latency.target and "
                             "latency.targets name distinct devices)")
        return v

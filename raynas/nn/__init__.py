"""Elastic building blocks shared by every supernet family."""

from __future__ import annotations

from raynas.nn.elastic import (
    ElasticBatchNorm2d,
    ElasticConv1d,
    ElasticConv2d,
    ElasticEmbedding,
    ElasticLinear,
    ElasticModule,
    recalibrate_batchnorm,
)

__all__ = [
    "ElasticBatchNorm2d",
    "ElasticConv1d",
    "ElasticConv2d",
    "ElasticEmbedding",
    "ElasticLinear",
    "ElasticModule",
    "recalibrate_batchnorm",
]

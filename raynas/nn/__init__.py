"""Elastic building blocks shared by every supernet family, each with its static twin.

``elastic``: linear, conv, depthwise conv, embedding, batch norm; ``attention``: layer norm,
multi-head self-attention, MLP, the pre-norm transformer block, position embeddings;
``mbconv``: inverted residual blocks with squeeze-excite; ``moe``: the mixture-of-experts
feed-forward layer and its expert-load statistics; ``activations``: by name; ``dropout``: the
dropout whose rate training sets per subnet.
"""

from __future__ import annotations

from raynas.nn.activations import ACTIVATIONS
from raynas.nn.attention import (
    MLP,
    ElasticFusedLinear,
    ElasticLayerNorm,
    ElasticMLP,
    ElasticPositionEmbedding,
    ElasticRelativePositionBias,
    ElasticSelfAttention,
    ElasticTransformerBlock,
    PositionEmbedding,
    RelativePositionBias,
    SelfAttention,
    TransformerBlock,
)
from raynas.nn.dropout import SubnetDropout, dropout_rates, set_dropout
from raynas.nn.elastic import (
    ElasticBatchNorm2d,
    ElasticConv1d,
    ElasticConv2d,
    ElasticDepthwiseConv2d,
    ElasticEmbedding,
    ElasticLinear,
    ElasticModule,
    recalibrate_batchnorm,
)
from raynas.nn.mbconv import ElasticMBConv, ElasticSqueezeExcite, MBConv, SqueezeExcite
from raynas.nn.moe import ElasticMoEFeedForward, MoEFeedForward, expert_loads, load_entropy

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "ElasticBatchNorm2d",
    "ElasticConv1d",
    "ElasticConv2d",
    "ElasticDepthwiseConv2d",
    "ElasticEmbedding",
    "ElasticFusedLinear",
    "ElasticLayerNorm",
    "ElasticLinear",
    "ElasticMBConv",
    "ElasticMLP",
    "ElasticModule",
    "ElasticMoEFeedForward",
    "ElasticPositionEmbedding",
    "ElasticRelativePositionBias",
    "ElasticSelfAttention",
    "ElasticSqueezeExcite",
    "ElasticTransformerBlock",
    "MBConv",
    "MoEFeedForward",
    "PositionEmbedding",
    "RelativePositionBias",
    "SelfAttention",
    "SqueezeExcite",
    "SubnetDropout",
    "TransformerBlock",
    "dropout_rates",
    "expert_loads",
    "load_entropy",
    "recalibrate_batchnorm",
    "set_dropout",
]

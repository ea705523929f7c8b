"""Elastic transformer and MBConv ops: each one, set to a slice, computes what its static
counterpart computes when loaded with the slice's weights; inactive heads, features and
channels never reach the output (nor receive gradient); attention FLOPs are counted as
torch's FlopCounterMode counts them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raynas.export.extract import active_state_dict
from raynas.latency import count_flops
from raynas.latency.measure import count_flops_reference
from raynas.nn import (
    MLP,
    ElasticDepthwiseConv2d,
    ElasticFusedLinear,
    ElasticLayerNorm,
    ElasticMBConv,
    ElasticMLP,
    ElasticPositionEmbedding,
    ElasticSelfAttention,
    ElasticTransformerBlock,
    MBConv,
    PositionEmbedding,
    SelfAttention,
    TransformerBlock,
)
from raynas.nn.attention import attend, relative_index

ELASTICVIT = {"qkv_bias": False, "grid": 4, "relative_bias": True, "value_conv": True,
              "proj_act": "hardswish"}


def _loaded(static: nn.Module, elastic: nn.Module) -> nn.Module:
    """``static`` holding ``elastic``'s active slice (every tensor it has)."""
    source = active_state_dict(elastic)
    static.load_state_dict({k: source[k].detach().clone() for k in static.state_dict()})
    return static.eval()


def _same(elastic: nn.Module, static: nn.Module, *inputs: torch.Tensor) -> None:
    elastic.eval()
    with torch.no_grad():
        want, got = elastic(*inputs), static(*inputs)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())


def _randomise(module: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)


def test_layer_norm_and_fused_linear_slices():
    norm = ElasticLayerNorm(12)
    _randomise(norm)
    norm.configure(8)
    x = torch.randn(2, 5, 8)
    _same(norm, _loaded(nn.LayerNorm(8), norm), x)

    fused = ElasticFusedLinear(12, (8, 8, 16))
    fused.configure(10, (4, 4, 6))
    _same(fused, _loaded(nn.Linear(10, 14), fused), torch.randn(3, 10))
    # Segment i's active rows are the first of its own block.
    assert torch.equal(fused.active_weight()[4:8], fused.weight[8:12, :10])


def test_position_embedding_and_depthwise_conv_slices():
    pos = ElasticPositionEmbedding(16, 12)
    pos.configure(8)
    _same(pos, _loaded(PositionEmbedding(16, 8), pos), torch.randn(2, 16, 8))

    dw = ElasticDepthwiseConv2d(12, 5, stride=2)
    dw.configure(8, 3)
    static = nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False)
    _same(dw, _loaded(static, dw), torch.randn(2, 8, 7, 7))


@pytest.mark.parametrize("options", [{}, ELASTICVIT], ids=["vit", "elasticvit"])
@pytest.mark.parametrize("embed,heads,v_scale", [(24, 2, 1), (16, 3, 2), (32, 4, 3)])
def test_attention_slice_matches_static(options, embed, heads, v_scale):
    torch.manual_seed(0)
    max_v = 3 if options else 1
    v_scale = min(v_scale, max_v)
    attn = ElasticSelfAttention(32, 4, 8, max_v_scale=max_v, **options)
    _randomise(attn)
    attn.configure(embed, heads, v_scale)
    static = _loaded(SelfAttention(embed, heads, 8, v_scale=v_scale, **options), attn)
    _same(attn, static, torch.randn(3, 16, embed))


@pytest.mark.parametrize("options", [{}, ELASTICVIT], ids=["vit", "elasticvit"])
def test_block_and_mlp_slices(options):
    torch.manual_seed(0)
    block = ElasticTransformerBlock(32, 4, 8, 128, "gelu", max_v_scale=2, **options)
    _randomise(block)
    block.configure(24, 3, 72, 2)
    static = TransformerBlock(24, 3, 8, 72, "gelu", v_scale=2, **options)
    _same(block, _loaded(static, block), torch.randn(2, 16, 24))

    mlp = ElasticMLP(32, 128, "hardswish")
    mlp.configure(16, 40)
    _same(mlp, _loaded(MLP(16, 40, "hardswish"), mlp), torch.randn(2, 5, 16))


@pytest.mark.parametrize("cin,cout,expand,kernel,stride,size", [
    (8, 16, 3, 3, 2, 7),   # strided, odd map: padded pool + shortcut conv
    (16, 16, 6, 5, 1, 6),  # identity residual
    (12, 16, 4, 3, 1, 6),  # shortcut conv without pooling
    (8, 8, 1, 5, 1, 6),    # expand 1: no pw conv
])
@pytest.mark.parametrize("se", [False, True])
def test_mbconv_slice_matches_static(cin, cout, expand, kernel, stride, size, se):
    torch.manual_seed(0)
    block = ElasticMBConv(16, 24, 6, 5, stride, se, "hardswish", size)
    _randomise(block)
    block.configure(cin, cout, expand, kernel)
    static = MBConv(cin, cout, expand, kernel, stride, se, "hardswish", size)
    _same(block, _loaded(static, block), torch.randn(2, cin, size, size))


def test_inactive_heads_and_features_never_leak():
    torch.manual_seed(0)
    attn = ElasticSelfAttention(32, 4, 8, max_v_scale=2, **ELASTICVIT).eval()
    attn.configure(16, 2, 1)
    x = torch.randn(2, 16, 16, requires_grad=True)
    with torch.no_grad():
        want = attn(x)
    # Poison everything outside the active slice: heads 2..3, features 16.., values 16...
    with torch.no_grad():
        attn.qkv.weight[:, 16:] = float("nan")
        for start, n in ((0, 32), (32, 32), (64, 64)):
            attn.qkv.weight[start + 16 : start + n] = float("nan")
        attn.proj.weight[16:] = float("nan")
        attn.proj.weight[:, 16:] = float("nan")
        attn.proj.bias[16:] = float("nan")
        attn.rel_bias.table[:, 2:] = float("nan")
        attn.v_conv.weight[16:] = float("nan")
    got = attn(x)
    assert torch.equal(got, want)
    got.sum().backward()
    assert not attn.qkv.weight.grad[32 + 16 : 64].any()  # inactive key heads learn nothing
    assert not attn.rel_bias.table.grad[:, 2:].any()


def test_relative_index_is_an_offset_table():
    idx = relative_index(3)
    centre = 2 * 5 + 2  # offset (0, 0) in a 5 x 5 table
    assert idx.shape == (9, 9) and bool((idx.diagonal() == centre).all())
    assert torch.equal(idx + idx.T, torch.full((9, 9), 2 * centre))  # (a - b) = -(b - a)
    assert int(idx.max()) == 24 and int(idx.min()) == 0


@pytest.mark.parametrize("options", [{}, ELASTICVIT], ids=["vit", "elasticvit"])
def test_attention_flops_match_flop_counter(options):
    attn = SelfAttention(24, 3, 8, v_scale=2, **options).eval()
    x = torch.randn(2, 16, 24)
    assert count_flops(attn, x) == count_flops_reference(attn, x)
    # The matmuls alone: q.k^T (d = 8) and attn.v (dv = 16), 2 FLOPs per multiply-add.
    assert attn.matmul_flops((x,), None) == 2 * 2 * 3 * 16 * 16 * (8 + 16)


def test_attention_core_equals_torch_sdpa():
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(attend(q, k, v, 8 ** -0.5), ref.transpose(1, 2).flatten(2), atol=1e-5)

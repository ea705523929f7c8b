"""Mixture-of-experts feed-forward layer: the blocked computation equals a plain loop over
experts (outputs and gradients); the elastic layer set to a slice computes what the static layer
holding ``active_state()`` computes, and inactive experts, hidden units and features never
reach the output; FLOPs match torch's FlopCounterMode; TorchScript and ONNX keep the batch
dynamic; expert loads are counted."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from raynas.export.extract import active_state_dict
from raynas.latency import count_flops
from raynas.latency.measure import count_flops_reference
from raynas.nn import (
    ACTIVATIONS,
    ElasticMoEFeedForward,
    MoEFeedForward,
    expert_loads,
    load_entropy,
)
from raynas.nn.moe import BLOCK, MIN_BLOCK, _activate, block_size, moe_experts, padded_rows

# torch.jit.trace / script are deprecated in torch 2.13; raynas.export still uses trace.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

PARAMS = ("router.weight", "router.bias", "w1", "b1", "w2", "b2")


def _reference(m: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """The layer written plainly: every expert on every token, weighted by its gate (the
    softmax over the token's top-k logits; 0 for experts it does not choose)."""
    tokens = x.reshape(-1, m.embed)
    logits = tokens @ m.router.weight.T + m.router.bias
    top, chosen = logits.topk(m.top_k, dim=-1)
    gates = torch.zeros_like(logits).scatter(1, chosen, top.softmax(dim=-1))
    act = ACTIVATIONS[m.act]
    out = torch.zeros_like(tokens)
    for e in range(m.experts):
        y = act(tokens @ m.w1[e] + m.b1[e]) @ m.w2[e] + m.b2[e]
        out = out + gates[:, e : e + 1] * y
    return out.view_as(x)


def _grads(m: nn.Module, forward, x: torch.Tensor, weight: torch.Tensor):
    """Output of ``forward(x)`` and the gradients of ``(out * weight).sum()`` for x and every
    parameter of ``m``."""
    m.zero_grad()
    x = x.clone().requires_grad_()
    out = forward(x)
    (out * weight).sum().backward()
    params = dict(m.named_parameters())
    return out.detach(), x.grad, {k: params[k].grad.clone() for k in PARAMS}


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str, atol: float = 1e-5) -> None:
    assert a.shape == b.shape, what
    assert torch.allclose(a, b, atol=atol), f"{what}: {float((a - b).abs().max())}"


def _layer(embed: int, experts: int, hidden: int, top_k: int, seed: int = 0,
           act: str = "gelu") -> MoEFeedForward:
    torch.manual_seed(seed)
    m = MoEFeedForward(embed, experts, hidden, top_k, act)
    with torch.no_grad():
        m.router.weight.mul_(4)  # spread the logits: no near-ties in the top-k
    return m


def _check_against_reference(m: MoEFeedForward, x: torch.Tensor) -> None:
    weight = torch.randn_like(x)
    out, gx, gp = _grads(m, m, x, weight)
    ref, rgx, rgp = _grads(m, lambda t: _reference(m, t), x, weight)
    _assert_close(out, ref, "output")
    _assert_close(gx, rgx, "grad x")
    for k in PARAMS:
        _assert_close(gp[k], rgp[k], f"grad {k}")


@pytest.mark.parametrize(("experts", "top_k", "hidden", "act"),
                         [(4, 1, 8, "gelu"), (4, 2, 16, "relu"), (6, 3, 5, "hardswish"),
                          (3, 3, 12, "gelu")])
def test_blocked_layer_equals_loop_over_experts(experts, top_k, hidden, act):
    m = _layer(6, experts, hidden, top_k, act=act)
    # 2 x 90 tokens: every expert's run spans more than one block of BLOCK rows.
    x = torch.randn(2, 90, 6)
    _check_against_reference(m, x)
    assert int(m.last_load.min()) > BLOCK // 2


def test_an_idle_expert_and_a_single_busy_one():
    m = _layer(6, 4, 10, 2, seed=1)
    with torch.no_grad():
        m.router.bias[0] = -100.0  # expert 0 is never chosen
    x = torch.randn(3, 50, 6)
    _check_against_reference(m, x)
    assert int(m.last_load[0]) == 0 and int(m.last_load.sum()) == 150 * 2
    assert not m.w1.grad[0].any() and not m.b2.grad[0].any()

    m = _layer(6, 4, 10, 1, seed=2)
    with torch.no_grad():
        m.router.bias[2] = 100.0  # every token goes to expert 2 (3 blocks of its own)
    _check_against_reference(m, x)
    assert m.last_load.tolist() == [0, 0, 150, 0]


@pytest.mark.parametrize("block", [1, 3, 8])
def test_any_block_size_gives_the_same_result(block):
    m = _layer(5, 5, 7, 2, seed=3)
    x = torch.randn(37, 5)
    logits = m.router(x)
    want = _reference(m, x)
    got, counts = moe_experts(x, logits, m.w1, m.b1, m.w2, m.b2, 2, "gelu", block)
    _assert_close(got, want, f"block {block}")
    assert int(counts.sum()) == 37 * 2


def test_activations_by_name_are_the_registry():
    h = torch.randn(50)
    for name, fn in ACTIVATIONS.items():
        assert torch.equal(_activate(h, name), fn(h)), name
    with pytest.raises(ValueError, match="swish"):
        MoEFeedForward(4, 2, 4, 1, act="swish")
    with pytest.raises(RuntimeError):  # tokens of the wrong width are not re-cut to fit
        MoEFeedForward(4, 2, 4, 1)(torch.randn(3, 2, 8))


# ---- elastic -------------------------------------------------------------------------------------
def _elastic(seed: int = 0) -> ElasticMoEFeedForward:
    torch.manual_seed(seed)
    m = ElasticMoEFeedForward(12, 6, 20, 2)
    with torch.no_grad():
        m.router.weight.mul_(4)
    m.configure(8, 4, 13)
    return m


def _static_of(elastic: ElasticMoEFeedForward) -> MoEFeedForward:
    static = MoEFeedForward(elastic.embed, elastic.experts, elastic.hidden, elastic.top_k)
    state = elastic.active_state()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: tuple(v.shape) for k, v in static.state_dict().items()}
    static.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return static


def test_elastic_slice_equals_static_layer():
    m = _elastic()
    x = torch.randn(2, 40, 8)
    static = _static_of(m)
    with torch.no_grad():
        want = m(x)
        _assert_close(static(x), want, "static")
        _assert_close(_reference(static, x), want, "reference")
    assert m.last_load.shape == (4,) and int(m.last_load.sum()) == 80 * 2
    # extract's gathering (router keys from both the layer and its ElasticLinear) agrees.
    gathered = active_state_dict(nn.Sequential(m))
    assert set(gathered) == {f"0.{k}" for k in PARAMS}
    for k in PARAMS:
        assert torch.equal(gathered[f"0.{k}"], static.state_dict()[k])


def test_inactive_weights_never_reach_the_output():
    m = _elastic(1)
    x = torch.randn(3, 30, 8)
    with torch.no_grad():
        before = m(x)
        m.router.bias[4:] = 100.0  # would take every token if routing saw inactive experts
        m.router.weight[:, 8:] = 50.0  # features beyond the slice
        for p in (m.w1, m.w2):
            p[4:] = 7.0  # inactive experts
        m.w1[:, 8:] = 7.0  # input features beyond embed
        m.w1[:, :, 13:] = 7.0  # hidden units beyond the slice
        m.b1[:, 13:] = 7.0
        m.w2[:, 13:] = 7.0
        m.w2[:, :, 8:] = 7.0  # output features beyond embed
        m.b2[:, 8:] = 7.0
        assert torch.equal(m(x), before)
    m(x).sum().backward()
    assert not m.w1.grad[4:].any() and not m.w1.grad[:, :, 13:].any()
    assert not m.router.weight.grad[4:].any() and m.w1.grad[:4, :8, :13].any()


def test_forward_and_export_read_through_the_weight_seam():
    class Doubled(nn.Module):  # a weight provider: every tensor twice the parameter
        def forward(self, op, name):
            return op._parameters[name] * 2

    m = _elastic(2)
    x = torch.randn(2, 20, 8)
    want = MoEFeedForward(8, 4, 13, 2)
    with torch.no_grad():
        want.router.load_state_dict(m.router.active_state())
        for name, p in (("w1", m.w1[:4, :8, :13]), ("b1", m.b1[:4, :13]),
                        ("w2", m.w2[:4, :13, :8]), ("b2", m.b2[:4, :8])):
            getattr(want, name).copy_(2 * p)
        m.weight_provider = Doubled()
        got = m(x)
        _assert_close(got, want(x), "forward through the provider")
        _assert_close(_static_of(m)(x), got, "active_state through the provider")


def test_configure_rejects_bad_slices():
    m = ElasticMoEFeedForward(12, 6, 20, 3)
    with pytest.raises(ValueError, match=r"experts=2.*top_k=3"):
        m.configure(8, 2, 10)
    for bad in [(13, 4, 10), (8, 7, 10), (8, 4, 21), (0, 4, 10)]:
        with pytest.raises(ValueError, match=f"embed={bad[0]}, experts={bad[1]}, "
                                             f"hidden={bad[2]}"):
            m.configure(*bad)
    m.configure(12, 3, 20)  # top_k experts is enough
    assert m.experts == 3


# ---- FLOPs ---------------------------------------------------------------------------------------
def test_flops_match_flop_counter_and_the_padding_bound():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), MoEFeedForward(8, 4, 12, 2)).eval()
    moe = model[1]
    for shape in [(1, 1, 5), (2, 7, 5), (3, 100, 5)]:
        x = torch.randn(*shape)
        counted = count_flops(model, x)
        assert counted == count_flops_reference(model, x), shape
        tokens = shape[0] * shape[1]
        linears = 2 * tokens * 5 * 8 + 2 * tokens * 8 * 4  # the input Linear and the router
        experts = counted - linears
        assert experts == moe.matmul_flops((x.new_zeros(*shape[:2], 8),), None)
        ideal = moe.ideal_flops(tokens)
        assert ideal == 2 * tokens * 2 * 2 * 8 * 12
        per_row = 2 * 2 * 8 * 12
        assert ideal <= experts <= ideal + 4 * (BLOCK - 1) * per_row, shape
        assert padded_rows(tokens, 4, 2) % BLOCK == 0


def test_doubling_top_k_about_doubles_the_flops():
    x = torch.randn(8, 256, 8)
    one, two = (MoEFeedForward(8, 4, 12, k).eval() for k in (1, 2))
    router = 2 * 8 * 256 * 8 * 4
    ratio = (count_flops(two, x) - router) / (count_flops(one, x) - router)
    assert 1.9 <= ratio <= 2.05, ratio


def test_elastic_flops_are_the_static_slices():
    m = _elastic()
    x = torch.randn(2, 40, 8)
    static = _static_of(m)
    assert m.matmul_flops((x,), None) == static.matmul_flops((x,), None) > 0
    assert m.ideal_flops(80) == static.ideal_flops(80) == 2 * 80 * 2 * 2 * 8 * 13


# ---- export --------------------------------------------------------------------------------------
def test_torchscript_and_onnx_keep_the_batch_dynamic(tmp_path):
    m = _layer(8, 4, 12, 2, seed=4).eval()
    example, x = torch.randn(1, 20, 8), torch.randn(3, 20, 8)
    with torch.no_grad():
        want = m(x)
        recorded = m.last_load
        scripted = torch.jit.script(m)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # At batch 1, as raynas.export.serialize does. Without its check, which re-runs
            # the module eagerly (and that run, an ordinary forward, records a load).
            traced = torch.jit.trace(m, (example,), check_trace=False)
        assert m.last_load is recorded
        for name, model in (("script", scripted), ("trace", traced)):
            _assert_close(model(x), want, name)
        assert m.last_load is recorded
        # The same call as serialize._export_onnx: dynamo, batch 1, a named dynamic batch.
        batch = torch.export.Dim("batch", min=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(m, (example,), dynamo=True, input_names=["tokens"],
                                        output_names=["out"],
                                        dynamic_shapes={"x": {0: batch}}, verbose=False)
    program.save(str(tmp_path / "moe.onnx"))
    assert m.last_load is recorded  # no fake tensor from export left behind
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "moe.onnx"),
                                   providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"tokens": x.numpy()})
    assert out.shape == (3, 20, 8)
    assert np.abs(out - want.numpy()).max() <= 1e-5
    # No scatter that adds at repeated indices: onnxruntime's ScatterND with reduction
    # "add" (what index_add exports to) lost some of the updates at a few thousand rows,
    # not every run. The graph is checked for it, and a large batch is run as well.
    import onnx

    graph = onnx.load(str(tmp_path / "moe.onnx"))
    nodes = [*graph.graph.node, *(n for f in graph.functions for n in f.node)]
    reductions = [a.s for n in nodes if n.op_type.startswith("Scatter")
                  for a in n.attribute if a.name == "reduction"]
    assert any(n.op_type.startswith("Scatter") for n in nodes)
    assert reductions in ([], [b"none"] * len(reductions)), reductions
    big = torch.randn(400, 20, 8, generator=torch.Generator().manual_seed(1))
    m2 = _layer(8, 2, 12, 2, seed=5).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m2, (example,), dynamo=True, input_names=["tokens"],
                          output_names=["out"], dynamic_shapes={"x": {0: batch}},
                          verbose=False).save(str(tmp_path / "moe2.onnx"))
    session = ort.InferenceSession(str(tmp_path / "moe2.onnx"),
                                   providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = m2(big)
    (out,) = session.run(None, {"tokens": big.numpy()})
    assert np.abs(out - want.numpy()).max() <= 1e-5


# ---- expert load ---------------------------------------------------------------------------------
def test_loads_are_counted_per_layer_and_accumulated():
    torch.manual_seed(0)
    model = nn.Sequential(MoEFeedForward(6, 4, 8, 2), nn.Identity(), _elastic())
    model[2].configure(6, 3, 10)
    assert expert_loads(model) == {}  # nothing recorded yet
    for m in (model[0], model[2]):
        m.track_load = True
    xs = [torch.randn(2, 25, 6), torch.randn(1, 13, 6)]
    for x in xs:
        model(x)
    loads = expert_loads(model)
    assert set(loads) == {"0", "2"}
    assert loads["0"].dtype == torch.long and loads["2"].shape == (3,)
    for load in loads.values():
        assert int(load.sum()) == 13 * 2 and not load.requires_grad
    totals = expert_loads(model, accumulated=True)
    assert totals["2"].shape == (6,) and not totals["2"][3:].any()  # max_experts long
    for total in totals.values():
        assert int(total.sum()) == (50 + 13) * 2
    for m in (model[0], model[2]):
        assert not any("load" in k for k in m.state_dict())
    model[0].reset_load()
    assert set(expert_loads(model, accumulated=True)) == {"2"}


def test_load_entropy():
    assert load_entropy(torch.tensor([5, 5, 5, 5])) == pytest.approx(math.log(4))
    assert load_entropy(torch.tensor([0, 12, 0])) == 0.0
    assert 0 < load_entropy(torch.tensor([1, 3])) < math.log(2)
    with pytest.raises(ValueError):
        load_entropy(torch.zeros(3, dtype=torch.long))
    m = _layer(6, 4, 10, 1, seed=2)
    with torch.no_grad():
        m.router.bias[2] = 100.0
        m(torch.randn(40, 6))
    assert load_entropy(m.last_load) == 0.0


def test_few_tokens_take_smaller_blocks_with_the_same_result():
    """An eager forward over few tokens pads each expert's run to a smaller block (a 23-frame
    utterance, top-2 of 8 experts: 46 assignments, 512 rows at 64 a block, 160 at 16); the
    output is the plain reference's whatever the block, and FLOPs count the rows run."""
    assert [block_size(t, 8, 2) for t in (23, 46, 100, 400, 4000)] == [16, 16, 32, 64, 64]
    assert block_size(1, 8, 2) == MIN_BLOCK and padded_rows(23, 8, 2, 16) == 160
    m = MoEFeedForward(64, 8, 32, 2, act="silu").eval()
    x = torch.randn(1, 23, 64)
    with torch.no_grad():
        eager = m(x)
        _assert_close(eager, _reference(m, x), "eager")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(m, (x,), check_trace=False)  # BLOCK rows: any length
        y = torch.randn(3, 40, 64)
        _assert_close(traced(y), _reference(m, y), "traced")
    assert m.matmul_flops((x,), None) == 4 * 160 * 64 * 32

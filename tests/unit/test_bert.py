"""The bert family beyond the registry contract (tests/unit/test_family_contract.py): the
full-size space at BERT-base's size, settings errors naming the field, MoE feed-forwards
that follow the arch's expert count, and the expert-load report of an exported subnet."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from raynas.errors import ConfigError
from raynas.export import extract
from raynas.nn import MoEFeedForward
from raynas.space import SearchSpace
from raynas.supernets import build_static, create_supernet
from raynas.tasks import build_task, example_args

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"


def _bert_base_params(layers=12, hidden=768, ffn=3072, vocab=30522, positions=512) -> dict:
    """BERT-base's parameter count from its published layout (Devlin et al. 2019: 12 layers,
    hidden 768, 12 heads, FFN 3072; 110M), part by part."""
    linear = lambda i, o: i * o + o  # noqa: E731
    layer = 4 * linear(hidden, hidden) + linear(hidden, ffn) + linear(ffn, hidden) \
        + 2 * 2 * hidden  # q, k, v, out; the FFN; two layer norms
    embeddings = (vocab + positions + 2) * hidden + 2 * hidden  # word, position, type; LN
    return {"layer": layer, "embeddings": embeddings,
            "bert_model": embeddings + layers * layer + linear(hidden, hidden)}  # + pooler


def test_full_size_space_builds_on_meta_at_bert_base_size():
    space = SearchSpace.load(SPACES / "bert_base.yaml")
    ref = _bert_base_params()
    with torch.device("meta"):
        model = build_static(space, space.largest())
        small = build_static(space, space.smallest())
    params = dict(model.named_parameters())
    per_layer = sum(p.numel() for k, p in params.items() if k.startswith("blocks.0."))
    assert per_layer == ref["layer"]  # the encoder layer is BERT-base's, exactly
    total = sum(p.numel() for p in params.values())
    # No token-type embedding or pooler (masked-LM only); a final LN and the MLM head
    # (dense, LN, decoder bias; the decoder is tied to the embedding) instead.
    without_type_and_pooler = ref["bert_model"] - 2 * 768 - (768 * 768 + 768)
    mlm_head = (768 * 768 + 768) + 2 * 768 + 30522  # dense, LN, decoder bias
    assert total == without_type_and_pooler + 2 * 768 + mlm_head  # + the final LN
    assert abs(total - 110e6) / 110e6 < 0.005  # the published "110M"
    assert sum(p.numel() for p in small.parameters()) < total / 3


@pytest.mark.parametrize("model, message", [
    ({"vocab_size": 100, "max_len": 8}, "model.head_dim must be a positive integer"),
    ({"vocab_size": 100, "max_len": 8, "head_dim": 4, "activation": "tanhh"},
     "model.activation = 'tanhh'"),
    ({"vocab_size": 100, "max_len": 8, "head_dim": 4, "moe": {"experts": 2, "top_k": 3}},
     "model.moe needs integers 1 <= top_k <= experts, got experts=2, top_k=3"),
])
def test_settings_errors_name_the_field(model, message):
    space = SearchSpace.from_dict({"name": "b", "family": "bert", "model": model, "dims": {
        "layers": {"type": "int", "low": 1, "high": 2},
        "hidden": {"type": "choice", "values": [8]},
        "heads": {"type": "choice", "values": [1, 2]},
        "ffn": {"type": "choice", "values": [16]}}})
    with pytest.raises(ConfigError, match=message):
        create_supernet(space)


def test_experts_dimension_must_lie_within_model_moe():
    spec = SearchSpace.load(SPACES / "bert_moe_tiny.yaml").to_dict()
    spec["dims"]["experts"] = {"type": "per_layer", "depth": "layers", "values": [1, 4]}
    with pytest.raises(ConfigError, match=r"experts values \[1, 4\] must lie in model.moe's "
                                          "top_k..experts"):
        create_supernet(SearchSpace.from_dict(spec))


def test_moe_subnets_run_the_arch_s_experts():
    space = SearchSpace.load(SPACES / "bert_moe_tiny.yaml")
    torch.manual_seed(0)
    net = create_supernet(space).eval()
    arch = space.validate({"layers": 2, "hidden": 64, "heads": [4, 2], "ffn": [64, 32],
                           "experts": [2, 4]})
    static = extract(net, space, arch)
    layers = [m for m in static.modules() if isinstance(m, MoEFeedForward)]
    assert [m.w1.shape for m in layers] == [(2, 64, 64), (4, 64, 32)]  # only those experts
    inputs = example_args(space, 4)
    with torch.no_grad():
        want = static(*inputs)
        other = extract(net, space, space.validate({**arch.to_dict(), "experts": [4, 4]}))
        assert not torch.allclose(other(*inputs), want)  # the expert count matters


def test_expert_load_report_counts_every_token_twice(tmp_path):
    from raynas.pipeline.expert_load import (
        load_metrics,
        measure_expert_load,
        write_expert_load,
    )

    space = SearchSpace.load(SPACES / "bert_moe_tiny.yaml")
    torch.manual_seed(0)
    net = create_supernet(space).eval()
    static = extract(net, space, space.largest())
    task = build_task(space)
    batches = [task.example_inputs(8, seed=s) for s in range(3)]
    report = measure_expert_load(static, task, batches)
    assert list(report) == [f"blocks.{i}.ffn" for i in range(3)]
    tokens = 3 * 8 * space.model["max_len"]
    for layer in report.values():
        assert sum(layer["load"]) == tokens * 2  # top_k = 2 assignments per token
        assert layer["max_entropy"] == pytest.approx(math.log(4))
        assert 0 < layer["entropy"] <= layer["max_entropy"] + 1e-9
    metrics = load_metrics(report)
    assert metrics["expert_load_balance"] == pytest.approx(
        sum(r["entropy"] / math.log(4) for r in report.values()) / 3)
    files = write_expert_load(report, tmp_path, "t")
    assert json.loads(files[0].read_text()) == report
    assert files[1].stat().st_size > 5000  # a drawn figure
    # A dense subnet has no MoE layer and no report.
    dense = SearchSpace.load(SPACES / "bert_tiny.yaml")
    model = extract(create_supernet(dense).eval(), dense, dense.smallest())
    assert measure_expert_load(model, build_task(dense), batches[:1]) == {}

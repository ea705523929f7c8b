"""The translation task's options act: ``beam``, ``length_penalty`` and ``max_decode_len``
change what it decodes, ``bleu`` and ``evaluate(full=False)`` whether it decodes at all; its
loss and metrics count target tokens only; bad options are errors naming them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_transformer_mt import _Table

from raynas.errors import ConfigError
from raynas.space import SearchSpace
from raynas.supernets import create_supernet
from raynas.tasks import TASKS, TaskData, TensorDictDataset, build_task
from raynas.tasks.text import train_tokenizer

SPACE = SearchSpace.load(Path(__file__).resolve().parents[2] / "search_spaces"
                         / "transformer_mt_tiny.yaml")


def _task(**options):
    return build_task(SPACE, {"name": "translation", "options": options})


def test_beam_and_length_penalty_change_what_is_decoded():
    src = torch.zeros(1, 1, dtype=torch.long)
    differ = {"beam": 0, "length_penalty": 0}
    for seed in range(20):
        model = _Table(8, seed)
        greedy = _task(beam=1, max_decode_len=3).decode(model, src)
        wide = _task(beam=16, max_decode_len=3).decode(model, src)
        raw = _task(beam=16, max_decode_len=3, length_penalty=0.0).decode(model, src)
        differ["beam"] += greedy != wide
        differ["length_penalty"] += wide != raw
    assert differ["beam"] > 0 and differ["length_penalty"] > 0, differ


def test_max_decode_len_bounds_the_translation():
    model = _Table(8, 0)
    src = torch.zeros(4, 1, dtype=torch.long)
    for n in (1, 2, 5):
        assert all(len(t) <= n for t in _task(max_decode_len=n).decode(model, src))


def _data(task):
    g = torch.Generator().manual_seed(0)
    n, t = 6, 8
    src = torch.randint(6, 2000, (n, t), generator=g)
    src[:, -1] = 5
    prev = torch.randint(6, 2000, (n, t), generator=g)
    prev[:, 0] = 4
    targets = torch.cat([prev[:, 1:], torch.full((n, 1), 5)], 1)
    targets[0, 4:] = -100
    split = TensorDictDataset({"src_tokens": src, "prev_tokens": prev, "targets": targets})
    tok = train_tokenizer(["zo ka mi", "ka zo . re"] * 20, 60, decodable=True)
    return TaskData(split, split, split, tokenizer=tok)


def test_bleu_is_decoded_only_when_asked():
    torch.manual_seed(0)
    net = create_supernet(SPACE).eval()
    batches = [_data(None).val.tensors]
    on, off = _task(), _task(bleu=False)
    for task in (on, off):
        task.check_data(_data(task))  # the data's tokenizer turns ids back into text
    assert "bleu" in on.evaluate(net, batches)
    assert "bleu" not in on.evaluate(net, batches, full=False)  # training's check
    assert "bleu" not in off.evaluate(net, batches)
    result = off.evaluate(net, batches)
    # Padding (-100) is no target: 6 x 8 positions less the 4 padded ones.
    logits = net(batches[0]["src_tokens"], batches[0]["prev_tokens"])
    right = (logits.argmax(-1) == batches[0]["targets"]).sum()
    assert result["token_accuracy"] == pytest.approx(float(right) / 44)


@pytest.mark.parametrize("options, field", [
    ({"beam": 0}, "task.options.beam = 0"),
    ({"bleu": "yes"}, "task.options.bleu = 'yes'"),
    ({"max_decode_len": 40}, "task.options.max_decode_len = 40"),
    ({"length_penalty": "long"}, "task.options.length_penalty = 'long'"),
    ({"beams": 2}, "task.options.beams"),
])
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        _task(**options)


def test_registered():
    assert "translation" in TASKS.names()


def test_a_batch_is_cut_to_its_longest_pair_without_changing_the_result():
    from raynas.tasks.parallel import PairDataset

    torch.manual_seed(0)
    net = create_supernet(SPACE).eval()
    task = _task(bleu=False)
    full = _data(task).val.tensors
    width = 40  # padded to model.max_len
    padded = {k: torch.cat([v, torch.full((6, width - 8), -100 if k == "targets" else 0)], 1)
              for k, v in full.items()}
    batch = PairDataset(padded).__getitems__(list(range(6)))
    assert {k: v.shape[1] for k, v in batch.items()} == {
        "src_tokens": 8, "prev_tokens": 8, "targets": 8}
    with torch.no_grad():
        cut = task.loss(net(batch["src_tokens"], batch["prev_tokens"]), batch)
        whole = task.loss(net(padded["src_tokens"], padded["prev_tokens"]), padded)
    assert torch.allclose(cut, whole, atol=1e-5)

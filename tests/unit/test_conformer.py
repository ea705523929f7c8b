"""The conformer family and the speech task: padding changes nothing, chunked subnets stream
(no output depends on a later chunk, where full context does), masks as defined, exports run
at other lengths than they were traced at, CTC decoding and WER, and the settings' errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from raynas.errors import ConfigError
from raynas.export import extract
from raynas.nn.conformer import attention_mask, subsampled_lengths
from raynas.space import SearchSpace
from raynas.supernets import create_supernet
from raynas.tasks import build_task
from raynas.tasks.speech import ctc_frames_needed, greedy_ctc

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.load(SPACES_DIR / "conformer_tiny.yaml")


@pytest.fixture(scope="module")
def net(space):
    torch.manual_seed(0)
    return create_supernet(space).eval()


def _arch(space, **values):
    return space.validate({**space.largest(), **values})


def test_padding_does_not_change_real_frames(space, net):
    feats = torch.randn(1, 50, 20)
    padded = torch.cat([feats, torch.randn(1, 30, 20) * 0], dim=1)
    other = torch.randn(1, 80, 20)
    for arch in (space.largest(), _arch(space, chunk=2, left_chunks=1)):
        net.set_arch(arch)
        with torch.no_grad():
            alone = net(feats, torch.tensor([50]))
            batch = net(torch.cat([padded, other]), torch.tensor([50, 80]))
        n = int(subsampled_lengths(torch.tensor(50)))
        assert torch.allclose(alone[0, :n], batch[0, :n], atol=1e-5)


@pytest.mark.parametrize("chunk", [2, 4])
def test_a_chunked_subnet_streams_and_full_context_does_not(space, net, chunk):
    feats = torch.randn(1, 96, 20)
    later = feats.clone()
    k = 1  # outputs of chunks 0..k must not see input past what they read
    last_input = 4 * ((k + 1) * chunk - 1) + 6  # the front end reads frames 4i .. 4i+6
    later[:, last_input + 1:] += torch.randn_like(later[:, last_input + 1:])
    lengths = torch.tensor([96])
    done = (k + 1) * chunk
    for arch, streams in ((_arch(space, chunk=chunk, left_chunks=-1), True),
                          (_arch(space, chunk=0), False)):
        net.set_arch(arch)
        with torch.no_grad():
            a, b = net(feats, lengths), net(later, lengths)
        same = torch.allclose(a[0, :done], b[0, :done], atol=1e-5)
        assert same == streams, (arch, float((a[0, :done] - b[0, :done]).abs().max()))
        assert not torch.allclose(a[0, done:], b[0, done:])  # the change is seen later on


def test_attention_mask_matches_its_definition():
    lengths = torch.tensor([7, 4])
    for chunk, left in ((0, -1), (2, -1), (2, 1), (3, 0)):
        mask = attention_mask(lengths, 7, chunk, left)
        for n, length in enumerate(lengths.tolist()):
            for i in range(7):
                for j in range(7):
                    seen = j < length
                    if chunk:
                        seen &= j // chunk <= i // chunk
                        seen &= left < 0 or j // chunk >= i // chunk - left
                    assert bool(mask[n, 0, i, j]) == (not (seen or i == j)), (chunk, left,
                                                                              n, i, j)


def test_onnx_export_runs_at_other_lengths(space, net, tmp_path):
    import onnxruntime as ort

    from raynas.export.serialize import export_subnet

    arch = _arch(space, chunk=4, left_chunks=1)
    task = build_task(space)
    static = extract(net, space, arch)
    export_subnet(net, static, space, arch, task.example_inputs(3), tmp_path, ("onnx",),
                  atol=1e-4, task=task)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    feats, lengths = torch.randn(2, 37, 20), torch.tensor([37, 21])
    (got,) = session.run(None, {"feats": feats.numpy(), "feat_lengths": lengths.numpy()})
    with torch.no_grad():
        want = static(feats, lengths)
    assert got.shape == tuple(want.shape) == (2, 8, 16)
    assert torch.allclose(torch.from_numpy(got), want, atol=1e-4)


def test_greedy_ctc_merges_runs_and_drops_blanks():
    ids = torch.tensor([[0, 3, 3, 0, 3, 5, 5, 0, 2], [4, 4, 4, 0, 1, 1, 0, 0, 0]])
    logits = torch.nn.functional.one_hot(ids, 6).float()
    assert greedy_ctc(logits, torch.tensor([9, 5])) == [[3, 3, 5, 2], [4, 1]]


def test_ctc_frames_needed_counts_repeats():
    labels = torch.tensor([[3, 3, 5, 5, 5], [1, 2, 1, 0, 0]])
    assert ctc_frames_needed(labels, torch.tensor([5, 3])).tolist() == [8, 3]


def test_wer_counts_word_errors(space):
    task = build_task(space)

    class Words:
        def decode(self, ids):
            return " ".join("abcdefgh"[i] for i in ids if i)

    task.tokenizer = Words()
    # Two utterances: "a b c" decoded "a c" (1 deletion); "d e" decoded "d e f" (1 insertion).
    hyp = torch.tensor([[1, 0, 3, 0], [4, 5, 6, 0]])
    out = torch.nn.functional.one_hot(hyp, 16).float()
    batch = {"feats": torch.zeros(2, 22, 20), "feat_lengths": torch.tensor([22, 22]),
             "labels": torch.tensor([[1, 2, 3], [4, 5, 0]]),
             "label_lengths": torch.tensor([3, 2])}
    sums = task.metric_sums(out, batch)
    assert sums["wer"] == (2.0, 5.0)
    assert sums["loss"][1] == 2.0 and sums["loss"][0] > 0


def test_training_lowers_the_ctc_loss(space):
    torch.manual_seed(0)
    net = create_supernet(space)
    task = build_task(space)
    feats, lengths = torch.randn(4, 40, 20), torch.tensor([40, 36, 30, 40])
    batch = {"feats": feats, "feat_lengths": lengths, "labels": torch.tensor(
        [[1, 2, 3], [4, 5, 6], [7, 8, 1], [2, 2, 3]]), "label_lengths": torch.tensor([3] * 4)}
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.set_arch(_arch(space, chunk=2))
    first = None
    for _ in range(30):
        loss = task.loss(net(feats, lengths), batch)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


@pytest.mark.parametrize("change, message", [
    ({"model": {"attention_dim": 62}}, "does not divide model.attention_dim"),
    ({"model": {"causal": False}}, "must be odd with model.causal = false"),
    ({"dims": {"chunk": None}}, "left_chunks needs a chunk dimension"),
    ({"model": {"n_mels": 5}}, "model.n_mels = 5"),
    ({"model": {"latency_frames": 200}}, "model.latency_frames = 200"),
])
def test_settings_errors_name_the_setting(space, change, message):
    doc = space.to_dict()
    doc["model"].update(change.get("model", {}))
    for name, value in change.get("dims", {}).items():
        if value is None:
            doc["dims"].pop(name)
    if not change.get("model", {}).get("causal", True):
        doc["dims"]["kernel"]["values"] = [3, 4]
    with pytest.raises(ConfigError, match=message):
        create_supernet(SearchSpace.from_dict(doc))


def test_moe_layers_are_in_both_macaron_halves():
    from raynas.nn.moe import ElasticMoEFeedForward

    space = SearchSpace.load(SPACES_DIR / "conformer_moe_tiny.yaml")
    net = create_supernet(space)
    names = [n for n, m in net.named_modules() if isinstance(m, ElasticMoEFeedForward)]
    assert names == ["blocks.0.ff1", "blocks.0.ff2", "blocks.1.ff1", "blocks.1.ff2"]
    arch = space.sample(random.Random(0))
    assert extract(net, space, arch) is not None


@pytest.mark.parametrize("chunk, left", [(2, -1), (2, 1), (4, 1)])
def test_streaming_with_caches_equals_the_masked_forward(space, net, chunk, left):
    from raynas.supernets.conformer_stream import stream

    static = extract(net, space, _arch(space, chunk=chunk, left_chunks=left))
    for t in (96, 61, 30):  # whole chunks and a partial last one
        feats = torch.randn(1, t, 20)
        with torch.no_grad():
            want = static(feats, torch.tensor([t]))
        got = stream(static, feats)
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())


def test_streaming_refuses_a_whole_utterance_subnet(space, net):
    from raynas.supernets.conformer_stream import stream

    with pytest.raises(ValueError, match="chunk 0"):
        stream(extract(net, space, space.largest()), torch.randn(1, 40, 20))


def test_latency_times_the_final_chunk_of_a_streaming_subnet(space, net):
    """A chunked subnet's timed call computes the utterance's last chunk from the caches of
    the chunks before it (what is left when the speaker stops), the same each call; a
    whole-utterance subnet's is its forward."""
    from raynas.supernets.conformer_stream import stream

    static = extract(net, space, _arch(space, chunk=4, left_chunks=1))
    feats, lengths = torch.randn(2, 61, 20), torch.tensor([61, 45])
    with torch.inference_mode():
        first = static.timed_forward(feats, lengths)
        again = static.timed_forward(feats, lengths)
    for i, n in enumerate(lengths.tolist()):
        whole = stream(static, feats[i:i + 1, :n])
        tail = whole.shape[1] - (whole.shape[1] - 1) // 4 * 4  # frames of the last chunk
        assert first[i].shape[1] == tail
        assert torch.allclose(first[i], whole[:, -tail:], atol=1e-5)
        assert torch.equal(first[i], again[i])
    full = extract(net, space, space.largest())
    with torch.no_grad():
        assert torch.equal(full.timed_forward(feats, lengths), full(feats, lengths))

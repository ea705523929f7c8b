"""RNN-T loss: equals -log of the summed probability of every alignment path, enumerated by
brute force (per utterance, padded batches included, any blank); hand-computed small cases;
padding changes neither the loss nor anything but a zero gradient; gradients pass gradcheck;
reductions; an optimiser drives it down on a tiny joint network; bad inputs raise ValueError."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raynas.nn.rnnt import rnnt_loss


def _brute_force(logits: torch.Tensor, labels: list[int], blank: int) -> float:
    """-log P(labels) for one utterance's logits (T, U+1, V): the log-sum over every path of
    blanks (t -> t+1) and labels (u -> u+1) from (0, 0), ending with a blank at (T-1, U)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    t_len, u_len = logp.shape[0], len(labels)
    assert logp.shape[1] == u_len + 1
    paths: list[float] = []

    def walk(t: int, u: int, acc: float) -> None:
        if t == t_len - 1 and u == u_len:
            paths.append(acc + float(logp[t, u, blank]))
            return
        if t < t_len - 1:
            walk(t + 1, u, acc + float(logp[t, u, blank]))
        if u < u_len:
            walk(t, u + 1, acc + float(logp[t, u, labels[u]]))

    walk(0, 0, 0.0)
    assert len(paths) == math.comb(t_len - 1 + u_len, u_len)
    return -math.log(sum(math.exp(p) for p in paths))


def _padded_batch(gen: torch.Generator, t_lens: list[int], u_lens: list[int], v: int,
                  blank: int, pad_label: int = -1):
    """Random float64 logits (garbage in the padding too) and labels that avoid the blank,
    padded with ``pad_label``."""
    n, t_max, u_max = len(t_lens), max(t_lens), max(u_lens)
    logits = torch.randn(n, t_max, u_max + 1, v, generator=gen, dtype=torch.float64) * 2
    non_blank = torch.tensor([c for c in range(v) if c != blank])
    targets = torch.full((n, u_max), pad_label, dtype=torch.long)
    for i, u in enumerate(u_lens):
        targets[i, :u] = non_blank[torch.randint(len(non_blank), (u,), generator=gen)]
    return logits, targets, torch.tensor(t_lens), torch.tensor(u_lens)


@pytest.mark.parametrize("t_len", [1, 2, 3, 4])
@pytest.mark.parametrize("u_len", [0, 1, 2, 3])
def test_matches_brute_force_single(t_len, u_len):
    gen = torch.Generator().manual_seed(100 * t_len + u_len)
    for v, blank in ((3, 0), (4, 3)):
        logits, targets, tl, ul = _padded_batch(gen, [t_len], [u_len], v, blank)
        got = rnnt_loss(logits, targets, tl, ul, blank=blank, reduction="none")
        want = _brute_force(logits[0], targets[0, :u_len].tolist(), blank)
        assert got.shape == (1,) and got.dtype == torch.float64
        assert got.item() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("blank", [0, 2])
def test_padded_batch_matches_brute_force_and_single(blank):
    gen = torch.Generator().manual_seed(7 + blank)
    t_lens, u_lens = [4, 1, 3, 2, 4], [3, 0, 1, 3, 0]
    logits, targets, tl, ul = _padded_batch(gen, t_lens, u_lens, 4, blank)
    batched = rnnt_loss(logits, targets, tl, ul, blank=blank, reduction="none")
    for i, (t, u) in enumerate(zip(t_lens, u_lens)):
        want = _brute_force(logits[i, :t, :u + 1], targets[i, :u].tolist(), blank)
        alone = rnnt_loss(logits[i:i + 1, :t, :u + 1], targets[i:i + 1, :u], tl[i:i + 1],
                          ul[i:i + 1], blank=blank, reduction="none")
        assert batched[i].item() == pytest.approx(want, rel=1e-9)
        assert alone.item() == pytest.approx(batched[i].item(), rel=1e-12)


def test_padding_values_do_not_matter():
    gen = torch.Generator().manual_seed(3)
    t_lens, u_lens = [3, 2, 1], [1, 2, 0]
    logits, targets, tl, ul = _padded_batch(gen, t_lens, u_lens, 5, 0)
    base = rnnt_loss(logits, targets, tl, ul, reduction="none")
    other_logits = logits.clone()
    other_targets = targets.clone()
    for i, (t, u) in enumerate(zip(t_lens, u_lens)):
        other_logits[i, t:] = 1e3 * torch.randn(other_logits[i, t:].shape, generator=gen)
        other_logits[i, :, u + 1:] = -1e3
        other_targets[i, u:] = 4
    again = rnnt_loss(other_logits, other_targets, tl, ul, reduction="none")
    torch.testing.assert_close(again, base, rtol=0, atol=0)


def test_float32_close_to_float64():
    gen = torch.Generator().manual_seed(11)
    logits, targets, tl, ul = _padded_batch(gen, [30, 17], [8, 5], 10, 0)
    want = rnnt_loss(logits, targets, tl, ul, reduction="none")
    got = rnnt_loss(logits.float(), targets, tl, ul, reduction="none")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_hand_computed_cases():
    gen = torch.Generator().manual_seed(5)
    # T = 1, U = 0: the single blank at (0, 0).
    logits = torch.randn(1, 1, 1, 3, generator=gen, dtype=torch.float64)
    loss = rnnt_loss(logits, torch.zeros(1, 0, dtype=torch.long), torch.tensor([1]),
                     torch.tensor([0]), reduction="none")
    assert loss.item() == pytest.approx(-torch.log_softmax(logits[0, 0, 0], -1)[0].item(),
                                        rel=1e-12)

    # T = 2, U = 1, label y: y then blank, blank, or blank, y, blank.
    y, blank = 1, 2
    logits = torch.randn(1, 2, 2, 3, generator=gen, dtype=torch.float64)
    p = torch.softmax(logits[0], -1)
    two_paths = (p[0, 0, y] * p[0, 1, blank] * p[1, 1, blank]
                 + p[0, 0, blank] * p[1, 0, y] * p[1, 1, blank])
    loss = rnnt_loss(logits, torch.tensor([[y]]), torch.tensor([2]), torch.tensor([1]),
                     blank=blank, reduction="none")
    assert loss.item() == pytest.approx(-math.log(two_paths.item()), rel=1e-12)

    # T = 1, U = 2: a single path, both labels then the blank.
    logits = torch.randn(1, 1, 3, 4, generator=gen, dtype=torch.float64)
    p = torch.softmax(logits[0, 0], -1)
    loss = rnnt_loss(logits, torch.tensor([[3, 1]]), torch.tensor([1]), torch.tensor([2]),
                     blank=0, reduction="none")
    assert loss.item() == pytest.approx(-math.log((p[0, 3] * p[1, 1] * p[2, 0]).item()),
                                        rel=1e-12)


def test_negative_blank_counts_from_the_end():
    gen = torch.Generator().manual_seed(9)
    logits, targets, tl, ul = _padded_batch(gen, [3, 2], [2, 1], 4, 3)
    torch.testing.assert_close(rnnt_loss(logits, targets, tl, ul, blank=-1),
                               rnnt_loss(logits, targets, tl, ul, blank=3))


def test_reductions():
    gen = torch.Generator().manual_seed(2)
    logits, targets, tl, ul = _padded_batch(gen, [4, 2, 3], [2, 2, 0], 4, 0)
    none = rnnt_loss(logits, targets, tl, ul, reduction="none")
    assert none.shape == (3,) and bool((none > 0).all())
    torch.testing.assert_close(rnnt_loss(logits, targets, tl, ul, reduction="sum"), none.sum())
    torch.testing.assert_close(rnnt_loss(logits, targets, tl, ul, reduction="mean"),
                               none.sum() / 3)
    torch.testing.assert_close(rnnt_loss(logits, targets, tl, ul), none.mean())


def test_gradcheck():
    gen = torch.Generator().manual_seed(4)
    logits, targets, tl, ul = _padded_batch(gen, [3, 2], [2, 1], 3, 0)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: rnnt_loss(x, targets, tl, ul, reduction="none"), (logits,))


def test_gradient_zero_exactly_on_padding_and_finite():
    gen = torch.Generator().manual_seed(6)
    t_lens, u_lens = [5, 2, 4, 1], [3, 0, 1, 2]
    for dtype in (torch.float64, torch.float32):
        logits, targets, tl, ul = _padded_batch(gen, t_lens, u_lens, 5, 0)
        logits = logits.to(dtype).requires_grad_(True)
        rnnt_loss(logits, targets, tl, ul, reduction="sum").backward()
        grad = logits.grad
        assert bool(torch.isfinite(grad).all())
        for i, (t, u) in enumerate(zip(t_lens, u_lens)):
            assert bool((grad[i, t:] == 0).all())
            assert bool((grad[i, :, u + 1:] == 0).all())
            real = grad[i, :t, :u + 1]
            # Every real node lies on some path, and each node's softmax gradient sums to 0.
            assert bool((real.abs().sum(-1) > 0).all())
            torch.testing.assert_close(real.sum(-1), torch.zeros_like(real.sum(-1)),
                                       rtol=0, atol=1e-5)


def test_adam_drives_loss_down():
    gen = torch.Generator().manual_seed(0)
    n, t_max, u_max, v, dim = 3, 6, 3, 5, 16
    t_lens, u_lens = torch.tensor([6, 4, 5]), torch.tensor([3, 2, 1])
    targets = torch.randint(1, v, (n, u_max), generator=gen)
    enc = torch.randn(n, t_max, 1, dim, generator=gen)       # fixed "encoder" features
    pred = torch.randn(n, 1, u_max + 1, dim, generator=gen)  # fixed "prediction" features
    torch.manual_seed(0)
    joint = nn.Sequential(nn.Linear(dim, 32), nn.Tanh(), nn.Linear(32, v))
    opt = torch.optim.Adam(joint.parameters(), lr=0.03)

    def loss_now():
        return rnnt_loss(joint(enc + pred), targets, t_lens, u_lens)

    first = loss_now().item()
    for _ in range(100):
        opt.zero_grad()
        loss = loss_now()
        loss.backward()
        opt.step()
    last = loss_now().item()
    assert math.isfinite(last) and last < first / 10, (first, last)


def test_bad_inputs_raise():
    logits = torch.zeros(2, 3, 3, 4)
    targets = torch.ones(2, 2, dtype=torch.long)
    tl, ul = torch.tensor([3, 2]), torch.tensor([2, 1])
    rnnt_loss(logits, targets, tl, ul)  # valid
    cases = [
        (dict(logits=torch.zeros(2, 3, 4)), "logits must be"),
        (dict(logits=torch.zeros(2, 3, 3, 4, dtype=torch.long)), "floating point"),
        (dict(targets=torch.ones(2, 3, dtype=torch.long)), "third dimension must be U\\+1"),
        (dict(targets=torch.ones(1, 2, dtype=torch.long)), "targets hold 1"),
        (dict(targets=torch.ones(2, 2)), "integer tensor"),
        (dict(logit_lengths=torch.tensor([4, 2])), "logit_lengths must lie"),
        (dict(logit_lengths=torch.tensor([0, 2])), "logit_lengths must lie"),
        (dict(logit_lengths=torch.tensor([3])), "logit_lengths must have shape"),
        (dict(target_lengths=torch.tensor([3, 1])), "target_lengths must lie"),
        (dict(targets=torch.tensor([[1, 4], [1, 9]])), "targets must be classes"),
        (dict(blank=4), "blank 4"),
        (dict(reduction="avg"), "reduction must be"),
    ]
    for change, message in cases:
        args = dict(logits=logits, targets=targets, logit_lengths=tl, target_lengths=ul)
        args.update(change)
        with pytest.raises(ValueError, match=message):
            rnnt_loss(**args)
    # Out-of-range labels past target_lengths are padding, not errors.
    rnnt_loss(logits, torch.tensor([[1, 2], [3, -1]]), tl, ul)

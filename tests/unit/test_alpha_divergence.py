"""The ``alpha_divergence`` distiller against float64 references written out here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raynas.errors import ConfigError
from raynas.training.losses import DISTILLERS, alpha_divergence


def _d_alpha(logits: torch.Tensor, p: torch.Tensor, alpha: float,
             clip: float | None = None) -> torch.Tensor:
    """Per position, D_alpha(p || q) = (sum_i p_i^alpha q_i^(1 - alpha) - 1) / (alpha (alpha - 1))
    with q = softmax(logits), in float64; ``clip`` caps (p / q)^alpha as AlphaNet does."""
    q = F.softmax(logits.double(), dim=-1)
    ratio = (p.double() / q) ** alpha
    if clip is not None:
        ratio = ratio.clamp(max=clip)
    return ((q * ratio).sum(-1) - 1) / (alpha * (alpha - 1))


def _kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * (a.log() - b.log())).sum(-1)


def _case(seed: int, shape=(5, 7), scale: float = 0.4):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(*shape, generator=g) * scale
    teacher = F.softmax(torch.randn(*shape, generator=g) * scale, dim=-1)
    return student, teacher


def _grad(fn, logits: torch.Tensor) -> torch.Tensor:
    x = logits.clone().requires_grad_(True)
    fn(x).backward()
    return x.grad


def test_value_and_gradient_match_the_direct_formula():
    student, teacher = _case(0)
    q = F.softmax(student.double(), -1)
    # No ratio near the clip, so the reference needs none: (q/p) and (p/q) stay below 5.
    assert (q / teacher.double()).max() < 5 and (teacher.double() / q).max() < 5

    def reference(x):  # alpha = 1 is forward KL(p || q), its limit
        lo, hi = _d_alpha(x, teacher, -1.0), _kl(teacher.double(), F.softmax(x, -1))
        return torch.maximum(lo, hi).mean()

    got = alpha_divergence(student, teacher)
    assert got.item() == pytest.approx(reference(student).item(), rel=1e-5)
    picked_lo = _d_alpha(student, teacher, -1.0) > _kl(teacher.double(), q)
    assert picked_lo.any() and not picked_lo.all()  # both branches are exercised
    g = _grad(lambda x: alpha_divergence(x, teacher), student)
    g_ref = _grad(reference, student.double())
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("alpha", [-1.0, -0.5, 0.5, 2.0])
def test_single_alpha_against_reference(alpha):
    student, teacher = _case(1)
    got = alpha_divergence(student, teacher, alpha, alpha, iw_clip=1e6)  # no clipping
    assert got.item() == pytest.approx(_d_alpha(student, teacher, alpha).mean().item(),
                                       rel=1e-5)
    g = _grad(lambda x: alpha_divergence(x, teacher, alpha, alpha, iw_clip=1e6), student)
    g_ref = _grad(lambda x: _d_alpha(x, teacher, alpha).mean(), student.double())
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("alpha, kl", [(0.0, "reverse"), (1.0, "forward")])
def test_limits_are_the_two_kls(alpha, kl):
    student, teacher = _case(2)

    def reference(x):
        q = F.softmax(x, -1)
        p = teacher.double()
        return (_kl(q, p) if kl == "reverse" else _kl(p, q)).mean()

    # At the limit itself (the dedicated branch) and close to it (the general formula).
    for a in (alpha, alpha + 0.002, alpha - 0.002):
        got = alpha_divergence(student, teacher, a, a)
        assert got.item() == pytest.approx(reference(student.double()).item(), rel=5e-3), a
        g = _grad(lambda x, a=a: alpha_divergence(x, teacher, a, a), student)
        torch.testing.assert_close(g.double(), _grad(reference, student.double()),
                                   rtol=0, atol=1e-4)
    exact = alpha_divergence(student, teacher, alpha, alpha)
    assert exact.item() == pytest.approx(reference(student.double()).item(), rel=1e-5)


def test_zero_when_student_equals_teacher():
    student, _ = _case(3)
    loss = alpha_divergence(student, F.softmax(student, -1))
    assert abs(loss.item()) < 1e-6


def test_mask_ignores_masked_positions():
    student, teacher = _case(4, shape=(2, 6, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    noisy_s, noisy_t = student.clone(), teacher.clone()
    noisy_s[~mask] = 1e4  # padding may hold anything, even values that overflow
    noisy_t[~mask] = float("nan")
    got = alpha_divergence(noisy_s, noisy_t, mask=mask)
    expected = alpha_divergence(student[mask], teacher[mask])  # the real positions alone
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    x = noisy_s.clone().requires_grad_(True)
    alpha_divergence(x, noisy_t, mask=mask).backward()
    assert torch.isfinite(x.grad).all() and (x.grad[~mask] == 0).all()


def test_importance_ratio_is_clipped():
    # The teacher gives class 0 almost nothing where the student is sure of it: with
    # alpha = -1 the ratio q/p is huge, clipped at iw_clip.
    student = torch.tensor([[4.0, 0.0, 0.0, 0.0]])
    teacher = torch.tensor([[1e-4, 0.4, 0.3, 0.2999]])
    for clip in (5.0, 50.0):
        got = alpha_divergence(student, teacher, -1.0, -1.0, iw_clip=clip)
        ref = _d_alpha(student, teacher, -1.0, clip=clip).mean()
        assert got.item() == pytest.approx(ref.item(), rel=1e-5)
        g = _grad(lambda x, c=clip: alpha_divergence(x, teacher, -1.0, -1.0, iw_clip=c),
                  student)
        # The clipped surrogate's gradient: rho = clamp(t^a, 0, clip) / a, weighted by q.
        q = F.softmax(student.double(), -1)
        rho = ((teacher.double() / q) ** -1.0).clamp(max=clip) / -1.0
        expected = -q * (rho - (q * rho).sum(-1, keepdim=True))
        torch.testing.assert_close(g.double(), expected, rtol=1e-4, atol=1e-7)
    unclipped = _d_alpha(student, teacher, -1.0).mean()
    assert unclipped.item() > 100 * alpha_divergence(student, teacher, -1.0, -1.0).item()


def test_registered_with_alphanet_defaults_and_checked():
    d = DISTILLERS.create("alpha_divergence", {})
    assert (d.alpha_min, d.alpha_max, d.iw_clip) == (-1.0, 1.0, 5.0) and d.needs_teacher
    student, teacher = _case(5)
    assert d(student, teacher).item() == pytest.approx(
        alpha_divergence(student, teacher).item())
    with pytest.raises(ConfigError, match=r"train.distill.options.iw_clip = 0: must be > 0"):
        DISTILLERS.create("alpha_divergence", {"iw_clip": 0})
    with pytest.raises(ConfigError, match=r"alpha_min = 2: must be at most alpha_max"):
        DISTILLERS.create("alpha_divergence", {"alpha_min": 2})
    with pytest.raises(ConfigError, match=r"alpha_max = 'x': must be a finite number"):
        DISTILLERS.create("alpha_divergence", {"alpha_max": "x"})

"""The RNN-T (transducer) loss of Graves (2012) in plain torch, with torchaudio's conventions.

``logits`` (N, T, U+1, V) are the joint network's unnormalised outputs; ``log_softmax`` over V
gives, at every lattice node (t, u), the log-probability ``blank[t, u]`` of the blank and
``emit[t, u]`` of the next label ``targets[u]``. Utterance ``n`` has ``T_n = logit_lengths[n]``
frames and ``U_n = target_lengths[n]`` labels. An alignment starts at (0, 0); from (t, u) a
blank moves to (t+1, u) and label ``targets[u]`` moves to (t, u+1); it ends with the blank
emitted at (T_n - 1, U_n). The forward variable ``alpha[t, u]`` (log-probability of reaching
(t, u)) is ``alpha[0, 0] = 0`` and

    alpha[t, u] = logaddexp(alpha[t-1, u] + blank[t-1, u], alpha[t, u-1] + emit[t, u-1])

(a missing predecessor contributes nothing), and the loss of utterance ``n`` is
``-log P(y | x) = -(alpha[T_n-1, U_n] + blank[T_n-1, U_n])``. Reductions: ``"none"`` (N,),
``"sum"``, ``"mean"`` (the sum divided by N, as torchaudio's ``rnnt_loss``).

Computed by anti-diagonals ``d = t + u``, all of the batch and every u of a diagonal at once
(T + U - 1 steps of elementwise work on (N, U+1) tensors): both predecessors of a node on
diagonal ``d`` lie on diagonal ``d - 1``, so each step is one ``logaddexp`` and no step
subtracts one running sum from another (the cumulative-sum form of the u-recursion does, and
loses precision in float32 once those sums are large). Nodes off the lattice (t < 0 or t >= T)
hold ``NEG``, a finite stand-in for log 0, so that every value and every gradient stays finite.
Label log-probabilities at u >= U_n and everything at t >= T_n or u > U_n are masked out with
``torch.where``: the loss does not depend on padding, and the gradient with respect to padded
logits is exactly 0. Padded target entries may hold any value (-1 included). Gradients come from
autograd.

Arithmetic is in float32 (float64 inputs stay float64), and the loss is returned in that dtype.
"""

from __future__ import annotations

import torch

REDUCTIONS = ("none", "sum", "mean")

# log 0 for nodes that cannot be reached. Finite so that logaddexp's backward never forms
# exp(-inf - -inf); far below any real log-probability, so exp() of it underflows to exactly 0.
NEG = -1.0e30


def _validate(logits: torch.Tensor, targets: torch.Tensor, logit_lengths: torch.Tensor,
              target_lengths: torch.Tensor, blank: int, reduction: str) -> int:
    """Checks shapes, dtypes and ranges; returns ``blank`` as an index in [0, V)."""
    if logits.dim() != 4:
        raise ValueError(f"rnnt_loss: logits must be (N, T, U+1, V), got shape "
                         f"{tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"rnnt_loss: logits must be floating point, got {logits.dtype}")
    n, t_max, u1, v = logits.shape
    if targets.dim() != 2:
        raise ValueError(f"rnnt_loss: targets must be (N, U), got shape {tuple(targets.shape)}")
    for name, x in (("targets", targets), ("logit_lengths", logit_lengths),
                    ("target_lengths", target_lengths)):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"rnnt_loss: {name} must be an integer tensor, got {x.dtype}")
    if targets.shape[0] != n:
        raise ValueError(f"rnnt_loss: logits hold {n} utterances but targets hold "
                         f"{targets.shape[0]}")
    if u1 != targets.shape[1] + 1:
        raise ValueError(f"rnnt_loss: logits' third dimension must be U+1 = "
                         f"{targets.shape[1] + 1} for targets of shape {tuple(targets.shape)}, "
                         f"got {u1}")
    for name, x in (("logit_lengths", logit_lengths), ("target_lengths", target_lengths)):
        if x.shape != (n,):
            raise ValueError(f"rnnt_loss: {name} must have shape ({n},), got "
                             f"{tuple(x.shape)}")
    if t_max == 0 or v == 0:
        raise ValueError(f"rnnt_loss: logits need at least one frame and one class, got shape "
                         f"{tuple(logits.shape)}")
    if not -v <= blank < v:
        raise ValueError(f"rnnt_loss: blank {blank} is not a class of V = {v}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"rnnt_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if n == 0:
        return blank % v
    t_lo, t_hi = int(logit_lengths.min()), int(logit_lengths.max())
    if t_lo < 1 or t_hi > t_max:
        raise ValueError(f"rnnt_loss: logit_lengths must lie in [1, T = {t_max}], got "
                         f"{logit_lengths.tolist()}")
    u_lo, u_hi = int(target_lengths.min()), int(target_lengths.max())
    if u_lo < 0 or u_hi > u1 - 1:
        raise ValueError(f"rnnt_loss: target_lengths must lie in [0, U = {u1 - 1}], got "
                         f"{target_lengths.tolist()}")
    inside = (torch.arange(u1 - 1, device=targets.device).unsqueeze(0)
              < target_lengths.to(targets.device).unsqueeze(1))
    real = targets[inside]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= v):
        raise ValueError(f"rnnt_loss: targets must be classes in [0, V = {v}) within "
                         f"target_lengths, got values from {int(real.min())} to "
                         f"{int(real.max())}")
    return blank % v


def rnnt_loss(logits: torch.Tensor, targets: torch.Tensor, logit_lengths: torch.Tensor,
              target_lengths: torch.Tensor, blank: int = 0,
              reduction: str = "mean") -> torch.Tensor:
    """The RNN-T loss ``-log P(targets | logits)`` of each utterance, reduced by
    ``reduction`` (see the module docstring). ``logits`` (N, T, U+1, V) unnormalised joint
    outputs, ``targets`` (N, U) integer labels (padded past ``target_lengths``),
    ``logit_lengths`` (N,) frames per utterance in [1, T], ``target_lengths`` (N,) labels in
    [0, U]; ``blank`` is the blank's class (negative counts from the end, as in indexing).
    Raises ``ValueError`` on inconsistent shapes, lengths, labels or reduction."""
    blank = _validate(logits, targets, logit_lengths, target_lengths, blank, reduction)
    n, t_max, u1, v = logits.shape
    device = logits.device
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if n == 0:
        empty = logits.new_zeros((0,), dtype=dtype)
        return empty if reduction == "none" else empty.sum()

    t_len = logit_lengths.to(device=device, dtype=torch.long)
    u_len = target_lengths.to(device=device, dtype=torch.long)
    logp = torch.log_softmax(logits.to(dtype), dim=-1)

    # Label of each node (t, u): targets[u], with a dummy column at u = U and padding clamped
    # into range so that gather works; masked out below.
    labels = torch.cat([targets.to(device=device, dtype=torch.long),
                        targets.new_zeros((n, 1), dtype=torch.long, device=device)], dim=1)
    labels = labels.clamp(0, v - 1)
    index = labels.view(n, 1, u1, 1).expand(n, t_max, u1, 1)
    emit = logp.gather(3, index).squeeze(3)                      # (N, T, U+1)
    blank_lp = logp[..., blank]                                   # (N, T, U+1)

    t_pos = torch.arange(t_max, device=device).view(1, t_max, 1)
    u_pos = torch.arange(u1, device=device).view(1, 1, u1)
    in_t = t_pos < t_len.view(n, 1, 1)
    blank_ok = in_t & (u_pos <= u_len.view(n, 1, 1))
    emit_ok = in_t & (u_pos < u_len.view(n, 1, 1))
    blank_lp = torch.where(blank_ok, blank_lp, NEG)
    emit = torch.where(emit_ok, emit, NEG)

    # Skew to diagonals: node (t, u) goes to row d = t + u, column u. diag_t[d, u] = d - u.
    n_diag = t_max + u1 - 1
    diag_t = (torch.arange(n_diag, device=device).view(n_diag, 1)
              - torch.arange(u1, device=device).view(1, u1))
    on_lattice = (diag_t >= 0) & (diag_t < t_max)                 # (D, U+1)
    gather_t = diag_t.clamp(0, t_max - 1).view(1, n_diag, u1).expand(n, n_diag, u1)
    blank_d = torch.where(on_lattice, blank_lp.gather(1, gather_t), NEG)   # (N, D, U+1)
    emit_d = torch.where(on_lattice, emit.gather(1, gather_t), NEG)

    neg_col = logits.new_full((n, 1), NEG, dtype=dtype)
    alpha = torch.cat([logits.new_zeros((n, 1), dtype=dtype),
                       logits.new_full((n, u1 - 1), NEG, dtype=dtype)], dim=1)
    alphas = [alpha]
    for d in range(1, n_diag):
        # (t-1, u) --blank--> (t, u) keeps the column; (t, u-1) --label--> (t, u) shifts by one.
        via_blank = alpha + blank_d[:, d - 1]
        via_emit = torch.cat([neg_col, (alpha + emit_d[:, d - 1])[:, :-1]], dim=1)
        alpha = torch.where(on_lattice[d], torch.logaddexp(via_blank, via_emit), NEG)
        alphas.append(alpha)
    alpha_d = torch.stack(alphas, dim=1)                          # (N, D, U+1)

    rows = torch.arange(n, device=device)
    last_t = t_len - 1
    log_p = alpha_d[rows, last_t + u_len, u_len] + blank_lp[rows, last_t, u_len]
    loss = -log_p
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss

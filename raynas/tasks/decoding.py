"""Greedy and beam-search decoding of encoder-decoder models.

A model decodes through three methods (the ``transformer_mt`` family's, supernet and static
alike): ``begin(src_tokens) -> state`` runs the encoder once; ``step(state, tokens) -> logits``
(n, vocab) runs the decoder on one new position with its cached keys and values;
``reorder(state, rows) -> state`` keeps the given batch rows (beam search's survivors).
Decoding starts from ``[BOS]`` and a hypothesis ends at ``[EOS]``; a hypothesis never holds
``[PAD]`` or ``[BOS]``; results are token ids without ``[BOS]`` and ``[EOS]``.

Beam search is fairseq's (the decoding HAT and Mixture-of-Supernets report BLEU with): each
step extends every live hypothesis, a hypothesis ending in ``[EOS]`` among the best ``beam``
candidates is finished with score ``log p / length ** length_penalty`` (the length counts the
``[EOS]``), the best ``beam`` others go on, and a source stops once it has ``beam`` finished
hypotheses; at ``max_len`` every live hypothesis is ended with ``[EOS]``. The best finished
hypothesis wins.
"""

from __future__ import annotations

from typing import Any

import torch

from raynas.tasks.text import BOS, EOS, PAD


def _next(model: Any, state: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the next token, over the ids a translation may hold: never
    ``[PAD]`` or ``[BOS]`` (renormalised without them)."""
    logits = model.step(state, tokens).float()
    banned = torch.tensor([PAD, BOS], device=logits.device)
    return logits.index_fill(-1, banned, float("-inf")).log_softmax(-1)


def _cut(rows: torch.Tensor) -> list[list[int]]:
    out = []
    for row in rows.tolist():
        out.append(row[: row.index(EOS)] if EOS in row else row)
    return out


@torch.no_grad()
def greedy(model: Any, src_tokens: torch.Tensor, max_len: int) -> list[list[int]]:
    """The most likely next token at each step, up to ``max_len`` tokens per source."""
    n = src_tokens.shape[0]
    state = model.begin(src_tokens)
    tokens = torch.full((n,), BOS, dtype=torch.long, device=src_tokens.device)
    done = torch.zeros(n, dtype=torch.bool, device=src_tokens.device)
    out = []
    for _ in range(max_len):
        tokens = _next(model, state, tokens).argmax(-1).masked_fill(done, PAD)
        out.append(tokens)
        done |= tokens == EOS
        if bool(done.all()):
            break
    return _cut(torch.stack(out, 1)) if out else [[] for _ in range(n)]


@torch.no_grad()
def beam_search(model: Any, src_tokens: torch.Tensor, beam: int, max_len: int,
                length_penalty: float = 1.0) -> list[list[int]]:
    """The best of ``beam`` hypotheses per source (see the module docstring)."""
    if beam == 1:
        return greedy(model, src_tokens, max_len)
    n, device = src_tokens.shape[0], src_tokens.device
    state = model.begin(src_tokens.repeat_interleave(beam, dim=0))
    scores = torch.full((n, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live hypothesis per source at the start
    seqs = torch.zeros(n, beam, 0, dtype=torch.long, device=device)
    tokens = torch.full((n * beam,), BOS, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
    offsets = torch.arange(n, device=device)[:, None] * beam
    for t in range(max_len):
        logp = _next(model, state, tokens).view(n, beam, -1)
        vocab = logp.shape[-1]
        if t == max_len - 1:  # the last step: every hypothesis ends here
            logp = torch.full_like(logp, float("-inf")).index_fill(
                -1, torch.tensor([EOS], device=device), 0.0) + logp
        top, index = (scores[..., None] + logp).view(n, -1).topk(2 * beam, dim=1)
        origin, token = index // vocab, index % vocab
        eos = token == EOS
        ended = (eos[:, :beam] & top[:, :beam].isfinite()).nonzero().tolist()
        for i, j in ended:
            if len(finished[i]) < beam:
                seq = seqs[i, origin[i, j]].tolist()
                finished[i].append((float(top[i, j]) / (t + 1) ** length_penalty, seq))
        if all(len(f) >= beam for f in finished) or t == max_len - 1:
            break
        # At most `beam` candidates end in [EOS] (one per hypothesis), so `beam` others remain.
        scores, keep = top.masked_fill(eos, float("-inf")).topk(beam, dim=1)
        rows, token = origin.gather(1, keep), token.gather(1, keep)
        seqs = torch.cat([seqs.gather(1, rows[..., None].expand(-1, -1, seqs.shape[2])),
                          token[..., None]], dim=2)
        state = model.reorder(state, (rows + offsets).view(-1))
        tokens = token.view(-1)
    return [max(f)[1] if f else seqs[i, 0].tolist() for i, f in enumerate(finished)]

"""``translation``: sequence-to-sequence translation, trained by teacher forcing, judged by BLEU.

Batches (int64, each ``(n, model.max_len)``): ``src_tokens`` (source ids, ``[EOS]``, then
``[PAD]`` = 0), ``prev_tokens`` (``[BOS]`` then the target ids, padded) and ``targets`` (the
target ids then ``[EOS]``, ``-100`` at padding): position t of ``prev_tokens`` predicts position
t of ``targets``. The model takes ``src_tokens`` and ``prev_tokens`` and returns logits
``(n, T, vocab_size)``; it masks source padding itself (``[PAD]`` is id 0).

Metrics: ``token_accuracy`` (max: share of target tokens ranked first under teacher forcing)
and ``loss`` (min: cross-entropy per target token, the fitness HAT's search ranks subnets by).
``evaluate`` adds ``perplexity`` and, when the data's tokenizer is known, ``bleu``: sacrebleu's
corpus BLEU of the decoded sources (greedy, or beam search with ``beam`` > 1) against the
references, both turned back into text by that tokenizer. BLEU is no average of per-sample
sums, so it is no metric (search halving estimates ratios of sums, and search objectives are
metrics): every evaluated subnet's record holds it (``bleu``, ``test_bleu``), as does the
export's MLflow run. Training's per-epoch check skips it (``evaluate(..., full=False)``).

Options: ``bleu`` (default true; false skips decoding, which costs a decoder pass per target
token), ``beam`` (1: greedy), ``length_penalty`` (beam search's, fairseq's default 1.0),
``max_decode_len`` (default ``model.max_len - 1``).

Example inputs (timing, FLOPs, export): sources of ``model.latency_src_len`` and target
prefixes of ``model.latency_tgt_len`` tokens (default ``model.max_len``); both lengths are part
of the latency key. Sources and targets vary in length, so both time axes are dynamic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from raynas.errors import ConfigError, describe_value
from raynas.tasks import TASKS
from raynas.tasks.base import Batch, Metric, TaskData, TokenTargetTask, to_device
from raynas.tasks.text import BOS, EOS, PAD, SPECIAL_TOKENS

IGNORE = -100


def latency_lengths(model: Mapping[str, Any], where: str) -> dict[str, int]:
    """``model.latency_src_len`` and ``model.latency_tgt_len`` (default ``model.max_len``),
    checked: the lengths example inputs, and so latency, FLOPs and export, use."""
    lengths = {}
    for key in ("latency_src_len", "latency_tgt_len"):
        n = model.get(key, model["max_len"])
        if isinstance(n, bool) or not (isinstance(n, int) and 1 <= n <= model["max_len"]):
            raise ConfigError(f"{where}: model.{key} = {n!r}; a whole number from 1 to "
                              f"model.max_len = {model['max_len']}")
        lengths[key] = n
    return lengths


@TASKS.register("translation")
class Translation(TokenTargetTask):
    name = "translation"
    input_names = ("src_tokens", "prev_tokens")
    metrics = (Metric("token_accuracy", "max", "share of target tokens the model ranks first "
                      "given the reference prefix (teacher forcing)"),
               Metric("loss", "min", "cross-entropy per target token"))

    def __init__(self, model, bleu: bool = True, beam: int = 1, length_penalty: float = 1.0,
                 max_decode_len: int | None = None):
        super().__init__(model)
        where = "task 'translation'"
        for key in ("vocab_size", "max_len"):
            if not (isinstance(self.model.get(key), int) and self.model[key] > 1):
                raise ConfigError(f"{where}: model.{key} must be a whole number above 1, got "
                                  f"{self.model.get(key)!r}")
        if self.model["vocab_size"] <= len(SPECIAL_TOKENS):
            raise ConfigError(f"model.vocab_size = {self.model['vocab_size']}: translation "
                              f"needs more than {len(SPECIAL_TOKENS)} (its special tokens)")
        self.lengths = latency_lengths(self.model, where)
        if not isinstance(bleu, bool):
            raise ConfigError(f"task.options.bleu = {describe_value(bleu)}: true or false")
        if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
            raise ConfigError(f"task.options.beam = {describe_value(beam)}: a whole number "
                              ">= 1 (1: greedy decoding)")
        if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
            raise ConfigError(f"task.options.length_penalty = {describe_value(length_penalty)}"
                              ": a number (1.0: scores divided by the length)")
        limit = self.model["max_len"]
        if max_decode_len is None:
            max_decode_len = limit - 1
        if isinstance(max_decode_len, bool) or not isinstance(max_decode_len, int) or not (
                1 <= max_decode_len < limit):
            raise ConfigError(f"task.options.max_decode_len = {describe_value(max_decode_len)}"
                              f": a whole number from 1 to model.max_len - 1 = {limit - 1}")
        self.bleu, self.beam = bleu, beam
        self.length_penalty, self.max_decode_len = float(length_penalty), max_decode_len
        self.tokenizer: Any = None

    # ---- judging (loss and metrics: TokenTargetTask's) ---------------------------------
    def decode(self, model: Any, src_tokens: torch.Tensor) -> list[list[int]]:
        """Token ids of ``model``'s translations of ``src_tokens`` (the task's decoding)."""
        from raynas.tasks.decoding import beam_search

        return beam_search(model, src_tokens, self.beam, self.max_decode_len,
                           self.length_penalty)

    @torch.no_grad()
    def evaluate(self, model, batches: Iterable[Batch], device="cpu", full: bool = True
                 ) -> dict[str, float]:
        batches = list(batches)
        result = super().evaluate(model, batches, device, full)
        if full and self.bleu and self.tokenizer is not None:
            result["bleu"] = self.corpus_bleu(model, batches, device)
        return result

    def corpus_bleu(self, model, batches: Iterable[Batch], device="cpu") -> float:
        """sacrebleu's corpus BLEU (its default 13a tokenisation) of ``model``'s decoded
        sources against the references of ``batches``."""
        import sacrebleu

        model.eval()
        hyps, refs = [], []
        for batch in batches:
            batch = to_device(batch, device)
            for ids in self.decode(model, batch["src_tokens"]):
                hyps.append(self.tokenizer.decode(ids))
            for row in batch["targets"].tolist():
                refs.append(self.tokenizer.decode([t for t in row if t not in (IGNORE, EOS)]))
        # force: the texts are the tokenizer's (marks apart from words), scored as they are
        return float(sacrebleu.corpus_bleu(hyps, [refs], force=True).score) if hyps else math.nan

    # ---- timing and export -------------------------------------------------------------
    def example_inputs(self, batch_size: int, seed: int = 0):
        """Sources of ``latency_src_len`` tokens, each row after the first padded after a
        random length (masks matter in export checks), and target prefixes of
        ``latency_tgt_len`` tokens starting with ``[BOS]``."""
        g = torch.Generator().manual_seed(seed)
        vocab = self.model["vocab_size"]
        src_len, tgt_len = self.lengths["latency_src_len"], self.lengths["latency_tgt_len"]
        src = torch.randint(len(SPECIAL_TOKENS), vocab, (batch_size, src_len), generator=g)
        lengths = torch.randint(1, src_len + 1, (batch_size,), generator=g)
        lengths[0] = src_len
        position = torch.arange(src_len)
        src = torch.where(position < lengths[:, None] - 1, src, PAD)
        src[torch.arange(batch_size), lengths - 1] = EOS
        prev = torch.randint(len(SPECIAL_TOKENS), vocab, (batch_size, tgt_len), generator=g)
        prev[:, 0] = BOS
        return {"src_tokens": src, "prev_tokens": prev}

    def dynamic_axes(self):
        return {"src_tokens": {0: "batch", 1: "source"}, "prev_tokens": {0: "batch", 1: "target"}}

    # ---- data --------------------------------------------------------------------------
    def check_data(self, data: TaskData) -> None:
        limit, vocab = self.model["max_len"], self.model["vocab_size"]
        for split in (data.train, data.val, data.test):
            t = split.tensors
            if t["src_tokens"].shape[1] > limit or t["prev_tokens"].shape[1] > limit:
                raise ConfigError(f"data: sequences of {t['src_tokens'].shape[1]} tokens, the "
                                  f"space's model.max_len is {limit}")
            top = max(int(t[k].max()) for k in ("src_tokens", "prev_tokens", "targets"))
            if top >= vocab:
                raise ConfigError(f"data: token id {top} >= the space's model.vocab_size "
                                  f"{vocab}")
        self.tokenizer = data.tokenizer  # turns decoded ids back into text for BLEU

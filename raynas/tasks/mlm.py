"""``masked_lm``: masked language modelling (BERT's objective) on packed English text.

Batches: ``tokens`` (int64, ``(n, max_len)``) and ``targets`` (int64, ``(n, max_len)``: the
original id where a position is predicted, ``-100`` elsewhere). The model takes ``tokens`` and
returns logits ``(n, max_len, vocab_size)``. Sequences are packed as RoBERTa's full-sentences
input: every document's ids, each followed by ``[SEP]``, are cut into blocks of exactly
``max_len`` (the tail that fills no block is dropped), so there is no padding and the model
needs no lengths. Model settings read: ``vocab_size``, ``max_len``.

Masking (BERT): each non-special position is predicted with probability ``mask_prob``; of
those, 80% become ``[MASK]``, 10% a random non-special token and 10% stay as they are. The
masks are drawn once per split from the split seed (static masking): validation and test are
the same on every run. ``copies`` repeats the training blocks, each copy masked anew, as
BERT's data pipeline duplicates its data with different masks.

Metrics: ``masked_accuracy`` (max), ``loss`` (min, cross-entropy per predicted token).
``evaluate`` adds ``perplexity``, ``exp(loss)``: no average of per-sample sums, so not a metric
(search halving estimates ratios of sums).

Datasets (documents are split into train / validation / test before packing, by the seeded
split, so no document is in two splits; a tokenizer is trained on the training documents):
- ``stdlib_text``: paragraphs of the Python standard library's docstrings
  (``raynas.tasks.text``), the first ``max_chars`` characters' worth (default 1,000,000: about
  250,000 tokens at a vocabulary of 2000, so some 7,800 blocks at ``max_len`` 32 and 3,900 at
  64 over all splits); options ``max_chars`` (None: all), ``mask_prob``, ``copies``.
- ``parquet_text``: a Parquet file's string column (``text_column``, default ``text``), one
  document per row (empty rows skipped); ``tokenizer``: a ``tokenizer.json`` of the
  ``tokenizers`` package (absolute, or from the current folder, else from the Parquet file's
  folder; it needs ``[MASK]`` and ``[SEP]``, ids below ``vocab_size``), default one trained on
  the training split; ``mask_prob``, ``copies``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raynas.errors import ConfigError, describe_value
from raynas.tasks import DATASETS, TASKS, DatasetEntry
from raynas.tasks.base import Metric, Task, TaskData, TensorDictDataset, TokenTargetTask
from raynas.tasks.text import (
    SPECIAL_TOKENS,
    encode,
    load_tokenizer,
    special_ids,
    stdlib_docstrings,
    train_tokenizer,
)

IGNORE = -100
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the predicted positions; the rest stay
DEFAULT_MAX_CHARS = 1_000_000
_MODEL_KEYS = ("vocab_size", "max_len")
_NEEDED = ("[MASK]", "[SEP]")
_SPLITS = ("training", "validation", "test")


@TASKS.register("masked_lm")
class MaskedLM(TokenTargetTask):
    name = "masked_lm"
    accuracy = "masked_accuracy"
    input_names = ("tokens",)
    metrics = (Metric("masked_accuracy", "max", "share of the predicted (masked) positions "
                      "whose original token the model ranks first"),
               Metric("loss", "min", "cross-entropy per predicted token"))

    def __init__(self, model):
        super().__init__(model)
        missing = [k for k in _MODEL_KEYS if k not in self.model]
        if missing:
            raise ConfigError(f"task 'masked_lm' needs model.{missing[0]} in the space")
        if self.model["vocab_size"] <= len(SPECIAL_TOKENS):
            raise ConfigError(f"model.vocab_size = {self.model['vocab_size']}: masked_lm "
                              f"needs more than {len(SPECIAL_TOKENS)} (its special tokens)")

    def example_inputs(self, batch_size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        shape = (batch_size, self.model["max_len"])
        return {"tokens": torch.randint(len(SPECIAL_TOKENS), self.model["vocab_size"], shape,
                                        generator=g)}

    def dynamic_axes(self):
        return {"tokens": {0: "batch"}}  # blocks are always max_len long

    def check_data(self, data: TaskData) -> None:
        for split in (data.train, data.val, data.test):
            tokens, targets = split.tensors["tokens"], split.tensors["targets"]
            if tokens.shape[1] != self.model["max_len"]:
                raise ConfigError(f"data: blocks of {tokens.shape[1]} tokens, the space's "
                                  f"model.max_len is {self.model['max_len']}")
            top = max(int(tokens.max()), int(targets.max()))
            if top >= self.model["vocab_size"]:
                raise ConfigError(f"data: token id {top} >= the space's model.vocab_size "
                                  f"{self.model['vocab_size']}")


# ---- data ------------------------------------------------------------------------------
def split_documents(docs: Sequence[str], val_fraction: float, test_fraction: float,
                    seed: int) -> tuple[list[str], list[str], list[str]]:
    """Training, validation and test documents: a seeded random split (as tagging's of its
    rows), each keeping the documents' order."""
    n = len(docs)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    cuts = (order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test])
    return tuple([docs[i] for i in idx.sort().values.tolist()] for idx in cuts)


def pack(ids: Sequence[Sequence[int]], sep: int, max_len: int) -> torch.Tensor:
    """Every document's ids followed by ``sep``, joined and cut into ``(n, max_len)`` blocks;
    the tail that fills no block is dropped."""
    flat = np.fromiter((t for doc in ids if doc for t in (*doc, sep)), dtype=np.int64)
    n = len(flat) // max_len
    return torch.from_numpy(flat[:n * max_len].reshape(n, max_len))


def mask_blocks(blocks: torch.Tensor, mask_prob: float, special: Sequence[int],
                replacements: torch.Tensor, mask_id: int, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of ``blocks``: ``(tokens, targets)``. ``replacements``: the ids a
    position may be swapped for (the non-special ones)."""
    shape = blocks.shape
    chosen = torch.rand(shape, generator=generator) < mask_prob
    chosen &= ~torch.isin(blocks, torch.as_tensor(list(special), dtype=blocks.dtype))
    kind = torch.rand(shape, generator=generator)
    swap = replacements[torch.randint(len(replacements), shape, generator=generator)]
    tokens = torch.where(chosen & (kind < MASK_SHARE), mask_id, blocks)
    tokens = torch.where(chosen & (kind >= MASK_SHARE) & (kind < MASK_SHARE + RANDOM_SHARE),
                         swap, tokens)
    return tokens, torch.where(chosen, blocks, IGNORE)


def build_splits(task: Task, docs: tuple[list[str], list[str], list[str]], tok: Any,
                 mask_prob: float, copies: int, seed: int, where: str) -> TaskData:
    """Encode, pack and mask each split's documents (``where``: the setting that chose the
    text, for the error when a split fills no block)."""
    max_len = task.model["max_len"]
    sep, mask_id = tok.token_to_id("[SEP]"), tok.token_to_id("[MASK]")
    special = special_ids(tok)
    kept = sorted(set(tok.get_vocab(with_added_tokens=True).values()) - set(special))
    replacements = torch.tensor(kept or [mask_id], dtype=torch.long)
    out = []
    for k, (name, split) in enumerate(zip(_SPLITS, docs)):
        ids = encode(tok, split)
        blocks = pack(ids, sep, max_len)
        if not len(blocks):
            n_tokens = sum(len(d) + 1 for d in ids if d)
            raise ConfigError(f"{where}: the {name} split ({len(split)} documents) has "
                              f"{n_tokens} tokens, fewer than one block of model.max_len = "
                              f"{max_len}; give more text")
        if k == 0:
            blocks = blocks.repeat(copies, 1)  # each copy gets its own mask below
        g = torch.Generator().manual_seed(seed + 7919 * (k + 1))  # apart from the split's
        tokens, targets = mask_blocks(blocks, mask_prob, special, replacements, mask_id, g)
        out.append(TensorDictDataset({"tokens": tokens, "targets": targets}))
    return TaskData(*out)


def _check_masking(mask_prob: Any, copies: Any) -> None:
    if (isinstance(mask_prob, bool) or not isinstance(mask_prob, (int, float))
            or not 0 < mask_prob < 1):
        raise ConfigError(f"data.options.mask_prob = {describe_value(mask_prob)}: must be a "
                          "number above 0 and below 1")
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ConfigError(f"data.options.copies = {describe_value(copies)}: must be a whole "
                          "number >= 1")


def read_parquet(path: str | Path) -> Any:
    """The ``pyarrow`` table of the Parquet file at ``data.path``; a ``ConfigError`` naming the
    path and the reader's reason when it cannot be read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(Path(path))
    except (pa.ArrowException, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"data.path = {str(path)!r}: not a readable Parquet file ({reason})"
                          ) from None


def string_column(table: Any, option: str, name: Any, path: Any, task: str) -> list[Any]:
    """The values of the string column ``name`` that ``data.options.<option>`` names; a
    ``ConfigError`` naming the option when it is no column of ``table`` or holds no strings
    (``task`` needs them)."""
    import pyarrow as pa

    if not isinstance(name, str) or not name:
        raise ConfigError(f"data.options.{option} = {describe_value(name)}: must be the name "
                          "of a column")
    if name not in table.column_names:
        raise ConfigError(f"data.options.{option} = {name!r}: not a column of {path}; "
                          f"columns: {', '.join(table.column_names[:20]) or 'none'}")
    column = table.column(name)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ConfigError(f"data.options.{option} = {name!r}: a column of {column.type}; "
                          f"{task} needs strings")
    return column.to_pylist()


def load_stdlib_text(task, path, val_fraction, test_fraction, seed,
                     max_chars: int | None = DEFAULT_MAX_CHARS, mask_prob: float = 0.15,
                     copies: int = 1) -> TaskData:
    _check_masking(mask_prob, copies)
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int)
                                  or max_chars < 1):
        raise ConfigError(f"data.options.max_chars = {describe_value(max_chars)}: must be a "
                          "whole number >= 1, or null for the whole corpus")
    docs = split_documents(stdlib_docstrings(max_chars), val_fraction, test_fraction, seed)
    tok = train_tokenizer(docs[0], task.model["vocab_size"])
    return build_splits(task, docs, tok, mask_prob, copies, seed,
                        f"data.options.max_chars = {max_chars}")


def load_parquet_text(task, path, val_fraction, test_fraction, seed, text_column: str = "text",
                      tokenizer: str | None = None, mask_prob: float = 0.15,
                      copies: int = 1) -> TaskData:
    _check_masking(mask_prob, copies)
    where = f"data.path = {str(path)!r}"
    table = read_parquet(path)
    texts = string_column(table, "text_column", text_column, path, "masked_lm")
    docs = [t for t in texts if t and t.strip()]
    if not docs:
        raise ConfigError(f"{where}: no text in column {text_column!r} ({table.num_rows} "
                          "rows, none with text)")
    splits = split_documents(docs, val_fraction, test_fraction, seed)
    vocab = task.model["vocab_size"]
    if tokenizer is None:
        tok = train_tokenizer(splits[0], vocab)
    elif not isinstance(tokenizer, str):
        raise ConfigError(f"data.options.tokenizer = {describe_value(tokenizer)}: must be the "
                          "path of a tokenizer.json, or null to train one")
    else:
        found = Path(tokenizer)
        if not found.is_absolute() and not found.exists():
            found = Path(path).parent / found
        tok = load_tokenizer(found, vocab, _NEEDED)
    return build_splits(task, splits, tok, mask_prob, copies, seed, where)


DATASETS.register("stdlib_text", DatasetEntry("masked_lm", load_stdlib_text))
DATASETS.register("parquet_text", DatasetEntry("masked_lm", load_parquet_text, needs_path=True))

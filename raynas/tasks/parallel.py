"""Sentence pairs as tensors, and the datasets of task ``translation``.

Batches (``encode_pairs``), all int64 of shape ``(n, max_len)``:
- ``src_tokens``: the source ids, then ``[EOS]``, then ``[PAD]`` (id 0) to the end;
- ``prev_tokens``: ``[BOS]``, then the target ids, then ``[PAD]`` (the decoder's input, the
  target shifted right by one: teacher forcing);
- ``targets``: the target ids, then ``[EOS]``, then ``-100`` (ignored by the loss). So
  ``prev_tokens[:, 1:]`` equals ``targets[:, :-1]`` wherever the latter is a target id
  (``[PAD]`` where it is ``[EOS]`` or ``-100``).
A pair whose source or target takes more than ``max_len - 1`` ids cannot hold its ``[EOS]``
or ``[BOS]`` and is dropped, not cut: a cut sentence would teach wrong translations.

Both sides share one tokenizer (``TaskData.tokenizer``, for turning predicted ids back into
text): by default a byte-pair encoding trained on the training split's sources and targets
together, decodable (``train_tokenizer(..., decodable=True)``: decoding gives the text back,
normalised: NFKC and lowercase), with ``[PAD]`` = 0, ``[BOS]`` = 4 and ``[EOS]`` = 5. A user's
``tokenizer.json`` needs the same three at the same ids (padding is 0; decoding starts from
4 and stops at 5), and a decoder if its decoded text is to be scored. Pairs are split into training,
validation and test by the seeded split of ``raynas.tasks.mlm.split_documents`` before the
tokenizer is trained, so no pair is in two splits. Model settings read: ``vocab_size``,
``max_len``.

Datasets:
- ``generated_translation``: English sentences of the stdlib's docstrings and their
  translations into the generated language of ``raynas.tasks.synthlang``; options
  ``max_pairs`` (default 20,000, more than the corpus holds at 16 words: about 6,500; None:
  all), ``max_words`` (3.., default 16), ``language_seed`` (default 0).
- ``parquet_translation``: a Parquet file, one pair per row in two string columns
  (``source_column``, default ``source``; ``target_column``, default ``target``); rows with an
  empty side are skipped, the texts are used as they are. ``tokenizer``: a ``tokenizer.json``
  (absolute, or from the current folder, else from the Parquet file's folder), default one
  trained on the training split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raynas.errors import ConfigError, describe_value
from raynas.tasks import DATASETS, DatasetEntry
from raynas.tasks.base import TaskData, TensorDictDataset
from raynas.tasks.mlm import read_parquet, split_documents, string_column
from raynas.tasks.synthlang import DEFAULT_MIN_WORDS, sentence_pairs
from raynas.tasks.text import BOS, EOS, PAD, encode, load_tokenizer, train_tokenizer

IGNORE = -100
DEFAULT_MAX_PAIRS = 20_000
_NEEDED = ("[PAD]", "[BOS]", "[EOS]")
_SPLITS = ("training", "validation", "test")

Pair = tuple[str, str]


def pad_bos_eos(tok: Any) -> tuple[int, int, int]:
    """``tok``'s ids of ``[PAD]``, ``[BOS]`` and ``[EOS]``; ``ValueError`` unless they are
    ``text.PAD``, ``BOS`` and ``EOS`` (0, 4, 5: padding is 0, and decoding starts from id 4
    and stops at id 5)."""
    ids = tuple(tok.token_to_id(t) for t in _NEEDED)
    if ids != (PAD, BOS, EOS):
        raise ValueError(_ids_problem(ids))
    return ids


def _ids_problem(ids: tuple[int | None, ...]) -> str:
    found = ", ".join(f"{t} = {'none' if i is None else i}" for t, i in zip(_NEEDED, ids))
    return (f"its ids are {found}; translation needs [PAD] = {PAD} (the padding), "
            f"[BOS] = {BOS} and [EOS] = {EOS} (where decoding starts and stops), as in the "
            "tokenizers raynas trains")


def encode_pairs(tok: Any, pairs: Sequence[Pair], max_len: int
                 ) -> tuple[dict[str, torch.Tensor], int]:
    """``src_tokens``, ``prev_tokens`` and ``targets`` of the pairs that fit in ``max_len``
    (see the module's docstring), and how many pairs were dropped as too long."""
    _, bos, eos = pad_bos_eos(tok)
    src = encode(tok, [s for s, _ in pairs])
    tgt = encode(tok, [t for _, t in pairs])
    keep = [i for i in range(len(pairs)) if len(src[i]) < max_len and len(tgt[i]) < max_len]
    shape = (len(keep), max_len)
    src_tokens = np.zeros(shape, dtype=np.int64)
    prev_tokens = np.zeros(shape, dtype=np.int64)
    targets = np.full(shape, IGNORE, dtype=np.int64)
    for row, i in enumerate(keep):
        s, t = src[i], tgt[i]
        src_tokens[row, :len(s)] = s
        src_tokens[row, len(s)] = eos
        prev_tokens[row, 0] = bos
        prev_tokens[row, 1:len(t) + 1] = t
        targets[row, :len(t)] = t
        targets[row, len(t)] = eos
    tensors = {"src_tokens": src_tokens, "prev_tokens": prev_tokens, "targets": targets}
    return {k: torch.from_numpy(v) for k, v in tensors.items()}, len(pairs) - len(keep)


class PairDataset(TensorDictDataset):
    """Encoded sentence pairs, each padded to ``model.max_len``; a batch is cut to its longest
    source and its longest target, so short sentences cost short sequences. Exact: the cut
    columns hold only source padding (masked) and target padding (ignored by the loss and
    the metrics)."""

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = super().__getitems__(indices)
        if not indices:
            return batch
        s = max(int((batch["src_tokens"] != PAD).sum(1).max()), 1)
        t = max(int((batch["targets"] != IGNORE).sum(1).max()), 1)
        return {"src_tokens": batch["src_tokens"][:, :s],
                "prev_tokens": batch["prev_tokens"][:, :t], "targets": batch["targets"][:, :t]}


def build_splits(pairs: Sequence[Pair], tok: Any | None, model: dict, val_fraction: float,
                 test_fraction: float, seed: int, where: str, shorter: str) -> TaskData:
    """Split the pairs, train a tokenizer on the training pairs unless ``tok`` is given, and
    encode each split. ``where``: the setting that chose the pairs, ``shorter``: how to get
    shorter ones (both for errors)."""
    vocab, max_len = _model_settings(model)
    splits = split_documents(list(pairs), val_fraction, test_fraction, seed)
    if tok is None:
        train = splits[0]
        tok = train_tokenizer([s for s, _ in train] + [t for _, t in train], vocab,
                              decodable=True)
    encoded = [encode_pairs(tok, split, max_len) for split in splits]
    dropped = sum(d for _, d in encoded)
    if dropped == len(pairs):
        raise ConfigError(f"{where}: all {len(pairs)} sentence pairs need more than "
                          f"model.max_len - 1 = {max_len - 1} tokens on a side, so all "
                          f"{dropped} were dropped; raise model.max_len or {shorter}")
    for name, split, (tensors, n_dropped) in zip(_SPLITS, splits, encoded):
        if not len(tensors["targets"]):
            too_long = f", {n_dropped} of them too long for model.max_len" if n_dropped else ""
            raise ConfigError(
                f"{where}: the {name} split is empty ({len(split)} of {len(pairs)} pairs"
                f"{too_long}; data.val_fraction = {val_fraction}, data.test_fraction = "
                f"{test_fraction}); give more sentence pairs")
    return TaskData(*(PairDataset(t) for t, _ in encoded), tokenizer=tok)


def _model_settings(model: dict) -> tuple[int, int]:
    for key in ("vocab_size", "max_len"):
        if key not in model:
            raise ConfigError(f"task 'translation' needs model.{key} in the space")
    max_len = model["max_len"]
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
        raise ConfigError(f"model.max_len = {describe_value(max_len)}: translation needs a "
                          "whole number >= 2 (a token and [EOS])")
    return model["vocab_size"], max_len


def _whole(name: str, value: Any, least: int, none_means: str = "") -> None:
    if value is None and none_means:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        alt = f", or null for {none_means}" if none_means else ""
        raise ConfigError(f"data.options.{name} = {describe_value(value)}: must be a whole "
                          f"number >= {least}{alt}")


def load_generated_translation(task, path, val_fraction, test_fraction, seed,
                               max_pairs: int | None = DEFAULT_MAX_PAIRS, max_words: int = 16,
                               language_seed: int = 0) -> TaskData:
    _whole("max_pairs", max_pairs, 1, "all the pairs")
    _whole("max_words", max_words, DEFAULT_MIN_WORDS)
    _whole("language_seed", language_seed, 0)
    pairs = sentence_pairs(max_pairs, max_words, language_seed)
    where = f"data.options.max_pairs = {max_pairs}, data.options.max_words = {max_words}"
    return build_splits(pairs, None, task.model, val_fraction, test_fraction, seed, where,
                        "lower data.options.max_words")


def load_parquet_translation(task, path, val_fraction, test_fraction, seed,
                             source_column: str = "source", target_column: str = "target",
                             tokenizer: str | None = None) -> TaskData:

    if tokenizer is not None and not isinstance(tokenizer, str):
        raise ConfigError(f"data.options.tokenizer = {describe_value(tokenizer)}: must be the "
                          "path of a tokenizer.json, or null to train one")
    where = f"data.path = {str(path)!r}"
    table = read_parquet(path)
    sources = string_column(table, "source_column", source_column, path, "translation")
    targets = string_column(table, "target_column", target_column, path, "translation")
    if source_column == target_column:
        raise ConfigError(f"data.options.target_column = {target_column!r}: the same column "
                          "as data.options.source_column; the two sides need two columns")
    pairs = [(s, t) for s, t in zip(sources, targets) if s and s.strip() and t and t.strip()]
    if not pairs:
        raise ConfigError(f"{where}: no sentence pairs in columns {source_column!r} and "
                          f"{target_column!r} ({table.num_rows} rows, none with text on both "
                          "sides)")
    tok = None
    if tokenizer is not None:
        found = Path(tokenizer)
        if not found.is_absolute() and not found.exists():
            found = Path(path).parent / found
        vocab, _ = _model_settings(task.model)
        tok = load_tokenizer(found, vocab, _NEEDED)
        ids = tuple(tok.token_to_id(t) for t in _NEEDED)
        if ids != (PAD, BOS, EOS):
            raise ConfigError(f"data.options.tokenizer = {str(found)!r}: {_ids_problem(ids)}")
    return build_splits(pairs, tok, task.model, val_fraction, test_fraction, seed, where,
                        "give shorter texts")


DATASETS.register("generated_translation",
                  DatasetEntry("translation", load_generated_translation))
DATASETS.register("parquet_translation",
                  DatasetEntry("translation", load_parquet_translation, needs_path=True))

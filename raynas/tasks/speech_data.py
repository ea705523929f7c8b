"""Speech as tensors, and the datasets of task ``speech_recognition``.

Tensors (``pack``): ``feats`` (float32, ``(n, T, n_mels)``, zero after each utterance's
frames), ``feat_lengths`` (int64, ``(n,)``), ``labels`` (int64, ``(n, U)``, the transcript's
unit ids, 0 after them) and ``label_lengths`` (int64, ``(n,)``). ``T`` and ``U`` are the
longest utterance and transcript of the dataset; a batch is cut to its own longest
(``SpeechDataset``). The ids are those of ``Units`` (``TaskData.tokenizer``): 0 is the CTC
blank, 1 an unknown unit, then characters (the space is one) or words. Model settings read:
``n_mels``, ``vocab_size`` (the CTC output size, blank included: at least ``len(units)``),
``max_frames`` (no utterance is longer).

Datasets:
- ``generated_speech``: spoken-word-like features of sentences of ``min_words`` to
  ``max_words`` words over ``words`` words (``zero`` .. ``nine``, ``oh``, ``and``), no
  download. Each word has 2-3 sub-units with a smooth formant-like spectral envelope each;
  an occurrence holds each sub-unit 3-6 frames, stretched by the utterance's and the word's
  tempo (each within ``1 +- warp``, resampled by linear interpolation) to at least 8 frames
  (CTC after 4x subsampling), with 0-2 frames of silence between words and 2-5 at either
  end; an utterance longer than ``model.max_frames`` is spoken faster to fit. Then a
  per-utterance gain and spectral tilt, and Gaussian noise of std ``noise`` (the envelopes'
  peaks are about 1-2.5 high). Word units.
- ``wav_folder``: ``.wav`` files under ``data.path`` (searched recursively) at
  ``sample_rate`` (no resampling) and the transcript file ``transcripts`` in it: lines of
  ``<utterance id> <text>`` (Kaldi ``text``: the id is the WAV file's name without
  ``.wav``, or its path under ``data.path``) or ``<file name>\\t<text>``. Features:
  ``features.log_mel``, each mel bin normalised by the mean and std of the training split's
  frames (the same numbers for all splits). Units (``units``: ``char`` or ``word``) are those
  of the training split's transcripts, whitespace collapsed to single spaces.
- ``parquet_speech``: precomputed features, one utterance per row: ``features_column``
  (list<list<float>>, frames x n_mels) and ``text_column`` (strings); used as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raynas.errors import ConfigError, describe_value
from raynas.tasks import DATASETS, DatasetEntry, features
from raynas.tasks.base import TaskData, TensorDictDataset

BLANK, UNK = "<blank>", "<unk>"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "oh", "and")
_MODEL_KEYS = ("n_mels", "vocab_size", "max_frames")
_SPLITS = ("training", "validation", "test")


class Units:
    """Transcripts to ids and back: 0 = ``<blank>`` (CTC), 1 = ``<unk>``, then ``units`` in
    order. ``joiner`` is ``" "`` for words (a text is split on whitespace) and ``""`` for
    characters (every character, the space too, is a unit)."""

    def __init__(self, units: Sequence[str], joiner: str):
        if joiner not in (" ", ""):
            raise ValueError(f"joiner = {joiner!r}: must be ' ' (words) or '' (characters)")
        self.units, self.joiner = list(units), joiner
        bad = [u for u in self.units if u in (BLANK, UNK)
               or (u.split() != [u] if joiner else len(u) != 1)]
        if bad or len(set(self.units)) != len(self.units):
            raise ValueError(f"units {bad or self.units}: need distinct "
                             f"{'words without spaces' if joiner else 'single characters'}")
        self.ids = {u: i for i, u in enumerate(self.units, start=2)}
        self.tokens = [BLANK, UNK, *self.units]

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(u, 1) for u in (text.split() if self.joiner else text)]

    def decode(self, ids: Iterable[int]) -> str:
        n = len(self.tokens)
        return self.joiner.join(self.tokens[i] if 0 < i < n else UNK for i in map(int, ids)
                                if i != 0)

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Units) and self.to_dict() == other.to_dict()

    @classmethod
    def from_texts(cls, texts: Iterable[str], kind: str) -> Units:
        """The sorted units seen in ``texts``: ``kind`` ``"char"`` or ``"word"``."""
        if kind not in ("char", "word"):
            raise ValueError(f"kind = {kind!r}: must be 'char' or 'word'")
        joiner = " " if kind == "word" else ""
        seen = {u for t in texts for u in (t.split() if joiner else t)}
        return cls(sorted(seen - {BLANK, UNK}), joiner)

    def to_dict(self) -> dict[str, Any]:
        return {"units": list(self.units), "joiner": self.joiner}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Units:
        return cls(d["units"], d["joiner"])


class SpeechDataset(TensorDictDataset):
    """Packed utterances (``pack``); a batch is cut to its longest utterance and its longest
    transcript, so short utterances cost short batches. Exact: the cut frames and ids are
    padding past every row's ``feat_lengths`` and ``label_lengths``."""

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = super().__getitems__(indices)
        if not indices:
            return batch
        t = max(int(batch["feat_lengths"].max()), 1)
        u = max(int(batch["label_lengths"].max()), 1)
        return {**batch, "feats": batch["feats"][:, :t], "labels": batch["labels"][:, :u]}


def pack(feats: list[np.ndarray], labels: list[list[int]]) -> dict[str, torch.Tensor]:
    """The tensors of utterances ``feats`` (each ``(T_i, n_mels)``) and their unit ids."""
    n = len(feats)
    dim = feats[0].shape[1] if n else 0
    lengths = np.array([len(f) for f in feats], dtype=np.int64)
    label_lengths = np.array([len(lab) for lab in labels], dtype=np.int64)
    out = np.zeros((n, max(lengths.max(initial=0), 1), dim), dtype=np.float32)
    ids = np.zeros((n, max(label_lengths.max(initial=0), 1)), dtype=np.int64)
    for i, (f, lab) in enumerate(zip(feats, labels)):
        out[i, :len(f)] = f
        ids[i, :len(lab)] = lab
    return {"feats": torch.from_numpy(out), "feat_lengths": torch.from_numpy(lengths),
            "labels": torch.from_numpy(ids), "label_lengths": torch.from_numpy(label_lengths)}


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted row indices of the training, validation and test splits (a seeded shuffle)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    cuts = (order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test])
    return tuple(c.sort().values for c in cuts)  # type: ignore[return-value]


def split(tensors: dict[str, torch.Tensor], val_fraction: float, test_fraction: float,
          seed: int, tokenizer: Units | None = None) -> TaskData:
    """``tensors`` (``pack``) split into training, validation and test ``SpeechDataset``s."""
    cuts = split_indices(len(tensors["feats"]), val_fraction, test_fraction, seed)
    return _datasets(tensors, cuts, tokenizer, val_fraction, test_fraction)


def _datasets(tensors, cuts, tokenizer, val_fraction, test_fraction) -> TaskData:
    for name, c in zip(_SPLITS, cuts):
        if not len(c):
            raise ConfigError(f"data: the {name} split of {len(tensors['feats'])} utterances "
                              f"is empty (data.val_fraction = {val_fraction}, "
                              f"data.test_fraction = {test_fraction}); give more utterances")
    return TaskData(*(SpeechDataset({k: v[c] for k, v in tensors.items()}) for c in cuts),
                    tokenizer=tokenizer)


def _model(task) -> tuple[int, int, int]:
    for key in _MODEL_KEYS:
        if key not in task.model:
            raise ConfigError(f"task 'speech_recognition' needs model.{key} in the space")
    return tuple(task.model[k] for k in _MODEL_KEYS)  # type: ignore[return-value]


def _check_vocab(units: Units, vocab: int) -> None:
    if len(units) > vocab:
        raise ConfigError(f"model.vocab_size = {vocab}: the data has {len(units)} units "
                          f"({len(units.units)} and the blank and <unk>); raise "
                          "model.vocab_size to at least that")


def _whole(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"data.options.{name} = {describe_value(value)}: must be a whole "
                          f"number >= {least}")


def _number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value < high:
        raise ConfigError(f"data.options.{name} = {describe_value(value)}: must be a number "
                          f"in [{low}, {high})")


def _kind(units: Any) -> str:
    if units not in ("char", "word"):
        raise ConfigError(f"data.options.units = {describe_value(units)}: must be 'char' "
                          "(characters) or 'word'")
    return units


# ---- generated_speech -----------------------------------------------------------------
SUB_FRAMES = (3, 6)  # frames a sub-unit is held, before tempo
GAP_FRAMES, EDGE_FRAMES = (0, 2), (2, 5)  # silence between words, and before / after
# Two encoder frames after a 4x-subsampling front end (the Conformer's): CTC has room for a
# blank between two equal words.
MIN_WORD_FRAMES = 8


def shortest_fit(max_words: int) -> int:
    """The fewest frames ``max_frames`` may be for ``generated_speech`` of ``max_words``."""
    return MIN_WORD_FRAMES * max_words + 2 * EDGE_FRAMES[0]


def _envelope(rng: np.random.Generator, n_mels: int) -> np.ndarray:
    """A smooth spectral envelope: three formant-like bumps and a falling tilt."""
    bins = np.arange(n_mels)
    centres = rng.uniform(0, n_mels, 3)
    widths = rng.uniform(0.04, 0.12, 3) * n_mels + 0.5
    heights = rng.uniform(0.8, 2.0, 3)
    peaks = heights[:, None] * np.exp(-0.5 * ((bins[None] - centres[:, None]) / widths[:, None])
                                      ** 2)
    return peaks.sum(0) - 0.6 * bins / n_mels


def _fit(lengths: np.ndarray, gaps: np.ndarray, edges: np.ndarray, max_frames: int) -> None:
    """Shorten an utterance in place to at most ``max_frames`` (a faster speaker): the words
    in proportion, none below ``MIN_WORD_FRAMES``, and the silences where that is not
    enough (``shortest_fit`` says it can be done)."""
    if lengths.sum() + gaps.sum() + edges.sum() <= max_frames:
        return
    if MIN_WORD_FRAMES * len(lengths) + gaps.sum() + edges.sum() > max_frames:
        gaps[:], edges[:] = 0, EDGE_FRAMES[0]
    room = max_frames - gaps.sum() - edges.sum()
    lengths[:] = np.maximum(lengths * room // lengths.sum(), MIN_WORD_FRAMES)
    while lengths.sum() > room:
        lengths[lengths.argmax()] -= 1


def generate_speech(seed: int, n: int, n_mels: int, max_frames: int, words: int = 12,
                    min_words: int = 3, max_words: int = 8, noise: float = 0.6,
                    warp: float = 0.2
                    ) -> tuple[list[np.ndarray], list[list[int]], list[list[tuple[int, int]]]]:
    """``n`` generated utterances (see the module's docstring): their features
    ``(T_i, n_mels)``, their word indices (0-based) and each word's frames ``(start, end)``."""
    rng = np.random.default_rng(seed + 104729)  # the data's own stream, apart from the split's
    protos = [np.stack([_envelope(rng, n_mels) for _ in range(int(rng.integers(2, 4)))])
              for _ in range(words)]
    silence = np.full(n_mels, -1.5)
    tilt_axis = np.linspace(-1.0, 1.0, n_mels)
    feats, sentences, spans = [], [], []
    for _ in range(n):
        sentence = rng.integers(0, words, int(rng.integers(min_words, max_words + 1)))
        tempo = rng.uniform(1 - warp, 1 + warp) * rng.uniform(1 - warp, 1 + warp, len(sentence))
        canonical = [np.repeat(protos[w], rng.integers(SUB_FRAMES[0], SUB_FRAMES[1] + 1,
                                                       len(protos[w])), axis=0)
                     for w in sentence]
        lengths = np.maximum(np.round([len(c) for c in canonical] * tempo).astype(np.int64),
                             MIN_WORD_FRAMES)
        gaps = rng.integers(GAP_FRAMES[0], GAP_FRAMES[1] + 1, len(sentence))
        gaps[0] = 0
        edges = rng.integers(EDGE_FRAMES[0], EDGE_FRAMES[1] + 1, 2)
        _fit(lengths, gaps, edges, max_frames)
        parts, where, at = [np.tile(silence, (edges[0], 1))], [], int(edges[0])
        for c, length, gap in zip(canonical, lengths.tolist(), gaps.tolist()):
            parts += [np.tile(silence, (gap, 1)), features.stretch_frames(c, length)]
            where.append((at + gap, at + gap + length))
            at += gap + length
        parts.append(np.tile(silence, (edges[1], 1)))
        x = np.concatenate(parts)
        x += rng.uniform(-0.5, 0.5) + rng.uniform(-0.4, 0.4) * tilt_axis  # gain, channel tilt
        x += noise * rng.standard_normal(x.shape)
        feats.append(x.astype(np.float32))
        sentences.append(sentence.tolist())
        spans.append(where)
    return feats, sentences, spans


def load_generated(task, path, val_fraction, test_fraction, seed, n: int = 3500,
                   words: int = 12, min_words: int = 3, max_words: int = 8, noise: float = 0.6,
                   warp: float = 0.2) -> TaskData:
    n_mels, vocab, max_frames = _model(task)
    _whole("n", n, 3)
    _whole("words", words, 2)
    _whole("min_words", min_words, 1)
    _whole("max_words", max_words, min_words)
    _number("noise", noise, 0.0, 10.0)
    _number("warp", warp, 0.0, 0.9)
    if shortest_fit(max_words) > max_frames:
        raise ConfigError(f"model.max_frames = {max_frames}: generated_speech utterances of "
                          f"data.options.max_words = {max_words} words need at least "
                          f"{shortest_fit(max_words)} frames ({MIN_WORD_FRAMES} a word); "
                          "raise model.max_frames or lower data.options.max_words")
    names = [*WORDS[:words], *(f"w{i}" for i in range(len(WORDS), words))]
    units = Units(names, " ")
    _check_vocab(units, vocab)
    feats, sentences, _ = generate_speech(seed, n, n_mels, max_frames, words, min_words,
                                          max_words, noise, warp)
    labels = [[w + 2 for w in s] for s in sentences]
    return split(pack(feats, labels), val_fraction, test_fraction, seed, tokenizer=units)


# ---- wav_folder and parquet_speech -----------------------------------------------------
def _build(feats, texts, kind, task, val_fraction, test_fraction, seed, normalise: bool
           ) -> TaskData:
    """Units from the training split's ``texts``, and the split datasets."""
    cuts = split_indices(len(feats), val_fraction, test_fraction, seed)
    units = Units.from_texts([texts[i] for i in cuts[0].tolist()], kind)
    _check_vocab(units, task.model["vocab_size"])
    tensors = pack(feats, [units.encode(t) for t in texts])
    if normalise and len(cuts[0]):
        x, lengths = tensors["feats"][cuts[0]], tensors["feat_lengths"][cuts[0]]
        valid = torch.arange(x.shape[1])[None] < lengths[:, None]
        frames = x[valid].double()
        mean, std = frames.mean(0), frames.std(0, correction=0).clamp(min=1e-5)
        mask = torch.arange(tensors["feats"].shape[1])[None] < tensors["feat_lengths"][:, None]
        tensors["feats"] = ((tensors["feats"] - mean.float()) / std.float()) * mask[..., None]
    return _datasets(tensors, cuts, units, val_fraction, test_fraction)


def load_wav_folder(task, path, val_fraction, test_fraction, seed,
                    transcripts: str = "transcripts.txt", sample_rate: int = 16000,
                    units: str = "char", frame_shift_ms: float = 10,
                    frame_length_ms: float = 25) -> TaskData:
    n_mels, _, max_frames = _model(task)
    kind = _kind(units)
    _whole("sample_rate", sample_rate, 1000)
    _number("frame_shift_ms", frame_shift_ms, 0.1, 1000.0)
    _number("frame_length_ms", frame_length_ms, 0.1, 1000.0)
    try:
        features.frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    except ValueError as exc:
        raise ConfigError(f"data.options.frame_length_ms = {frame_length_ms}, "
                          f"data.options.frame_shift_ms = {frame_shift_ms}: {exc}") from None
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"data.path = {str(path)!r}: wav_folder needs a folder of .wav files")
    file = root / transcripts
    if not file.is_file():
        raise ConfigError(f"data.options.transcripts = {transcripts!r}: no file {file}")
    pairs = features.match_transcripts(root, file)
    feats, labels = [], []
    for p, text in pairs:
        samples, rate = features.read_wav(p)
        if rate != sample_rate:
            raise ConfigError(f"{p}: recorded at {rate} Hz, data.options.sample_rate is "
                              f"{sample_rate} Hz (raynas does not resample)")
        frames = features.n_frames(len(samples), rate, frame_length_ms, frame_shift_ms)
        if not 1 <= frames <= max_frames:
            raise ConfigError(f"{p}: {frames} frames of {frame_shift_ms} ms, model.max_frames "
                              f"is {max_frames}; each file needs 1..{max_frames}")
        feats.append(features.log_mel(torch.from_numpy(samples), rate, n_mels,
                                      frame_length_ms, frame_shift_ms).numpy())
        labels.append(text)
    return _build(feats, labels, kind, task, val_fraction, test_fraction, seed, True)


def load_parquet_speech(task, path, val_fraction, test_fraction, seed,
                        features_column: str = "features", text_column: str = "text",
                        units: str = "char") -> TaskData:
    import pyarrow as pa
    import pyarrow.compute as pc

    from raynas.tasks.mlm import read_parquet, string_column

    n_mels, _, max_frames = _model(task)
    kind = _kind(units)
    table = read_parquet(path)
    texts = string_column(table, "text_column", text_column, path, "speech_recognition")
    if features_column not in table.column_names:
        raise ConfigError(f"data.options.features_column = {features_column!r}: not a column "
                          f"of {path}; columns: {', '.join(table.column_names[:20])}")
    col = table.column(features_column).combine_chunks()
    lists = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    number = None
    if any(f(col.type) for f in lists) and any(f(col.type.value_type) for f in lists):
        number = col.type.value_type.value_type
    if number is None or not (pa.types.is_floating(number) or pa.types.is_integer(number)):
        raise ConfigError(f"data.options.features_column = {features_column!r}: a column of "
                          f"{col.type}; speech_recognition needs lists of frames, each a list "
                          "of n_mels numbers")
    frames = pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int64)
    inner = col.flatten()
    dims = pc.fill_null(pc.list_value_length(inner), 0).to_numpy()
    rows = np.repeat(np.arange(len(col)), frames)
    where = f"data.path = {str(path)!r}"
    no_text = np.array([t is None for t in texts], dtype=bool)
    bad = np.flatnonzero(no_text | (frames < 1) | (frames > max_frames))
    if len(bad):
        i = int(bad[0])
        got = "no text" if no_text[i] else f"{frames[i]} frames"
        raise ConfigError(f"{where}: row {i} has {got}; each row needs a text and "
                          f"1..{max_frames} (model.max_frames) frames")
    bad = np.flatnonzero(dims != n_mels)
    if len(bad):
        raise ConfigError(f"{where}: row {rows[bad[0]]} has a frame of {dims[bad[0]]} "
                          f"numbers, model.n_mels is {n_mels}")
    values = inner.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    if np.isnan(values).any():
        raise ConfigError(f"{where}: row {rows[np.flatnonzero(np.isnan(values))[0] // n_mels]} "
                          "has a missing or NaN feature value")
    stacked = values.reshape(-1, n_mels)
    feats = np.split(stacked, np.cumsum(frames)[:-1])
    return _build(feats, [" ".join(t.split()) for t in texts], kind, task, val_fraction,
                  test_fraction, seed, False)


DATASETS.register("generated_speech", DatasetEntry("speech_recognition", load_generated))
DATASETS.register("wav_folder", DatasetEntry("speech_recognition", load_wav_folder,
                                             needs_path=True))
DATASETS.register("parquet_speech", DatasetEntry("speech_recognition", load_parquet_speech,
                                                 needs_path=True))

"""``speech_recognition``: frames of an utterance in, its transcript out, trained with CTC.

Batches: ``feats`` (float32, ``(n, T, model.n_mels)``, zero after each utterance's end),
``feat_lengths`` (int64, ``(n,)``), ``labels`` (int64, ``(n, U)``: unit ids, 0-padded) and
``label_lengths`` (int64, ``(n,)``). Unit 0 is CTC's blank. The model takes ``feats`` and
``feat_lengths`` and returns logits per encoder frame ``(n, T', model.vocab_size)``; encoder
frame counts follow the Conformer front end (``raynas.nn.conformer.subsampled_lengths``,
about T / 4), and frames past them count in no loss and no metric.

Loss: ``F.ctc_loss`` summed over the batch and divided by its utterances (WeNet's
normalisation); label smoothing does not apply to CTC. In-place distillation hands students
the teacher's per-frame posteriors (TODM's CTC-side option), real frames only.

Metrics: ``wer`` (min: word errors over reference words, by jiwer, of greedy CTC decoding:
the best unit per frame, repeats merged, blanks dropped) and ``loss`` (min: CTC loss per
utterance). Words are the transcript's words when the data's tokenizer (``Units``) is known,
else each unit id is a word (the generated task's units are words already).

Example inputs (timing, FLOPs, export): ``model.latency_frames`` frames (default
``max_frames``), each row after the first ending at a random length; time is a dynamic axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raynas.errors import ConfigError
from raynas.nn.conformer import MIN_FRAMES, subsampled_lengths
from raynas.tasks import TASKS
from raynas.tasks.base import Metric, Task, TaskData

BLANK = 0


def greedy_ctc(logits: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Greedy CTC decoding of ``logits`` (n, T', V) with ``lengths`` real frames: per row, the
    best unit of each frame, runs merged, blanks dropped."""
    best = logits.argmax(-1).cpu()
    out = []
    for row, n in zip(best, lengths.tolist()):
        ids = torch.unique_consecutive(row[:n]).tolist()
        out.append([i for i in ids if i != BLANK])
    return out


def ctc_frames_needed(labels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The fewest frames a CTC alignment of each row needs: its units plus a blank between
    each pair of equal neighbours."""
    pos = torch.arange(labels.shape[1])
    inside = pos.unsqueeze(0) < lengths.unsqueeze(1)
    repeats = (labels[:, 1:] == labels[:, :-1]) & inside[:, 1:]
    return lengths + repeats.sum(1)


@TASKS.register("speech_recognition")
class SpeechRecognition(Task):
    name = "speech_recognition"
    input_names = ("feats", "feat_lengths")
    metrics = (Metric("wer", "min", "word error rate of greedy CTC decoding (jiwer)"),
               Metric("loss", "min", "CTC loss per utterance"))

    def __init__(self, model):
        super().__init__(model)
        for key in ("n_mels", "vocab_size", "max_frames"):
            v = self.model.get(key)
            if isinstance(v, bool) or not (isinstance(v, int) and v > 1):
                raise ConfigError(f"task 'speech_recognition': model.{key} must be a whole "
                                  f"number above 1, got {v!r}")
        frames = self.model.get("latency_frames", self.model["max_frames"])
        if isinstance(frames, bool) or not (isinstance(frames, int)
                                            and MIN_FRAMES <= frames <= self.model["max_frames"]):
            raise ConfigError(f"task 'speech_recognition': model.latency_frames = {frames!r}; "
                              f"a whole number from {MIN_FRAMES} to model.max_frames")
        self.latency_frames = frames
        self.tokenizer = None  # the data's Units: unit ids back to text

    # ---- training ----------------------------------------------------------------------
    @staticmethod
    def frames(batch) -> torch.Tensor:
        """Encoder frames per utterance of ``batch``."""
        return subsampled_lengths(batch["feat_lengths"])

    def _ctc(self, out, batch, reduction: str) -> torch.Tensor:
        logp = out.float().log_softmax(-1).transpose(0, 1)  # (T', n, V)
        return F.ctc_loss(logp, batch["labels"], self.frames(batch), batch["label_lengths"],
                          blank=BLANK, reduction=reduction, zero_infinity=True)

    def loss(self, out, batch, label_smoothing: float = 0.0):
        return self._ctc(out, batch, "sum") / out.shape[0]

    def distill_mask(self, batch):
        t = subsampled_lengths(batch["feats"].shape[1])  # encoder frames of the batch
        pos = torch.arange(t, device=batch["feats"].device)
        return pos.unsqueeze(0) < self.frames(batch).unsqueeze(1)

    # ---- judging -----------------------------------------------------------------------
    def texts(self, ids: list[list[int]]) -> list[str]:
        if self.tokenizer is not None:
            return [self.tokenizer.decode(row) for row in ids]
        return [" ".join(map(str, row)) for row in ids]

    def transcribe(self, out: torch.Tensor, batch) -> list[str]:
        """The greedy CTC transcripts of model output ``out`` for ``batch``."""
        return self.texts(greedy_ctc(out, self.frames(batch)))

    def _word_errors(self, out, batch) -> tuple[torch.Tensor, torch.Tensor]:
        import jiwer

        hyps = self.transcribe(out, batch)
        refs = self.texts([row[:n] for row, n in zip(batch["labels"].tolist(),
                                                      batch["label_lengths"].tolist())])
        errors, words = [], []
        for ref, hyp in zip(refs, hyps):
            o = jiwer.process_words(ref, hyp)
            errors.append(o.substitutions + o.deletions + o.insertions)
            words.append(o.substitutions + o.deletions + o.hits)
        return (torch.tensor(errors, dtype=torch.float64),
                torch.tensor(words, dtype=torch.float64))

    def sample_sums(self, out, batch):
        errors, words = self._word_errors(out, batch)
        loss = self._ctc(out, batch, "none").double().cpu()
        return {"wer": (errors, words), "loss": (loss, torch.ones_like(loss))}

    def metric_sums(self, out, batch):
        return {k: (float(s.sum()), float(n.sum()))
                for k, (s, n) in self.sample_sums(out, batch).items()}

    # ---- timing and export -------------------------------------------------------------
    def example_inputs(self, batch_size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        t = self.latency_frames
        feats = torch.randn(batch_size, t, self.model["n_mels"], generator=g)
        lengths = torch.randint(MIN_FRAMES, t + 1, (batch_size,), generator=g)
        lengths[0] = t
        feats = feats * (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
        return {"feats": feats, "feat_lengths": lengths}

    def dynamic_axes(self):
        return {"feats": {0: "batch", 1: "time"}, "feat_lengths": {0: "batch"}}

    # ---- data --------------------------------------------------------------------------
    def check_data(self, data: TaskData) -> None:
        m = self.model
        for split_name, split in zip(("train", "val", "test"), (data.train, data.val,
                                                                 data.test)):
            t = split.tensors
            if t["feats"].shape[2] != m["n_mels"]:
                raise ConfigError(f"data: {t['feats'].shape[2]} features per frame, the "
                                  f"space's model.n_mels is {m['n_mels']}")
            longest, shortest = int(t["feat_lengths"].max()), int(t["feat_lengths"].min())
            if longest > m["max_frames"] or shortest < MIN_FRAMES:
                raise ConfigError(f"data: utterances of {shortest}..{longest} frames; the "
                                  f"space takes {MIN_FRAMES}..{m['max_frames']} "
                                  "(model.max_frames)")
            if int(t["labels"].max()) >= m["vocab_size"]:
                raise ConfigError(f"data: unit id {int(t['labels'].max())} >= the space's "
                                  f"model.vocab_size {m['vocab_size']}")
            short = subsampled_lengths(t["feat_lengths"]) < ctc_frames_needed(
                t["labels"], t["label_lengths"])
            if bool(short.any()):
                raise ConfigError(f"data: {int(short.sum())} {split_name} utterances have "
                                  "fewer encoder frames (frames / 4) than CTC needs for "
                                  "their transcripts; use shorter units or fewer per frame")
        self.tokenizer = data.tokenizer

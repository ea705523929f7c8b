"""The data side of speech recognition: units (raynas.tasks.speech_data.Units), packing and
cutting, the generated task, log-mel features and WAV reading (raynas.tasks.features), and
the ``wav_folder`` and ``parquet_speech`` loaders on small files."""

from __future__ import annotations

import json
import types
import wave

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy.io import wavfile

from raynas.errors import ConfigError
from raynas.tasks import DATASETS
from raynas.tasks import features as FT
from raynas.tasks import speech_data as SD

RATE = 16000
MODEL = {"n_mels": 20, "vocab_size": 40, "max_frames": 400}


def task(**model):
    return types.SimpleNamespace(model={**MODEL, **model}, name="speech_recognition")


def tone(freq: float, seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t)


def write_pcm(path, samples: np.ndarray, rate: int = RATE, width: int = 2) -> None:
    """``samples`` (S,) or (S, channels) in [-1, 1] as a PCM WAV of ``width`` bytes."""
    data = samples.reshape(len(samples), -1)
    if width == 1:
        raw = np.round(data * 127 + 128).astype(np.uint8).tobytes()
    else:
        ints = np.round(data * (2 ** (8 * width - 1) - 1)).astype("<i4")
        raw = ints.view(np.uint8).reshape(*ints.shape, 4)[..., :width].tobytes()
    with wave.open(str(path), "wb") as f:
        f.setnchannels(data.shape[1])
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(raw)


# ---- units ------------------------------------------------------------------------------
def test_char_units_round_trip_with_space_and_unknown():
    units = SD.Units.from_texts(["ab c", "cab"], "char")
    assert units.tokens == ["<blank>", "<unk>", " ", "a", "b", "c"]
    assert len(units) == 6
    assert units.encode("cab a") == [5, 3, 4, 2, 3]
    assert units.decode(units.encode("cab a")) == "cab a"
    assert units.encode("abz") == [3, 4, 1]
    assert units.decode([0, 3, 0, 0, 4, 1]) == "ab<unk>"


def test_word_units_round_trip_and_json():
    units = SD.Units.from_texts(["two one", "one  three"], "word")
    assert units.units == ["one", "three", "two"]
    assert units.encode("one two  seven") == [2, 4, 1]
    assert units.decode([4, 0, 2, 3]) == "two one three"
    again = SD.Units.from_dict(json.loads(json.dumps(units.to_dict())))
    assert again == units and again.encode("three") == [3]
    assert SD.Units(["a", "b"], "") != SD.Units(["a", "b"], " ")


@pytest.mark.parametrize("units, joiner", [(["a", "a"], ""), (["ab"], ""), (["a b"], " "),
                                           (["<unk>"], " ")])
def test_units_refuse_ambiguous_units(units, joiner):
    with pytest.raises(ValueError):
        SD.Units(units, joiner)


# ---- packing and batches ----------------------------------------------------------------
def test_pack_pads_and_a_batch_is_cut_to_its_longest():
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((t, 3)).astype(np.float32) for t in (5, 9, 2)]
    labels = [[2, 3], [4, 5, 6, 7], [2]]
    tensors = SD.pack(feats, labels)
    assert tensors["feats"].shape == (3, 9, 3) and tensors["feats"].dtype == torch.float32
    assert tensors["labels"].shape == (3, 4) and tensors["labels"].dtype == torch.int64
    assert tensors["feat_lengths"].tolist() == [5, 9, 2]
    assert tensors["label_lengths"].tolist() == [2, 4, 1]
    assert torch.equal(tensors["feats"][0, :5], torch.from_numpy(feats[0]))
    assert tensors["feats"][0, 5:].abs().sum() == 0 and tensors["labels"][0, 2:].sum() == 0
    ds = SD.SpeechDataset(tensors)
    batch = ds.__getitems__([2, 0])
    assert batch["feats"].shape == (2, 5, 3) and batch["labels"].shape == (2, 2)
    assert torch.equal(batch["feats"][1], torch.from_numpy(feats[0]))
    assert batch["labels"].tolist() == [[2, 0], [2, 3]]
    assert batch["feat_lengths"].tolist() == [2, 5]
    assert ds.__getitems__([1])["feats"].shape == (1, 9, 3)


def test_split_is_seeded_disjoint_and_complete():
    feats = [np.full((i % 4 + 1, 2), i, dtype=np.float32) for i in range(20)]
    tensors = SD.pack(feats, [[2]] * 20)

    def ids(seed):
        data = SD.split(tensors, 0.2, 0.1, seed, tokenizer="tok")
        assert data.tokenizer == "tok"
        return [d.tensors["feats"][:, 0, 0].long().tolist()
                for d in (data.train, data.val, data.test)]

    assert [len(i) for i in ids(3)] == [14, 4, 2]
    assert sorted(sum(ids(3), [])) == list(range(20))
    assert ids(3) == ids(3) and ids(3) != ids(4)


# ---- generated_speech -------------------------------------------------------------------
@pytest.mark.parametrize("max_frames", [400, 96])
def test_generated_is_deterministic_per_seed_and_within_bounds(max_frames):
    load = DATASETS.get("generated_speech").load
    a = load(task(max_frames=max_frames), None, 0.1, 0.1, 0, n=200)
    b = load(task(max_frames=max_frames), None, 0.1, 0.1, 0, n=200)
    c = load(task(max_frames=max_frames), None, 0.1, 0.1, 1, n=200)
    assert torch.equal(a.train.tensors["feats"], b.train.tensors["feats"])
    assert not torch.equal(a.train.tensors["feats"][:5, :20], c.train.tensors["feats"][:5, :20])
    assert a.tokenizer.units[:3] == ["zero", "one", "two"] and len(a.tokenizer) == 14
    longest = 0
    for d in (a.train, a.val, a.test):
        t = d.tensors
        assert t["feats"].shape[2] == 20
        longest = max(longest, int(t["feat_lengths"].max()))
        assert 3 <= int(t["label_lengths"].min()) and int(t["label_lengths"].max()) <= 8
        valid = torch.arange(t["labels"].shape[1])[None] < t["label_lengths"][:, None]
        assert int(t["labels"][valid].min()) >= 2 and int(t["labels"][valid].max()) < 14
        assert int(t["labels"][~valid].abs().sum()) == 0
        # CTC after 4x subsampling: a frame per word and a blank between repeats fit
        encoder = ((t["feat_lengths"] - 1) // 2 - 1) // 2
        assert bool((encoder >= 2 * t["label_lengths"] - 1).all())
    assert longest <= max_frames
    if max_frames == 96:  # long sentences were spoken faster to fit, not cut
        assert longest == 96
    text = a.tokenizer.decode(a.train.tensors["labels"][0].tolist())
    assert 3 <= len(text.split()) <= 8


@pytest.mark.parametrize("max_frames", [400, 80])
def test_generated_words_are_distinguishable_but_noisy(max_frames):
    feats, sentences, spans = SD.generate_speech(5, 300, 20, max_frames)
    assert all(e - s >= SD.MIN_WORD_FRAMES for sp in spans for s, e in sp)
    assert all(sp[-1][1] < len(f) <= max_frames for f, sp in zip(feats, spans))
    x = np.array([f[s:e].mean(0) for f, sp in zip(feats, spans) for s, e in sp])
    y = np.array([w for s in sentences for w in s])
    assert sorted(set(y.tolist())) == list(range(12))
    half = len(x) // 2
    means = np.stack([x[:half][y[:half] == k].mean(0) for k in range(12)])
    guess = ((x[half:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (guess == y[half:]).mean() > 0.6  # chance: 1 / 12
    clean, _, _ = SD.generate_speech(5, 300, 20, max_frames, noise=0.0)
    residual = np.concatenate([(f - g).ravel() for f, g in zip(feats, clean)])
    assert abs(residual.std() - 0.6) < 0.02
    # tempo warping: one word's occurrences take different numbers of frames
    lengths = [e - s for sp, sent in zip(spans, sentences) for (s, e), w in zip(sp, sent)
               if w == 0]
    assert max(lengths) - min(lengths) >= 4


def test_generated_errors_name_the_setting():
    load = SD.load_generated
    with pytest.raises(ConfigError, match="model.vocab_size = 10"):
        load(task(vocab_size=10), None, 0.1, 0.1, 0, n=10)
    with pytest.raises(ConfigError, match="model.max_frames = 60.*data.options.max_words"):
        load(task(max_frames=60), None, 0.1, 0.1, 0, n=10)
    assert load(task(max_frames=60), None, 0.2, 0.2, 0, n=10, max_words=7).train
    with pytest.raises(ConfigError, match="data.options.max_words = 2"):
        load(task(), None, 0.1, 0.1, 0, n=10, max_words=2)
    with pytest.raises(ConfigError, match="model.n_mels"):
        load(types.SimpleNamespace(model={"vocab_size": 40}), None, 0.1, 0.1, 0)


# ---- features ---------------------------------------------------------------------------
def test_mel_filterbank_shape_and_htk_centres():
    fb = FT.mel_filterbank(20, 512, RATE)
    assert fb.shape == (20, 257) and float(fb.min()) >= 0 and float(fb.max()) <= 1
    mel = 2595 * np.log10(1 + np.array([0.0, RATE / 2]) / 700)
    expect = 700 * (10 ** (np.linspace(mel[0], mel[1], 22)[1:-1] / 2595) - 1)
    assert np.allclose(FT.mel_centres(20, RATE), expect)
    peaks = (fb.argmax(1).numpy() * RATE / 512)
    assert np.all(np.abs(peaks - expect) <= RATE / 512)


@pytest.mark.parametrize("k, offset", [(3, 0.0), (9, 0.2), (16, -0.25)])
def test_a_tone_peaks_in_the_mel_bin_nearest_its_frequency(k, offset):
    centres = FT.mel_centres(20, RATE)
    gap = centres[k + 1] - centres[k] if offset > 0 else centres[k] - centres[k - 1]
    freq = centres[k] + offset * gap
    feats = FT.log_mel(torch.from_numpy(tone(freq, 0.3)), RATE, 20)
    assert int(feats.mean(0).argmax()) == int(np.abs(centres - freq).argmin()) == k


@pytest.mark.parametrize("n, shift, length", [(4000, 10, 25), (4399, 10, 25), (400, 10, 25),
                                              (8000, 12.5, 32)])
def test_log_mel_frame_count(n, shift, length):
    win, hop = round(RATE * length / 1000), round(RATE * shift / 1000)
    feats = FT.log_mel(torch.randn(n), RATE, 20, length, shift)
    assert feats.shape == (1 + (n - win) // hop, 20) == (FT.n_frames(n, RATE, length, shift), 20)
    assert torch.isfinite(feats).all()
    with pytest.raises(ValueError):
        FT.log_mel(torch.randn(win - 1), RATE, 20, length, shift)


def test_read_wav_formats(tmp_path):
    x = tone(440, 0.05)
    write_pcm(tmp_path / "a.wav", x)
    write_pcm(tmp_path / "b.wav", x, width=1)
    write_pcm(tmp_path / "c.wav", x, width=4)
    write_pcm(tmp_path / "d.wav", x, width=3)
    write_pcm(tmp_path / "e.wav", np.stack([x, -x + 0.2], 1))
    wavfile.write(tmp_path / "f.wav", 8000, x.astype(np.float32))
    for name, tol in (("a", 1e-4), ("b", 1e-2), ("c", 1e-6), ("d", 1e-5), ("f", 1e-7)):
        got, rate = FT.read_wav(tmp_path / f"{name}.wav")
        assert got.dtype == np.float32 and np.abs(got - x).max() < tol, name
        assert rate == (8000 if name == "f" else RATE)
    got, _ = FT.read_wav(tmp_path / "e.wav")
    assert np.abs(got - 0.1).max() < 1e-4
    (tmp_path / "g.wav").write_bytes(b"not a wav")
    with pytest.raises(ConfigError, match="g.wav"):
        FT.read_wav(tmp_path / "g.wav")


# ---- wav_folder -------------------------------------------------------------------------
def wav_folder(tmp_path, lines=None):
    """Five files: 16-bit mono, a stereo one, a float one (scipy), one in a sub-folder."""
    (tmp_path / "sub").mkdir()
    write_pcm(tmp_path / "u1.wav", tone(300, 0.3))
    write_pcm(tmp_path / "u2.wav", tone(1200, 0.5))
    write_pcm(tmp_path / "u3.wav", np.stack([tone(700, 0.4), tone(700, 0.4)], 1))
    wavfile.write(tmp_path / "u4.wav", RATE, tone(2500, 0.35).astype(np.float32))
    write_pcm(tmp_path / "sub" / "u5.wav", tone(500, 0.2))
    lines = lines if lines is not None else [
        "u1 a cab", "u2  bad   cab", "u3.wav\tdab bad", "u4 ab", "sub/u5 cad"]
    (tmp_path / "transcripts.txt").write_text("\n".join(lines) + "\n\n")
    return tmp_path


def test_wav_folder_end_to_end(tmp_path):
    root = wav_folder(tmp_path)
    load = DATASETS.get("wav_folder").load
    assert DATASETS.get("wav_folder").needs_path
    data = load(task(), root, 0.2, 0.2, 0)
    splits = (data.train, data.val, data.test)
    assert [len(s) for s in splits] == [3, 1, 1]
    units = data.tokenizer
    assert units.joiner == "" and all(len(u) == 1 for u in units.units)
    # each file got its own transcript (told apart by its length): whitespace collapsed, and
    # characters the training split lacks as <unk>
    expect = {1 + (int(d * RATE) - 400) // 160: text for d, text in (
        (.3, "a cab"), (.5, "bad cab"), (.4, "dab bad"), (.35, "ab"), (.2, "cad"))}
    seen = {}
    for s in splits:
        for i in range(len(s)):
            ids = s.tensors["labels"][i, :int(s.tensors["label_lengths"][i])].tolist()
            seen[int(s.tensors["feat_lengths"][i])] = (ids, s is data.train)
    assert sorted(seen) == sorted(expect)
    for frames, (ids, train) in seen.items():
        text = expect[frames]
        assert len(ids) == len(text)
        assert all(i == units.encode(c)[0] for i, c in zip(ids, text))
        if train:
            assert units.decode(ids) == text and 1 not in ids
    # normalised by the training split: its valid frames have mean 0 and std 1 per mel bin
    t = data.train.tensors
    valid = torch.arange(t["feats"].shape[1])[None] < t["feat_lengths"][:, None]
    frames = t["feats"][valid]
    assert torch.allclose(frames.mean(0), torch.zeros(20), atol=1e-4)
    assert torch.allclose(frames.std(0, correction=0), torch.ones(20), atol=1e-3)
    assert t["feats"][~valid].abs().sum() == 0
    words = load(task(), root, 0.2, 0.2, 0, units="word").tokenizer
    assert words.joiner == " " and set(words.units) <= {"a", "cab", "bad", "dab", "ab", "cad"}


def test_wav_folder_empty_split_error(tmp_path):
    with pytest.raises(ConfigError, match=r"validation split of 5 .* is empty.*val_fraction"):
        SD.load_wav_folder(task(), wav_folder(tmp_path), 0.0, 0.2, 0)


@pytest.mark.parametrize("lines, message", [
    (["u1 a", "u2 b", "u3 c", "u4 d"], r"no transcript for sub/u5.wav"),
    (["u1 a", "u2 b", "u3 c", "u4 d", "u5 e", "u9 f"], r"no .wav file for .*u9"),
    (["u1 a", "u1 b"], r"line 2 .*'u1' a second"),
])
def test_wav_folder_transcript_errors(tmp_path, lines, message):
    with pytest.raises(ConfigError, match=message):
        SD.load_wav_folder(task(), wav_folder(tmp_path, lines), 0.2, 0.2, 0)


def test_wav_folder_rate_length_and_vocab_errors(tmp_path):
    root = wav_folder(tmp_path)
    with pytest.raises(ConfigError, match=r"u2.wav: 48 frames .*model.max_frames is 40"):
        SD.load_wav_folder(task(max_frames=40), root, 0.2, 0.2, 0)
    with pytest.raises(ConfigError, match=r"model.vocab_size = 5: the data has \d+ units"):
        SD.load_wav_folder(task(vocab_size=5), root, 0.2, 0.2, 0)
    with pytest.raises(ConfigError, match="data.options.units = 'bpe'"):
        SD.load_wav_folder(task(), root, 0.2, 0.2, 0, units="bpe")
    with pytest.raises(ConfigError, match="data.options.transcripts = 'text'"):
        SD.load_wav_folder(task(), root, 0.2, 0.2, 0, transcripts="text")
    write_pcm(root / "u1.wav", tone(300, 0.3), rate=8000)
    with pytest.raises(ConfigError, match=r"u1.wav: recorded at 8000 Hz.*16000 Hz"):
        SD.load_wav_folder(task(), root, 0.2, 0.2, 0)


# ---- parquet_speech ---------------------------------------------------------------------
def speech_parquet(path, n_mels=20, rows=6):
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((5 + 3 * i, n_mels)).round(3).tolist() for i in range(rows)]
    texts = ["one two", "two", "three one", "one", "two two", "three"][:rows]
    pq.write_table(pa.table({"features": feats, "text": texts}), path)
    return feats, texts


def test_parquet_speech_end_to_end(tmp_path):
    feats, texts = speech_parquet(tmp_path / "s.parquet")
    assert DATASETS.get("parquet_speech").needs_path
    data = SD.load_parquet_speech(task(), tmp_path / "s.parquet", 1 / 6, 1 / 6, 0,
                                  units="word")
    seen = {}
    for split in (data.train, data.val, data.test):
        t = split.tensors
        for i in range(len(split)):
            n = int(t["feat_lengths"][i])
            seen[n] = (t["feats"][i, :n], data.tokenizer.decode(t["labels"][i]))
    assert sorted(seen) == [len(f) for f in feats]
    for f, text in zip(feats, texts):
        got, decoded = seen[len(f)]
        assert torch.allclose(got, torch.tensor(f, dtype=torch.float32))  # used as they are
        assert decoded.replace("<unk>", "?").count(" ") == text.count(" ")


def test_parquet_speech_errors(tmp_path):
    speech_parquet(tmp_path / "s.parquet", n_mels=13)
    with pytest.raises(ConfigError, match=r"row 0 has a frame of 13 numbers, model.n_mels is 20"):
        SD.load_parquet_speech(task(), tmp_path / "s.parquet", 0.2, 0.2, 0)
    with pytest.raises(ConfigError, match=r"row 5 has 20 frames.*1..19"):
        SD.load_parquet_speech(task(n_mels=13, max_frames=19), tmp_path / "s.parquet",
                               0.2, 0.2, 0)
    with pytest.raises(ConfigError, match="data.options.features_column = 'feats'"):
        SD.load_parquet_speech(task(), tmp_path / "s.parquet", 0.2, 0.2, 0,
                               features_column="feats")
    pq.write_table(pa.table({"features": [[1.0, 2.0]], "text": ["a"]}), tmp_path / "f.parquet")
    with pytest.raises(ConfigError, match="lists of frames"):
        SD.load_parquet_speech(task(), tmp_path / "f.parquet", 0.2, 0.2, 0)


def test_a_wav_folder_trains_a_conformer_through_the_task(tmp_path, repo_root):
    """Users' files as a job loads them: ``load_task_data`` with the conformer space's own
    task (its checks), batches cut to their longest, and a CTC step of the supernet."""
    from raynas.space import SearchSpace
    from raynas.supernets import create_supernet
    from raynas.tasks import build_task, load_task_data, make_loader

    space = SearchSpace.load(repo_root / "search_spaces" / "conformer_tiny.yaml")
    real = build_task(space)  # n_mels 20, vocab 16, up to 96 frames (0.97 s)
    for i, (f, text) in enumerate([(300, "ab"), (900, "ba"), (1500, "abc"), (600, "cab"),
                                   (2000, "a b"), (400, "bc")]):
        write_pcm(tmp_path / f"u{i}.wav", tone(f, 0.3 + 0.1 * (i % 4)))
        with (tmp_path / "transcripts.txt").open("a") as fh:
            fh.write(f"u{i} {text}\n")
    data = load_task_data(real, {"name": "wav_folder", "path": str(tmp_path),
                                 "val_fraction": 0.2, "test_fraction": 0.2})
    assert real.tokenizer is data.tokenizer  # WER decodes through the data's units
    batch = next(iter(make_loader(data.train, 4)))
    assert batch["feats"].shape[1] == int(batch["feat_lengths"].max())
    net = create_supernet(space)
    loss = real.loss(net(*real.inputs(batch)), batch)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    too_long = tmp_path / "long"
    too_long.mkdir()
    write_pcm(too_long / "x.wav", tone(500, 1.5))
    (too_long / "transcripts.txt").write_text("x ab\n")
    with pytest.raises(ConfigError, match="x.wav: 148 frames .* model.max_frames is 96"):
        load_task_data(real, {"name": "wav_folder", "path": str(too_long)})

"""Audio in, speech features out: WAV files as samples, their transcripts, and log-mel
filterbank frames.

``read_wav`` gives a file's samples as float32 in ``[-1, 1]`` (channels mixed down to mono)
and its sample rate: 8-bit (unsigned), 16-, 24- and 32-bit PCM through the standard
library's ``wave``; float WAVs (which ``wave`` refuses) through ``scipy.io.wavfile``.

``log_mel`` turns samples into ``(frames, n_mels)`` log-mel filterbank energies, in plain
torch (no torchaudio): pre-emphasis (``x[t] - 0.97 x[t-1]``, as Kaldi and HTK do by default;
0 turns it off), frames of ``frame_length_ms`` every ``frame_shift_ms`` with no padding at
either end (``1 + (S - win) // hop`` frames), a Hann window, the power spectrum of an FFT of
the next power of two at or above the window, the triangular filters of ``mel_filterbank``
(HTK mel scale, ``2595 log10(1 + f / 700)``, peaks of 1, no area normalisation) and
``log(energy + 1e-6)``.

``match_transcripts`` pairs the ``.wav`` files of a folder with the lines of a transcript
file (Kaldi ``text`` style ``<utterance id> <text>``, or ``<file name>\\t<text>``).
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import torch

from raynas.errors import ConfigError

LOG_FLOOR = 1e-6
PREEMPHASIS = 0.97


def hz_to_mel(f):
    """The HTK mel of ``f`` Hz (a number or an array)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    """The frequency in Hz of HTK mel ``m`` (a number or an array)."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_centres(n_mels: int, sample_rate: int, f_min: float = 0.0,
                f_max: float | None = None) -> np.ndarray:
    """The centre frequencies (Hz) of ``mel_filterbank``'s ``n_mels`` filters."""
    return _mel_points(n_mels, sample_rate, f_min, f_max)[1:-1]


def _mel_points(n_mels: int, sample_rate: int, f_min: float, f_max: float | None
                ) -> np.ndarray:
    f_max = sample_rate / 2 if f_max is None else f_max
    if n_mels < 1:
        raise ValueError(f"n_mels = {n_mels}: must be at least 1")
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"f_min = {f_min}, f_max = {f_max}: need 0 <= f_min < f_max <= "
                         f"{sample_rate / 2} (half the sample rate)")
    return mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular filters ``(n_mels, n_fft // 2 + 1)`` over the bins of an ``n_fft``-point
    power spectrum: filter ``k`` rises from point ``k`` to 1 at point ``k + 1`` and falls to
    0 at point ``k + 2`` of ``n_mels + 2`` points equally spaced on the HTK mel scale from
    ``f_min`` to ``f_max`` (default: half the sample rate), linear in Hz between them."""
    points = _mel_points(n_mels, sample_rate, f_min, f_max)
    bins = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    lower, centre, upper = points[:-2, None], points[1:-1, None], points[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    weights = np.clip(np.minimum(rising, falling), 0.0, None)
    return torch.from_numpy(weights.astype(np.float32))


def frame_sizes(sample_rate: int, frame_length_ms: float, frame_shift_ms: float
                ) -> tuple[int, int]:
    """The window and hop in samples of frames of ``frame_length_ms`` every
    ``frame_shift_ms``."""
    win = int(round(sample_rate * frame_length_ms / 1000))
    hop = int(round(sample_rate * frame_shift_ms / 1000))
    if win < 2 or hop < 1:
        raise ValueError(f"frames of {frame_length_ms} ms every {frame_shift_ms} ms at "
                         f"{sample_rate} Hz are {win} samples every {hop}: need at least 2 "
                         "and 1")
    return win, hop


def n_frames(n_samples: int, sample_rate: int, frame_length_ms: float = 25,
             frame_shift_ms: float = 10) -> int:
    """How many frames ``log_mel`` makes of ``n_samples`` (0 when shorter than a window)."""
    win, hop = frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    return 0 if n_samples < win else 1 + (n_samples - win) // hop


def log_mel(samples: torch.Tensor, sample_rate: int, n_mels: int,
            frame_length_ms: float = 25, frame_shift_ms: float = 10,
            preemphasis: float = PREEMPHASIS) -> torch.Tensor:
    """Log-mel filterbank energies ``(frames, n_mels)`` of mono ``samples`` ``(S,)`` (see the
    module's docstring); ``ValueError`` when the samples are shorter than one window."""
    x = torch.as_tensor(samples, dtype=torch.float32).flatten()
    win, hop = frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    if len(x) < win:
        raise ValueError(f"{len(x)} samples: shorter than one frame ({win} samples, "
                         f"{frame_length_ms} ms at {sample_rate} Hz)")
    if preemphasis:
        x = torch.cat([x[:1], x[1:] - preemphasis * x[:-1]])
    n_fft = 1 << math.ceil(math.log2(win))
    # torch.stft centres a shorter window in each n_fft frame: pad so that frame i's window
    # covers samples i * hop .. i * hop + win - 1 and the count is 1 + (S - win) // hop.
    left = (n_fft - win) // 2
    x = torch.nn.functional.pad(x, (left, n_fft - win - left))
    spec = torch.stft(x, n_fft, hop_length=hop, win_length=win,
                      window=torch.hann_window(win, periodic=False), center=False,
                      return_complex=True)
    power = spec.abs().square().T  # (frames, n_fft // 2 + 1)
    fbank = mel_filterbank(n_mels, n_fft, sample_rate)
    return torch.log(power @ fbank.T + LOG_FLOOR)


def stretch_frames(frames: np.ndarray, length: int) -> np.ndarray:
    """``frames`` ``(T, dim)`` (``T >= 2``) resampled to ``length`` frames by linear
    interpolation in time: the first and last frames are kept, the rest are in between."""
    pos = np.linspace(0, len(frames) - 1, length)
    i = np.minimum(pos.astype(np.int64), len(frames) - 2)
    frac = (pos - i)[:, None]
    return frames[i] * (1 - frac) + frames[i + 1] * frac


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A WAV file's samples (float32 in ``[-1, 1]``, mono: channels averaged) and its sample
    rate; a ``ConfigError`` naming the file when it cannot be read."""
    try:
        with wave.open(str(path), "rb") as f:
            width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
            raw = f.readframes(f.getnframes())
    except (wave.Error, EOFError):
        return _read_wav_scipy(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the WAV file ({exc})") from None
    if width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        data = (np.where(value >= 1 << 23, value - (1 << 24), value) / 2.0**23).astype(
            np.float32)
    elif width == 4:
        data = (np.frombuffer(raw, dtype="<i4") / 2.0**31).astype(np.float32)
    else:
        raise ConfigError(f"{path}: {8 * width}-bit samples; raynas reads 8-, 16-, 24- and "
                          "32-bit PCM and float WAV files")
    return _mono(data[: len(data) // channels * channels].reshape(-1, channels)), rate


def _read_wav_scipy(path: str | Path) -> tuple[np.ndarray, int]:
    from scipy.io import wavfile

    try:
        rate, data = wavfile.read(str(path))
    except (ValueError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: not a readable WAV file ({reason})") from None
    if data.dtype.kind == "f":
        data = data.astype(np.float32)
    elif data.dtype == np.uint8:
        data = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype.kind == "i":
        data = (data / float(2 ** (8 * data.dtype.itemsize - 1))).astype(np.float32)
    else:
        raise ConfigError(f"{path}: samples of type {data.dtype}; raynas reads PCM and float "
                          "WAV files")
    return _mono(data.reshape(len(data), -1)), int(rate)


def _mono(data: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(data.mean(axis=1, dtype=np.float32))


def read_transcripts(file: Path) -> dict[str, str]:
    """Utterance id (a WAV file's name or path under the folder, without ``.wav``) to text
    (whitespace collapsed to single spaces), from Kaldi-style ``<id> <text>`` or
    ``<file name>\\t<text>`` lines; blank lines are skipped."""
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read the transcripts ({exc})") from None
    out: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key, _, text = line.partition("\t") if "\t" in line else line.strip().partition(" ")
        key = key.strip()
        key = key[:-4] if key.lower().endswith(".wav") else key
        if key in out:
            raise ConfigError(f"{file}: line {number} gives utterance {key!r} a second "
                              "transcript")
        out[key] = " ".join(text.split())
    return out


def match_transcripts(root: Path, file: Path) -> list[tuple[Path, str]]:
    """Each ``.wav`` file under ``root`` (sorted) with its transcript from ``file``
    (``read_transcripts``): an id is a file's path under ``root`` or, where no such path
    exists, its name (one file's only), without ``.wav``. A ``ConfigError`` names the first
    files without a transcript and the first transcripts without a file."""
    texts = read_transcripts(file)
    wavs = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
    if not wavs:
        raise ConfigError(f"data.path = {str(root)!r}: no .wav files in it")
    stems: dict[str, list[Path]] = {}
    for p in wavs:
        stems.setdefault(p.stem, []).append(p)
    known, matched = set(wavs), {}
    for key in texts:
        by_path = root / f"{key}.wav"
        found = [by_path] if by_path in known else stems.get(key, [])
        if len(found) > 1:
            raise ConfigError(f"{file}: utterance {key!r} matches {len(found)} files "
                              f"({_first(str(p.relative_to(root)) for p in found)}); give "
                              "its path under data.path instead")
        if found:
            matched[found[0]] = key
    used = set(matched.values())
    unused = [k for k in texts if k not in used]
    if unused:
        raise ConfigError(f"{file}: no .wav file for the transcripts of {_first(unused)}")
    missing = [str(p.relative_to(root)) for p in wavs if p not in matched]
    if missing:
        raise ConfigError(f"{file}: no transcript for {_first(missing)} (lines "
                          "'<file name without .wav> <text>')")
    return [(p, texts[matched[p]]) for p in wavs]


def _first(items, k: int = 5) -> str:
    items = sorted(items)
    return ", ".join(items[:k]) + (f" and {len(items) - k} more" if len(items) > k else "")

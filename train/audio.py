"""8-bit audio for SaShiMi: quantisers, a synthetic source of tones, a folder of .wav files, and the data the
recipe trains on (``data.source: audio_synthetic`` or ``audio_wav``).

Quantisers (state-spaces/s4 src/dataloaders/audio.py; 256 levels, ``Q_ZERO`` = 128 is silence), for x in [-1, 1]:

    mu-law:  y = sign(x) ln(1 + mu |x|) / ln(1 + mu),  q = floor((y + 1) / 2 * mu + 1/2),   mu = 255
             x = sign(y) ((1 + mu)^|y| - 1) / mu,        y = 2 q / mu - 1
    linear:  q = floor((x + 1) / 2 * 256) (clamped to 255),  x = q / 128 - 1

Unlike the repo, samples are not min-max scaled per clip (a clip's loudness is part of the signal); values
outside [-1, 1] are clipped.

Synthetic source: each clip is a mixture of 1..max_tones sinusoids, frequencies uniform in [f_min, f_max] Hz at
``sample_rate``, random phases and amplitudes, scaled to peak 0.9, plus Gaussian noise (sigma ``noise``); clips
are fixed windows of seq_len + 1 samples, a pure function of (seed, split).

Wav folder: 8-bit (unsigned) or 16-bit (signed) PCM through the standard library's ``wave``; channels are
averaged (downmix); a file at another rate is refused with an error naming ``data.audio.resample``, or with
``resample: true`` resampled (a moving-average low-pass when downsampling, then linear interpolation). Files
are split into train / validation / test by a hash of their name and cut into non-overlapping windows.

Bits per sample: every token is one sample, so the recipe's ``val_bpb`` (val_loss / ln 2 / bytes per token,
with 1 "byte" per token here) is the validation loss in bits per sample; 8 is the uniform 8-bit model.
"""

from __future__ import annotations

import glob
import hashlib
import math
import wave
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .batches import LMData, step_generator

Q_LEVELS = 256
Q_ZERO = 128
SPLITS = ("train", "val", "test")


# -- quantisers ---------------------------------------------------------------------------------------


def mu_law_encode(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Samples in [-1, 1] (float, any shape) -> mu-law ids in [0, 2^bits) (int64)."""
    mu = 2**bits - 1
    x = x.double().clamp(-1, 1)
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return ((y + 1) / 2 * mu + 0.5).floor().clamp(0, mu).long()


def mu_law_decode(q: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """mu-law ids -> samples in [-1, 1] (float32); ``Q_ZERO`` -> 1.1e-4 (255 levels have no exact zero)."""
    mu = 2**bits - 1
    y = q.double() / mu * 2 - 1
    return (torch.sign(y) * ((1 + mu) ** y.abs() - 1) / mu).float()


def linear_encode(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Samples in [-1, 1] -> uniform ids in [0, 2^bits) (int64); 0 -> ``Q_ZERO``."""
    levels = 2**bits
    return ((x.double().clamp(-1, 1) + 1) / 2 * levels).floor().clamp(0, levels - 1).long()


def linear_decode(q: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Uniform ids -> samples in [-1, 1) (float32); ``Q_ZERO`` -> 0."""
    return (q.double() / (2 ** (bits - 1)) - 1).float()


QUANTISERS = {"mu_law": (mu_law_encode, mu_law_decode), "linear": (linear_encode, linear_decode)}


def quantiser(kind: str):
    """(encode, decode) for ``kind`` ("mu_law" or "linear")."""
    if kind not in QUANTISERS:
        raise ValueError(f"quantization must be one of {sorted(QUANTISERS)}, got {kind!r}")
    return QUANTISERS[kind]


# -- synthetic tones -------------------------------------------------------------------------------------


def synthetic_tones(
    n: int,
    length: int,
    seed: int,
    sample_rate: int = 8000,
    f_min: float = 100.0,
    f_max: float = 1000.0,
    max_tones: int = 3,
    noise: float = 0.01,
) -> torch.Tensor:
    """n clips [n, length] (float32, in [-1, 1]) of 1..max_tones sinusoids plus noise, fixed by ``seed``."""
    if not (0 < f_min <= f_max < sample_rate / 2):
        raise ValueError(f"need 0 < f_min <= f_max < sample_rate / 2, got {f_min}, {f_max}, {sample_rate}")
    if max_tones < 1:
        raise ValueError(f"max_tones must be >= 1, got {max_tones}")
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(1, max_tones + 1, (n,), generator=g)
    freq = f_min + (f_max - f_min) * torch.rand(n, max_tones, generator=g, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(n, max_tones, generator=g, dtype=torch.float64)
    amp = (0.2 + 0.8 * torch.rand(n, max_tones, generator=g, dtype=torch.float64)) * (
        torch.arange(max_tones) < k[:, None]
    )
    t = torch.arange(length, dtype=torch.float64) / sample_rate
    out = torch.empty(n, length)
    for lo in range(0, n, 256):  # bounded memory: [256, max_tones, length] at a time
        hi = min(n, lo + 256)
        waves = torch.sin(2 * math.pi * freq[lo:hi, :, None] * t + phase[lo:hi, :, None])
        out[lo:hi] = (0.9 * (amp[lo:hi, :, None] * waves).sum(1) / amp[lo:hi].sum(1, keepdim=True)).float()
    out += noise * torch.randn(n, length, generator=g)
    return out.clamp(-1, 1)


def tone(freq: float, length: int, sample_rate: int = 8000, amplitude: float = 0.9) -> torch.Tensor:
    """A pure tone [length] (float32): the prompt ``seqzoo generate`` uses without a wav."""
    t = torch.arange(length, dtype=torch.float64) / sample_rate
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()


# -- wav files -------------------------------------------------------------------------------------------


def read_wav(path, sample_rate: int | None = None, resample: bool = False) -> tuple[torch.Tensor, int]:
    """(samples [T] float32 in [-1, 1], rate) of an 8- or 16-bit PCM .wav, channels averaged. With
    ``sample_rate`` given, a file at another rate raises (naming data.audio.resample), or is resampled."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = (
                w.getnchannels(),
                w.getsampwidth(),
                w.getframerate(),
                w.getnframes(),
            )
            raw = w.readframes(frames)
    except (wave.Error, EOFError) as e:
        raise ValueError(f"{path}: not a PCM .wav file ({e})") from None
    if width == 1:  # 8-bit PCM is unsigned, 128 = silence
        x = (torch.frombuffer(bytearray(raw), dtype=torch.uint8).float() - 128) / 128
    elif width == 2:
        x = torch.frombuffer(bytearray(raw), dtype=torch.int16).float() / 32768
    else:
        raise ValueError(f"{path}: {8 * width}-bit samples; read_wav takes 8- or 16-bit PCM")
    x = x[: len(x) // channels * channels].view(-1, channels).mean(1)
    if sample_rate is not None and rate != sample_rate:
        if not resample:
            raise ValueError(
                f"{path}: sampled at {rate} Hz, not data.audio.sample_rate = {sample_rate} Hz; convert it or set "
                "data.audio.resample: true"
            )
        x, rate = resample_linear(x, rate, sample_rate), sample_rate
    return x, rate


def resample_linear(x: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    """[T] at ``rate`` -> at ``target``: a moving-average low-pass first when downsampling (crude anti-aliasing),
    then linear interpolation."""
    if target < rate:
        width = math.ceil(rate / target)
        x = F.avg_pool1d(x[None, None], width, stride=1, padding=width // 2, count_include_pad=False)[0, 0]
    n = max(1, round(len(x) * target / rate))
    return F.interpolate(x[None, None], size=n, mode="linear", align_corners=False)[0, 0]


def write_wav(path, samples: torch.Tensor, sample_rate: int) -> Path:
    """Write mono 16-bit PCM ``samples`` (float in [-1, 1], [T]) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (samples.detach().float().clamp(-1, 1) * 32767).round().to(torch.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(bytes(pcm.view(torch.uint8).tolist()))  # little-endian, as .wav stores them
    return path


def wav_files(paths: list[str]) -> list[Path]:
    """The .wav files of ``paths`` (folders, searched recursively, files or globs), sorted."""
    found = set()
    for pattern in paths:
        p = Path(pattern)
        if p.is_dir():
            found |= {f for f in p.rglob("*") if f.suffix.lower() == ".wav"}
        else:
            found |= {Path(f) for f in glob.glob(pattern, recursive=True) if Path(f).is_file()}
    if not found:
        raise FileNotFoundError(f"data.paths: no .wav files in {paths}")
    return sorted(found)


def spectral_peak_hz(x: torch.Tensor, sample_rate: int) -> float:
    """The frequency (Hz) of the largest magnitude of the Hann-windowed spectrum of x [T] (DC excluded)."""
    x = x.double() - x.double().mean()
    spectrum = torch.fft.rfft(x * torch.hann_window(len(x), dtype=torch.float64)).abs()
    spectrum[0] = 0
    return float(spectrum.argmax()) * sample_rate / len(x)


# -- the recipe's data -------------------------------------------------------------------------------------


@dataclass
class AudioData(LMData):
    """Fixed windows of 8-bit samples: ``train``, ``val``, ``test`` [N, seq_len + 1] (int64 ids); batches are
    (inputs, labels) [B, seq_len] with labels the next sample. One token is one sample (bytes_per_token 1), so
    the recipe's ``val_bpb`` is bits per sample."""

    test: torch.Tensor | None = None
    sample_rate: int = 8000
    quantization: str = "mu_law"

    def __post_init__(self):
        for name, clips in (("train", self.train), ("validation", self.val)):
            if clips.dim() != 2 or clips.shape[0] < 1 or clips.shape[1] != self.seq_len + 1:
                raise ValueError(
                    f"the {name} split holds {tuple(clips.shape)} windows, not [N >= 1, data.seq_len + 1 = "
                    f"{self.seq_len + 1}]: give more audio or lower data.seq_len"
                )

    def train_batch(self, seed: int, step: int, batch_size: int, rank: int = 0, world: int = 1):
        g = step_generator(seed, step)
        idx = torch.randint(0, self.train.shape[0], (batch_size,), generator=g)
        per = batch_size // world
        chunk = self.train[idx[rank * per : (rank + 1) * per]].long()
        return chunk[:, :-1], chunk[:, 1:]

    def split_batches(self, clips: torch.Tensor, n_batches: int | None, batch_size: int):
        n = clips.shape[0] if n_batches is None else min(clips.shape[0], n_batches * batch_size)
        for lo in range(0, n, batch_size):
            chunk = clips[lo : min(n, lo + batch_size)].long()
            yield chunk[:, :-1], chunk[:, 1:]

    def val_batches(self, n_batches: int, batch_size: int):
        return self.split_batches(self.val, n_batches, batch_size)

    def test_batches(self, batch_size: int):
        return self.split_batches(self.test if self.test is not None else self.val, None, batch_size)


def synthetic_audio_data(section, seed: int = 0) -> AudioData:
    """``data.source: audio_synthetic``: fixed clips of tones per split (``data.audio.n_train`` ...)."""
    a = section.audio
    encode, _ = quantiser(a.quantization)
    length = section.seq_len + 1
    counts = {"train": a.n_train, "val": a.n_val, "test": a.n_test}
    splits = {
        name: encode(
            synthetic_tones(
                counts[name], length, seed * 1_000 + i, a.sample_rate, a.f_min, a.f_max, a.max_tones, a.noise
            )
        ).to(torch.uint8)
        for i, name in enumerate(SPLITS)
    }
    return AudioData(
        splits["train"], splits["val"], section.seq_len, 1.0, Q_LEVELS, test=splits["test"],
        sample_rate=a.sample_rate, quantization=a.quantization,
    )  # fmt: skip


def is_validation(key: str, fraction: float) -> bool:
    """Whether a hash of ``key`` falls in the first ``fraction`` (train/data.py's split, kept here so that
    data.py, which imports this module, is not imported back)."""
    h = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def wav_audio_data(section) -> AudioData:
    """``data.source: audio_wav``: the files of ``data.paths``, split by a hash of each file's name
    (``data.val_fraction`` to validation, as much again to test), cut into windows of seq_len + 1 samples."""
    a = section.audio
    encode, _ = quantiser(a.quantization)
    length = section.seq_len + 1
    windows = {name: [] for name in SPLITS}
    files = wav_files(section.paths)
    for path in files:
        x, _ = read_wav(path, a.sample_rate, a.resample)
        n = len(x) // length
        if n == 0:
            continue
        key = path.name
        split = (
            "val"
            if is_validation(key, section.val_fraction)
            else "test"
            if is_validation("test:" + key, section.val_fraction)
            else "train"
        )
        windows[split].append(encode(x[: n * length].view(n, length)).to(torch.uint8))
    if not windows["train"]:
        raise ValueError(f"data.paths: no file longer than data.seq_len + 1 = {length} samples in {files}")
    # A small folder can hash every file to train: then its last windows validate (and test).
    train = torch.cat(windows["train"])
    for name in ("val", "test"):
        if not windows[name]:
            take = max(1, min(train.shape[0] // 10, 64))
            if train.shape[0] <= take:
                raise ValueError(
                    f"data.paths: {train.shape[0]} window(s) of {length} samples: too few to split"
                )
            windows[name], train = [train[-take:]], train[:-take]
    return AudioData(
        train, torch.cat(windows["val"]), section.seq_len, 1.0, Q_LEVELS, test=torch.cat(windows["test"]),
        sample_rate=a.sample_rate, quantization=a.quantization,
    )  # fmt: skip

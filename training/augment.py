"""On-the-fly augmentation of cached log-mels, in dB and before normalisation.

Working on the cached spectrogram (not the audio) keeps an epoch free of decoding, at the
price of approximations: gain is a dB offset, pitch shift warps the mel axis. Each operation
can be switched off on its own (0 or False), and `enabled=False` turns all of them off.

Band limiting deserves a word: ESC-50's 16 kHz copy has nothing above 8 kHz, FSD50K and a
44.1 kHz microphone do. Without it a model can learn "top bands empty = this dataset = these
labels"; randomly low-passing training clips removes that shortcut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from claudio_daemon.features.frontend import FrontEndConfig
from training.frontend import mel_centre_frequencies

__all__ = [
    "AugmentConfig",
    "augment_example",
    "band_limit",
    "mixup_batch",
    "pitch_shift",
    "segment_view",
]


@dataclass
class AugmentConfig:
    enabled: bool = True
    #: Random gain, uniform in +-gain_db (a dB offset of the whole clip).
    gain_db: float = 6.0
    #: Random pitch shift, uniform in +-semitones, by warping the mel axis.
    pitch_shift_semitones: float = 2.0
    #: Roll the clip by a random number of frames (clips are tiled, so the roll is seamless).
    time_shift: bool = True
    #: SpecAugment: masks filled with the clip's mean dB.
    spec_augment: bool = True
    freq_masks: int = 2
    freq_mask_bins: int = 16
    time_masks: int = 2
    time_mask_frames: int = 32
    #: Beta(alpha, alpha) mixup, applied per batch by the fit loop via `mixup_batch`; 0 = off.
    mixup_alpha: float = 0.2
    #: Probability of a random low-pass, with the cut-off uniform in band_limit_hz.
    band_limit_prob: float = 0.5
    band_limit_hz: tuple[float, float] = (4000.0, 11000.0)
    #: Width of the roll-off below the cut-off, in octaves.
    band_limit_rolloff_octaves: float = 0.25

    #: Probability of the daemon's short-segment view: a random 0.8-3 s stretch around the
    #: clip's loudest moment, tiled over the window (`segment_view`).
    segment_prob: float = 0.0
    segment_s: tuple[float, float] = (0.8, 3.0)

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(enabled=False)


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """Integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (), generator=gen))


def _floor(db: torch.Tensor, top_db: float) -> torch.Tensor:
    return db.amax(dim=(-2, -1), keepdim=True) - top_db


def pitch_shift(db: torch.Tensor, semitones: float, frontend: FrontEndConfig) -> torch.Tensor:
    """Move content by `semitones` along the mel axis (linear interpolation between bins).

    Each output bin takes the value found at its centre frequency / 2^(semitones/12); sources
    beyond the band edges repeat the edge bin rather than inventing an empty band.
    """
    n_mels = db.shape[-2]
    centres = mel_centre_frequencies(frontend, torch.float64)
    source = centres * 2.0 ** (-semitones / 12.0)
    m_min = 2595.0 * math.log10(1.0 + frontend.f_min / 700.0)
    m_max = 2595.0 * math.log10(1.0 + frontend.f_max / 700.0)
    step = (m_max - m_min) / (n_mels + 1)
    pos = (2595.0 * torch.log10(1.0 + source / 700.0) - m_min) / step - 1.0
    pos = pos.clamp(0.0, n_mels - 1.0)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n_mels - 1)
    frac = (pos - lo.to(torch.float64)).to(db.dtype).to(db.device).unsqueeze(-1)
    lo, hi = lo.to(db.device), hi.to(db.device)
    return db[..., lo, :] * (1.0 - frac) + db[..., hi, :] * frac


def band_limit(
    db: torch.Tensor, cutoff_hz: float, frontend: FrontEndConfig, rolloff_octaves: float = 0.25
) -> torch.Tensor:
    """Emulate a low-pass at cutoff_hz: bins centred at or above it drop to the clip's floor.

    Over `rolloff_octaves` below the cut-off the attenuation rises linearly (in dB per octave)
    from 0 to top_db, like a real anti-aliasing filter's transition band.
    """
    centres = mel_centre_frequencies(frontend).to(db.device)
    octaves = torch.log2(centres / cutoff_hz)
    if rolloff_octaves > 0:
        amount = ((octaves + rolloff_octaves) / rolloff_octaves).clamp(0.0, 1.0)
    else:
        amount = (octaves >= 0).to(torch.float32)
    floor = _floor(db, frontend.top_db)
    return torch.maximum(db - amount.to(db.dtype).unsqueeze(-1) * frontend.top_db, floor)


def segment_view(
    db: torch.Tensor, seconds: float, gen: torch.Generator, frontend: FrontEndConfig
) -> torch.Tensor:
    """What the daemon's clap check hears: a short stretch repeat-padded to the window.

    The daemon hands the classifier only a clap pattern's audio (about 0.8-3 s), which the
    front end tiles; a model that only saw whole 5 s clips calls two or three isolated
    claps footsteps or a clock, because ESC-50's "clapping" is applause. Tiling mel frames
    is the same as tiling the audio, up to the frames at the seams. The stretch always
    holds the clip's loudest frame, so the labelled sound is in it.
    """
    n_frames = db.shape[-1]
    frame_s = frontend.hop_length / frontend.sample_rate
    length = max(1, min(n_frames, int(round(seconds / frame_s))))
    if length >= n_frames:
        return db
    loudest = int(db.mean(dim=-2).reshape(-1, n_frames).mean(dim=0).argmax())
    lo, hi = max(0, loudest - length + 1), min(loudest, n_frames - length)
    start = _randint(gen, lo, hi)
    piece = db[..., start : start + length]
    reps = -(-n_frames // length)
    return piece.repeat(*([1] * (db.dim() - 1)), reps)[..., :n_frames].contiguous()


def _masks(db: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    db = db.clone()
    fill = db.mean()
    n_mels, n_frames = db.shape[-2], db.shape[-1]
    for _ in range(cfg.freq_masks):
        width = _randint(gen, 0, min(cfg.freq_mask_bins, n_mels))
        start = _randint(gen, 0, n_mels - width)
        db[..., start : start + width, :] = fill
    for _ in range(cfg.time_masks):
        width = _randint(gen, 0, min(cfg.time_mask_frames, n_frames))
        start = _randint(gen, 0, n_frames - width)
        db[..., :, start : start + width] = fill
    return db


def augment_example(
    db: torch.Tensor,
    cfg: AugmentConfig,
    gen: torch.Generator,
    frontend: FrontEndConfig | None = None,
) -> torch.Tensor:
    """One training example [1, M, T] in clamped dB -> an augmented copy, still in dB.

    Order: segment view, gain, pitch shift, band limit, time shift, SpecAugment; finally the
    per-clip top_db clamp is applied again so the example keeps the contract's dynamic range.
    """
    if not cfg.enabled:
        return db
    frontend = frontend or FrontEndConfig()
    out = db
    if cfg.segment_prob > 0 and float(torch.rand((), generator=gen)) < cfg.segment_prob:
        out = segment_view(out, _uniform(gen, *cfg.segment_s), gen, frontend)
    if cfg.gain_db > 0:
        out = out + _uniform(gen, -cfg.gain_db, cfg.gain_db)
    if cfg.pitch_shift_semitones > 0:
        shift = _uniform(gen, -cfg.pitch_shift_semitones, cfg.pitch_shift_semitones)
        out = pitch_shift(out, shift, frontend)
    if cfg.band_limit_prob > 0 and float(torch.rand((), generator=gen)) < cfg.band_limit_prob:
        low, high = cfg.band_limit_hz
        out = band_limit(out, _uniform(gen, low, high), frontend, cfg.band_limit_rolloff_octaves)
    if cfg.time_shift:
        out = torch.roll(out, _randint(gen, 0, out.shape[-1] - 1), dims=-1)
    if cfg.spec_augment:
        out = _masks(out, cfg, gen)
    out = torch.maximum(out, _floor(out, frontend.top_db))
    return out.contiguous()


def mixup_batch(
    x: torch.Tensor, y: torch.Tensor, alpha: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each example with a random partner: lam*x + (1-lam)*x[perm], labels alike.

    One lam ~ Beta(alpha, alpha) per batch, folded to lam >= 0.5 so each example stays the
    dominant one. Mixing is linear, so doing it on normalised inputs equals mixing in dB and
    normalising afterwards. `gen` is a CPU generator; the batch may live on any device.
    """
    if alpha <= 0 or x.shape[0] < 2:
        return x, y
    seed = int(torch.randint(0, 2**62, (), generator=gen))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    return lam * x + (1.0 - lam) * x[perm], lam * y + (1.0 - lam) * y[perm]

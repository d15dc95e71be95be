"""THE training front end: waveform -> clamped dB log-mel -> normalised model input.

Everything is taken from `FrontEndConfig`, the contract the exported model carries, so the
daemon's numpy front end can be checked against this module and nothing is copied by hand.
The top_db clamp is per clip (max over that clip's mels x frames), matching what the daemon
sees: it only ever has one clip at a time, so a batch-wide maximum would be a mismatch.
"""

from __future__ import annotations

import math

import torch
import torchaudio.transforms as T

from claudio_daemon.features.frontend import FrontEndConfig

__all__ = ["LogMel", "db_to_normalised", "mel_centre_frequencies", "power_to_db"]


def power_to_db(power: torch.Tensor, cfg: FrontEndConfig) -> torch.Tensor:
    """10*log10(max(power, amin)), clamped to (clip max - top_db) per clip.

    `power` is (..., n_mels, n_frames); the maximum is taken over the last two axes only.
    """
    db = 10.0 * torch.log10(torch.clamp(power, min=cfg.amin))
    peak = db.amax(dim=(-2, -1), keepdim=True)
    return torch.maximum(db, peak - cfg.top_db)


def db_to_normalised(db: torch.Tensor, cfg: FrontEndConfig) -> torch.Tensor:
    """(db - mean) / std with the training-set scalars stored in the config."""
    return (db - cfg.mean) / cfg.std


def mel_centre_frequencies(cfg: FrontEndConfig, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Centre frequency in Hz of each mel bin, as torchaudio's HTK filter bank places them.

    Augmentations that act on frequency (band limiting, pitch shift) need to know where each
    bin sits; the filters' centres are the inner points of n_mels + 2 equally spaced mels.
    """
    if cfg.mel_scale != "htk":
        raise ValueError(f"only the HTK mel scale is supported, got {cfg.mel_scale!r}")
    m_min = 2595.0 * math.log10(1.0 + cfg.f_min / 700.0)
    m_max = 2595.0 * math.log10(1.0 + cfg.f_max / 700.0)
    mels = torch.linspace(m_min, m_max, cfg.n_mels + 2, dtype=torch.float64)[1:-1]
    return (700.0 * (10.0 ** (mels / 2595.0) - 1.0)).to(dtype)


class LogMel(torch.nn.Module):
    """Waveform at cfg.sample_rate -> (B, 1, n_mels, n_frames) float32 model input.

    With normalise=False it returns the clamped dB log-mel that the cache stores and the
    augmentations work on; normalisation is then applied when a batch is read.
    """

    def __init__(self, cfg: FrontEndConfig, normalise: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.normalise = normalise
        self.mel = T.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            win_length=cfg.n_fft,
            hop_length=cfg.hop_length,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
            n_mels=cfg.n_mels,
            window_fn=torch.hann_window,
            power=cfg.power,
            center=cfg.center,
            pad_mode="reflect",
            norm=None,
            mel_scale=cfg.mel_scale,
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        elif wave.dim() == 3 and wave.shape[1] == 1:
            wave = wave.squeeze(1)
        if wave.dim() != 2:
            raise ValueError(
                f"expected (samples,) or (batch, samples), got shape {tuple(wave.shape)}"
            )
        power = self.mel(wave.to(torch.float32))
        db = power_to_db(power, self.cfg)
        if self.normalise:
            db = db_to_normalised(db, self.cfg)
        return db.unsqueeze(1).to(torch.float32)

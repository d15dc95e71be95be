"""The XGBoost baseline's input: 36 handcrafted numbers per clip (18 frame features x mean, std).

Computed with torch/torchaudio and numpy, not librosa. librosa would pull in numba and llvmlite
(a JIT compiler: large wheels, seconds of import and compile time, and releases that trail new
numpy/Python versions) for a dozen formulas that are a few tensor lines each; torch is already
in the training extra, runs the whole dataset as batched tensors (on a GPU too), and lets the
MFCCs come from the very log-mel the CNNs see (`training.frontend.LogMel`, the input contract),
so the baseline and the networks differ in the model, not in the front end.

Each clip is `training.audio.load_clip`'s clip (22,050 Hz mono, 5.94 s, tiled or centre-trimmed:
the same samples the CNNs' log-mels come from), framed like the front end (n_fft 2048, hop 512,
centred with reflect padding: 256 frames, Hann window). Per frame:

    rms_db               loudness: 10*log10(mean(x^2)) of the frame, floored at -100 dB
    spectral_centroid    Hz, magnitude-weighted mean frequency
    spectral_bandwidth   Hz, magnitude-weighted standard deviation around the centroid
    spectral_rolloff     Hz below which 85 % of the magnitude lies
    spectral_flatness    geometric / arithmetic mean of the power spectrum (0 tonal .. 1 noise)
    zero_crossing_rate   sign changes per sample
    mfcc_1 .. mfcc_12    DCT-II (orthonormal) of the contract's 128-band dB log-mel, c0 left out
                         (it duplicates loudness)

The spectral formulas follow librosa's definitions (magnitude spectrum, p=2 bandwidth, 85 %
roll-off, power flatness with amin 1e-10); values differ slightly from librosa's defaults only
through the MFCCs' mel bank (the contract's 100-10,000 Hz HTK bank instead of Slaney 0-11 kHz).
Silent frames give centroid/bandwidth/roll-off 0 rather than NaN.

The matrix is cached as `handcrafted.npz` in the mel cache folder, tied to the cache's
fingerprint, so a rebuilt cache never serves stale features.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from claudio_daemon.features.frontend import FrontEndConfig
from training.audio import load_clip
from training.cache import INDEX, Cache
from training.frontend import LogMel

__all__ = [
    "FEATURE_NAMES",
    "FRAME_FEATURES",
    "N_MFCC",
    "HandcraftedExtractor",
    "clip_features",
    "load_or_compute",
]

log = logging.getLogger(__name__)

N_MFCC = 12
FRAME_FEATURES: tuple[str, ...] = (
    "rms_db",
    "spectral_centroid",
    "spectral_bandwidth",
    "spectral_rolloff",
    "spectral_flatness",
    "zero_crossing_rate",
    *(f"mfcc_{k}" for k in range(1, N_MFCC + 1)),
)
#: The 36 columns, in this order: every frame feature's mean, then every frame feature's std.
FEATURE_NAMES: tuple[str, ...] = tuple(f"{n}_mean" for n in FRAME_FEATURES) + tuple(
    f"{n}_std" for n in FRAME_FEATURES
)
FEATURES_FILE = "handcrafted.npz"
#: Bump when a formula changes so cached matrices are recomputed.
FEATURES_VERSION = 1
ROLLOFF = 0.85
AMIN = 1e-10


class HandcraftedExtractor(torch.nn.Module):
    """(B, samples) clips at the contract rate -> (B, 36) features, batched."""

    def __init__(self, cfg: FrontEndConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or FrontEndConfig()
        n_fft = self.cfg.n_fft
        self.logmel = LogMel(self.cfg, normalise=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        freqs = torch.linspace(0.0, self.cfg.sample_rate / 2.0, n_fft // 2 + 1)
        self.register_buffer("freqs", freqs, persistent=False)
        import torchaudio.functional as AF

        dct = AF.create_dct(N_MFCC + 1, self.cfg.n_mels, norm="ortho")  # (n_mels, n_mfcc + 1)
        self.register_buffer("dct", dct[:, 1:].contiguous(), persistent=False)

    def frame_features(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, 18, n_frames) in FRAME_FEATURES order."""
        cfg = self.cfg
        wave = wave.to(torch.float32)
        pad = cfg.n_fft // 2
        padded = torch.nn.functional.pad(wave.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        frames = padded.unfold(-1, cfg.n_fft, cfg.hop_length)  # (B, F, n_fft)
        ms = frames.square().mean(-1)
        rms_db = 10.0 * torch.log10(ms.clamp_min(AMIN))
        signs = frames >= 0
        zcr = (signs[..., 1:] != signs[..., :-1]).to(torch.float32).mean(-1)

        spec = torch.stft(
            wave,
            cfg.n_fft,
            cfg.hop_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        ).abs()  # (B, bins, F)
        total = spec.sum(-2)  # (B, F)
        safe = total.clamp_min(AMIN)
        weights = spec / safe.unsqueeze(-2)
        f = self.freqs[:, None]
        centroid = (weights * f).sum(-2)
        bandwidth = (weights * (f - centroid.unsqueeze(-2)).square()).sum(-2).sqrt()
        cumulative = spec.cumsum(-2)
        reached = cumulative >= ROLLOFF * total.unsqueeze(-2)
        rolloff = self.freqs[reached.to(torch.int8).argmax(-2)]
        silent = total <= AMIN
        centroid = centroid.masked_fill(silent, 0.0)
        bandwidth = bandwidth.masked_fill(silent, 0.0)
        rolloff = rolloff.masked_fill(silent, 0.0)
        power = spec.square().clamp_min(AMIN)
        flatness = torch.exp(power.log().mean(-2)) / power.mean(-2)

        mel_db = self.logmel(wave)[:, 0]  # (B, n_mels, F)
        mfcc = torch.einsum("bmf,mk->bkf", mel_db, self.dct)  # (B, 12, F)
        n = min(rms_db.shape[-1], spec.shape[-1], mel_db.shape[-1])
        scalars = torch.stack([rms_db, centroid, bandwidth, rolloff, flatness, zcr], dim=1)
        return torch.cat([scalars[..., :n], mfcc[..., :n]], dim=1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        per_frame = self.frame_features(wave).to(torch.float64)
        mean = per_frame.mean(-1)
        std = per_frame.std(-1, correction=0)
        return torch.cat([mean, std], dim=1).to(torch.float32)


def clip_features(clip: np.ndarray, cfg: FrontEndConfig | None = None) -> np.ndarray:
    """The 36 features of one clip (already at the contract rate and length)."""
    with torch.inference_mode():
        out = HandcraftedExtractor(cfg)(torch.from_numpy(np.asarray(clip, dtype=np.float32)))
    return out[0].numpy()


class _Clips(Dataset):
    def __init__(self, paths: Sequence[Path], cfg: FrontEndConfig) -> None:
        self.paths, self.cfg = list(paths), cfg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        return i, load_clip(self.paths[i], self.cfg)


def _collate(batch: list) -> list:
    return batch


def _fingerprint(cache: Cache) -> str:
    index = json.loads((cache.cache_dir / INDEX).read_text())
    return f"{index.get('fingerprint', '')}:v{FEATURES_VERSION}"


def compute_features(
    cache: Cache,
    workers: int = 2,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """(N, 36) float32 features for every clip of the cache, decoded from the original files.

    Files are decoded again (the cache keeps only log-mels); one that fails now, although it
    decoded when the cache was built, raises `AudioLoadError` naming it.
    """
    extractor = HandcraftedExtractor(cache.frontend).to(device)
    paths = [item.path for item in cache.items]
    out = np.zeros((len(paths), len(FEATURE_NAMES)), dtype=np.float32)
    loader = DataLoader(
        _Clips(paths, cache.frontend),
        batch_size=batch_size,
        num_workers=max(0, int(workers)),
        collate_fn=_collate,
    )
    with (
        torch.inference_mode(),
        tqdm(total=len(paths), unit="clip", desc="features", disable=not progress) as bar,
    ):
        for batch in loader:
            idx = np.array([i for i, _ in batch])
            wave = torch.from_numpy(np.stack([c for _, c in batch])).to(device)
            out[idx] = extractor(wave).cpu().numpy()
            bar.update(len(batch))
    if not np.all(np.isfinite(out)):
        bad = sorted({int(r) for r in np.argwhere(~np.isfinite(out))[:, 0]})
        raise ValueError(f"non-finite features for {[str(paths[r]) for r in bad[:5]]}")
    return out


def load_or_compute(
    cache: Cache,
    workers: int = 2,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[np.ndarray, float]:
    """(features, seconds spent computing them; 0 when read back from handcrafted.npz)."""
    path = cache.cache_dir / FEATURES_FILE
    fp = _fingerprint(cache)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["fingerprint"]) == fp and tuple(z["names"]) == FEATURE_NAMES:
                    feats = np.asarray(z["features"], dtype=np.float32)
                    if feats.shape == (len(cache), len(FEATURE_NAMES)):
                        log.info("handcrafted features read from %s", path)
                        return feats, 0.0
        except (OSError, KeyError, ValueError) as exc:
            log.warning("%s unreadable (%s); recomputing", path, exc)
    log.info("computing %d handcrafted features for %d clips", len(FEATURE_NAMES), len(cache))
    t0 = time.perf_counter()
    feats = compute_features(cache, workers=workers, device=device, progress=progress)
    seconds = time.perf_counter() - t0
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, features=feats, names=np.array(FEATURE_NAMES), fingerprint=np.array(fp))
    tmp.replace(path)
    return feats, seconds

"""Log-mel front end in numpy: the batch recipe training uses, and a streaming twin.

The batch path (`logmel_clip`) reproduces training's torchaudio recipe step for step so
that a model sees the same numbers in the daemon as it saw when it learned. The
streaming path (`StreamingLogMel`) computes one STFT frame per hop as audio arrives,
so a live microphone costs one 2048-point rfft and one small matrix product every
23 ms, however the audio is chunked.
"""

from __future__ import annotations

import math

import numpy as np

from claudio_daemon.features.frontend import FrontEndConfig


def fit_clip(audio: np.ndarray, n: int) -> np.ndarray:
    """Repeat-pad (tile) or centre-trim `audio` to exactly `n` samples.

    Training does the same to every ESC-50 clip, so a short sound (one clap pattern)
    fills the model's 5.94 s input the way short training clips did, rather than
    sitting in silence the model never saw in that place.
    """
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if n <= 0:
        raise ValueError(f"clip length must be positive, got {n}")
    if audio.size == 0:
        raise ValueError("cannot fit an empty clip")
    if audio.size == n:
        return audio.copy()
    if audio.size > n:
        start = (audio.size - n) // 2
        return audio[start : start + n].copy()
    reps = -(-n // audio.size)
    return np.tile(audio, reps)[:n].copy()


def _linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace in float32, to the last bit.

    torch fills the first half forwards and the second half backwards from the end with
    a float32 step and a fused multiply-add; matching it keeps our filterbank equal to
    torchaudio's instead of one float32 ulp off in the mel centres.
    """
    s, e = np.float32(start), np.float32(end)
    step = float((e - s) / np.float32(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    forward = float(s) + step * i
    backward = float(e) - step * (steps - 1 - i)
    return np.where(i < steps // 2, forward, backward).astype(np.float32)


def mel_filterbank(cfg: FrontEndConfig) -> np.ndarray:
    """Triangular HTK mel filters (n_fft//2 + 1, n_mels), as torchaudio.melscale_fbanks.

    Computed in float32 in torchaudio's order of operations, so the weights agree with
    torchaudio's to a few 1e-6 (torch's float32 pow is not correctly rounded, which
    leaves a handful of weights one ulp-ish apart; that is ~1e-5 dB on the output).
    """
    if cfg.mel_scale != "htk":
        raise ValueError(f"only the HTK mel scale is supported, got {cfg.mel_scale!r}")
    f32 = np.float32
    n_freqs = cfg.n_fft // 2 + 1
    all_freqs = _linspace_f32(0.0, float(cfg.sample_rate // 2), n_freqs)
    m_min = 2595.0 * math.log10(1.0 + cfg.f_min / 700.0)
    m_max = 2595.0 * math.log10(1.0 + cfg.f_max / 700.0)
    m_pts = _linspace_f32(m_min, m_max, cfg.n_mels + 2)
    powers = (10.0 ** (m_pts / f32(2595.0)).astype(np.float64)).astype(f32)
    f_pts = f32(700.0) * (powers - f32(1.0))
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = (f32(-1.0) * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(f32(0.0), np.minimum(down, up)).astype(np.float32)


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window's default), in float64."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


class _Kernel:
    """Precomputed window and filterbank for one config (shared by batch and stream).

    Only the FFT bins that some mel filter touches are multiplied (f_max 10 kHz leaves
    the top ~10% of bins out), which trims the matrix product on small CPUs.
    """

    def __init__(self, cfg: FrontEndConfig) -> None:
        if cfg.power != 2.0:
            raise ValueError(f"only power spectrograms (power=2) are supported, got {cfg.power}")
        self.cfg = cfg
        self.window = hann_window(cfg.n_fft)
        fb = mel_filterbank(cfg)
        used = np.flatnonzero(fb.any(axis=1))
        self.lo = int(used[0]) if used.size else 0
        self.hi = int(used[-1]) + 1 if used.size else 0
        self.fb = np.ascontiguousarray(fb[self.lo : self.hi].astype(np.float64))

    def power_mel(self, frames: np.ndarray) -> np.ndarray:
        """(n, n_fft) raw sample frames -> (n, n_mels) float32 mel power."""
        spec = np.fft.rfft(frames * self.window, axis=-1)[..., self.lo : self.hi]
        power = spec.real**2 + spec.imag**2
        return (power @ self.fb).astype(np.float32)


_KERNELS: dict[str, _Kernel] = {}


def _kernel(cfg: FrontEndConfig) -> _Kernel:
    key = cfg.to_json()
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = _KERNELS[key] = _Kernel(cfg)
    return kernel


def power_mel_frames(frames_of_samples: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """(n_frames, n_fft) sample frames -> (n_frames, n_mels) mel power, float32.

    Periodic Hann window, |rfft|^2, HTK mel filters: torchaudio's MelSpectrogram
    without its padding, which the callers add (or, streaming, do not need).
    """
    frames = np.asarray(frames_of_samples, dtype=np.float64)
    if frames.ndim != 2 or frames.shape[1] != cfg.n_fft:
        raise ValueError(f"expected frames of shape (n, {cfg.n_fft}), got {frames.shape}")
    return _kernel(cfg).power_mel(frames)


def power_to_db(power: np.ndarray, cfg: FrontEndConfig, top: float | None = None) -> np.ndarray:
    """10*log10(max(power, amin)), clamped at (top - top_db).

    `top` defaults to the array's own maximum in dB, which is training's per-clip clamp;
    pass it to convert part of a window with the whole window's reference.
    """
    db = 10.0 * np.log10(np.maximum(np.asarray(power, dtype=np.float32), np.float32(cfg.amin)))
    if top is None:
        top = float(db.max()) if db.size else 0.0
    return np.maximum(db, np.float32(top - cfg.top_db)).astype(np.float32)


def normalise(db: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """(db - mean) / std with the training set's scalars from the model metadata."""
    return ((np.asarray(db, dtype=np.float32) - np.float32(cfg.mean)) / np.float32(cfg.std)).astype(
        np.float32
    )


def clip_power_mel(audio: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """(n_mels, n_frames) mel power of a clip fitted to the contract length, centre-padded."""
    clip = fit_clip(audio, cfg.clip_samples).astype(np.float64)
    if cfg.center:
        pad = cfg.n_fft // 2
        if clip.size <= pad:
            raise ValueError(f"clip of {clip.size} samples is too short to reflect-pad by {pad}")
        clip = np.pad(clip, (pad, pad), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(clip, cfg.n_fft)[:: cfg.hop_length]
    return power_mel_frames(frames, cfg).T


def logmel_clip(audio: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """Training's recipe on one clip: (n_mels, n_frames) float32, normalised.

    fit_clip to cfg.clip_samples, reflect padding of n_fft//2 (center=True), periodic
    Hann window, |rfft|^2, mel filters, dB clamped at the clip's max - top_db, then
    (x - mean) / std.
    """
    return normalise(power_to_db(clip_power_mel(audio, cfg), cfg), cfg)


class StreamingLogMel:
    """The model's input window, kept up to date one hop at a time.

    Frames are taken "center=False" on the continuous stream: frame k covers stream
    samples [k*hop, k*hop + n_fft). A training clip is centre-padded by n_fft//2 = 2 hops,
    so its frame j covers clip samples [(j-2)*hop, (j-2)*hop + n_fft): for j = 2 .. n-3 that
    is exactly a real stretch of audio, the same samples a streaming frame sees, with the
    same window, FFT and filters. Only the 2 frames at each edge of a clip differ, because
    there training sees reflected padding while the stream sees the real neighbouring audio
    (which is what a continuous microphone actually has).

    The ring keeps mel POWER, not dB, so every call to `window()` clamps at its own
    window's max - top_db, as training clamps per clip; a loud bang that has scrolled out
    no longer squashes the quiet frames after it.

    Before n_frames frames exist the missing (oldest) frames are zero power, which the
    clamp turns into the window's floor (max - top_db): digital silence, as in ESC-50's
    zero-padded clips, i.e. the quietest room the model knows. A fresh stream therefore
    looks like "a sound that started after silence", not like repeated audio.
    """

    def __init__(self, cfg: FrontEndConfig) -> None:
        self.cfg = cfg
        self._kernel = _kernel(cfg)
        self._n_fft = cfg.n_fft
        self._hop = cfg.hop_length
        self._n_frames = cfg.n_frames
        # Samples of the frame being gathered; shifted left by one hop per frame.
        self._buf = np.zeros((1, self._n_fft), dtype=np.float64)
        # Each frame is written twice, at i and i + n_frames, so the newest n_frames are
        # always one contiguous slice: no copying or rolling to read the window.
        self._ring = np.zeros((cfg.n_mels, 2 * self._n_frames), dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget all audio (after a stream gap, or a new file)."""
        self._fill = 0
        self._ring.fill(0.0)
        self._frames_total = 0

    @property
    def frames_total(self) -> int:
        """Frames computed since the start (or the last reset)."""
        return self._frames_total

    @property
    def window_end_sample(self) -> int:
        """Stream sample index just past the newest frame (0 before the first frame)."""
        if self._frames_total == 0:
            return 0
        return (self._frames_total - 1) * self._hop + self._n_fft

    def push(self, samples: np.ndarray) -> int:
        """Add samples at cfg.sample_rate; returns how many new frames were computed."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        buf = self._buf[0]
        n_fft, hop = self._n_fft, self._hop
        done = 0
        pos = 0
        while pos < x.size:
            take = min(n_fft - self._fill, x.size - pos)
            buf[self._fill : self._fill + take] = x[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == n_fft:
                self._add_frame(self._kernel.power_mel(self._buf)[0])
                buf[: n_fft - hop] = buf[hop:]
                self._fill = n_fft - hop
                done += 1
        return done

    def _add_frame(self, mel: np.ndarray) -> None:
        i = self._frames_total % self._n_frames
        self._ring[:, i] = mel
        self._ring[:, i + self._n_frames] = mel
        self._frames_total += 1

    def power_window(self) -> np.ndarray:
        """(n_mels, n_frames) mel power, oldest frame first (a view: copy to keep it)."""
        start = self._frames_total % self._n_frames
        return self._ring[:, start : start + self._n_frames]

    def window(self) -> np.ndarray:
        """(1, 1, n_mels, n_frames) float32: the model's input for the newest frames."""
        db = power_to_db(self.power_window(), self.cfg)
        return normalise(db, self.cfg)[None, None]

"""Carry log-mel caches to another machine in a quarter of their size, then unpack them there.

Why: a lent or rented GPU is often reachable only through a narrow pipe (the lent machine
here takes 64 MiB a call and has no network) while the recordings are hundreds of MB. A
cache holds each clip's dB log-mel clamped to an 80 dB range below the clip's own peak, so
one byte per value loses at most half of an 80/255 dB step (0.16 dB), far below what the
gain and SpecAugment augmentations change every epoch. The step-1 and step-2 caches of the
shipped recipe share their real recordings, so rows of the same recording are stored once.

The unpacked caches open like any other (`Cache.open`), keep their own index, targets and
statistics, and note the quantisation in their index. Their fingerprint is changed, so
`precache` on the original recordings never mistakes an unpacked copy for its own cache.
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.cache import INDEX, MELS, STATS, TARGETS, Cache, CacheError

__all__ = ["PackReport", "pack_caches", "unpack_caches"]

log = logging.getLogger(__name__)

FORMAT = "claudio-cache-pack"
VERSION = 1
LEVELS = 255
CODES = "codes.npy"
PEAKS = "peaks.npy"
MANIFEST = "pack.json"
#: Rows encoded (and decoded) at a time: a few MB, whatever the cache's size.
CHUNK = 256


@dataclass(frozen=True)
class PackReport:
    path: Path
    caches: tuple[str, ...]
    rows: int
    #: Rows stored once although several caches hold them.
    shared_rows: int
    step_db: float


def _encode(mels: np.ndarray, top_db: float) -> tuple[np.ndarray, np.ndarray]:
    """uint8 codes counting steps below each row's peak, and the peaks."""
    peaks = mels.max(axis=(1, 2)).astype(np.float32)
    below = (peaks[:, None, None] - mels) * (LEVELS / top_db)
    codes = np.clip(np.rint(below), 0, LEVELS).astype(np.uint8)
    return codes, peaks


def _decode(codes: np.ndarray, peaks: np.ndarray, top_db: float) -> np.ndarray:
    return peaks[:, None, None] - codes.astype(np.float32) * np.float32(top_db / LEVELS)


def pack_caches(
    caches: Sequence[str | Path], out: str | Path, progress: bool = False
) -> PackReport:
    """Write the caches (each opened and checked first) into one compressed file."""
    if not caches:
        raise ValueError("name at least one cache folder to pack")
    out = Path(out)
    opened = [Cache.open(c) for c in caches]
    names = [c.cache_dir.name for c in opened]
    if len(set(names)) != len(names):
        raise ValueError(f"cache folders must have different names to unpack apart: {names}")
    frontend = opened[0].frontend.with_stats(0.0, 1.0)
    for c in opened[1:]:
        if c.frontend.with_stats(0.0, 1.0) != frontend:
            raise CacheError(
                f"{c.cache_dir}: front end differs from {opened[0].cache_dir}'s; "
                "caches packed together must share one"
            )
    top_db = float(frontend.top_db)

    # One stored row per recording: the same file cached by the same front end is the same
    # log-mel. Rows are checked equal before they are shared, so nothing rests on names.
    stored: dict[str, tuple[int, int, int]] = {}  # path -> (row, cache no., cache row)
    plan: list[tuple[int, int]] = []  # stored row -> (cache no., cache row)
    rows_of: list[np.ndarray] = []
    shared = 0
    for n, c in enumerate(opened):
        rows = np.empty(len(c), dtype=np.int64)
        for i, item in enumerate(c.items):
            key = str(item.path)
            hit = stored.get(key)
            if hit is not None and np.array_equal(opened[hit[1]].mels[hit[2]], c.mels[i]):
                rows[i] = hit[0]
                shared += 1
                continue
            rows[i] = len(plan)
            stored.setdefault(key, (len(plan), n, i))
            plan.append((n, i))
        rows_of.append(rows)

    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "top_db": top_db,
        "levels": LEVELS,
        "rows": len(plan),
        "caches": [],
    }
    tmp = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        shape = (len(plan), frontend.n_mels, frontend.n_frames)
        peaks = np.empty(len(plan), dtype=np.float32)
        # LZMA: a quarter smaller than deflate on log-mel codes (ESC-50's pack: 46 MB
        # against 59), for a minute of packing; unpacking stays a few seconds.
        zf.compression = zipfile.ZIP_LZMA
        with zf.open(CODES, "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_2_0(
                fh, {"descr": "|u1", "fortran_order": False, "shape": shape}
            )
            starts = range(0, len(plan), CHUNK)
            for start in tqdm(starts, desc="pack", unit="chunk", disable=not progress):
                part = plan[start : start + CHUNK]
                block = np.stack([opened[n].mels[i] for n, i in part])
                codes, peaks[start : start + len(part)] = _encode(block, top_db)
                fh.write(codes.tobytes())
        zf.compression = zipfile.ZIP_DEFLATED
        _write_npy(zf, PEAKS, peaks)
        for n, c in enumerate(opened):
            name = names[n]
            stats = c.cache_dir / STATS
            _write_npy(zf, f"{name}/rows.npy", rows_of[n])
            _write_npy(zf, f"{name}/{TARGETS}", np.load(c.cache_dir / TARGETS))
            zf.writestr(f"{name}/{INDEX}", (c.cache_dir / INDEX).read_text())
            if stats.is_file():
                zf.writestr(f"{name}/{STATS}", stats.read_text())
            manifest["caches"].append({"name": name, "rows": len(c)})
        zf.writestr(MANIFEST, json.dumps(manifest, indent=1))
    tmp.replace(out)
    step = top_db / LEVELS
    log.debug(
        "packed %s into %s: %d rows (%d shared), %.1f MB, %.3f dB steps",
        ", ".join(names),
        out,
        len(plan),
        shared,
        out.stat().st_size / 1e6,
        step,
    )
    return PackReport(out, tuple(names), len(plan), shared, step)


def _write_npy(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with zf.open(name, "w", force_zip64=True) as fh:
        np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)


def _read_npy(zf: zipfile.ZipFile, name: str) -> np.ndarray:
    with zf.open(name) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def unpack_caches(pack: str | Path, into: str | Path, force: bool = False) -> list[Path]:
    """Write every cache of `pack` into its own folder under `into`; returns the folders."""
    pack, into = Path(pack), Path(into)
    try:
        zf = zipfile.ZipFile(pack)
    except (OSError, zipfile.BadZipFile) as exc:
        raise CacheError(f"{pack}: not a cache pack ({exc})") from exc
    with zf:
        try:
            manifest = json.loads(zf.read(MANIFEST))
        except (KeyError, json.JSONDecodeError) as exc:
            raise CacheError(f"{pack}: not a cache pack ({MANIFEST} unreadable)") from exc
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise CacheError(
                f"{pack}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
                f"expected {FORMAT!r} version {VERSION}"
            )
        top_db = float(manifest["top_db"])
        targets_dirs = [into / entry["name"] for entry in manifest["caches"]]
        busy = [d for d in targets_dirs if d.exists() and any(d.iterdir())]
        if busy and not force:
            raise CacheError(f"{busy[0]} is not empty; unpack elsewhere or pass --force")
        # The codes are read once into memory: a pack is meant to be small (ESC-50's two
        # caches are about 60 MB of codes).
        codes = _read_npy(zf, CODES)
        peaks = _read_npy(zf, PEAKS)
        if codes.shape[0] != len(peaks) or codes.shape[0] != manifest["rows"]:
            raise CacheError(f"{pack}: codes and peaks disagree; pack it again")
        out: list[Path] = []
        for entry, cache_dir in zip(manifest["caches"], targets_dirs, strict=True):
            name = entry["name"]
            rows = _read_npy(zf, f"{name}/rows.npy")
            if cache_dir.exists():
                shutil.rmtree(cache_dir)
            cache_dir.mkdir(parents=True)
            mels = np.lib.format.open_memmap(
                cache_dir / MELS, mode="w+", dtype=np.float32, shape=(len(rows), *codes.shape[1:])
            )
            for start in range(0, len(rows), CHUNK):
                sel = rows[start : start + CHUNK]
                mels[start : start + len(sel)] = _decode(codes[sel], peaks[sel], top_db)
            mels.flush()
            del mels
            np.save(cache_dir / TARGETS, _read_npy(zf, f"{name}/{TARGETS}"))
            if f"{name}/{STATS}" in zf.namelist():
                (cache_dir / STATS).write_bytes(zf.read(f"{name}/{STATS}"))
            index = json.loads(zf.read(f"{name}/{INDEX}"))
            index["fingerprint"] = f"unpacked:{index.get('fingerprint', '')}"
            index["unpacked_from"] = {"pack": pack.name, "step_db": top_db / LEVELS}
            (cache_dir / INDEX).write_text(json.dumps(index, indent=1))
            Cache.open(cache_dir)  # the same checks as any cache before anyone trains on it
            out.append(cache_dir)
            log.debug("unpacked %s (%d clips)", cache_dir, len(rows))
    return out

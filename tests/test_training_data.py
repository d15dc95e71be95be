"""Dataset layouts -> manifest -> log-mel cache -> statistics -> training examples.

Every dataset here is written at test time from generated audio (tones, noise bursts, clicks)
at mixed rates and channel counts, in the layouts exactly as distributed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from claudio_daemon.features.frontend import FrontEndConfig
from training.audio import load_clip
from training.augment import AugmentConfig
from training.cache import Cache, CacheError, precache
from training.data import CachedDataset, pos_weights, split_indices
from training.datasets import (
    DatasetError,
    Item,
    Manifest,
    load_dataset,
    load_esc50,
    load_folder,
    load_fsd50k,
)
from training.export import parity_inputs_from
from training.frontend import LogMel
from training.stats import compute_stats, stats_folds

CFG = FrontEndConfig()


# ---------------------------------------------------------------- generated recordings


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    mono = 0.4 * np.sin(2 * np.pi * freq * t)
    return _channels(mono, channels)


def noise_burst(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    mono = np.zeros(n)
    start, length = n // 4, n // 3
    mono[start : start + length] = 0.3 * rng.standard_normal(length)
    return _channels(mono, channels)


def clicks(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    mono = np.zeros(int(round(seconds * rate)))
    mono[:: rate // 3] = 0.9
    return _channels(mono, channels)


def _channels(mono: np.ndarray, channels: int) -> np.ndarray:
    if channels == 1:
        return mono.astype(np.float32)
    return np.stack([mono * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1).astype(
        np.float32
    )


def write(path: Path, audio: np.ndarray, rate: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate)
    return path


def corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(200)))
    return path


def empty(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# ---------------------------------------------------------------- layouts

ESC50_ROWS = [
    # filename, fold, target, category, rate, channels, signal
    ("1-100-A-0.wav", 1, 0, "dog", 16_000, 1, "tone"),
    ("1-101-A-1.flac", 1, 1, "rooster", 44_100, 2, "noise"),
    ("2-102-A-0.wav", 2, 0, "dog", 48_000, 2, "clicks"),
    ("2-103-A-1.flac", 2, 1, "rooster", 22_050, 1, "tone"),
    ("3-104-A-0.wav", 3, 0, "dog", 44_100, 1, "corrupt"),
    ("3-105-A-1.flac", 3, 1, "rooster", 16_000, 1, "empty"),
]


def make_esc50(root: Path) -> Path:
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    for k, (name, fold, target, category, rate, ch, kind) in enumerate(ESC50_ROWS):
        path = root / "audio" / name
        seconds = 7.0 if rate == 48_000 else 1.5 + 0.5 * k
        if kind == "tone":
            write(path, tone(seconds, rate, 300 + 200 * k, ch), rate)
        elif kind == "noise":
            write(path, noise_burst(seconds, rate, ch, seed=k), rate)
        elif kind == "clicks":
            write(path, clicks(seconds, rate, ch), rate)
        elif kind == "corrupt":
            corrupt(path)
        else:
            empty(path)
        lines.append(f"{name},{fold},{target},{category},False,{name[2:5]},A")
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "esc50.csv").write_text("\n".join(lines) + "\n")
    return root


FSD_VOCAB = [
    ("Bark", "/m/05tny_"),
    ("Dog", "/m/0bt9lr"),
    ("Domestic_animals_and_pets", "/m/068hy"),
    ("Clapping", "/m/0l15bq"),
]


def make_fsd50k(root: Path, dev_rows: list[str] | None = None) -> Path:
    gt = root / "FSD50K.ground_truth"
    gt.mkdir(parents=True, exist_ok=True)
    (gt / "vocabulary.csv").write_text(
        "".join(f"{i},{label},{mid}\n" for i, (label, mid) in enumerate(FSD_VOCAB))
    )
    if dev_rows is None:
        dev_rows = [
            '101,"Bark,Dog,Domestic_animals_and_pets","/m/05tny_,/m/0bt9lr,/m/068hy",train',
            "102,Clapping,/m/0l15bq,train",
            '103,"Dog,Domestic_animals_and_pets","/m/0bt9lr,/m/068hy",val',
        ]
    (gt / "dev.csv").write_text("fname,labels,mids,split\n" + "\n".join(dev_rows) + "\n")
    (gt / "eval.csv").write_text("fname,labels,mids\n" + '201,"Clapping",/m/0l15bq\n')
    write(root / "FSD50K.dev_audio" / "101.wav", noise_burst(2.0, 44_100, seed=1), 44_100)
    write(root / "FSD50K.dev_audio" / "102.wav", clicks(1.0, 44_100), 44_100)
    write(root / "FSD50K.dev_audio" / "103.wav", tone(9.0, 44_100, 700), 44_100)
    write(root / "FSD50K.eval_audio" / "201.wav", clicks(3.0, 44_100), 44_100)
    return root


def make_label_folders(root: Path) -> Path:
    write(root / "clap" / "a.wav", clicks(1.0, 16_000), 16_000)
    write(root / "clap" / "session2" / "b.flac", clicks(2.0, 44_100, 2), 44_100)
    write(root / "doorbell" / "c.ogg", tone(1.5, 48_000, 880), 48_000)
    (root / "nothing_here").mkdir()
    (root / "README.txt").write_text("my recordings")
    return root


def make_labels_csv(root: Path) -> Path:
    write(root / "rec" / "a.wav", clicks(1.0, 16_000), 16_000)
    write(root / "rec" / "b.flac", noise_burst(2.0, 44_100, 2), 44_100)
    write(root / "rec" / "c.ogg", tone(1.0, 48_000), 48_000)
    (root / "labels.csv").write_text(
        'file,labels,fold\nrec/a.wav,clap;speech,1\nrec/b.flac,"dog,bark",2\nrec/c.ogg,dog,1\n'
    )
    return root


@pytest.fixture(scope="module")
def esc50_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    root = make_esc50(tmp_path_factory.mktemp("esc50"))
    cache_dir = tmp_path_factory.mktemp("esc50_cache")
    report = precache(load_esc50(root), cache_dir, CFG, workers=2, progress=False)
    return root, cache_dir, report


# ---------------------------------------------------------------- ESC-50


def test_esc50_manifest(tmp_path: Path) -> None:
    manifest = load_esc50(make_esc50(tmp_path))
    assert manifest.name == "esc50" and not manifest.multi_label
    assert manifest.labels == ("dog", "rooster")
    assert [i.fold for i in manifest.items] == ["1", "1", "2", "2", "3", "3"]
    assert manifest.items[1] == Item(tmp_path / "audio" / "1-101-A-1.flac", ("rooster",), "1")
    assert [i.path.name for i in manifest.subset(["2"]).items] == [
        "2-102-A-0.wav",
        "2-103-A-1.flac",
    ]
    assert len(manifest.exclude(["1", "3"])) == 2
    assert manifest.subset(["2"]).labels == manifest.labels


def test_esc50_errors_name_file_line_and_column(tmp_path: Path) -> None:
    root = make_esc50(tmp_path)
    csv_path = root / "meta" / "esc50.csv"
    lines = csv_path.read_text().splitlines()
    lines[2] = "1-101-A-1.flac,1,1,,False,101,A"  # line 3: no category
    lines[4] = "2-103-A-1.flac,2,0,rooster,False,103,A"  # line 5: target 0 is dog on line 2
    lines.append("4-999-A-0.wav,4,0,dog,False,999,A")  # line 8: no such audio file
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as info:
        load_esc50(root)
    text = str(info.value)
    assert f"{csv_path}:3: column 'category': empty label" in text
    assert f"{csv_path}:5: column 'category'" in text and "line 2" in text
    assert f"{csv_path}:8: column 'filename'" in text and "4-999-A-0.wav" in text
    assert len(info.value.problems) == 3


def test_precache_skips_and_reports_broken_files(esc50_cache: tuple[Path, Path, object]) -> None:
    root, cache_dir, report = esc50_cache
    assert report.n_items == 4 and not report.reused
    assert sorted(p.name for p, _ in report.skipped) == ["3-104-A-0.wav", "3-105-A-1.flac"]
    assert all(reason for _, reason in report.skipped)
    cache = Cache.open(cache_dir)
    assert cache.mels.shape == (4, 128, 256) and cache.mels.dtype == np.float32
    assert not cache.mels.flags.writeable
    assert cache.labels == ("dog", "rooster") and cache.dataset == "esc50"
    assert not cache.multi_label
    np.testing.assert_array_equal(cache.source_rates, [16_000, 44_100, 48_000, 22_050])
    np.testing.assert_array_equal(cache.targets, [[1, 0], [0, 1], [1, 0], [0, 1]])
    assert [i.path.name for i in cache.items] == [r[0] for r in ESC50_ROWS[:4]]
    index = json.loads((cache_dir / "index.json").read_text())
    assert {s["path"].rsplit("/", 1)[-1] for s in index["skipped"]} == {
        "3-104-A-0.wav",
        "3-105-A-1.flac",
    }
    assert FrontEndConfig.from_json(json.dumps(index["frontend"])) == CFG
    # The cached rows are the un-normalised log-mels of the decoded clips, in manifest order.
    logmel = LogMel(CFG, normalise=False)
    for row, item in enumerate(cache.items):
        expected = logmel(torch.from_numpy(load_clip(item.path, CFG)))[0, 0].numpy()
        np.testing.assert_allclose(cache.mels[row], expected, atol=1e-3)
        assert cache.mels[row].min() >= cache.mels[row].max() - CFG.top_db - 1e-4


def test_precache_logs_skipped_files_by_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = load_esc50(make_esc50(tmp_path / "data"))
    with caplog.at_level(logging.WARNING, logger="training.cache"):
        precache(manifest, tmp_path / "cache", CFG, workers=0, progress=False)
    assert "3-104-A-0.wav" in caplog.text and "3-105-A-1.flac" in caplog.text


def test_precache_rerun_is_a_no_op_until_something_changes(tmp_path: Path) -> None:
    root = make_esc50(tmp_path / "data")
    cache_dir = tmp_path / "cache"
    first = precache(load_esc50(root), cache_dir, CFG, workers=0, progress=False)
    compute_stats(cache_dir)
    stamp = (cache_dir / "mels.npy").stat().st_mtime_ns
    again = precache(load_esc50(root), cache_dir, CFG, workers=0, progress=False)
    assert again.reused and again.n_items == first.n_items
    assert [p.name for p, _ in again.skipped] == [p.name for p, _ in first.skipped]
    assert (cache_dir / "mels.npy").stat().st_mtime_ns == stamp
    assert (cache_dir / "stats.json").is_file()
    # Different statistics do not change the raw cache ...
    assert precache(load_esc50(root), cache_dir, CFG.with_stats(3.0, 2.0), 0, False).reused
    # ... but a different front end does, and drops the statistics of the old arrays.
    changed = precache(
        load_esc50(root), cache_dir, FrontEndConfig(top_db=60.0), workers=0, progress=False
    )
    assert not changed.reused
    assert Cache.open(cache_dir).frontend.top_db == 60.0
    assert not (cache_dir / "stats.json").exists()
    # A recording that changed on disk is noticed too.
    write(root / "audio" / "1-100-A-0.wav", noise_burst(1.0, 16_000, seed=9), 16_000)
    redone = precache(load_esc50(root), cache_dir, FrontEndConfig(top_db=60.0), 0, False)
    assert not redone.reused


def test_cache_open_refuses_an_incomplete_cache(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="precache"):
        Cache.open(tmp_path)


# ---------------------------------------------------------------- FSD50K


def test_fsd50k_dev_and_eval(tmp_path: Path) -> None:
    root = make_fsd50k(tmp_path)
    dev = load_fsd50k(root, "dev")
    assert dev.multi_label and dev.name == "fsd50k"
    assert dev.labels == ("Bark", "Dog", "Domestic_animals_and_pets", "Clapping")
    assert dev.items[0].labels == ("Bark", "Dog", "Domestic_animals_and_pets")
    assert dev.items[0].path == root / "FSD50K.dev_audio" / "101.wav"
    assert [i.fold for i in dev.items] == ["train", "train", "val"]
    evaluation = load_fsd50k(root, "eval")
    assert [(i.path.name, i.labels, i.fold) for i in evaluation.items] == [
        ("201.wav", ("Clapping",), "eval")
    ]
    assert load_dataset(root, split="eval").items == evaluation.items


def test_fsd50k_unknown_label_names_file_and_line(tmp_path: Path) -> None:
    rows = [
        "102,Clapping,/m/0l15bq,train",
        '101,"Bark,Barking",/m/05tny_,train',
        "103,Dog,/m/0bt9lr,test",
    ]
    root = make_fsd50k(tmp_path, rows)
    with pytest.raises(DatasetError) as info:
        load_fsd50k(root)
    text = str(info.value)
    dev_csv = root / "FSD50K.ground_truth" / "dev.csv"
    assert f"{dev_csv}:3: column 'labels': unknown label 'Barking'" in text
    assert f"{dev_csv}:4: column 'split'" in text


def test_fsd50k_missing_column_and_missing_audio(tmp_path: Path) -> None:
    root = make_fsd50k(tmp_path)
    dev_csv = root / "FSD50K.ground_truth" / "dev.csv"
    dev_csv.write_text("fname,labels,mids\n102,Clapping,/m/0l15bq\n")
    with pytest.raises(DatasetError, match=r"dev\.csv:1: column 'split': missing column"):
        load_fsd50k(root)
    dev_csv.write_text("fname,labels,mids,split\n102,Clapping,/m/0l15bq,train\n")
    (root / "FSD50K.dev_audio" / "102.wav").unlink()
    with pytest.raises(DatasetError, match=r"dev\.csv:2: column 'fname': audio file .*102\.wav"):
        load_fsd50k(root)


def test_fsd50k_precache_gives_multi_hot_targets(tmp_path: Path) -> None:
    report = precache(load_fsd50k(make_fsd50k(tmp_path / "fsd")), tmp_path / "c", CFG, 0, False)
    assert report.n_items == 3 and not report.skipped
    cache = Cache.open(tmp_path / "c")
    assert cache.multi_label
    np.testing.assert_array_equal(cache.targets, [[1, 1, 1, 0], [0, 0, 0, 1], [0, 1, 1, 0]])
    np.testing.assert_array_equal(cache.indices_for_folds(["val"]), [2])


# ---------------------------------------------------------------- folders of users' recordings


def test_folder_per_label(tmp_path: Path) -> None:
    root = make_label_folders(tmp_path / "mine")
    manifest = load_folder(root)
    assert manifest.labels == ("clap", "doorbell") and not manifest.multi_label
    assert [(i.path.name, i.labels) for i in manifest.items] == [
        ("a.wav", ("clap",)),
        ("b.flac", ("clap",)),
        ("c.ogg", ("doorbell",)),
    ]
    report = precache(manifest, tmp_path / "cache", CFG, workers=0, progress=False)
    assert report.n_items == 3
    np.testing.assert_array_equal(
        Cache.open(tmp_path / "cache").source_rates, [16_000, 44_100, 48_000]
    )


def test_folder_labels_csv(tmp_path: Path) -> None:
    manifest = load_folder(make_labels_csv(tmp_path / "mine"))
    assert manifest.multi_label
    assert manifest.labels == ("bark", "clap", "dog", "speech")
    assert [(i.labels, i.fold) for i in manifest.items] == [
        (("clap", "speech"), "1"),
        (("dog", "bark"), "2"),
        (("dog",), "1"),
    ]
    (tmp_path / "mine" / "labels.csv").write_text("file,labels\nrec/a.wav,\nrec/zz.wav,dog\n")
    with pytest.raises(DatasetError) as info:
        load_folder(tmp_path / "mine")
    assert "labels.csv:2: column 'labels': empty label" in str(info.value)
    assert "labels.csv:3: column 'file'" in str(info.value)


def test_labels_csv_unquoted_multi_label_row_is_a_problem(tmp_path: Path) -> None:
    """csv files extra fields under no column: `a,dog,rain` lost rain, `a,dog,rain,1` got
    fold 'rain'. Both are reported with the line, and the quoted form still loads."""
    root = make_labels_csv(tmp_path / "mine")
    csv_path = root / "labels.csv"
    csv_path.write_text("file,labels,fold\nrec/a.wav,dog,rain,1\nrec/c.ogg,dog,1\n")
    with pytest.raises(DatasetError) as info:
        load_folder(root)
    assert str(info.value).startswith(f"{csv_path}:2: 4 fields but the header has 3")
    assert "quote multi-label fields" in str(info.value)
    csv_path.write_text("file,labels\nrec/a.wav,dog,rain\nrec/c.ogg,dog\nrec/b.flac,x,y,z\n")
    with pytest.raises(DatasetError) as info:
        load_folder(root)
    assert [p.split(": ")[0] for p in info.value.problems] == [f"{csv_path}:2", f"{csv_path}:4"]
    csv_path.write_text('file,labels,fold\nrec/a.wav,"dog,rain",1\n')
    assert [(i.labels, i.fold) for i in load_folder(root).items] == [(("dog", "rain"), "1")]


def test_layout_detection(tmp_path: Path) -> None:
    assert load_dataset(make_esc50(tmp_path / "e")).name == "esc50"
    assert load_dataset(make_fsd50k(tmp_path / "f")).name == "fsd50k"
    assert load_dataset(make_label_folders(tmp_path / "d")).labels == ("clap", "doorbell")
    assert load_dataset(make_labels_csv(tmp_path / "c")).multi_label
    assert load_dataset(tmp_path / "e", layout="folder").labels == ("audio",)
    (tmp_path / "nothing" / "sub").mkdir(parents=True)
    with pytest.raises(DatasetError, match="labels.csv"):
        load_dataset(tmp_path / "nothing")
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "absent")


def test_manifest_rejects_labels_outside_its_vocabulary() -> None:
    with pytest.raises(DatasetError, match="vocabulary"):
        Manifest((Item(Path("x.wav"), ("cat",), ""),), ("dog",), "t", False)


# ---------------------------------------------------------------- statistics and examples


def test_stats_equal_numpy_over_the_cached_arrays(
    esc50_cache: tuple[Path, Path, object], tmp_path: Path
) -> None:
    _, source, _ = esc50_cache
    cache_dir = tmp_path / "cache"
    shutil.copytree(source, cache_dir)
    mels = np.load(cache_dir / "mels.npy").astype(np.float64)
    mean, std = compute_stats(cache_dir, chunk=3)
    assert mean == pytest.approx(mels.mean(), rel=1e-9) and std == pytest.approx(
        mels.std(), rel=1e-9
    )
    train, _, _ = split_indices(Cache.open(cache_dir), val_folds=["2"])
    mean, std = compute_stats(cache_dir, indices=train, chunk=1)
    assert mean == pytest.approx(mels[train].mean(), rel=1e-9)
    assert std == pytest.approx(mels[train].std(), rel=1e-9)
    stats = json.loads((cache_dir / "stats.json").read_text())
    assert stats == {"mean": mean, "std": std, "n_items": 2}
    frontend = Cache.open(cache_dir).frontend
    assert (frontend.mean, frontend.std) == (mean, std)


def test_int8_calibration_clips_come_from_the_training_folds_only(
    esc50_cache: tuple[Path, Path, object], tmp_path: Path
) -> None:
    # A cross-validation model's INT8 ranges must not be calibrated on its test fold: the
    # training folds are the ones stats.json was computed on.
    _, source, _ = esc50_cache
    cache_dir = tmp_path / "cache"
    shutil.copytree(source, cache_dir)
    cache = Cache.open(cache_dir)
    held_out = cache.folds[-1]
    train = cache.indices_for_folds([f for f in cache.folds if f != held_out])
    assert 0 < len(train) < len(cache)
    compute_stats(cache_dir, indices=train, folds=cache.folds_of(train))
    assert stats_folds(cache_dir) == tuple(sorted(cache.folds_of(train)))
    cache = Cache.open(cache_dir)
    fe = cache.frontend
    mels = np.load(cache_dir / "mels.npy")
    got = parity_inputs_from(cache_dir, 128, training_folds_only=True)
    assert np.allclose(got[:, 0], (mels[train] - fe.mean) / fe.std)
    # With the model's own statistics instead of the cache's.
    model_fe = fe.with_stats(fe.mean + 5.0, fe.std * 2.0)
    got = parity_inputs_from(cache_dir, 2, training_folds_only=True, frontend=model_fe)
    assert len(got) == 2 and np.allclose(got[0, 0], (mels[train[0]] - fe.mean - 5.0) / (fe.std * 2))
    # Without recorded folds (older stats.json) every row may be drawn.
    compute_stats(cache_dir)
    assert stats_folds(cache_dir) is None
    assert len(parity_inputs_from(cache_dir, 128, training_folds_only=True)) == len(mels)


def _cache_with_stats(source: Path, tmp_path: Path) -> Cache:
    cache_dir = tmp_path / "cache"
    shutil.copytree(source, cache_dir)
    compute_stats(cache_dir)
    return Cache.open(cache_dir)


def test_cached_dataset_returns_normalised_examples(
    esc50_cache: tuple[Path, Path, object], tmp_path: Path
) -> None:
    cache = _cache_with_stats(esc50_cache[1], tmp_path)
    mean, std = cache.frontend.mean, cache.frontend.std
    assert std > 1 and mean < 0  # real statistics, not the identity
    for augment in (None, AugmentConfig(enabled=False)):
        data = CachedDataset(cache, [3, 1], augment=augment)
        assert len(data) == 2
        x, y = data[0]
        assert x.shape == (1, 128, 256) and x.dtype == torch.float32 and y.dtype == torch.float32
        np.testing.assert_allclose(x[0].numpy(), (cache.mels[3] - mean) / std, rtol=1e-6, atol=1e-5)
        np.testing.assert_array_equal(y.numpy(), cache.targets[3])


def test_augmented_examples_are_reproducible_and_worker_independent(
    esc50_cache: tuple[Path, Path, object], tmp_path: Path
) -> None:
    cache = _cache_with_stats(esc50_cache[1], tmp_path)
    data = CachedDataset(cache, np.arange(4), augment=AugmentConfig(), seed=7)
    plain = CachedDataset(cache, np.arange(4))
    first = torch.stack([data[i][0] for i in range(4)])
    assert not torch.equal(first, torch.stack([plain[i][0] for i in range(4)]))
    torch.testing.assert_close(first, torch.stack([data[i][0] for i in range(4)]))
    loader = DataLoader(data, batch_size=2, num_workers=2)
    torch.testing.assert_close(torch.cat([x for x, _ in loader]), first)
    data.set_epoch(1)
    assert not torch.equal(torch.stack([data[i][0] for i in range(4)]), first)


def test_pos_weights_from_label_frequencies() -> None:
    targets = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=np.float32)
    np.testing.assert_allclose(pos_weights(targets), [1.0, 3.0, 10.0])
    np.testing.assert_allclose(pos_weights(targets, clip=(0.1, 2.0)), [1 / 3, 2.0, 2.0], rtol=1e-6)
    assert pos_weights(targets).dtype == np.float32


def test_split_indices_by_fold(esc50_cache: tuple[Path, Path, object]) -> None:
    cache = Cache.open(esc50_cache[1])
    train, val, test = split_indices(cache, val_folds=["2"])
    np.testing.assert_array_equal(train, [0, 1])
    np.testing.assert_array_equal(val, [2, 3])
    assert test.size == 0
    train, val, test = split_indices(cache, val_folds=[1])
    np.testing.assert_array_equal(train, [2, 3])
    np.testing.assert_array_equal(val, [0, 1])
    with pytest.raises(ValueError, match="no training clips"):
        split_indices(cache, val_folds=[2], test_folds=["1"])
    with pytest.raises(ValueError, match="not in the cache"):
        split_indices(cache, val_folds=["5"])
    with pytest.raises(ValueError, match="both"):
        split_indices(cache, val_folds=["1"], test_folds=["1"])


# ---------------------------------------------------------------- real recordings


def test_precache_real_esc50_clips(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "esc50"
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    header, rows = None, []
    for subset in ("esc50-fold4-dev", "esc50-16k-folds123"):
        lines = (shared_data / subset / "meta" / "esc50.csv").read_text().splitlines()
        header = lines[0]
        for line in lines[1:9]:
            name = line.split(",", 1)[0]
            (root / "audio" / name).symlink_to(shared_data / subset / "audio" / name)
            rows.append(line)
    (root / "meta" / "esc50.csv").write_text("\n".join([header, *rows]) + "\n")
    manifest = load_dataset(root)
    assert manifest.name == "esc50" and len(manifest) == 16
    report = precache(manifest, tmp_path / "cache", CFG, workers=2, progress=False)
    assert report.n_items == 16 and not report.skipped
    cache = Cache.open(tmp_path / "cache")
    assert cache.mels.shape == (16, 128, 256)
    np.testing.assert_array_equal(cache.source_rates, [44_100] * 8 + [16_000] * 8)
    assert np.isfinite(cache.mels).all()
    peaks = cache.mels.max(axis=(1, 2))
    assert (cache.mels.min(axis=(1, 2)) >= peaks - CFG.top_db - 1e-3).all()
    # 16 kHz sources hold nothing above 8 kHz: their top bins sit near the clip floor.
    top = cache.mels[8:, -10:, :].mean(axis=(1, 2))
    assert (top < peaks[8:] - CFG.top_db + 10).all()


def test_merge_keeps_the_first_vocabulary_and_appends_new_labels(tmp_path: Path) -> None:
    from training.datasets import merge_manifests

    full = Manifest(
        (Item(tmp_path / "a.wav", ("dog",), "1"), Item(tmp_path / "b.wav", ("rain",), "1")),
        ("dog", "rain", "clapping"),
        "esc50",
        False,
    )
    claps = Manifest((Item(tmp_path / "c.wav", ("clapping",), "2"),), ("clapping",), "synth", False)
    merged = merge_manifests([full, claps])
    assert merged.labels == ("dog", "rain", "clapping")  # the first folder's output order
    assert [i.labels for i in merged.items] == [("dog",), ("rain",), ("clapping",)]
    extra = Manifest(
        (Item(tmp_path / "d.wav", ("siren",), "2"), Item(tmp_path / "e.wav", ("dog",), "2")),
        ("siren", "dog"),
        "other",
        False,
    )
    more = Manifest((Item(tmp_path / "f.wav", ("bell",), "3"),), ("bell", "siren"), "more", False)
    merged = merge_manifests([full, extra, more])
    # New labels come after the first vocabulary, in the order they first appear, so a
    # model trained on the first folder keeps its output positions.
    assert merged.labels == ("dog", "rain", "clapping", "siren", "bell")
    assert [i.labels for i in merged.items][-3:] == [("siren",), ("dog",), ("bell",)]
    with pytest.raises(DatasetError, match="the same recording"):
        merge_manifests([full, full])

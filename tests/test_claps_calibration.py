"""Calibration file round trip, clear errors, and how it changes the clap settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from claudio_daemon.calibrate.model import (
    Calibration,
    CalibrationError,
    apply_calibration,
    load_calibration,
    save_calibration,
)
from claudio_daemon.detect.settings import ClapSettings


def make() -> Calibration:
    return Calibration(
        device="USB mic",
        sample_rate=22050,
        noise_floor_db=-62.0,
        clap_level_db=-18.0,
        onset_threshold_db=12.0,
        min_gap_s=0.1,
        max_gap_s=1.0,
        end_silence_s=1.1,
    )


@pytest.mark.parametrize("name", ["cal.yaml", "cal.json"])
def test_round_trip(tmp_path, name) -> None:
    cal = make()
    path = tmp_path / "sub" / name
    save_calibration(cal, path)
    assert load_calibration(path) == cal


def test_saving_follows_a_link_and_leaves_no_temporary_file(tmp_path) -> None:
    """A calibration.yaml linked to the service's folder became a plain file beside the
    link; a failed write left `<name>.tmp` behind."""
    real = tmp_path / "state" / "calibration.yaml"
    save_calibration(make(), real)
    link = tmp_path / "calibration.yaml"
    link.symlink_to(real)
    changed = make().model_copy(update={"onset_threshold_db": 14.0})
    save_calibration(changed, link)
    assert link.is_symlink() and load_calibration(real) == changed
    assert oct(real.stat().st_mode & 0o777) == "0o644"  # the service's user reads it
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    with pytest.raises(CalibrationError, match="cannot write"):
        save_calibration(make(), folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "calibration.yaml",
        "folder.yaml",
        "state",
    ]
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["calibration.yaml"]


def test_bad_files_name_file_line_and_field(tmp_path) -> None:
    bad = tmp_path / "cal.yaml"
    bad.write_text("noise_floor_db: -60\nclap_level_db: [\n")
    with pytest.raises(CalibrationError, match=r"cal\.yaml, line \d+: invalid YAML"):
        load_calibration(bad)
    bad.write_text("noise_floor_db: -60\nclap_level_db: -20\nonset_threshold_db: 99\n")
    with pytest.raises(CalibrationError, match="onset_threshold_db"):
        load_calibration(bad)
    bad.write_text("noise_floor_db: -60\nclap_level_db: -20\nonset_threshold_db: 9\nfoo: 1\n")
    with pytest.raises(CalibrationError, match="foo"):
        load_calibration(bad)
    with pytest.raises(CalibrationError, match="cannot read"):
        load_calibration(tmp_path / "missing.yaml")
    js = tmp_path / "cal.json"
    js.write_text("{not json")
    with pytest.raises(CalibrationError, match=r"cal\.json, line 1: invalid JSON"):
        load_calibration(js)


def test_inconsistent_values_rejected() -> None:
    with pytest.raises(ValidationError, match="clap_level_db"):
        Calibration(noise_floor_db=-20, clap_level_db=-30, onset_threshold_db=10)
    with pytest.raises(ValidationError, match="ISO"):
        Calibration(noise_floor_db=-60, clap_level_db=-30, onset_threshold_db=10, created="x")


def test_apply_calibration() -> None:
    base = ClapSettings()
    tuned = apply_calibration(base, make())
    assert tuned.onset_threshold_db == 12.0
    assert (tuned.min_gap_s, tuned.max_gap_s, tuned.end_silence_s) == (0.1, 1.0, 1.1)
    assert base.min_level_db <= tuned.min_level_db <= -18.0 - 12.0
    assert tuned.veto_labels == base.veto_labels  # untouched fields stay


def test_settings_are_strict_and_bounded() -> None:
    with pytest.raises(ValidationError):
        ClapSettings(onset_treshold_db=10)  # typo is an error
    with pytest.raises(ValidationError):
        ClapSettings(onset_threshold_db=100)
    with pytest.raises(ValidationError, match="min_gap_s"):
        ClapSettings(min_gap_s=1.0, max_gap_s=0.5)

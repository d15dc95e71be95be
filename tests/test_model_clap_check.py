"""A model carries its clap check's operating point; the daemon uses it unless rules.yaml
sets one, and the training CLI writes it (export --clap-check, clap-check --set)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from claudio_daemon.detect.settings import ClapSettings
from claudio_daemon.events import ClapPattern
from claudio_daemon.model.classifier import OnnxClassifier
from claudio_daemon.model.metadata import (
    CLAP_CHECK_KEYS,
    CLAP_CHECK_RANGES,
    ModelMetadata,
    ModelMetadataError,
)
from claudio_daemon.pipeline import Pipeline
from claudio_daemon.rules.loader import parse_rules
from tests.fixtures.onnx_model import TINY_FRONTEND, build_tiny_onnx_model
from tests.test_claps import scene
from tests.test_pipeline import RULES

pytest.importorskip("onnx")


def _meta(**check: object) -> ModelMetadata:
    return ModelMetadata(
        labels=("clapping",), frontend=TINY_FRONTEND, model_name="m", clap_check=check
    )  # type: ignore[arg-type]


def test_a_model_may_carry_exactly_what_rules_yaml_may_set() -> None:
    """The bounds are written twice, in ClapSettings (rules.yaml) and in the metadata
    reader (which must not import the detector's settings): a value one side accepts and
    the other refuses would make a model unloadable or a rules file unusable with it."""
    for key in CLAP_CHECK_KEYS:
        bounds = {type(m).__name__: m for m in ClapSettings.model_fields[key].metadata}
        field_range = (float(bounds["Ge"].ge), float(bounds["Le"].le))
        assert field_range == CLAP_CHECK_RANGES.get(key, (0.0, 1.0)), key


def test_metadata_round_trip_and_errors() -> None:
    meta = _meta(min_clap_score=0.6, veto_margin=0.1, min_single_clap_score=0.2, min_clap_rise=0.4)
    props = meta.to_onnx_props()
    assert ModelMetadata.from_onnx_props(props) == meta
    # A model without one writes no key, so files from before stay byte-identical.
    assert "claudio.clap_check" not in _meta().to_onnx_props()
    assert ModelMetadata.from_onnx_props(_meta().to_onnx_props()).clap_check == {}
    # The weighed evidence is a sum of scores, so it may lie above 1.
    weighed = _meta(min_clap_evidence=1.25)
    assert ModelMetadata.from_onnx_props(weighed.to_onnx_props()).clap_check == {
        "min_clap_evidence": 1.25
    }
    assert ClapSettings().with_defaults(weighed.clap_check).min_clap_evidence == 1.25
    for raw, needle in [
        ('{"min_clap_score": 1.5}', "clap_check.min_clap_score must be in [0, 1]"),
        ('{"min_clap_evidence": 2.5}', "clap_check.min_clap_evidence must be in [0, 2]"),
        ('{"highpass_hz": 300}', "unknown setting 'highpass_hz'"),
        ('{"veto_margin": "high"}', "clap_check.veto_margin must be a number"),
        ('{"veto_margin": true}', "clap_check.veto_margin must be a number"),
        ("[0.5]", "clap_check must be a JSON object"),
        ("{0.5", "malformed Claudio metadata"),
    ]:
        with pytest.raises(ModelMetadataError) as err:
            ModelMetadata.from_onnx_props({**props, "claudio.clap_check": raw}, "a.onnx")
        assert str(err.value).startswith("a.onnx: ") and needle in str(err.value)


def test_user_settings_win_over_the_models() -> None:
    model = {"min_clap_score": 0.8, "veto_margin": 0.2}
    assert ClapSettings().with_defaults(model).min_clap_score == 0.8
    mine = ClapSettings(min_clap_score=0.3).with_defaults(model)
    assert (mine.min_clap_score, mine.veto_margin) == (0.3, 0.2)
    same = ClapSettings()
    assert same.with_defaults({}) is same


def _patterns(pipe: Pipeline) -> list[ClapPattern]:
    x = scene([1.0, 1.4], 3.5).astype(np.float32)
    return [e for e in pipe.process(x) if isinstance(e, ClapPattern)]


def test_the_pipeline_takes_the_models_operating_point(tmp_path: Path, caplog) -> None:
    # The tiny model gives two synthetic claps a clapping score of about 0.49, and the quiet
    # second before them about as much (its scores hardly move): these models switch the
    # check of the context off, as a model may.
    off = {"min_clap_rise": 0.0}
    lenient = OnnxClassifier(
        build_tiny_onnx_model(tmp_path / "lenient.onnx", clap_check={"min_clap_score": 0.3, **off})
    )
    with caplog.at_level(logging.INFO, logger="claudio_daemon.pipeline"):
        pipe = Pipeline(parse_rules(RULES), lenient)
    assert (
        "clap check as measured for model tiny-test: min_clap_rise 0, min_clap_score 0.3"
        in caplog.text
    )
    assert [p.count for p in _patterns(pipe)] == [2]
    strict = OnnxClassifier(
        build_tiny_onnx_model(tmp_path / "strict.onnx", clap_check={"min_clap_score": 0.9, **off})
    )
    pipe = Pipeline(parse_rules(RULES), strict)
    assert _patterns(pipe) == []
    ((pattern, verdict),) = pipe.claps.rejected
    assert pattern.count == 2 and verdict.reason.endswith("< 0.90")
    # The user's own value in rules.yaml wins over the model's, also after a reload.
    mine = parse_rules(RULES + "claps: {min_clap_score: 0.2}\n")
    assert [p.count for p in _patterns(Pipeline(mine, strict))] == [2]
    pipe = Pipeline(parse_rules(RULES), strict)
    pipe.replace_rules(mine)
    assert pipe.claps.settings.min_clap_score == 0.2
    pipe.replace_rules(parse_rules(RULES))
    assert pipe.claps.settings.min_clap_score == 0.9
    assert [p.count for p in _patterns(pipe)] == []

"""What an exported ONNX model says about itself, so the daemon needs no other file.

Training writes these keys with `ModelMetadata.to_onnx_props()` into the ONNX
`metadata_props`; the daemon reads them back with `ModelMetadata.from_onnx_props()`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from claudio_daemon.features.frontend import FrontEndConfig

PREFIX = "claudio."
FORMAT_VERSION = 1
#: The clap check's settings a model may carry (`ModelMetadata.clap_check`): they depend on
#: how that model's scores are calibrated, so they travel with it, not with the daemon.
CLAP_CHECK_KEYS: tuple[str, ...] = (
    "min_clap_score",
    "min_single_clap_score",
    "min_clap_rise",
    "veto_margin",
    "veto_min_score",
    "min_clap_evidence",
)
#: Where a clap-check value may lie: probabilities, except a sum of them. ClapSettings
#: says the same for rules.yaml (a test holds the two together).
CLAP_CHECK_RANGES: dict[str, tuple[float, float]] = {"min_clap_evidence": (0.0, 2.0)}


class ModelMetadataError(ValueError):
    """The ONNX file lacks, or has malformed, Claudio metadata."""


@dataclass(frozen=True)
class ModelMetadata:
    labels: tuple[str, ...]
    frontend: FrontEndConfig
    model_name: str
    #: Free-form summary of the training data: dataset, clip count, folds, licence.
    training_data: dict = field(default_factory=dict)
    #: "logits" (the daemon applies a sigmoid) or "probabilities".
    output: str = "logits"
    #: The clap check's operating point measured for this model (e.g. `min_clap_score`
    #: chosen with bench/verifier_sweep.py on held-out folds): the daemon uses these where
    #: rules.yaml does not set them. Optional, and an older daemon ignores it, so adding it
    #: needs no new format version.
    clap_check: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "clap_check", parse_clap_check(self.clap_check))

    def to_onnx_props(self) -> dict[str, str]:
        props = {
            PREFIX + "format_version": str(self.format_version),
            PREFIX + "labels": json.dumps(list(self.labels)),
            PREFIX + "frontend": self.frontend.to_json(),
            PREFIX + "model_name": self.model_name,
            PREFIX + "training_data": json.dumps(self.training_data, sort_keys=True),
            PREFIX + "output": self.output,
        }
        if self.clap_check:
            props[PREFIX + "clap_check"] = json.dumps(self.clap_check, sort_keys=True)
        return props

    @classmethod
    def from_onnx_props(cls, props: dict[str, str], source: str = "model") -> ModelMetadata:
        def need(key: str) -> str:
            try:
                return props[PREFIX + key]
            except KeyError:
                raise ModelMetadataError(
                    f"{source}: metadata key {PREFIX + key!r} is missing; "
                    "export the model with `claudio-train export`"
                ) from None

        try:
            version = int(need("format_version"))
            if version > FORMAT_VERSION:
                raise ModelMetadataError(
                    f"{source}: metadata format {version} is newer than this daemon "
                    f"understands ({FORMAT_VERSION}); upgrade claudio"
                )
            labels = json.loads(need("labels"))
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise ModelMetadataError(f"{source}: {PREFIX}labels must be a JSON list of names")
            if len(set(labels)) != len(labels):
                raise ModelMetadataError(f"{source}: {PREFIX}labels has duplicate names")
            output = need("output")
            if output not in ("logits", "probabilities"):
                raise ModelMetadataError(
                    f"{source}: {PREFIX}output must be logits or probabilities"
                )
            try:
                clap_check = parse_clap_check(json.loads(props.get(PREFIX + "clap_check", "{}")))
            except ModelMetadataError as exc:
                raise ModelMetadataError(f"{source}: {exc}") from None
            try:
                frontend = FrontEndConfig.from_json(need("frontend"))
            except ValueError as exc:
                if isinstance(exc, ModelMetadataError):
                    raise
                # Refuse at load: a bad std or hop would otherwise load fine and give NaN
                # scores (rules that never fire) or crash on the first audio block.
                raise ModelMetadataError(f"{source}: {PREFIX}frontend: {exc}") from None
            return cls(
                labels=tuple(labels),
                frontend=frontend,
                model_name=need("model_name"),
                training_data=json.loads(props.get(PREFIX + "training_data", "{}")),
                output=output,
                clap_check=clap_check,
                format_version=version,
            )
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            if isinstance(exc, ModelMetadataError):
                raise
            raise ModelMetadataError(f"{source}: malformed Claudio metadata: {exc}") from exc


def parse_clap_check(values: object) -> dict[str, float]:
    """Validate a clap-check operating point: known keys, each in its range."""
    if not isinstance(values, dict):
        raise ModelMetadataError(f"{PREFIX}clap_check must be a JSON object, got {values!r}")
    out: dict[str, float] = {}
    for key, value in values.items():
        if key not in CLAP_CHECK_KEYS:
            raise ModelMetadataError(
                f"{PREFIX}clap_check: unknown setting {key!r} (known: {', '.join(CLAP_CHECK_KEYS)})"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ModelMetadataError(f"{PREFIX}clap_check.{key} must be a number, got {value!r}")
        lo, hi = CLAP_CHECK_RANGES.get(key, (0.0, 1.0))
        if not lo <= float(value) <= hi:
            raise ModelMetadataError(
                f"{PREFIX}clap_check.{key} must be in [{lo:g}, {hi:g}], got {value}"
            )
        out[key] = float(value)
    return out

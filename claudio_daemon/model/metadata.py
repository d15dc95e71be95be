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
    format_version: int = FORMAT_VERSION

    def to_onnx_props(self) -> dict[str, str]:
        return {
            PREFIX + "format_version": str(self.format_version),
            PREFIX + "labels": json.dumps(list(self.labels)),
            PREFIX + "frontend": self.frontend.to_json(),
            PREFIX + "model_name": self.model_name,
            PREFIX + "training_data": json.dumps(self.training_data, sort_keys=True),
            PREFIX + "output": self.output,
        }

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
            return cls(
                labels=tuple(labels),
                frontend=FrontEndConfig.from_json(need("frontend")),
                model_name=need("model_name"),
                training_data=json.loads(props.get(PREFIX + "training_data", "{}")),
                output=output,
                format_version=version,
            )
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            if isinstance(exc, ModelMetadataError):
                raise
            raise ModelMetadataError(f"{source}: malformed Claudio metadata: {exc}") from exc

"""Model zoo: every model maps (B, 1, 128, 256) log-mels to (B, n_classes) logits."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from training.models.ast import ast
from training.models.resnet import resnet18
from training.models.se_resnet import se_resnet18
from training.models.simple_cnn import simple_cnn

_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "se_resnet18": se_resnet18,
    "resnet18": resnet18,
    "simple_cnn": simple_cnn,
    "ast": ast,
}

MODEL_NAMES: tuple[str, ...] = tuple(_FACTORIES)
DEFAULT_MODEL = "se_resnet18"


def create_model(name: str, n_classes: int, **kw) -> nn.Module:
    """Build a model by name; keyword arguments go to that model's constructor."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}"
        ) from None
    return factory(n_classes, **kw)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODEL_NAMES", "DEFAULT_MODEL", "create_model", "count_parameters"]

"""Model zoo: sizes, output shapes, and that a small model actually learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from claudio_daemon.features.frontend import FrontEndConfig
from training.frontend import LogMel
from training.losses import make_criterion
from training.models import MODEL_NAMES, count_parameters, create_model


def test_se_resnet18_has_the_expected_size() -> None:
    n = count_parameters(create_model("se_resnet18", 200))
    assert abs(n - 11.36e6) / 11.36e6 < 0.01, n
    # The SE modules are the only difference from ResNet18: two Linear layers per block.
    plain = count_parameters(create_model("resnet18", 200))
    se = sum(2 * c * (c // 16) + c // 16 + c for c in (64, 64, 128, 128, 256, 256, 512, 512))
    assert n - plain == se


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shape(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 128, 256))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg'.*se_resnet18"):
        create_model("vgg", 3)
    with pytest.raises(ValueError, match="n_classes"):
        create_model("simple_cnn", 0)


def test_ast_rejects_inputs_not_made_of_patches() -> None:
    with pytest.raises(ValueError, match="multiple of patch"):
        create_model("ast", 3, n_frames=250)


def _toy_batch(
    gen: np.random.Generator, n: int, fe: FrontEndConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Half pure tones (random pitch), half white noise, as normalised log-mels."""
    t = np.arange(fe.clip_samples) / fe.sample_rate
    waves, labels = [], []
    for i in range(n):
        if i % 2 == 0:
            waves.append(0.3 * np.sin(2 * np.pi * gen.uniform(300, 3000) * t))
        else:
            waves.append(0.1 * gen.standard_normal(t.size))
        labels.append([1.0, 0.0] if i % 2 == 0 else [0.0, 1.0])
    with torch.no_grad():
        db = LogMel(fe, normalise=False)(torch.tensor(np.stack(waves), dtype=torch.float32))
    x = (db - db.mean()) / db.std()
    return x, torch.tensor(labels)


def test_loss_falls_on_a_learnable_toy_problem() -> None:
    torch.manual_seed(0)
    gen = np.random.default_rng(0)
    # 1.5 s clips (65 frames) keep this quick on a shared CPU; the models pool globally.
    fe = FrontEndConfig(clip_seconds=1.5)
    x, y = _toy_batch(gen, 16, fe)
    model = create_model("simple_cnn", 2, dropout=0.0)
    crit = make_criterion(y.numpy(), clip=(1.0, 10.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        idx = torch.randperm(16)[:8]
        loss = crit(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.3 * np.mean(losses[:2]), losses
    model.eval()
    xt, yt = _toy_batch(gen, 8, fe)  # unseen clips
    with torch.no_grad():
        pred = model(xt).argmax(1)
    assert (pred == yt.argmax(1)).float().mean() >= 0.75


def test_pos_weight_follows_label_frequency_and_clip() -> None:
    targets = np.zeros((20, 3), dtype=np.float32)
    targets[:10, 0] = 1  # 10 of 20 -> weight 1
    targets[:4, 1] = 1  # 4 of 20 -> 16/4 = 4
    targets[:1, 2] = 1  # 1 of 20 -> 19, clipped to 10
    crit = make_criterion(targets, clip=(1.0, 10.0))
    np.testing.assert_allclose(crit.pos_weight.numpy(), [1.0, 4.0, 10.0])
    assert make_criterion(targets, clip=None).pos_weight is None
    with pytest.raises(ValueError, match="clip"):
        make_criterion(targets, clip=(0.0, 10.0))
    # With weight 1 it is plain BCE, as for a balanced single-label problem.
    logits, y = torch.tensor([[0.3, -1.0, 2.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    assert float(make_criterion(None)(logits, y)) == pytest.approx(float(plain))

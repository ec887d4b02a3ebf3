"""Eq. 6, checked against values computed by hand from the formula."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from eqface.config import MarginConfig, ModelConfig
from eqface.losses import CombinedMarginLoss, NormalizedClassifier
from eqface.models import build_model
from eqface.train.steps import Step, StepModel, control_weights

PAPER = MarginConfig()  # m1 = 1.0, m2 = 0.3, m3 = 0.2, S = 64


def test_quality_one_is_the_combined_margin_loss() -> None:
    # cos θ_y = 0.5 (θ_y = π/3), other class cos = 0.1, two classes, S = 64:
    # target = cos(π/3 + 0.3) − 0.2 = 0.221740 − 0.2 = 0.021740; logits (1.391375, 6.4)
    # loss = log(1 + e^(6.4 − 1.391375)) = 5.015283
    loss = CombinedMarginLoss(PAPER)(torch.tensor([[0.5, 0.1]]), torch.tensor([0]), torch.tensor([1.0]))
    assert loss.item() == pytest.approx(5.015283, abs=1e-5)
    no_quality = CombinedMarginLoss(PAPER)(torch.tensor([[0.5, 0.1]]), torch.tensor([0]))
    assert no_quality.item() == pytest.approx(5.015283, abs=1e-5)


def test_arcface_and_cosface_special_cases() -> None:
    cos, labels = torch.tensor([[0.8, 0.3, -0.2]]), torch.tensor([0])
    arc = CombinedMarginLoss(MarginConfig(m1=1.0, m2=0.5, m3=0.0, scale=30.0))(cos, labels)
    t = 30 * math.cos(math.acos(0.8) + 0.5)
    assert arc.item() == pytest.approx(-t + math.log(math.exp(t) + math.exp(9.0) + math.exp(-6.0)), abs=1e-4)
    cosface = CombinedMarginLoss(MarginConfig(m1=1.0, m2=0.0, m3=0.35, scale=30.0))(cos, labels)
    t = 30 * (0.8 - 0.35)
    assert cosface.item() == pytest.approx(-t + math.log(math.exp(t) + math.exp(9.0) + math.exp(-6.0)), abs=1e-4)


@pytest.mark.parametrize("n_classes", [2, 10, 1000])
def test_quality_zero_gives_log_n_classes(n_classes: int) -> None:
    torch.manual_seed(0)
    cos = torch.rand(4, n_classes) * 2 - 1
    loss = CombinedMarginLoss(PAPER)(cos, torch.tensor([0, 1, 0, 1]), torch.zeros(4))
    assert loss.item() == pytest.approx(math.log(n_classes), rel=1e-6)


def test_quality_scales_the_logits_of_one_sample() -> None:
    # s = 0.5 halves every logit: target 0.5·64·0.021740 = 0.695688, other 0.5·64·0.1 = 3.2
    loss = CombinedMarginLoss(PAPER)(torch.tensor([[0.5, 0.1]]), torch.tensor([0]), torch.tensor([0.5]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(3.2 - 0.695688)), abs=1e-5)


def test_safe_beyond_pi() -> None:
    loss_fn = CombinedMarginLoss(PAPER)
    cos = torch.tensor([[-1.0, 0.3], [-0.99, 0.0], [1.0, -1.0], [-0.96, 0.2]], requires_grad=True)
    s = torch.tensor([1.0, 0.7, 1.0, 0.2], requires_grad=True)
    loss = loss_fn(cos, torch.tensor([0, 0, 0, 0]), s)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(cos.grad).all() and torch.isfinite(s.grad).all()
    # θ + m2 > π: the linear continuation m1·(cos θ − (1 − cos m2)) − m3; at cos θ = −0.99: −1.034534
    assert loss_fn.target_logit(torch.tensor(-0.99)).item() == pytest.approx(
        -0.99 - (1 - math.cos(0.3)) - 0.2, abs=1e-6
    )


def test_target_logit_is_continuous_and_decreasing_in_theta() -> None:
    loss_fn = CombinedMarginLoss(PAPER)
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    values = loss_fn.target_logit(torch.cos(theta))
    assert (values[1:] <= values[:-1] + 1e-9).all()
    assert (values[1:] - values[:-1]).abs().max() < 1e-2  # no jump at θ = π − m2


def test_step2_gradients_reach_quality_only() -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig(backbone="tiny", embedding_size=16, image_size=(32, 32), quality_hidden=8))
    model = StepModel(Step.TWO, net, NormalizedClassifier(16, 5), CombinedMarginLoss(PAPER)).train()
    out = model(torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 0]))
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.quality.parameters())
    assert all(p.grad is None for p in net.backbone.parameters())
    assert all(p.grad is None for p in model.classifier.parameters())


def test_qwdf_drops_low_quality_samples_from_step3() -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig(backbone="tiny", embedding_size=16, image_size=(32, 32), quality_hidden=8))
    classifier = NormalizedClassifier(16, 3)
    model = StepModel(Step.THREE, net, classifier, CombinedMarginLoss(PAPER), qwdf_threshold=0.2).train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x, torch.tensor([0, 1]), sample_quality=torch.tensor([0.1, 0.15]))  # both below s_th
    assert out.loss.item() == pytest.approx(math.log(3), rel=1e-6)
    out.loss.backward()
    assert classifier.weight.grad.abs().max() == 0
    assert out.quality.tolist() == [0.0, 0.0]


def test_qwdf_leaves_dropped_samples_out_of_batchnorm_and_the_loss_mean() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="tiny", embedding_size=16, image_size=(32, 32), quality_hidden=8)
    net, classifier, loss_fn = build_model(cfg), NormalizedClassifier(16, 3), CombinedMarginLoss(PAPER)
    twin = copy.deepcopy(net)
    x, y = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1])
    s = torch.tensor([0.9, 0.1, 0.8, 0.15, 0.6])
    out = StepModel(Step.THREE, net, classifier, loss_fn, qwdf_threshold=0.5).train()(x, y, sample_quality=s)
    keep = s >= 0.5
    expected = StepModel(Step.THREE, twin, copy.deepcopy(classifier), loss_fn).train()(x[keep], y[keep], s[keep])
    assert out.samples == 3 and out.quality.tolist() == s[keep].tolist()
    torch.testing.assert_close(out.loss, expected.loss)
    norms = [(a, b) for a, b in zip(net.modules(), twin.modules(), strict=True) if isinstance(a, torch.nn.BatchNorm2d)]
    assert norms
    for mine, theirs in norms:  # running statistics saw only the kept samples
        torch.testing.assert_close(mine.running_mean, theirs.running_mean)
        torch.testing.assert_close(mine.running_var, theirs.running_var)


def test_unweighted_step3_is_the_plain_margin_loss() -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig(backbone="tiny", embedding_size=16, image_size=(32, 32), quality_hidden=8))
    classifier = NormalizedClassifier(16, 3)
    loss_fn = CombinedMarginLoss(PAPER)
    model = StepModel(Step.THREE, net, classifier, loss_fn).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        expected = loss_fn(classifier(net.embed_and_map(x)[0]), y)
        out = model(x, y)
    assert out.quality.tolist() == [1.0] * 4
    torch.testing.assert_close(out.loss, expected)


def test_step3_control_weights_keep_the_mean_or_the_distribution() -> None:
    q = torch.tensor([0.1, 0.9, 0.4, 0.6, 0.2])
    assert torch.equal(control_weights(q, "precomputed", 0), q)
    mean = control_weights(q, "mean", 0)
    torch.testing.assert_close(mean, torch.full_like(q, 0.44))
    shuffled = control_weights(q, "shuffled", 0)
    assert sorted(shuffled.tolist()) == sorted(q.tolist()) and not torch.equal(shuffled, q)
    assert torch.equal(shuffled, control_weights(q, "shuffled", 0))  # seeded
    with pytest.raises(ValueError, match="online"):
        control_weights(q, "online", 0)


def test_head_only_step3_leaves_the_feature_extractor_and_its_statistics_alone() -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig(backbone="tiny", embedding_size=16, image_size=(32, 32), quality_hidden=8))
    before = copy.deepcopy(net.state_dict())
    model = StepModel(Step.THREE, net, NormalizedClassifier(16, 3), CombinedMarginLoss(PAPER), head_only=True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(3):
        out = model(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), sample_quality=torch.full((4,), 0.7))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    head = {f"backbone.{name}." for name in net.backbone.head_modules}
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(any(k.startswith(h) for h in head) for k in changed), changed
    assert not any(k.startswith("quality.") for k in changed)

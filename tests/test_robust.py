"""The --robust methods (nas.engine.robust): EAC's loss against hand computations, its
gradients, random erasing, small-loss selection against hand-made batches, both inside the
trainer's step, and the refusal of EAC for networks without class activation maps."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas.engine import robust
from nas.runtime.errors import FerNasError
from tests.test_train import cfg, make_data, tiny_model


class ConvCam(nn.Module):
    """One 1×k convolution, global pooling and a linear head: a network whose class activation
    maps can be written down by hand."""

    supports_cams = True

    def __init__(self, kernel: list[float], head: list[list[float]]):
        super().__init__()
        k = len(kernel)
        self.conv = nn.Conv2d(1, 1, (1, k), padding=(0, k // 2), bias=False)
        self.classifier = nn.Linear(1, len(head))
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(kernel).view(1, 1, 1, k))
            self.classifier.weight.copy_(torch.tensor(head))
            self.classifier.bias.fill_(0.7)  # the maps leave the bias out

    def forward(self, x, features=False):
        f = self.conv(x)
        logits = self.classifier(f.mean((2, 3)))
        return (logits, None, f) if features else logits


def _consistency(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    _, _, f1 = model(x, features=True)
    _, _, f2 = model(torch.flip(x, dims=[-1]), features=True)
    return robust.flip_consistency(robust.class_activation_maps(f1, model.classifier),
                                   robust.class_activation_maps(f2, model.classifier))


def test_a_flip_equivariant_network_has_zero_consistency_loss():
    # a kernel symmetric left-right with symmetric padding: conv(flip x) = flip(conv x)
    model = ConvCam([0.5, 1.0, 0.5], [[1.0], [-2.0]])
    x = torch.randn(4, 1, 5, 6)
    assert _consistency(model, x).item() == pytest.approx(0.0, abs=1e-12)


def test_an_asymmetric_network_gives_the_hand_value():
    # kernel [1, 0] with padding 1 on a 1×2 image [a, b]: output width 3 = [0·pad+1·... ] computed by hand
    model = ConvCam([1.0, 0.0], [[2.0]])
    a, b = 3.0, 5.0
    x = torch.tensor([[[[a, b]]]])
    # conv (cross-correlation, padding 1 each side): positions over [0, a, b, 0] with [1, 0]: [0, a, b]
    f = model.conv(x)
    assert f.flatten().tolist() == [0.0, a, b]
    # the flip [b, a] gives [0, b, a]; flipped back [a, b, 0]; maps are 2·features (bias left out)
    expected = ((2 * 0 - 2 * a) ** 2 + (2 * a - 2 * b) ** 2 + (2 * b - 0) ** 2) / 3
    assert _consistency(model, x).item() == pytest.approx(expected)


def test_eac_gradients_reach_the_backbone_and_leave_the_classifier_weights_to_the_ce():
    model = ConvCam([1.0, 0.0, -0.5], [[1.0], [0.5]])
    loss = _consistency(model, torch.randn(3, 1, 4, 5))
    loss.backward()
    assert model.conv.weight.grad.abs().sum() > 0  # the backbone learns from the consistency term
    assert model.classifier.weight.grad is None  # the maps hold the classifier's weights fixed


def test_random_erasing_batched_and_seeded():
    x = torch.ones(64, 1, 20, 20)
    assert torch.equal(robust.random_erasing(x, torch.Generator().manual_seed(0), p=0.0), x)
    out = robust.random_erasing(x, torch.Generator().manual_seed(0), p=1.0, value=0.0)
    erased = (out == 0).flatten(1).sum(1).float() / 400
    assert (erased > 0).all() and (erased <= 0.25 + 0.06).all()  # one rectangle each, sides rounded
    again = robust.random_erasing(x, torch.Generator().manual_seed(0), p=1.0, value=0.0)
    assert torch.equal(out, again)
    # each erased region is one rectangle: its rows and columns form a full block
    for img in out[:8, 0]:
        rows, cols = (img == 0).any(1), (img == 0).any(0)
        assert (img == 0).sum() == rows.sum() * cols.sum()
    half = robust.random_erasing(torch.ones(4000, 1, 8, 8), torch.Generator().manual_seed(1))
    assert abs((half == 0).flatten(1).any(1).float().mean().item() - 0.5) < 0.03


def test_small_loss_selection_by_hand():
    losses = torch.tensor([0.1, 2.0, 0.5, 3.0, 0.5])
    assert robust.small_loss_mask(losses, 0.4).tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]  # ceil(2.0) = 2, ties by position
    assert robust.small_loss_mask(losses, 0.0).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]  # at least one
    assert robust.small_loss_mask(losses, 1.0).sum().item() == 5
    assert [robust.forget_rate(e, 0.3, 10) for e in (0, 5, 10, 40)] == pytest.approx([0.0, 0.15, 0.3, 0.3])
    assert robust.forget_rate(0, 0.3, 0) == 0.3


def test_smallloss_step_trains_on_the_kept_samples_only():
    """The step's loss equals the hand mean of the kept samples' cross-entropy."""
    from nas.engine.trainer import Classification
    from nas.runtime.distributed import single_process

    obj = Classification(tiny_model(auxiliary=False), make_data(32, 8, 8), cfg(robust="smallloss", robust_forget=0.5,
                                                                               robust_ramp=0, augment="light"),
                         device=torch.device("cpu"), dist=single_process("cpu"))
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [1.0, 0.0], [0.0, 0.1]])
    y = torch.tensor([0, 0, 0, 0])
    per = F.cross_entropy(logits, y, reduction="none")
    keep = robust.small_loss_mask(per, 0.5)
    assert keep.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert obj._ce(logits, None, y, keep).item() == pytest.approx(per[[0, 2]].mean().item())


def test_eac_step_runs_in_the_trainer_and_refuses_baselines():
    from nas.engine.trainer import Classification
    from nas.engine.loop import StepContext, UpdateGuard
    from nas.runtime.distributed import single_process

    dist = single_process("cpu")
    model = tiny_model()
    obj = Classification(model, make_data(32, 8, 8), cfg(robust="eac"), device=torch.device("cpu"), dist=dist)
    ctx = StepContext(augment=torch.Generator().manual_seed(0), guard=UpdateGuard(model, dist, False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = obj.step(0, 0, torch.arange(16), ctx)
    assert res.bad.item() == 0 and math.isfinite(res.sums[0].item())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(FerNasError, match="--robust eac needs class activation maps"):
        Classification(tiny_model("vgg_fer"), make_data(32, 8, 8), cfg(robust="eac"), device=torch.device("cpu"),
                       dist=dist)
    with pytest.raises(FerNasError, match="--robust 'magic'"):
        cfg(robust="magic")

"""--amp on CPU: off by default (fp32, reproducible); asked for, CPU bf16 autocast runs
(in the contiguous layout) and trains with finite gradients."""
import torch

from nas.runtime.checkpoint import RunDir
from nas.engine.trainer import Trainer
from nas.runtime.device import autocast
from tests.test_train import cfg, make_data, tiny_model


def test_autocast_helper():
    x = torch.randn(2, 3)
    w = torch.randn(3, 3)
    with autocast(torch.device("cpu"), False):
        assert (x @ w).dtype == torch.float32
    with autocast(torch.device("cpu"), True):
        assert (x @ w).dtype == torch.bfloat16


def test_trainer_cpu_amp_only_when_asked(tmp_path):
    data = make_data(48, 16, 16)
    default = Trainer(tiny_model(), data, cfg(epochs=1), RunDir(tmp_path / "a", enabled=False), device="cpu")
    assert default.amp is False
    seen = []
    model = tiny_model()
    model.classifier.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    tr = Trainer(model, data, cfg(epochs=1, amp=True), RunDir(tmp_path / "b", enabled=False), device="cpu")
    assert tr.amp is True
    # channels_last is turned off: in it, CPU bf16 gets the dilated convs' weight
    # gradients wrong (this fit stopped on an infinite gradient norm at step 1)
    assert tr.channels_last is False and default.channels_last is True
    res = tr.fit()
    assert seen and seen[0] == torch.bfloat16  # the forward really ran in bf16
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in model.parameters())
    assert 0.0 <= res["test_acc"] <= 100.0

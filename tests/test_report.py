"""Report plots: each function writes a real PNG; without matplotlib a notice, no crash."""
import builtins
import sys

import pytest
import torch
from torch import nn

from nas.engine import report
from nas.data.dataset import FER_CLASSES

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(p):
    return p is not None and p.is_file() and p.read_bytes()[:8] == PNG and p.stat().st_size > 1000


class _Tiny(nn.Module):
    def __init__(self, k=7):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, k)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))


def test_curves_confusion_misclassified_saliency_cells(tmp_path):
    rows = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 20 + e, "val_loss": 2.1 / e if e % 2 == 0 else "",
             "val_acc": 18 + e if e % 2 == 0 else "", "test_loss": "", "test_acc": ""} for e in range(1, 6)]
    assert _is_png(report.plot_curves(rows, tmp_path / "curves.png"))
    cm = torch.randint(0, 20, (7, 7))
    assert _is_png(report.plot_confusion(cm, FER_CLASSES, tmp_path / "cm.png"))

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (70, 1, 48, 48), dtype=torch.uint8, generator=g)
    labels = torch.arange(70) % 7
    preds = labels.clone()
    preds[::3] = (labels[::3] + 1) % 7
    assert _is_png(report.plot_misclassified(images, labels, preds, FER_CLASSES, tmp_path / "mis.png"))

    model = _Tiny()
    assert _is_png(report.plot_saliency(model, images, labels, FER_CLASSES, tmp_path / "sal.png",
                                        mean=0.5, std=0.25, crop=44))
    from nas.models.genotypes import load_genotype

    paths = report.plot_cells(load_genotype("FER_V1"), tmp_path)
    assert [p.name for p in paths] == ["cell_normal.png", "cell_reduce.png"]
    assert all(_is_png(p) for p in paths)


def test_saliency_is_the_input_gradient_of_the_loss():
    """Reference: a linear model's input gradient is known in closed form."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(44 * 44, 7))
    images = torch.randint(0, 256, (3, 1, 48, 48), dtype=torch.uint8)
    labels = torch.tensor([0, 3, 6])
    crops, maps = report.saliency(model, images, labels, mean=0.5, std=0.25, crop=44)
    x = crops.reshape(3, -1)
    p = model[1](x).softmax(1)
    onehot = torch.nn.functional.one_hot(labels, 7).float()
    grad = (p - onehot) @ model[1].weight  # d CE / d x for logits = W x + b
    torch.testing.assert_close(maps.reshape(3, -1), grad.abs(), rtol=1e-4, atol=1e-6)


def test_missing_matplotlib_is_a_notice(monkeypatch, tmp_path, capsys):
    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(report, "_NOTICE_SHOWN", False)
    for m in [k for k in sys.modules if k == "matplotlib" or k.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, m)
    assert report.plot_curves([{"epoch": 1, "train_loss": 1.0}], tmp_path / "c.png") is None
    assert report.write_report(tmp_path, metrics_rows=[{"epoch": 1}]) == []
    err = capsys.readouterr().err
    assert err.count("matplotlib is not installed") == 1
    assert not list(tmp_path.iterdir())

"""Baseline networks: published parameter counts, counts by formula, input sizes, gradients."""
import pytest
import torch

from nas.models.baselines import BASELINES, CNNDeep, CNNShallow, ResNetFer, VGGFer



def _count(model):
    return sum(p.numel() for p in model.parameters())


def conv(c_in, c_out, k=3, bias=False):
    return c_in * c_out * k * k + (c_out if bias else 0)


def bn(c):
    return 2 * c


def fc(n_in, n_out):
    return n_in * n_out + n_out


def test_vgg_fer_published_count():
    # Khaireddin & Chen: two conv3x3 (with bias) + BN per stage, 2x2x512 = 2048 features.
    expected = 0
    c_in = 1
    for w in (64, 128, 256, 512):
        expected += conv(c_in, w, bias=True) + bn(w) + conv(w, w, bias=True) + bn(w)
        c_in = w
    expected += fc(2048, 4096) + fc(4096, 4096) + fc(4096, 7)
    assert expected == 29_890_759
    assert _count(VGGFer()) == 29_890_759


def test_resnet_fer_published_count():
    block = lambda c: 2 * conv(c, c) + 2 * bn(c)  # noqa: E731
    expected = (conv(1, 64) + bn(64) + 2 * block(64)
                + conv(64, 128) + conv(128, 128) + 2 * bn(128) + conv(64, 128, k=1) + bn(128)  # strided, 1x1 shortcut
                + block(128) + fc(128 * 6 * 6, 500) + fc(500, 7))
    assert expected == 2_982_247
    assert _count(ResNetFer()) == 2_982_247


def test_cnn_shallow_count_by_formula():
    w1, w2 = CNNShallow.widths
    p = CNNShallow.pooled
    expected = conv(1, w1) + bn(w1) + conv(w1, w2) + bn(w2) + fc(w2 * p * p, 7)
    assert expected == 35_047
    assert _count(CNNShallow()) == expected
    assert sum(isinstance(m, torch.nn.Conv2d) for m in CNNShallow().modules()) == 2
    assert sum(isinstance(m, torch.nn.Linear) for m in CNNShallow().modules()) == 1


def test_cnn_deep_count_by_formula():
    widths = CNNDeep.widths
    p, h = CNNDeep.pooled, CNNDeep.hidden
    expected = sum(conv(a, b) + bn(b) for a, b in zip((1,) + widths[:-1], widths))
    expected += fc(widths[-1] * p * p, h) + fc(h, 7)
    assert expected == 652_519
    assert _count(CNNDeep()) == expected
    assert sum(isinstance(m, torch.nn.Conv2d) for m in CNNDeep().modules()) == 4
    assert sum(isinstance(m, torch.nn.Linear) for m in CNNDeep().modules()) == 2


def test_cnn_gap_count_by_formula_and_its_maps():
    from nas.models.baselines import CNNGap

    widths = CNNGap.widths
    expected = sum(conv(a, b) + bn(b) + conv(b, b) + bn(b) for a, b in zip((1,) + widths[:-1], widths))
    expected += fc(widths[-1], 7)
    assert expected == 294_615
    assert _count(CNNGap()) == expected
    logits, aux, fmap = CNNGap()(torch.zeros(2, 1, 44, 44), features=True)
    assert logits.shape == (2, 7) and aux is None and fmap.shape == (2, 128, 5, 5)


def test_dropout_rates():
    assert [m.p for m in VGGFer().modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]
    assert [m.p for m in CNNShallow().modules() if isinstance(m, torch.nn.Dropout)] == [0.3]
    assert [m.p for m in CNNDeep().modules() if isinstance(m, torch.nn.Dropout)] == [0.3, 0.3]


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize("size", [40, 44, 48])
def test_input_sizes(name, size):
    torch.manual_seed(0)
    model = BASELINES[name]().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_vgg_pool_is_identity_at_40_and_44():
    # The four max-pools leave 2x2 maps at 40 and 44 pixels, so the adaptive pool
    # changes nothing there; at 48 pixels it averages 3x3 down to 2x2.
    model = VGGFer().eval()
    for size, hw in ((40, 2), (44, 2), (48, 3)):
        with torch.no_grad():
            feats = model.features(torch.randn(1, 1, size, size))
        assert feats.shape[-1] == hw
        if hw == 2:
            assert torch.equal(model.pool(feats), feats)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = BASELINES[name]().train()
    size = model.default_input_size
    model(torch.randn(3, 1, size, size)).logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_attributes_and_options():
    assert VGGFer.default_input_size == 40
    assert ResNetFer.default_input_size == CNNShallow.default_input_size == CNNDeep.default_input_size == 44
    for name, cls in BASELINES.items():
        m = cls(num_classes=5, in_channels=3, drop_path_prob=0.1)
        assert m.drop_path_prob == 0.1
        assert m.eval()(torch.randn(1, 3, 44, 44)).shape == (1, 5)


def test_last_batch_of_one_trains():
    # No BatchNorm1d in the classifiers: a final training batch of one sample must work.
    for cls in BASELINES.values():
        cls().train()(torch.randn(1, 1, 44, 44))

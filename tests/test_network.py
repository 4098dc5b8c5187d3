"""The network built from a genotype: published parameter counts, layout, input sizes,
auxiliary head, drop-path."""
import pytest
import torch

from nas.models.genotypes import Genotype, load_genotype
from nas.models.network import AuxiliaryHead, Cell, NetworkFER, drop_path
from nas.models.ops import Identity



def _count(model, aux=False):
    return sum(p.numel() for n, p in model.named_parameters() if aux or not n.startswith("auxiliary_head"))


@pytest.mark.parametrize("layers, expected", [(12, 2_164_831), (20, 4_119_703)])
def test_fer_v1_published_parameter_counts(layers, expected):
    model = NetworkFER(load_genotype("FER_V1"), num_classes=7, init_channels=36, layers=layers)
    assert _count(model) == expected


def test_auxiliary_head_size_and_exclusion():
    model = NetworkFER(load_genotype("FER_V1"), init_channels=36, layers=12)
    # The head reads cell 8's output: 4 nodes x 144 channels = 576. DARTS's CIFAR head:
    # 1x1 conv C->128 + BN(128), 2x2 conv 128->768 + BN(768), linear 768->7.
    c = 4 * 36 * 4
    head = c * 128 + 2 * 128 + 128 * 768 * 4 + 2 * 768 + 768 * 7 + 7
    assert _count(model, aux=True) - _count(model) == head == 474_119
    no_aux = NetworkFER(load_genotype("FER_V1"), init_channels=36, layers=12, auxiliary=False)
    assert no_aux.auxiliary_head is None and _count(no_aux, aux=True) == 2_164_831


def test_layout_reductions_and_channels():
    model = NetworkFER(load_genotype("FER_V1"), init_channels=36, layers=12)
    assert [i for i, c in enumerate(model.cells) if c.reduction] == [4, 8]
    assert model.aux_index == 8
    assert model.stem[0].in_channels == 1 and model.stem[0].out_channels == 108
    assert model.classifier.in_features == 4 * 36 * 4
    # The cell after a reduction brings the previous-previous state down by a factorized reduction.
    from nas.models.ops import FactorizedReduce, ReLUConvBN
    assert isinstance(model.cells[5].preprocess0, FactorizedReduce)
    assert isinstance(model.cells[6].preprocess0, ReLUConvBN)
    m20 = NetworkFER(load_genotype("FER_V1"), layers=20)
    assert [i for i, c in enumerate(m20.cells) if c.reduction] == [6, 13]


@pytest.mark.parametrize("size, final", [(40, 10), (44, 11), (48, 12)])
def test_input_sizes_train_and_eval(size, final):
    torch.manual_seed(0)
    model = NetworkFER(load_genotype("FER_V1"), init_channels=4, layers=5, drop_path_prob=0.2)
    x = torch.randn(2, 1, size, size)
    maps = {}

    def hook(module, inputs, output):
        maps["last"] = output.shape

    model.cells[-1].register_forward_hook(hook)
    model.train()
    logits, aux = model(x)
    assert logits.shape == (2, 7) and aux.shape == (2, 7)
    assert maps["last"][-1] == final
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = NetworkFER(load_genotype("FER_V1"), init_channels=4, layers=5, drop_path_prob=0.0)
    model.train()
    logits, aux = model(torch.randn(2, 1, 40, 40))
    (logits.logsumexp(1).sum() + 0.4 * aux.logsumexp(1).sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "weight" in n and p.dim() > 1)


def test_drop_path_mask_per_sample_and_gradient():
    torch.manual_seed(0)
    x = torch.ones(4000, 2, 3, 3, requires_grad=True)
    y = drop_path(x, 0.25)
    per_sample = y.detach().view(4000, -1)
    # Each sample is either all dropped or all scaled by 1/0.75.
    assert ((per_sample == 0).all(1) | torch.isclose(per_sample, torch.tensor(4 / 3)).all(1)).all()
    kept = (per_sample[:, 0] > 0).float().mean().item()
    assert abs(kept - 0.75) < 0.03
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # d(sum)/dx = mask / keep
    assert drop_path(x, 0.0) is x


def test_drop_path_reproducible_with_global_seed():
    x = torch.randn(16, 3, 4, 4)
    torch.manual_seed(7)
    a = drop_path(x, 0.5)
    torch.manual_seed(7)
    b = drop_path(x, 0.5)
    assert torch.equal(a, b)


def test_drop_path_only_on_non_identity_edges_and_only_in_training():
    torch.manual_seed(0)
    skip = Genotype([("skip_connect", 0), ("skip_connect", 1)] * 2, [2, 3], [("max_pool_3x3", 0)] * 4, [2, 3])
    cell = Cell(skip, 6, 6, 6, reduction=False, reduction_prev=False).train()
    s0, s1 = torch.randn(8, 6, 5, 5), torch.randn(8, 6, 5, 5)
    assert all(isinstance(op, Identity) for op in cell._ops)
    torch.testing.assert_close(cell(s0, s1, 0.9), cell(s0, s1, 0.0))  # identities are never dropped

    conv = Genotype([("conv_3x3", 0), ("conv_3x3", 1)] * 2, [2, 3], [("max_pool_3x3", 0)] * 4, [2, 3])
    cell = Cell(conv, 6, 6, 6, reduction=False, reduction_prev=False).train()
    torch.manual_seed(1)
    dropped = cell(s0, s1, 0.9)
    assert not torch.allclose(dropped, cell(s0, s1, 0.0))
    cell.eval()
    torch.testing.assert_close(cell(s0, s1, 0.9), cell(s0, s1, 0.0))  # no drop-path in eval


def test_model_drop_path_prob_attribute_is_used():
    torch.manual_seed(0)
    model = NetworkFER(load_genotype("FER_V1"), init_channels=4, layers=3, auxiliary=False).train()
    x = torch.randn(4, 1, 40, 40)
    torch.manual_seed(3)
    a = model(x)
    model.drop_path_prob = 0.5
    torch.manual_seed(3)
    b = model(x)
    torch.manual_seed(3)
    c = model(x)
    assert not torch.allclose(a, b) and torch.equal(b, c)


def test_auxiliary_head_on_small_maps():
    head = AuxiliaryHead(16, 7)
    for hw in (8, 10, 11, 12):
        assert head(torch.randn(2, 16, hw, hw)).shape == (2, 7)


def test_too_few_layers():
    with pytest.raises(ValueError, match="at least 3"):
        NetworkFER(load_genotype("FER_V1"), layers=2)


def test_source_has_no_cuda_calls():
    import nas.models.network as net
    from pathlib import Path
    text = Path(net.__file__).read_text()
    assert ".cuda(" not in text and "Variable" not in text
